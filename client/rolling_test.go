package client_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/groupcast/groupcast/client"
	"github.com/groupcast/groupcast/internal/livetest"
	"github.com/groupcast/groupcast/internal/natstest"
	"github.com/groupcast/groupcast/web"
)

// TestRollingRestartPeak measures the peak reconnect rate while three
// instances holding 3,000 Go clients are replaced one at a time behind a
// load balancer, each draining over DrainPeriod: with the drain and the
// clients' spread the peak stays near sockets-per-instance/DrainPeriod,
// where closing everything at once would bring one instance's 1,000
// sockets back within a few milliseconds.
func TestRollingRestartPeak(t *testing.T) {
	if os.Getenv("GROUPCAST_ROLLING") == "" {
		t.Skip("a measurement with 3,000 sockets: GROUPCAST_ROLLING=1 go test -run TestRollingRestartPeak -v ./client")
	}
	const perInstance, drain, bucket = 1000, 2 * time.Second, 100 * time.Millisecond
	ns := natstest.Start(t, -1)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", natstest.Port(ns))
	cfg := web.Config{DrainPeriod: drain, MaxConnections: 5000}

	// The load balancer: round robin over the instances in service,
	// counting upgrades by 100 ms bucket.
	var mu sync.Mutex
	var pool []*livetest.Server
	next := 0
	counts := map[int64]int{}
	var counting time.Time
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		mu.Lock()
		s := pool[next%len(pool)]
		next++
		if !counting.IsZero() {
			counts[int64(time.Since(counting)/bucket)]++
		}
		mu.Unlock()
		r.SetURL(&url.URL{Scheme: "http", Host: s.Addr})
	}}
	lb := httptest.NewServer(proxy)
	defer lb.Close()

	for range 3 {
		pool = append(pool, startServer(t, natsURL, cfg))
	}
	ws := "ws" + strings.TrimPrefix(lb.URL, "http") + "/ws"
	clients := make([]*client.Client, 0, 3*perInstance)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range 3 * perInstance {
		c, err := client.Dial(testCtx(t), ws, nil)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}

	mu.Lock()
	counting = time.Now()
	mu.Unlock()
	for i := range 3 {
		fresh := startServer(t, natsURL, cfg)
		mu.Lock()
		old := pool[0]
		pool = append(pool[1:], fresh) // out of service, then drained
		mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), drain+3*time.Second)
		if err := old.Web.Shutdown(ctx); err != nil {
			t.Errorf("instance %d: %v", i, err)
		}
		cancel()
		old.Stop()
	}
	natstest.WaitFor(t, 10*time.Second, func() bool {
		connected := 0
		for _, c := range clients {
			if c.State() == client.Connected {
				connected++
			}
		}
		return connected == len(clients)
	})
	mu.Lock()
	defer mu.Unlock()
	peak, total := 0, 0
	for _, n := range counts {
		peak, total = max(peak, n), total+n
	}
	t.Logf("rolling restart of 3 instances, %d sockets, DrainPeriod %v: %d reconnects, peak %d in 100 ms (%.1f%% of an instance's sockets; the bound h/D is %.1f%%)",
		len(clients), drain, total, peak, 100*float64(peak)/perInstance, 100*float64(bucket)/float64(drain))
	if peak > perInstance/2 { // without the drain: nine tenths of them

		t.Fatalf("peak of %d reconnects in 100 ms: a wave", peak)
	}
}
