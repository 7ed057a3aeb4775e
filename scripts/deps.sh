#!/usr/bin/env bash
# Installs the Debian packages the tests need, when missing: ZooKeeper 3.8 and a JRE for
# it, and `time` (GNU time: the sidecar's routing benchmark runs under it, and its smoke
# version is part of `cargo test`). The Go toolchain (for e2e/tools/build.sh) and Rust come
# with the machine.
#
# `deps.sh node` adds what the node of `make cluster` runs on: containerd and runc, the CNI
# plugins (bridge, host-local, portmap, loopback), iptables and conntrack for kube-proxy,
# socat for the loopback port forwards into the node's network namespace, a static busybox
# for the test images and gcc's static libc for the pause binary.
set -euo pipefail
need=()
[[ -f /usr/share/java/zookeeper.jar ]] || need+=(zookeeper)
command -v java >/dev/null || need+=(default-jre-headless)
[[ -x /usr/bin/time ]] || need+=(time)
if [[ ${1:-} == node ]]; then
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || need+=(iptables)
  command -v conntrack >/dev/null || need+=(conntrack)
  command -v socat >/dev/null || need+=(socat)
  command -v nsenter >/dev/null || need+=(util-linux)
  command -v ip >/dev/null || need+=(iproute2)
  [[ -x /bin/busybox ]] || need+=(busybox-static)
  [[ -f /usr/lib/x86_64-linux-gnu/libc.a || -f /usr/lib/aarch64-linux-gnu/libc.a ]] || need+=(libc6-dev)
  command -v gcc >/dev/null || need+=(gcc)
fi
if ((${#need[@]})); then
  echo "deps: installing ${need[*]}" >&2
  sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  # policy-rc.d 101: a package's post-install must not start a system containerd; the
  # node runs its own with a state directory of its own.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee $policy >/dev/null; $sudo chmod +x $policy
    trap '$sudo rm -f $policy' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
command -v go >/dev/null || { echo "deps: Go >= 1.26 is needed to build the test tools" >&2; exit 1; }
