#!/usr/bin/env bash
# Builds the test tools from their official Go modules at the versions in VERSIONS, once per
# machine; a warm cache returns at once. Prints the bin directory on stdout.
#
#   build.sh        etcd, kube-apiserver, kubectl, helm  -> ~/.cache/servicelog/tools/<TOOLS_ID>/bin
#   build.sh node   kubelet, kube-scheduler, kube-controller-manager, kube-proxy, coredns and a
#                   static pause  -> ~/.cache/servicelog/tools/<NODE_TOOLS_ID>/bin
#                   (only `make cluster` and the node test need these)
#   build.sh otelcol  an OpenTelemetry Collector (otlp receiver, file exporter)
#                   -> ~/.cache/servicelog/tools/<OTELCOL_TOOLS_ID>/bin (the OTLP sink's tests)
#   build.sh prometheus  prometheus and promtool
#                   -> ~/.cache/servicelog/tools/<PROMETHEUS_TOOLS_ID>/bin (dashboard and alert tests)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$here/VERSIONS"
cache="${SERVICELOG_CACHE:-$HOME/.cache/servicelog}"
set_name="${1:-control-plane}"
case "$set_name" in
control-plane) id=$TOOLS_ID; want=(kube-apiserver kubectl etcd helm) ;;
node) id=$NODE_TOOLS_ID; want=(kubelet kube-scheduler kube-controller-manager kube-proxy coredns pause) ;;
otelcol) id=$OTELCOL_TOOLS_ID; want=(otelcol) ;;
prometheus) id=$PROMETHEUS_TOOLS_ID; want=(prometheus promtool) ;;
*) echo "usage: $0 [node|otelcol|prometheus]" >&2; exit 2 ;;
esac
bin="$cache/tools/$id/bin"

have_all() { for b in "${want[@]}"; do [[ -x "$bin/$b" ]] || return 1; done; }
if have_all; then echo "$bin"; exit 0; fi
# Tests may ask for a set from several processes at once: one builds, the others wait.
mkdir -p "$cache/tools"
exec 9>"$cache/tools/$id.lock"
flock 9
if have_all; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed to build the test tools (apt-get install golang, or Go >= 1.26)" >&2; exit 1; }
mkdir -p "$bin"
tmp="$bin.partial"
rm -rf "$tmp"; mkdir -p "$tmp"
export GOFLAGS="-mod=mod -trimpath" CGO_ENABLED=0
# The version the binaries report (/version, `kubectl version`, the Node's kubeletVersion):
# without it they say v0.0.0-master, which charts' kubeVersion constraints and kubectl's
# version check refuse. The variables hack/lib/version.sh sets in a release build.
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=v$KUBERNETES_VERSION -X $pkg.gitMajor=${KUBERNETES_VERSION%%.*}"
  minor=${KUBERNETES_VERSION#*.}; kube_ldflags+=" -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"
done
start=$(date +%s)
step() { echo "build.sh: $* ($(( $(date +%s) - start ))s)" >&2; }

if [[ $set_name == control-plane ]]; then
  step "building kube-apiserver, kubectl and etcd from k8s.io/kubernetes v$KUBERNETES_VERSION (first time only, ~15-25 min on 2 cores)"
  (cd "$here/kube" && go build -ldflags="$kube_ldflags" -o "$tmp/" ./cmd/etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl) >&2
  step "building helm v$HELM_VERSION"
  (cd "$here/helm" && go build -ldflags='-s -w' -o "$tmp/" helm.sh/helm/v3/cmd/helm) >&2
elif [[ $set_name == prometheus ]]; then
  # remove_all_sd: static_configs and file_sd only, without the cloud SDKs of the other
  # discovery plugins. The version prometheus reports (prometheus_build_info,
  # /api/v1/status/buildinfo) as a release build sets it.
  step "building prometheus and promtool v$PROMETHEUS_VERSION (first time only, ~8 min on 2 busy cores)"
  prom_ldflags="-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION"
  (cd "$here/prometheus" && go build -tags remove_all_sd -ldflags="$prom_ldflags" -o "$tmp/" github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool) >&2
elif [[ $set_name == otelcol ]]; then
  step "building the OpenTelemetry Collector v$OTELCOL_VERSION (otlp receiver, file exporter; first time only, ~3-7 min cold, ~35 s with a warm Go cache)"
  (cd "$here/otelcol" && go build -ldflags='-s -w' -o "$tmp/otelcol" .) >&2
else
  # The same module (and so the same Go build cache) as the control plane's binaries.
  step "building kubelet, kube-scheduler, kube-controller-manager and kube-proxy from k8s.io/kubernetes v$KUBERNETES_VERSION (first time only, ~6 min after the control plane's tools, ~15 cold)"
  (cd "$here/kube" && go build -ldflags="$kube_ldflags" -o "$tmp/" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-proxy) >&2
  step "building coredns v$COREDNS_VERSION (the kubernetes, cache, health, ready, log, errors and loadbalance plugins)"
  (cd "$here/coredns" && go build -ldflags='-s -w' -o "$tmp/" ./cmd/coredns) >&2
  step "building the static pause binary"
  command -v gcc >/dev/null || { echo "build.sh: gcc is needed for the pause binary (apt-get install gcc libc6-dev)" >&2; exit 1; }
  gcc -static -Os -s -o "$tmp/pause" "$here/pause/pause.c" >&2
fi
for b in "${want[@]}"; do mv "$tmp/$b" "$bin/$b"; done
rm -rf "$tmp"
step "tools ready in $bin"
echo "$bin"
