package web

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/groupcast/groupcast/internal/natstest"
)

// TestSSEStream: a stream answers as an event stream whose first event is
// the welcome with an unguessable secret; POSTed frames are handled as
// WebSocket frames (join, ping), their answers and the group's deliveries
// come over the stream, and the stream counts as an sse connection.
func TestSSEStream(t *testing.T) {
	e := newEnv(t, "", nil)
	c := e.openSSE("")
	h := c.resp.Header
	for name, want := range map[string]string{
		"Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if !c.resp.Close || len(c.resp.TransferEncoding) != 1 || c.resp.TransferEncoding[0] != "chunked" {
		t.Errorf("over HTTP/1.1 the stream is chunked and ends with its connection: close %v, %v", c.resp.Close, c.resp.TransferEncoding)
	}
	if c.Welcome["node"] != e.broker.Node() || c.Welcome["region"] != "test-region" {
		t.Errorf("welcome %v", c.Welcome)
	}
	secret, err := base64.RawURLEncoding.DecodeString(c.secret())
	if err != nil || len(secret) < 16 {
		t.Fatalf("secret %q: %d bytes, %v; want base64url of at least 128 bits", c.secret(), len(secret), err)
	}
	if other := e.openSSE(""); other.secret() == c.secret() || other.channel() == c.channel() {
		t.Fatal("two streams share a secret or a channel")
	}

	if f := c.call(e, `{"type":"join","group":"room","id":1}`); f["type"] != "ack" || f["id"] != 1.0 {
		t.Fatalf("join answered %v", f)
	}
	if status, _ := e.post("/api/groups/room/messages", `{"text":"hi"}`); status != http.StatusAccepted {
		t.Fatalf("publish: %d", status)
	}
	if f := c.frame(); f["type"] != "message" || f["group"] != "room" || f["data"].(map[string]any)["text"] != "hi" {
		t.Fatalf("delivery %v", f)
	}
	// Several frames in one body, answered in order.
	if status, body := c.post(e, `{"type":"ping","id":"a"}`+"\n"+`{"type":"ping","id":"b"}`+"\n"); status != http.StatusAccepted || body != "{}" {
		t.Fatalf("POST of two frames: %d %s", status, body)
	}
	for _, id := range []string{"a", "b"} {
		if f := c.frame(); f["type"] != "pong" || f["id"] != id {
			t.Fatalf("got %v, want pong %s", f, id)
		}
	}
	if got := e.metric(`groupcast_connections{transport="sse"}`); got != 2 {
		t.Errorf(`groupcast_connections{transport="sse"} = %v, want 2`, got)
	}
	if got := e.metric(`groupcast_connections{transport="ws"}`); got != 0 {
		t.Errorf(`groupcast_connections{transport="ws"} = %v, want 0`, got)
	}
}

// TestSSEHeartbeat: an idle stream gets a comment at the keepalive
// interval, written at once: no writer goroutine starts for it.
func TestSSEHeartbeat(t *testing.T) {
	e := newEnv(t, "", &Config{PingInterval: 50 * time.Millisecond})
	c := e.openSSE("")
	for range 3 {
		select {
		case <-c.comment:
		case <-time.After(5 * time.Second):
			t.Fatal("no heartbeat")
		}
	}
	e.srv.mu.Lock()
	ss := e.srv.byChannel[c.channel()]
	e.srv.mu.Unlock()
	ss.out.mu.Lock()
	starts, running := ss.out.bursts, ss.out.running
	ss.out.mu.Unlock()
	if starts != 0 || running {
		t.Fatalf("%d writer goroutines started (one running: %v) for 3 heartbeats; want none", starts, running)
	}
}

