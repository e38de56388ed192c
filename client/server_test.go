package client_test

import (
	"log/slog"
	"testing"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/livetest"
	"github.com/groupcast/groupcast/web"
)

// startServer starts a real instance on natsURL (embedded NATS when
// empty) with cfg as its web configuration. It stops when the test ends.
func startServer(t testing.TB, natsURL string, cfg web.Config) *livetest.Server {
	t.Helper()
	return startWith(t, broker.Config{URL: natsURL}, cfg)
}

// startKeptServer is startServer with every group recoverable, keeping
// size messages, on the JetStream server at natsURL.
func startKeptServer(t testing.TB, natsURL string, size int) *livetest.Server {
	t.Helper()
	return startWith(t, broker.Config{URL: natsURL, HistorySize: size,
		Policies: []broker.PolicyRule{{Pattern: "*", Policy: broker.Recoverable}}}, web.Config{})
}

// startWith starts an instance with bc as its broker's configuration.
// cfg.Region, "test-region" unless set, goes to both, so that deliveries
// carry it.
func startWith(t testing.TB, bc broker.Config, cfg web.Config) *livetest.Server {
	t.Helper()
	if cfg.Region == "" {
		cfg.Region = "test-region"
	}
	bc.Region = cfg.Region
	return livetest.Start(t, livetest.Config{
		Broker: bc,
		Web: func(b *broker.Broker, log *slog.Logger) (livetest.Web, error) {
			c := cfg
			c.Logger = log
			return web.New(b, c)
		},
	})
}
