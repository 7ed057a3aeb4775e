# servicelog — see README.md. Every target installs what it needs on a fresh Debian
# machine; expensive builds are cached in ~/.cache/servicelog.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
TESTENV_DIR := target/testenv
CRD_FILE := servicelog.io_servicelogs.yaml

.PHONY: all build release static images images-build demo-cluster deps tools cluster-tools test lint fmt crds testenv testenv-down cluster cluster-down bench demo clean

all: build

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release -p servicelog-operator -p servicelog-sidecar

## static: statically linked release binaries of the operator and the sidecar in
## target/static/ (what docker/Dockerfile copies into its distroless image): musl when the
## Rust target can be had, else glibc with crt-static (STATIC_LIBC=musl|gnu to choose).
static:
	@CARGO=$(CARGO) bash docker/static.sh

## images: the operator, sidecar and agent images (what docker/Dockerfile builds: static binaries,
## uid 65532, CA certificates, /etc/passwd, OCI labels) as archives in target/images/, built
## without a registry or Docker, and loaded into the running `make cluster` node under the
## chart's default references (ghcr.io/servicelog/servicelog-*:<appVersion>); with them the
## embedded ZooKeeper's image from Debian's zookeeper and a jlink'd Java 17
## (localhost/servicelog/zookeeper:<version>, cached in ~/.cache/servicelog/images).
images: images-build
	@bash scripts/images.sh load

images-build:
	@CARGO=$(CARGO) bash scripts/images.sh build

## deps: Debian packages the tests need (ZooKeeper, a JRE); a no-op when present.
deps:
	@bash scripts/deps.sh

## tools: etcd, kube-apiserver, kubectl, helm from their Go modules (cached; ~20 min cold).
tools:
	@bash e2e/tools/build.sh >/dev/null

## cluster-tools: what a real node needs — containerd, runc, the CNI plugins, iptables,
## socat, busybox from apt, and kubelet, kube-scheduler, kube-controller-manager, kube-proxy,
## CoreDNS and a static pause built from their Go modules (cached; ~15 min cold).
cluster-tools: deps tools
	@bash scripts/deps.sh node
	@bash e2e/tools/build.sh node >/dev/null

## test: lints, then every test — unit, integration and end-to-end — on real components
## (e2e/tests/node.rs runs pods on a real node, hence cluster-tools; the tests on the node
## install the chart from the images, hence images-build).
test: deps tools cluster-tools images-build lint
	$(CARGO) test --workspace --all-targets --no-fail-fast
	$(CARGO) test --workspace --doc

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## crds: regenerate crds/ and the chart's copy from the Rust types.
crds:
	$(CARGO) run -q -p servicelog-operator -- crd > crds/$(CRD_FILE).tmp
	mv crds/$(CRD_FILE).tmp crds/$(CRD_FILE)
	cp crds/$(CRD_FILE) charts/servicelog/crds/$(CRD_FILE)

## testenv: start the control plane + ZooKeeper in the background; writes target/testenv/env.
## SERVICELOG_TESTENV_KAFKA=1 adds a Kafka broker (fetched once by scripts/kafka.sh) and
## SERVICELOG_KAFKA_BOOTSTRAP.
testenv: deps tools
	@if [[ "$${SERVICELOG_TESTENV_KAFKA:-}" == 1 ]]; then bash scripts/kafka.sh >/dev/null; fi
	@bash scripts/testenv.sh up

testenv-down:
	@bash scripts/testenv.sh down

## cluster: the control plane, ZooKeeper and a real node in a network namespace of their
## own, in the background; writes target/cluster/env. `scripts/cluster.sh load ARCHIVE`
## imports an image archive into the node.
cluster: cluster-tools
	@bash scripts/cluster.sh up

cluster-down:
	@bash scripts/cluster.sh down

## bench: the benchmarks; prints a table and writes target/bench/results.json.
bench:
	@bash scripts/bench.sh

## demo: the whole story on a machine with no cluster.
demo: deps
	@echo "== Building the test tools (first time only: etcd, kube-apiserver, kubectl, helm from Go; ~15-20 min on 2 cores)"
	@bash e2e/tools/build.sh >/dev/null
	@echo "== Building servicelog"
	$(CARGO) build -q -p servicelog-operator -p servicelog-sidecar -p servicelog-e2e --bins
	@"$${CARGO_TARGET_DIR:-target}/debug/servicelog-demo"

## demo-cluster: the demo on a real node (root): make cluster, make images, the chart
## installed with helm install --wait, examples/ applied, a rule edited live.
demo-cluster: cluster-tools images-build
	@bash scripts/demo-cluster.sh

clean:
	$(CARGO) clean
