#!/usr/bin/env bash
# `make images`: the operator, sidecar and node agent images, and a ZooKeeper image for the chart's
# embedded StatefulSet, built without a registry or a Docker engine, as archives in
# target/images/ (each an OCI layout plus docker-archive's
# manifest.json: `docker load`, `kind load image-archive`, `skopeo copy oci-archive:`,
# `ctr images import` read them), then loaded into the running `make cluster` node under
# the chart's default references (the ZooKeeper image under its own: see below).
#
#   images.sh build    the static binaries (`make static`) and the three archives
#   images.sh load     import the archives into the running cluster's node
#
# The content is docker/Dockerfile's (e2e/tests/images.rs checks that both describe the
# same image): distroless/static's files that matter — /etc/passwd and /etc/group with
# the nonroot user 65532, the CA certificates (SSL_CERT_FILE), tzdata, a world-writable
# /tmp — plus one static binary in /usr/local/bin, run as 65532:65532, with the
# Dockerfile's OCI labels, exposed ports, entrypoint and command.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/images
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/servicelog/Chart.yaml)
[[ -n $version ]] || { echo "images: no appVersion in charts/servicelog/Chart.yaml" >&2; exit 1; }
registry=ghcr.io/servicelog
# The embedded ZooKeeper's image (e2e/tools/images/zookeeper-image.sh): Debian's ZooKeeper,
# not the official image the chart names by default, so it has a reference of its own that
# no registry serves; install the chart with
#   --set zookeeper.embedded.image.repository=localhost/servicelog/zookeeper
#   --set zookeeper.embedded.image.tag=<the Debian upstream version, e.g. 3.8.0>
zk_version=$(dpkg-query -W -f='${Version}' zookeeper 2>/dev/null | sed 's/-[^-]*$//')
zk_ref=localhost/servicelog/zookeeper:${zk_version:-none}

build() {
  bash docker/static.sh
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$out"
  # What both images share: distroless/static-debian12:nonroot's users, certificates,
  # time zones and /tmp (its other files — os-release, licences — change nothing at run).
  local base=$work/base
  mkdir -p "$base/etc/ssl/certs" "$base/tmp" "$base/home/nonroot" "$base/usr/local/bin" \
    "$base/usr/share"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$base/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' \
    >"$base/etc/group"
  [[ -s /etc/ssl/certs/ca-certificates.crt ]] ||
    { echo "images: /etc/ssl/certs/ca-certificates.crt is missing (apt-get install ca-certificates)" >&2; exit 1; }
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$base/etc/ssl/certs/ca-certificates.crt"
  if [[ -d /usr/share/zoneinfo ]]; then cp -a /usr/share/zoneinfo "$base/usr/share/zoneinfo"; fi
  chmod 1777 "$base/tmp"
  local env='["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]'
  local labels='"org.opencontainers.image.source":"https://github.com/servicelog/servicelog","org.opencontainers.image.licenses":"Apache-2.0"'

  cp -a "$base" "$work/operator"
  install -m 0755 target/static/servicelog-operator "$work/operator/usr/local/bin/servicelog-operator"
  ENTRYPOINT='["/usr/local/bin/servicelog-operator"]' CMD='["run"]' IMAGE_USER='"65532:65532"' \
    IMAGE_ENV="$env" EXPOSED_PORTS='{"8080/tcp":{},"8443/tcp":{}}' \
    LABELS='{"org.opencontainers.image.title":"servicelog-operator","org.opencontainers.image.description":"Reconciles ServiceLogs into ZooKeeper and injects the servicelog sidecar",'"$labels"'}' \
    bash e2e/tools/images/oci-image.sh "$out/servicelog-operator.tar" \
    "$registry/servicelog-operator:$version" "$work/operator"

  cp -a "$base" "$work/sidecar"
  install -m 0755 target/static/servicelog-sidecar "$work/sidecar/usr/local/bin/servicelog-sidecar"
  ENTRYPOINT='["/usr/local/bin/servicelog-sidecar"]' IMAGE_USER='"65532:65532"' \
    IMAGE_ENV="$env" EXPOSED_PORTS='{"9779/tcp":{}}' \
    LABELS='{"org.opencontainers.image.title":"servicelog-sidecar","org.opencontainers.image.description":"Routes a pod'"'"'s logs by the rules in its ZooKeeper znode",'"$labels"'}' \
    bash e2e/tools/images/oci-image.sh "$out/servicelog-sidecar.tar" \
    "$registry/servicelog-sidecar:$version" "$work/sidecar"
  cp -a "$base" "$work/agent"
  install -m 0755 target/static/servicelog-agent "$work/agent/usr/local/bin/servicelog-agent"
  ENTRYPOINT='["/usr/local/bin/servicelog-agent"]' IMAGE_USER='"65532:65532"' \
    IMAGE_ENV="$env" EXPOSED_PORTS='{"9779/tcp":{}}' \
    LABELS='{"org.opencontainers.image.title":"servicelog-agent","org.opencontainers.image.description":"Routes what a node'"'"'s containers print by their ServiceLog rules",'"$labels"'}' \
    bash e2e/tools/images/oci-image.sh "$out/servicelog-agent.tar" \
    "$registry/servicelog-agent:$version" "$work/agent"
  for image in operator sidecar agent; do
    echo "images: $out/servicelog-$image.tar  $registry/servicelog-$image:$version  $(du -h "$out/servicelog-$image.tar" | cut -f1)"
  done

  [[ -n $zk_version ]] || { echo "images: Debian's zookeeper package is missing (make deps)" >&2; exit 1; }
  bash e2e/tools/images/zookeeper-image.sh "$out/zookeeper.tar" "$zk_ref"
  echo "images: $out/zookeeper.tar  $zk_ref  $(du -h "$out/zookeeper.tar" | cut -f1)"
}

load() {
  if [[ ! -f target/cluster/env ]]; then
    echo "images: no cluster running (make cluster); the archives stay in $out/"
    return 0
  fi
  for archive in servicelog-operator servicelog-sidecar servicelog-agent zookeeper; do
    bash scripts/cluster.sh load "$out/$archive.tar"
  done
}

case "${1:-}" in
build) build ;;
load) load ;;
*) echo "usage: $0 build|load" >&2; exit 2 ;;
esac
