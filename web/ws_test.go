package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/groupcast/groupcast/internal/natstest"
	"github.com/groupcast/groupcast/internal/wstest"

	"github.com/groupcast/groupcast/broker"
)

func TestWelcomeJoinPublishLeave(t *testing.T) {
	e := newEnv(t, "", nil)
	c := e.dial()
	if c.Welcome["region"] != "test-region" || c.Welcome["node"] != e.broker.Node() ||
		!strings.HasPrefix(c.Channel(), e.broker.Node()+".") {
		t.Fatalf("welcome %v", c.Welcome)
	}
	c.Join("room.lobby")
	if status, body := e.post("/api/groups/room.lobby/messages", `{"text":"hi"}`); status != http.StatusAccepted {
		t.Fatalf("publish: %d %s", status, body)
	}
	c.ExpectMessage("room.lobby", `{"text":"hi"}`)

	if m := c.Call(map[string]any{"type": "ping"}); m["type"] != "pong" {
		t.Fatalf("ping answered %v", m)
	}
	if m := c.Call(map[string]any{"type": "leave", "group": "room.lobby"}); m["type"] != "ack" {
		t.Fatalf("leave answered %v", m)
	}
	e.post("/api/groups/room.lobby/messages", `{"text":"after leave"}`)
	c.Quiet(100 * time.Millisecond)
}

func TestClientSend(t *testing.T) {
	e := newEnv(t, "", nil)
	a, b := e.dial(), e.dial()
	a.Join("chat")
	b.Join("chat")
	if m := a.Call(map[string]any{"type": "send", "group": "chat", "data": map[string]any{"text": "yo"}}); m["type"] != "ack" {
		t.Fatalf("send answered %v", m)
	}
	b.ExpectMessage("chat", `{"text":"yo"}`)
	a.ExpectMessage("chat", `{"text":"yo"}`)
}

func TestDirectMessage(t *testing.T) {
	e := newEnv(t, "", nil)
	a, b := e.dial(), e.dial()
	if status, body := e.post("/api/channels/"+a.Channel()+"/messages", `[1,2,3]`); status != http.StatusAccepted {
		t.Fatalf("%d %s", status, body)
	}
	m := a.Next()
	if m["type"] != "message" || m["channel"] != a.Channel() || fmt.Sprint(m["data"]) != "[1 2 3]" {
		t.Fatalf("got %v", m)
	}
	b.Quiet(100 * time.Millisecond)
}

// TestBadInput sends every kind of bad frame: each gets its error code, the
// connection stays usable, and a healthy client beside it keeps receiving.
func TestBadInput(t *testing.T) {
	e := newEnv(t, "", &Config{ClientSend: true, MaxGroups: 2})
	healthy := e.dial()
	healthy.Join("g")
	bad := e.dial()
	bad.Join("one")
	bad.Join("two")
	cases := []struct {
		frame, code string
		id          any
	}{
		{`not json`, CodeInvalidJSON, nil},
		{`[1,2]`, CodeInvalidJSON, nil},
		{`{"type":"join","group":"x"`, CodeInvalidJSON, nil},
		{`{}`, CodeUnknownType, nil},
		{`{"type":"dance","id":1}`, CodeUnknownType, 1.0},
		{`{"type":"join","group":"a..b","id":"s"}`, CodeInvalidGroup, "s"},
		{`{"type":"join","group":"a.*","id":2}`, CodeInvalidGroup, 2.0},
		{`{"type":"join","group":"` + strings.Repeat("x", 101) + `","id":3}`, CodeInvalidGroup, 3.0},
		{`{"type":"join","group":"three","id":4}`, CodeTooManyGroups, 4.0},
		{`{"type":"send","group":"g","id":5}`, CodeInvalidData, 5.0},
		{`{"type":"send","group":"g>","data":1,"id":6}`, CodeInvalidGroup, 6.0},
		{`{"type":"join","group":7,"id":7}`, CodeInvalidFrame, 7.0},
		{`{"type":"ping","id":{"x":1}}`, CodeInvalidFrame, nil},
	}
	for _, tc := range cases {
		bad.Write(tc.frame)
		m := bad.Next()
		if m["type"] != "error" || m["code"] != tc.code || m["id"] != tc.id || m["message"] == "" {
			t.Errorf("%s: got %v, want code %s id %v", tc.frame, m, tc.code, tc.id)
		}
	}
	ctx := context.Background()
	bad.Conn.Write(ctx, websocket.MessageBinary, []byte(`{"type":"ping"}`))
	if m := bad.Next(); m["code"] != CodeInvalidFrame {
		t.Errorf("binary frame: got %v", m)
	}
	// Still usable, and the healthy client was never disturbed.
	if m := bad.Call(map[string]any{"type": "ping"}); m["type"] != "pong" {
		t.Fatalf("after errors: %v", m)
	}
	e.post("/api/groups/g/messages", `"still here"`)
	healthy.ExpectMessage("g", `"still here"`)
}

