#!/usr/bin/env bash
# `make demo-cluster`: the demo on a real node, as a user runs servicelog — the images of
# `make images` in the node, the chart installed with `helm install --wait`, examples/
# applied, the injected sidecar routing the app's lines, a rule edited live. Leaves the
# cluster running (`source target/cluster/env` to look around, `make cluster-down` to stop).
#
# ZooKeeper is the cluster's own (zookeeper.connect): the node has no zookeeper image and
# no PersistentVolume provisioner for the chart's embedded StatefulSet (docs/testenv.md).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*"; }
# Every wait is bounded and says what it waited for.
wait_for() { # WHAT SECONDS COMMAND...
  local what=$1 seconds=$2; shift 2
  for _ in $(seq 1 $((seconds * 2))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "demo: timed out after ${seconds}s waiting for $what" >&2
  exit 1
}

step "Starting the cluster: control plane, ZooKeeper and a real node (make cluster)"
bash scripts/cluster.sh up | tail -1
step "Loading the operator and sidecar images into the node (make images)"
bash scripts/images.sh load
# shellcheck source=/dev/null
source target/cluster/env

step "helm install servicelog charts/servicelog --wait"
start=$(date +%s%N)
helm upgrade --install servicelog charts/servicelog --namespace servicelog-system \
  --create-namespace --wait --timeout 180s \
  --set zookeeper.embedded.enabled=false --set "zookeeper.connect=$SERVICELOG_CLUSTER_ZK_CONNECT" >/dev/null
kubectl get pods -n servicelog-system

step "Applying examples/: the shop namespace, ServiceLog checkout and an annotated pod"
kubectl apply -f examples/namespace.yaml -f examples/checkout.yaml
# The node pulls nothing: the example's busybox is the one the cluster loaded.
sed 's#image: busybox:1.36#image: servicelog.test/busybox:1#' examples/pod.yaml | kubectl apply -f -
kubectl wait pod/checkout-0 -n shop --for=condition=Ready --timeout=120s
echo "init containers (the native sidecar, injected by the webhook):" \
  "$(kubectl get pod checkout-0 -n shop -o jsonpath='{range .spec.initContainers[*]}{.name} restartPolicy={.restartPolicy}{end}')"

step "The app's lines, routed to the sidecar's stdout (kubectl logs -c servicelog-sidecar)"
routed() { kubectl logs checkout-0 -n shop -c servicelog-sidecar | grep -q '"msg":"hello"'; }
wait_for "the app's lines in the sidecar's stdout" 60 routed
ms=$((($(date +%s%N) - start) / 1000000))
kubectl logs checkout-0 -n shop -c servicelog-sidecar | grep '"msg":"hello"' | tail -3
printf 'first routed line %d.%01ds after helm install started\n' $((ms / 1000)) $((ms % 1000 / 100))
# Applied: the status is of the current generation and the pod acked it.
applied() {
  local observed generation summary
  read -r observed generation summary < <(kubectl get servicelog checkout -n shop \
    -o jsonpath='{.status.observedGeneration} {.metadata.generation} {.status.pods.summary}')
  [[ $observed == "$generation" && $summary == 1/1 ]]
}
wait_for "ServiceLog checkout to be applied by its pod" 60 applied
kubectl get servicelogs -n shop

step "Editing a rule live: info lines are dropped from now on (kubectl patch)"
kubectl patch servicelog checkout -n shop --type=json \
  -p '[{"op":"replace","path":"/spec/rules/0/when/level/below","value":"warn"}]'
wait_for "the patched ServiceLog to be applied by its pod" 60 applied
kubectl get servicelogs -n shop
before=$(kubectl logs checkout-0 -n shop -c servicelog-sidecar | grep -c '"msg":"hello"' || true)
sleep 3
after=$(kubectl logs checkout-0 -n shop -c servicelog-sidecar | grep -c '"msg":"hello"' || true)
echo "hello lines in the sidecar's stdout: $before, and 3 s later $after (the app writes one a second)"
echo "restarts: $(kubectl get pod checkout-0 -n shop -o jsonpath='{range .status.initContainerStatuses[*]}{.name}={.restartCount} {end}{range .status.containerStatuses[*]}{.name}={.restartCount}{end}')"

step "Done. The cluster keeps running: source target/cluster/env; make cluster-down to stop"