// TestSSEPostForwarded: frames POSTed to an instance that does not hold
// the stream reach it over NATS, in order, and their answers come over the
// stream; a stream that is gone, a missing or wrong secret are refused,
// through either instance.
func TestSSEPostForwarded(t *testing.T) {
	url := natstest.Start(t, -1).ClientURL()
	a, b := newEnv(t, url, nil), newEnv(t, url, nil)
	c := a.openSSE("")
	if f := c.call(b, `{"type":"join","group":"far","id":1}`); f["type"] != "ack" {
		t.Fatalf("join through the other instance answered %v", f)
	}
	if status, _ := b.post("/api/groups/far/messages", `7`); status != http.StatusAccepted {
		t.Fatalf("publish: %d", status)
	}
	if f := c.frame(); f["type"] != "message" || f["data"] != 7.0 {
		t.Fatalf("delivery %v", f)
	}
	var frames []string
	for i := range 10 {
		frames = append(frames, `{"type":"ping","id":`+string(rune('0'+i))+`}`)
	}
	if status, body := c.post(b, strings.Join(frames, "\n")); status != http.StatusAccepted {
		t.Fatalf("POST of ten frames: %d %s", status, body)
	}
	for i := range 10 {
		if f := c.frame(); f["type"] != "pong" || f["id"] != float64(i) {
			t.Fatalf("frame %d: %v", i, f)
		}
	}

	for _, e := range []*env{a, b} {
		status, body := e.post("/sse/"+c.channel(), `{"type":"ping"}`, SecretHeader, c.secret()+"x")
		if status != http.StatusForbidden || !strings.Contains(body, `"code":"forbidden"`) {
			t.Errorf("wrong secret: %d %s", status, body)
		}
		status, body = e.post("/sse/"+c.channel(), `{"type":"ping"}`)
		if status != http.StatusForbidden || !strings.Contains(body, `"code":"forbidden"`) {
			t.Errorf("no secret: %d %s", status, body)
		}
		for _, channel := range []string{a.broker.Node() + ".zzz", "nosuchnode.1", "not-a-channel"} {
			status, body = e.post("/sse/"+channel, `{"type":"ping"}`, SecretHeader, c.secret())
			if status != http.StatusNotFound || !strings.Contains(body, `"code":"not_found"`) {
				t.Errorf("POST for %s: %d %s, want 404 not_found", channel, status, body)
			}
		}
	}
	c.close()
	waitFor(t, 5*time.Second, func() bool { return a.srv.openSessions() == 0 })
	for _, e := range []*env{a, b} {
		status, body := c.post(e, `{"type":"ping"}`)
		if status != http.StatusNotFound || !strings.Contains(body, `"code":"not_found"`) {
			t.Errorf("POST for a stream that ended: %d %s, want 404 not_found", status, body)
		}
	}
	// A WebSocket's channel is no stream either.
	ws := a.dial()
	if status, _ := b.post("/sse/"+ws.Channel(), `{"type":"ping"}`, SecretHeader, c.secret()); status != http.StatusNotFound {
		t.Errorf("POST for a WebSocket's channel: %d, want 404", status)
	}
}

// TestSSEPostUnavailable: with NATS down, a POST that must be forwarded
// is refused as unavailable (retry), while one for a stream of the same
// instance still reaches it.
func TestSSEPostUnavailable(t *testing.T) {
	ns := natstest.Start(t, -1)
	a, b := newEnv(t, ns.ClientURL(), nil), newEnv(t, ns.ClientURL(), nil)
	c := a.openSSE("")
	ns.Shutdown()
	waitFor(t, 5*time.Second, func() bool { return b.broker.Ready() != nil })
	status, body := c.post(b, `{"type":"ping"}`)
	if status != http.StatusServiceUnavailable || !strings.Contains(body, `"code":"unavailable"`) {
		t.Fatalf("forwarded POST with NATS down: %d %s, want 503 unavailable", status, body)
	}
	if f := c.call(a, `{"type":"ping","id":"here"}`); f["type"] != "pong" {
		t.Fatalf("local POST with NATS down: %v", f)
	}
}

