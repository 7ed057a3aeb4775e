//go:build tools

// Package tools pins the helm command built for the servicelog test control plane.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
