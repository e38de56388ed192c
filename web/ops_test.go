package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/groupcast/groupcast/internal/apptest"
	"github.com/groupcast/groupcast/internal/wstest"

	"github.com/coder/websocket"
)

// TestMaxConnectionAge: a socket is closed with 1012 before a proxy's
// request timeout would cut it, and the reason says why.
func TestMaxConnectionAge(t *testing.T) {
	e := newEnv(t, "", &Config{MaxConnectionAge: 300 * time.Millisecond})
	c := e.dial()
	c.Join("g")
	start := time.Now()
	_, err := c.Raw()
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusServiceRestart || ce.Reason != "max connection age" {
		t.Fatalf("got %v, want 1012 max connection age", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("closed after %v", d)
	}
}

func TestTraceAttrs(t *testing.T) {
	r := httptest.NewRequest("GET", "/ws", nil)
	r.Header.Set("X-Cloud-Trace-Context", "105445aa7843bc8bf206b12000100000/1;o=1")
	got := traceAttrs(r, "proj")
	want := []any{"logging.googleapis.com/trace", "projects/proj/traces/105445aa7843bc8bf206b12000100000", "logging.googleapis.com/spanId", "1"}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v want %v", got, want)
		}
	}
	r = httptest.NewRequest("GET", "/ws", nil)
	r.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	if got := traceAttrs(r, "p"); len(got) != 4 || got[1] != "projects/p/traces/4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("traceparent: %v", got)
	}
	r.Header.Set("traceparent", "00-not hex!-x-01")
	if got := traceAttrs(r, "p"); got != nil {
		t.Fatalf("bad traceparent: %v", got)
	}
}

// TestConnectionLogs: one line when a socket opens and one when it closes,
// with the trace; none per delivered message.
func TestConnectionLogs(t *testing.T) {
	logs := &apptest.Buffer{}
	e := newEnv(t, "", &Config{TraceProject: "proj"})
	e.srv.log = slog.New(slog.NewJSONHandler(logs, nil))
	c := e.dial("X-Cloud-Trace-Context", "abc123/7;o=1")
	c.Join("g")
	for range 20 {
		e.post("/api/groups/g/messages", `1`)
		c.Next()
	}
	c.Conn.Close(websocket.StatusNormalClosure, "")
	waitFor(t, 5*time.Second, func() bool { return strings.Contains(logs.String(), "websocket closed") })
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 log lines, got %d:\n%s", len(lines), logs)
	}
	for _, l := range lines {
		var m map[string]any
		json.Unmarshal([]byte(l), &m)
		if m["logging.googleapis.com/trace"] != "projects/proj/traces/abc123" || m["channel"] != c.Channel() {
			t.Fatalf("log line lacks trace or channel: %s", l)
		}
	}
}

