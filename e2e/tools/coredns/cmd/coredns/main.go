// Command coredns is CoreDNS from its official Go module with only the plugins the test
// node's Corefile uses (the full plugin set pulls in every cloud SDK and doubles the build).
// Plugin order comes from CoreDNS's own directive list, so importing fewer changes nothing
// else.
package main

import (
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
