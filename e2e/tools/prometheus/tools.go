//go:build tools

// Package tools pins the prometheus and promtool commands built for servicelog's
// dashboard and alert tests.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
