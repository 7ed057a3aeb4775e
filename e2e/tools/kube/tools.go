//go:build tools

// Package tools pins the commands built for the servicelog test control plane
// (kube-apiserver, kubectl) and for the node of `make cluster` (the rest: built only when a
// cluster is asked for, by e2e/tools/build.sh node).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
