package main

import (
	"testing"
)

// TestFanoutGroupcastSSE runs small fanout, rooms and connect runs over the
// SSE fallback (streams, joins and leaves POSTed) against ./app, exact as
// over sockets.
func TestFanoutGroupcastSSE(t *testing.T) {
	t.Parallel()
	in := startGroupcast(t)
	urls, apis, pids := []string{in.ws}, []string{in.api}, []int{in.pid}
	t.Run("fanout", func(t *testing.T) {
		cfg := smallRun(targetGroupcast, urls, apis)
		cfg.PIDs, cfg.Transport = pids, transportSSE
		res, err := runFanout(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		checkExact(t, res)
		if res.Transport != transportSSE {
			t.Errorf("transport %q", res.Transport)
		}
	})
	t.Run("connect", func(t *testing.T) {
		cfg := smallRun(targetGroupcast, urls, apis)
		cfg.Conns, cfg.PIDs, cfg.Transport = 200, pids, transportSSE
		res, err := runConnect(t.Context(), ConnectConfig{Base: cfg, Rounds: 2, Verify: 2})
		if err != nil {
			t.Fatal(err)
		}
		checkConnect(t, res, 2)
		if res.Transport != transportSSE {
			t.Errorf("transport %q", res.Transport)
		}
	})
	t.Run("rooms", func(t *testing.T) {
		cfg := smallRooms(targetGroupcast, urls, apis)
		cfg.PIDs, cfg.Transport = pids, transportSSE
		res, err := runFanout(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		checkExact(t, res)
	})
	t.Run("refused", func(t *testing.T) {
		cfg := smallRun(targetNATSWS, urls, nil)
		cfg.Transport = transportSSE
		if _, err := runFanout(t.Context(), cfg); err == nil {
			t.Error("nats-ws over sse: no error")
		}
	})
}
