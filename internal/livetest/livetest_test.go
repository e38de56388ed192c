package livetest_test

import (
	"log/slog"
	"net/http"
	"testing"

	"go.uber.org/goleak"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/livetest"
	"github.com/groupcast/groupcast/web"
)

// TestMain: an instance stopped leaves no goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestRestart: a restarted instance is a new node on the same address,
// serving again; a stopped one refuses connections.
func TestRestart(t *testing.T) {
	s := livetest.Start(t, livetest.Config{
		Web: func(b *broker.Broker, log *slog.Logger) (livetest.Web, error) {
			return web.New(b, web.Config{Logger: log})
		},
	})
	addr, node := s.Addr, s.B.Node()
	s.Publish("g", `1`)
	s.Restart()
	if s.Addr != addr || s.B.Node() == node {
		t.Fatalf("after the restart: %s node %s, before %s node %s", s.Addr, s.B.Node(), addr, node)
	}
	s.Publish("g", `2`)
	s.Stop()
	s.Stop() // again: nothing
	if resp, err := http.Get(s.URL() + "/health"); err == nil {
		resp.Body.Close()
		t.Fatal("a stopped instance answered")
	}
	s.Restart() // from stopped
	s.Publish("g", `3`)
}