func TestClientSendForbidden(t *testing.T) {
	e := newEnv(t, "", &Config{})
	c := e.dial()
	m := c.Call(map[string]any{"type": "send", "group": "g", "data": 1})
	if m["type"] != "error" || m["code"] != CodeForbidden {
		t.Fatalf("got %v", m)
	}
}

func TestOversizeFrameCloses1009(t *testing.T) {
	e := newEnv(t, "", &Config{MaxFrameBytes: 1024})
	healthy := e.dial()
	healthy.Join("g")
	c := e.dial()
	c.Write(`{"type":"ping","pad":"` + strings.Repeat("x", 2000) + `"}`)
	_, err := c.Raw()
	if status := websocket.CloseStatus(err); status != websocket.StatusMessageTooBig {
		t.Fatalf("read after oversize frame: %v (status %d), want close 1009", err, status)
	}
	e.post("/api/groups/g/messages", `1`)
	healthy.ExpectMessage("g", `1`)
}

// TestSlowConsumer: a client that never reads during a flood is closed with
// 4008 once its outbox is full, so what the server holds for it stays
// bounded, while a reading client beside it gets every message.
func TestSlowConsumer(t *testing.T) {
	e := newEnv(t, "", &Config{OutboxFrames: 1024, OutboxBytes: 256 << 10})
	stuck := e.dial()
	stuck.Join("flood")
	good := e.dial()
	good.Join("flood")

	const n, window = 20000, 200 // 20 MB: more than socket buffers hold
	payload := `{"pad":"` + strings.Repeat("x", 1000) + `"}`
	for i := 0; i < n; i += window {
		for range window {
			if err := e.broker.GroupSend("flood", []byte(payload)); err != nil {
				t.Fatal(err)
			}
		}
		for range window { // the good client keeps up
			if _, err := good.Raw(); err != nil {
				t.Fatalf("good client after %d messages: %v", i, err)
			}
		}
	}
	// The server lets go of the stuck client within a second: its socket
	// buffers are full, so its connection is dropped.
	waitFor(t, 3*time.Second, func() bool { return e.broker.Stats().Channels == 1 })
	var err error
	for err == nil {
		_, err = stuck.Raw()
	}
	if status := websocket.CloseStatus(err); status == websocket.StatusNormalClosure {
		t.Fatalf("stuck client closed normally")
	}
}

// TestSlowConsumerCloseCode: a client whose outbox overflows while its
// socket can still take a close frame learns why: 4008.
func TestSlowConsumerCloseCode(t *testing.T) {
	e := newEnv(t, "", &Config{OutboxFrames: 1})
	c := e.dial()
	c.Join("g")
	// The welcome and ack are written. Frames pushed back to back
	// overflow an outbox of one as soon as the writer has not taken the
	// previous one yet (at once, unless it runs between two pushes).
	e.srv.mu.Lock()
	var ss *session
	for s := range e.srv.sessions {
		ss = s
	}
	e.srv.mu.Unlock()
	for i := 0; i < 10_000 && !ss.out.isClosing(); i++ {
		ss.Receive(broker.Delivery{Frame: []byte(`{"type":"message","group":"g","data":1}`), Kind: broker.KindMessage})
	}
	var err error
	for err == nil {
		_, err = c.Raw()
	}
	if status := websocket.CloseStatus(err); status != CloseSlowConsumer {
		t.Fatalf("got %v, want close %d", err, CloseSlowConsumer)
	}
}

