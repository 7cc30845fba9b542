package nriplugin_test

import (
	"context"
	"log"
	"path/filepath"

	"github.com/trustgate/trustgate/agent/attestor"
	"github.com/trustgate/trustgate/agent/attestor/nri"
	"github.com/trustgate/trustgate/agent/attestor/unix"
	"github.com/trustgate/trustgate/agent/cache"
	"github.com/trustgate/trustgate/agent/nriplugin"
	"github.com/trustgate/trustgate/agent/workloadapi"
)

// The agent's wiring: one nri attestor, fed by the plugin and consulted by
// the Workload API server together with the unix attestor; the plugin
// injects the socket into containers that match an entry in the cache.
func Example() {
	ctx := context.Background()
	var c *cache.Cache // the agent's cache, synced from the broker
	const socketDir = "/run/trustgate/workload-api"

	att := nri.New(nri.Config{})
	p, err := nriplugin.New(nriplugin.Config{
		GatewaySocket: "/var/run/trustgate/nri.sock",
		KeyFile:       "/etc/trustgate/agent-nri.key",
		Attestor:      att,
		SocketDir:     socketDir,
		Destination:   nriplugin.DefaultDestination,
		Match:         nriplugin.MatchCache(c),
	})
	if err != nil {
		log.Fatal(err)
	}
	go func() { _ = p.Run(ctx) }()

	srv, err := workloadapi.New(workloadapi.Config{Cache: c, Attestor: attestor.Multi{unix.New(unix.Config{}), att}})
	if err != nil {
		log.Fatal(err)
	}
	l, err := workloadapi.Listen(filepath.Join(socketDir, nriplugin.DefaultSocketName))
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve(l))
}
