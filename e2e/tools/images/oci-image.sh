#!/usr/bin/env bash
# Writes a one-layer image archive from a directory, with no registry and no Docker engine:
# an OCI image layout in a tar plus docker-archive's manifest.json, as `docker save` writes
# since Docker 25 — what `ctr images import`, `kind load image-archive`, `docker load`,
# `skopeo copy oci-archive:` and `crane push` read.
#
#   oci-image.sh OUT.tar REF ROOTFS_DIR
#
# The image config comes from the environment, each a JSON value:
#   ENTRYPOINT='["/bin/busybox","sleep"]'  CMD='["3600"]'  IMAGE_USER='"65532"'
#   IMAGE_ENV='["PATH=/bin"]'  LABELS='{"org.opencontainers.image.source":"..."}'
#   EXPOSED_PORTS='{"8080/tcp":{}}'
# The layer is reproducible (sorted names, mtime 0) and every file in it is owned by root,
# as in a Dockerfile's COPY without --chown.
set -euo pipefail
out="$1" ref="$2" rootfs="$3"
arch=$(case "$(uname -m)" in x86_64) echo amd64 ;; aarch64) echo arm64 ;; *) uname -m ;; esac)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/blobs/sha256"

blob() { # FILE -> prints "digest size" after moving it into blobs/
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1); s=$(stat -c %s "$1")
  mv "$1" "$work/blobs/sha256/$d"
  echo "$d $s"
}

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$rootfs" -cf "$work/layer" .
read -r layer layer_size < <(blob "$work/layer")

cat >"$work/config" <<JSON
{"architecture":"$arch","os":"linux","config":{"Entrypoint":${ENTRYPOINT:-null},"Cmd":${CMD:-null},"User":${IMAGE_USER:-\"\"},"Env":${IMAGE_ENV:-[\"PATH=/bin:/usr/bin:/sbin:/usr/sbin\"]},"WorkingDir":"/","ExposedPorts":${EXPOSED_PORTS:-null},"Labels":${LABELS:-null}},"rootfs":{"type":"layers","diff_ids":["sha256:$layer"]},"history":[{"created_by":"servicelog oci-image.sh"}]}
JSON
read -r config config_size < <(blob "$work/config")

cat >"$work/manifest" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer","size":$layer_size}]}
JSON
read -r manifest manifest_size < <(blob "$work/manifest")

# io.containerd.image.name gives containerd the full reference; ref.name carries it too
# for tools that read only the OCI annotation.
cat >"$work/index.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$manifest_size,"platform":{"architecture":"$arch","os":"linux"},"annotations":{"io.containerd.image.name":"$ref","org.opencontainers.image.ref.name":"$ref"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
# manifest.json as `docker save` writes it (Docker >= 25 writes both): Docker engines before
# 25 load only that; containerd and skopeo read the OCI index.
cat >"$work/manifest.json" <<JSON
[{"Config":"blobs/sha256/$config","RepoTags":["$ref"],"Layers":["blobs/sha256/$layer"]}]
JSON
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" -cf "$out.partial" oci-layout index.json manifest.json blobs
mv "$out.partial" "$out"