// TestOriginCheck: same-origin pages and allowed sites connect; a bare
// host pattern admits https pages only, a pattern with a scheme that
// scheme only; refusals are counted by reason.
func TestOriginCheck(t *testing.T) {
	e := newEnv(t, "", &Config{AllowedOrigins: []string{"*.example.com", "http://localhost:*"}})
	url := e.wsURL()
	dial := func(origin string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}})
		if err == nil {
			c.CloseNow()
		}
		return err
	}
	for _, origin := range []string{"https://evil.test", "http://app.example.com", "https://localhost:3000", "null", "https://example.com.evil.test"} {
		if err := dial(origin); err == nil {
			t.Errorf("page of %s accepted", origin)
		}
	}
	for _, origin := range []string{"https://app.example.com", "http://localhost:3000", "HTTPS://APP.EXAMPLE.COM"} {
		if err := dial(origin); err != nil {
			t.Errorf("allowed origin %s refused: %v", origin, err)
		}
	}
	if got := e.metric(`groupcast_upgrades_refused_total{reason="origin"}`); got != 5 {
		t.Errorf("origin refusals counted: %v, want 5", got)
	}
	if err := dial(e.http.URL); err != nil {
		t.Fatalf("same origin refused: %v", err)
	}
}

// TestShutdownCloses1012: Shutdown closes every socket with 1012, makes
// /readyz 503 and refuses new sockets.
func TestShutdownCloses1012(t *testing.T) {
	e := newEnv(t, "", nil)
	const n = 200
	clients := make([]*wstest.Client, n)
	for i := range clients {
		clients[i] = e.dial()
		clients[i].Join("all")
	}
	// Clients read, as browsers do, so they answer the close handshake.
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Raw()
			if status := websocket.CloseStatus(err); status != websocket.StatusServiceRestart {
				t.Errorf("got %v, want close 1012", err)
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("closed %d sockets in %v", n, time.Since(start))
	wg.Wait()
	resp, err := http.Get(e.http.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz after shutdown: %d", resp.StatusCode)
	}
	if e.broker.Stats().Channels != 0 {
		t.Fatal("channels left open")
	}
}

// TestShutdownDrains: with DrainPeriod, Shutdown spreads its 1012 closes
// over it, a small share at a time, and each close reason tells the
// client how long to spread its reconnect over.
func TestShutdownDrains(t *testing.T) {
	e := newEnv(t, "", &Config{DrainPeriod: time.Second})
	const n = 100
	var mu sync.Mutex
	var closedAt []time.Duration
	var wg sync.WaitGroup
	start := time.Now()
	for range n {
		c := e.dial()
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Raw()
			var ce websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.StatusServiceRestart || !strings.HasSuffix(ce.Reason, " reconnect_within_ms=1000") {
				t.Errorf("got %v, want close 1012 with reconnect_within_ms=1000", err)
			}
			mu.Lock()
			closedAt = append(closedAt, time.Since(start))
			mu.Unlock()
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start = time.Now()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	slices.Sort(closedAt)
	if span := closedAt[n-1] - closedAt[0]; span < 700*time.Millisecond {
		t.Fatalf("closes spread over %v, want about 1s", span)
	}
	for i := range closedAt { // no 100 ms holds more than a fifth of them
		j := i
		for j < n && closedAt[j]-closedAt[i] < 100*time.Millisecond {
			j++
		}
		if j-i > n/5 {
			t.Fatalf("%d of %d sockets closed within 100 ms from %v", j-i, n, closedAt[i])
		}
	}
}

// TestNATSDown: with the external NATS gone, /readyz is 503, publishes and
// joins are refused as unavailable, and pings still work.
func TestNATSDown(t *testing.T) {
	ns := natstest.Start(t, -1)
	e := newEnv(t, ns.ClientURL(), nil)
	c := e.dial()
	ns.Shutdown()
	ns.WaitForShutdown()
	waitFor(t, 5*time.Second, func() bool {
		resp, err := http.Get(e.http.URL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if status, body := e.post("/api/groups/g/messages", `1`); status != http.StatusServiceUnavailable || !strings.Contains(body, CodeUnavailable) {
		t.Fatalf("publish while down: %d %s", status, body)
	}
	if m := c.Call(map[string]any{"type": "send", "group": "g", "data": 1}); m["code"] != CodeUnavailable {
		t.Fatalf("send while down: %v", m)
	}
	if m := c.Call(map[string]any{"type": "ping"}); m["type"] != "pong" {
		t.Fatalf("ping while down: %v", m)
	}
}

func TestReadCloseError(t *testing.T) {
	// A client that goes away without a close frame is cleaned up.
	e := newEnv(t, "", nil)
	c := e.dial()
	c.Join("g")
	c.Conn.CloseNow()
	waitFor(t, 5*time.Second, func() bool { return e.broker.Stats().Channels == 0 && e.broker.Stats().Groups == 0 })
}

// TestNATSLostClosesSockets: when NATS stays unavailable past the grace,
// every socket is closed with 1012 so its client reconnects where
// messages flow, and new sockets are refused with 503.
func TestNATSLostClosesSockets(t *testing.T) {
	ns := natstest.Start(t, -1)
	e := newEnv(t, ns.ClientURL(), &Config{NATSLossGrace: 300 * time.Millisecond})
	c := e.dial()
	c.Join("g")
	ns.Shutdown()
	ns.WaitForShutdown()
	start := time.Now()
	_, err := c.Raw()
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusServiceRestart || ce.Reason != "messaging unavailable" {
		t.Fatalf("socket ended with %v, want 1012 messaging unavailable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("closed after %v", d)
	}
	if status, body := e.dialStatus("", nil); status != http.StatusServiceUnavailable {
		t.Fatalf("new socket while NATS is down: %d %s", status, body)
	}
}

// TestWriteDelay: with WriteDelay, deliveries that arrive within it go out
// in one WebSocket message, while replies to the client are not held.
func TestWriteDelay(t *testing.T) {
	const delay = 300 * time.Millisecond
	e := newEnv(t, "", &Config{WriteDelay: delay})
	c := e.dial()
	start := time.Now()
	c.Join("g")
	if took := time.Since(start); took >= delay {
		t.Errorf("join ack after %v: held like a delivery", took)
	}
	for i := range 3 {
		if err := e.broker.GroupSend("g", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	start = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, p, err := c.Conn.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(p), "\n") + 1; lines != 3 {
		t.Errorf("%d deliveries in the first message %q, want all 3", lines, p)
	}
	if took := time.Since(start); took < delay/2 {
		t.Errorf("deliveries written after %v, want them held about %v", took, delay)
	}
}

// TestImmediateWritesKeepOrder: deliveries to a small group are written
// on the dispatching goroutine while the socket takes them, and queued
// for the connection's writer once it does not (whole, or the part of a
// message it did not take); a client that reads only after megabytes were
// sent gets every message whole and in order.
func TestImmediateWritesKeepOrder(t *testing.T) {
	e := newEnv(t, "", &Config{OutboxFrames: 10_000, OutboxBytes: 64 << 20})
	c := e.dial()
	c.Join("small")
	const n = 3000 // 12 MB: more than the socket buffers hold
	pad := strings.Repeat("x", 4000)
	for i := range n {
		if err := e.broker.GroupSend("small", []byte(fmt.Sprintf(`{"i":%d,"pad":%q}`, i, pad))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		p, err := c.Raw()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		var m struct {
			Type string
			Data struct{ I int }
		}
		if err := json.Unmarshal(p, &m); err != nil || m.Type != "message" || m.Data.I != i {
			t.Fatalf("message %d: %.80s (%v)", i, p, err)
		}
	}
}