// TestSSEOverHTTP2: where the connection cannot be taken over (HTTP/2),
// the stream goes through the response, flushed event by event, with the
// same frames, close event and end.
func TestSSEOverHTTP2(t *testing.T) {
	e := newEnv(t, "", nil)
	h2 := httptest.NewUnstartedServer(e.srv.Handler())
	h2.EnableHTTP2 = true
	h2.StartTLS()
	defer h2.Close()
	c, status, body := e.trySSEVia(h2.Client(), h2.URL, "")
	if c == nil {
		t.Fatalf("GET /sse over HTTP/2: %d %s", status, body)
	}
	if c.resp.ProtoMajor != 2 || c.resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%s, %v", c.resp.Proto, c.resp.Header)
	}
	c.readWelcome()
	if f := c.call(e, `{"type":"join","group":"h2","id":1}`); f["type"] != "ack" {
		t.Fatalf("join: %v", f)
	}
	if status, _ := e.post("/api/groups/h2/messages", `"x"`); status != http.StatusAccepted {
		t.Fatalf("publish: %d", status)
	}
	if f := c.frame(); f["data"] != "x" {
		t.Fatalf("delivery %v", f)
	}
	if status, _ := e.post("/api/channels/"+c.channel()+"/disconnect", ""); status != http.StatusAccepted {
		t.Fatalf("disconnect: %d", status)
	}
	if f := c.closeEvent(); f["code"] != float64(CloseDisconnected) {
		t.Fatalf("close event %v", f)
	}
	waitFor(t, 5*time.Second, func() bool { return e.srv.openSessions() == 0 })

	// A client that goes ends its session.
	gone, _, _ := e.trySSEVia(h2.Client(), h2.URL, "")
	gone.readWelcome()
	gone.close()
	waitFor(t, 5*time.Second, func() bool { return e.srv.openSessions() == 0 })
}

// TestSSEIdleStreamGoroutines: over HTTP/1.1 an idle stream keeps one
// goroutine, its session's reader: no request goroutine waits, no
// handler of posted frames stays once they are handled.
func TestSSEIdleStreamGoroutines(t *testing.T) {
	e := newEnv(t, "", nil)
	const n = 5
	for range n {
		c := e.openSSE("")
		c.call(e, `{"type":"ping"}`)
	}
	count := func(fn string) int {
		var b strings.Builder
		pprof.Lookup("goroutine").WriteTo(&b, 2) // one stack per goroutine
		return strings.Count(b.String(), fn)
	}
	waitFor(t, 5*time.Second, func() bool {
		return count("web.(*Server).serveSSE") == 0 && count("web.(*postQueue).handle") == 0
	})
	if got := count("web.(*session).awaitStream"); got != n {
		t.Fatalf("%d readers for %d streams", got, n)
	}
}

// TestSSEAnswersAtOnce: on a stream that has its connection, the welcome,
// the answers to posted frames and a group's deliveries are written at
// once, as on a WebSocket, by the goroutine that has them: no writer
// goroutine is started for any of them (the outbox counts every start).
// Their events arrive whole, in order, in the chunked body.
func TestSSEAnswersAtOnce(t *testing.T) {
	e := newEnv(t, "", nil)
	c := e.openSSE("")
	e.srv.mu.Lock()
	ss := e.srv.byChannel[c.channel()]
	e.srv.mu.Unlock()
	if ss == nil || ss.sse.sock.rc == nil {
		t.Fatal("the stream has no socket of its own")
	}
	if f := c.call(e, `{"type":"join","group":"now","id":1}`); f["type"] != "ack" || f["id"] != 1.0 {
		t.Fatalf("join: %v", f)
	}
	for i := 2; i < 6; i++ {
		if f := c.call(e, fmt.Sprintf(`{"type":"ping","id":%d}`, i)); f["type"] != "pong" || f["id"] != float64(i) {
			t.Fatalf("ping %d: %v", i, f)
		}
	}
	if status, body := e.post("/api/groups/now/messages", `{"n":1}`); status != http.StatusAccepted {
		t.Fatalf("publish: %d %s", status, body)
	}
	if f := c.frame(); f["type"] != "message" || f["group"] != "now" {
		t.Fatalf("delivery: %v", f)
	}
	ss.out.mu.Lock()
	starts, running := ss.out.bursts, ss.out.running
	ss.out.mu.Unlock()
	if starts != 0 || running {
		t.Fatalf("%d writer goroutines started (one running: %v) for the welcome, 5 answers and a delivery; want none", starts, running)
	}
}
