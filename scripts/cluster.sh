#!/usr/bin/env bash
# `make cluster` / `make cluster-down`: the test control plane, ZooKeeper and a real node
# (containerd, kubelet, scheduler, controller-manager, kube-proxy, CoreDNS) in a network
# namespace of their own, in the background. Writes target/cluster/env: `source` it for
# KUBECONFIG, a PATH with kubectl and helm, SERVICELOG_CLUSTER_ZK_CONNECT (ZooKeeper as pods
# reach it) and CONTAINERD_ADDRESS (for ctr).
#
#   cluster.sh up              start it (make cluster runs the install steps first)
#   cluster.sh down            stop it and remove everything the node created
#   cluster.sh load ARCHIVE    import a docker-archive (`docker save`) or OCI archive into
#                              the node's containerd, where the kubelet finds it
set -euo pipefail
cd "$(dirname "$0")/.."
base=target/cluster
pidfile=$base/cluster.pid
running() { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "${1:-}" in
up)
  if running; then
    echo "cluster already running (pid $(cat "$pidfile")); source $base/env"; exit 0
  fi
  [[ $(id -u) == 0 ]] || { echo "cluster: a node needs root (network namespaces, mounts, cgroups)" >&2; exit 1; }
  cargo build -q -p servicelog-e2e --bin servicelog-testenv
  mkdir -p $base
  rm -f $base/env
  start=$(date +%s%N)
  # setsid: the cluster outlives the shell (and its Ctrl-C) that started it.
  setsid nohup "${CARGO_TARGET_DIR:-target}/debug/servicelog-testenv" --cluster >$base/cluster.log 2>&1 </dev/null &
  pid=$!
  for _ in $(seq 1 600); do
    if [[ -f $base/env ]]; then
      cat $base/cluster.log
      ms=$(( ($(date +%s%N) - start) / 1000000 ))
      printf 'make cluster: up in %d.%01ds\n' $((ms / 1000)) $((ms % 1000 / 100))
      exit 0
    fi
    if ! kill -0 $pid 2>/dev/null; then
      echo "cluster failed to start:" >&2; cat $base/cluster.log >&2; exit 1
    fi
    sleep 0.5
  done
  echo "cluster: timed out after 300s waiting for $base/env; log:" >&2
  cat $base/cluster.log >&2; kill $pid 2>/dev/null || true; exit 1
  ;;
down)
  if [[ -f $pidfile ]]; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 180); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile" $base/env
  fi
  # Whatever a killed cluster left (its watchdog does the same once it notices).
  if [[ -f $base/current/node.env ]]; then
    bash e2e/tools/node-down.sh "$PWD/$base/current" all
  fi
  echo "cluster stopped"
  ;;
load)
  archive="${2:?usage: $0 load ARCHIVE}"
  [[ -f $archive ]] || { echo "cluster: no such archive: $archive" >&2; exit 1; }
  running || { echo "cluster: not running; start it with make cluster" >&2; exit 1; }
  # shellcheck source=/dev/null
  source $base/env
  ctr -a "$CONTAINERD_ADDRESS" -n k8s.io images import "$archive"
  ;;
*) echo "usage: $0 up|down|load ARCHIVE" >&2; exit 2 ;;
esac
