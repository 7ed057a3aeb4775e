#!/usr/bin/env bash
# Builds kube-apiserver, kubectl, etcd and helm from their official Go modules at the
# versions in VERSIONS, once per machine, into ~/.cache/servicelog/tools/<TOOLS_ID>/bin.
# A warm cache returns at once. Prints the bin directory on stdout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$here/VERSIONS"
cache="${SERVICELOG_CACHE:-$HOME/.cache/servicelog}"
bin="$cache/tools/$TOOLS_ID/bin"
want=(kube-apiserver kubectl etcd helm)

have_all() { for b in "${want[@]}"; do [[ -x "$bin/$b" ]] || return 1; done; }
if have_all; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed to build the test tools (apt-get install golang, or Go >= 1.26)" >&2; exit 1; }
mkdir -p "$bin"
tmp="$bin.partial"
rm -rf "$tmp"; mkdir -p "$tmp"
export GOFLAGS="-mod=mod -trimpath" CGO_ENABLED=0
start=$(date +%s)
step() { echo "build.sh: $* ($(( $(date +%s) - start ))s)" >&2; }

step "building kube-apiserver, kubectl and etcd from k8s.io/kubernetes v$KUBERNETES_VERSION (first time only, ~15-25 min on 2 cores)"
(cd "$here/kube" && go build -ldflags='-s -w' -o "$tmp/" ./cmd/etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl) >&2
step "building helm v$HELM_VERSION"
(cd "$here/helm" && go build -ldflags='-s -w' -o "$tmp/" helm.sh/helm/v3/cmd/helm) >&2
for b in "${want[@]}"; do mv "$tmp/$b" "$bin/$b"; done
rm -rf "$tmp"
step "tools ready in $bin"
echo "$bin"
