#!/usr/bin/env bash
# Installs the Debian packages the tests need, when missing: ZooKeeper 3.8 and a JRE for
# it, and `time` (GNU time: the sidecar's routing benchmark runs under it, and its smoke
# version is part of `cargo test`). The Go toolchain (for e2e/tools/build.sh) and Rust come
# with the machine.
set -euo pipefail
need=()
[[ -f /usr/share/java/zookeeper.jar ]] || need+=(zookeeper)
command -v java >/dev/null || need+=(default-jre-headless)
[[ -x /usr/bin/time ]] || need+=(time)
if ((${#need[@]})); then
  echo "deps: installing ${need[*]}" >&2
  sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
command -v go >/dev/null || { echo "deps: Go >= 1.26 is needed to build the test tools" >&2; exit 1; }