func TestMetricsExposed(t *testing.T) {
	e := newEnv(t, "", nil)
	c := e.dial()
	c.Join("g")
	e.post("/api/groups/g/messages", `1`)
	c.Next()
	c.Write(`nope`)
	c.Next()
	wants := []string{
		`groupcast_connections{transport="ws"} 1`, "groupcast_joins_total 1", `groupcast_published_total{source="api"} 1`,
		"groupcast_groups 1", "groupcast_deliveries_total 1", "groupcast_nats_connected 1",
		"groupcast_fanout_seconds_count 1", `groupcast_errors_total{code="invalid_json"} 1`,
		"groupcast_frames_written_total 4", // welcome, ack, message, error
	}
	// A frame is counted once written, which may be just after the
	// client has read it.
	var missing []string
	defer func() {
		for _, want := range missing {
			t.Errorf("metrics lack %q", want)
		}
	}()
	waitFor(t, 2*time.Second, func() bool {
		resp, err := http.Get(e.http.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		missing = missing[:0]
		for _, want := range wants {
			if !bytes.Contains(body, []byte(want+"\n")) {
				missing = append(missing, want)
			}
		}
		return len(missing) == 0
	})
}

// TestKeepalivePings: an idle connection is pinged every PingInterval,
// without a writer goroutine, and one that stops answering is dropped.
func TestKeepalivePings(t *testing.T) {
	e := newEnv(t, "", &Config{PingInterval: 50 * time.Millisecond, WriteTimeout: 200 * time.Millisecond})
	var pings atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, e.wsURL(), &websocket.DialOptions{
		OnPingReceived: func(context.Context, []byte) bool { pings.Add(1); return true },
	})
	if err != nil {
		t.Fatal(err)
	}
	answerPings(t, conn)
	waitFor(t, 5*time.Second, func() bool { return pings.Load() >= 3 })

	// The pings were written at once, as deliveries are, and their pongs
	// awaited by the timer: no writer goroutine started for any of them.
	e.srv.mu.Lock()
	for ss := range e.srv.sessions {
		ss.out.mu.Lock()
		starts, running := ss.out.bursts, ss.out.running
		ss.out.mu.Unlock()
		if starts != 0 || running {
			t.Errorf("%d writer goroutines started (one running: %v) for %d pings; want none", starts, running, pings.Load())
		}
	}
	e.srv.mu.Unlock()

	// A client that reads nothing never answers: the server gives up on it.
	mute, _, err := websocket.Dial(ctx, e.wsURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer mute.CloseNow()
	waitFor(t, 5*time.Second, func() bool { return e.broker.Stats().Channels == 1 })
}

// TestKeepalivePingsOnGrid: connections that open at different moments
// get their pings on the keepalive's grid, so that the server writes them
// together on one wakeup, and a pong sets the timer for the next ping,
// PingInterval after the last: with WriteTimeout the longer, a timer that
// came back to find the pong would send the next ping a step late.
func TestKeepalivePingsOnGrid(t *testing.T) {
	const interval, grid = 2500 * time.Millisecond, keepaliveGrid // a tenth of the interval is no finer
	e := newEnv(t, "", &Config{PingInterval: interval, WriteTimeout: 4 * interval})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	const conns, pings = 4, 2
	type pinged struct {
		conn int
		at   time.Time
	}
	got := make(chan pinged, conns*pings)
	for i := range conns {
		if i > 0 {
			time.Sleep(grid / conns) // a quarter of a step apart: they span the grid
		}
		var n atomic.Int32
		conn, _, err := websocket.Dial(ctx, e.wsURL(), &websocket.DialOptions{
			OnPingReceived: func(context.Context, []byte) bool {
				if n.Add(1) <= pings {
					got <- pinged{i, time.Now()}
				}
				return true
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		answerPings(t, conn)
	}
	// A ping is written just after its grid point and read moments later:
	// without the grid, the four connections' would be spread over a step.
	const slack = 100 * time.Millisecond
	first := map[int]time.Time{}
	for range conns * pings {
		var p pinged
		select {
		case p = <-got:
		case <-ctx.Done():
			t.Fatal("too few pings within 15 s")
		}
		if past := time.Duration(p.at.UnixNano() % int64(grid)); past > slack {
			t.Errorf("connection %d: a ping came %v past a grid point of %v; want it just after one", p.conn, past, grid)
		}
		if f, ok := first[p.conn]; !ok {
			first[p.conn] = p.at
		} else if period := p.at.Sub(f); period < interval-slack || period > interval+slack {
			t.Errorf("connection %d: pings %v apart; want %v", p.conn, period, interval)
		}
	}
}

// answerPings reads conn until the test ends (reading answers pings),
// then closes it.
func answerPings(t *testing.T, conn *websocket.Conn) {
	read := make(chan struct{})
	go func() {
		defer close(read)
		for {
			if _, _, err := conn.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { conn.CloseNow(); <-read })
}

// TestGridUp: the keepalive's rounding lands on the grid, never early.
func TestGridUp(t *testing.T) {
	for _, c := range []struct{ t, grid, want int64 }{
		{1000, 250, 1000},
		{1001, 250, 1250},
		{1249, 250, 1250},
		{1, 250, 250},
		{1001, 0, 1001}, // no grid
	} {
		if got := gridUp(c.t, c.grid); got != c.want {
			t.Errorf("gridUp(%d, %d) = %d; want %d", c.t, c.grid, got, c.want)
		}
	}
}

// TestKeepaliveTimerSetBeforeItFires: with a ping interval shorter than
// a session's start, the keepalive's first run finds its timer set (it
// resets it) and the connection works.
func TestKeepaliveTimerSetBeforeItFires(t *testing.T) {
	e := newEnv(t, "", &Config{PingInterval: time.Nanosecond})
	var last *wstest.Client
	for range 20 {
		last = e.dial()
		last.Join("tiny")
	}
	e.post("/api/groups/tiny/messages", `1`)
	last.ExpectMessage("tiny", `1`)
}
