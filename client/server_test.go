package client_test

import (
	"log/slog"
	"testing"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/livetest"
	"github.com/groupcast/groupcast/web"
)

// startServer starts a real instance on natsURL (embedded NATS when
// empty) with cfg as its web configuration. cfg.Region defaults to
// "test-region" and is set on the broker too, so that deliveries carry
// it. It stops when the test ends.
func startServer(t testing.TB, natsURL string, cfg web.Config) *livetest.Server {
	t.Helper()
	if cfg.Region == "" {
		cfg.Region = "test-region"
	}
	return livetest.Start(t, livetest.Config{
		Broker: broker.Config{URL: natsURL, Region: cfg.Region},
		Web: func(b *broker.Broker, log *slog.Logger) (livetest.Web, error) {
			c := cfg
			c.Logger = log
			return web.New(b, c)
		},
	})
}
