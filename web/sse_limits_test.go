package web

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/protocol"
)

// sessionOf returns the session on channel.
func (e *env) sessionOf(channel string) *session {
	e.t.Helper()
	e.srv.mu.Lock()
	defer e.srv.mu.Unlock()
	ss := e.srv.byChannel[channel]
	if ss == nil {
		e.t.Fatalf("no session on %s", channel)
	}
	return ss
}

// TestSSEBadBodies: a malformed or refused frame in a POST gets the error
// a WebSocket gets for it, with the same code, over the stream, and the
// stream stays usable; a body the server cannot take is refused whole.
func TestSSEBadBodies(t *testing.T) {
	e := newEnv(t, "", &Config{MaxFrameBytes: 1024, FramesPerSecond: 1000})
	c := e.openSSE("")
	ws := e.dial()
	for _, frame := range []string{
		`not json`, `[1]`, `{"type":5}`, `{}`, `{"type":"join","group":"bad..name","id":3}`,
		`{"type":"send","group":"g","id":4}`, `{"type":"ping","id":{}}`, ` `,
	} {
		ws.Write(frame)
		want := ws.Next()
		got := c.call(e, frame)
		if got["type"] != "error" || got["code"] != want["code"] || fmt.Sprint(got["id"]) != fmt.Sprint(want["id"]) {
			t.Errorf("%s: over SSE %v, over a WebSocket %v", frame, got, want)
		}
	}
	// An empty line between two frames is an empty frame, as an empty
	// WebSocket message would be.
	if status, _ := c.post(e, `{"type":"ping","id":1}`+"\n\n"+`{"type":"ping","id":2}`); status != http.StatusAccepted {
		t.Fatalf("POST with an empty line: %d", status)
	}
	for _, want := range []string{"pong", CodeInvalidJSON, "pong"} {
		if f := c.frame(); f["type"] != want && f["code"] != want {
			t.Fatalf("got %v, want %s", f, want)
		}
	}

	refused := func(body string, status int, code string) {
		t.Helper()
		got, answer := c.post(e, body)
		if got != status || !strings.Contains(answer, `"code":"`+code+`"`) {
			t.Errorf("%.40q...: %d %s, want %d %s", body, got, answer, status, code)
		}
	}
	refused(`{"type":"ping","pad":"`+strings.Repeat("x", 1024)+`"}`, http.StatusRequestEntityTooLarge, CodeTooLarge)
	refused(strings.Repeat(`{"type":"ping"}`+"\n", 2001), http.StatusTooManyRequests, CodeRateLimited)
	refused(strings.Repeat("x", 2<<20), http.StatusRequestEntityTooLarge, CodeTooLarge)
	refused("", http.StatusBadRequest, CodeInvalidFrame)
	// Nothing of the refused bodies was handled.
	if f := c.call(e, `{"type":"ping","id":"last"}`); f["type"] != "pong" || f["id"] != "last" {
		t.Fatalf("after refused bodies: %v", f)
	}
}

// TestSSEFrameRate: POSTed frames count against the frame rate as a
// WebSocket's do.
func TestSSEFrameRate(t *testing.T) {
	e := newEnv(t, "", &Config{FramesPerSecond: 5})
	c := e.openSSE("")
	frames := strings.TrimSuffix(strings.Repeat(`{"type":"ping"}`+"\n", 10), "\n")
	if status, body := c.post(e, frames); status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", status, body)
	}
	if status, _ := c.post(e, `{"type":"ping","id":"over"}`); status != http.StatusAccepted {
		t.Fatalf("POST: %d", status)
	}
	for range 10 {
		if f := c.frame(); f["type"] != "pong" {
			t.Fatalf("within the burst: %v", f)
		}
	}
	if f := c.frame(); f["code"] != CodeRateLimited || f["id"] != "over" {
		t.Fatalf("over the rate: %v", f)
	}
}

// stuckFrames is a Consumer whose own frame type "stuck" waits for release.
type stuckFrames struct {
	DefaultConsumer
	release chan struct{}
}

func (c stuckFrames) Frame(context.Context, *Conn, string, json.RawMessage) (any, error) {
	<-c.release
	return "done", nil
}

// TestSSEInboxBound: a stream takes a bounded number of POSTs ahead of
// its reader; more are refused whole with 429, and what was taken is
// handled in order once the reader goes on.
func TestSSEInboxBound(t *testing.T) {
	release := make(chan struct{})
	e := newEnv(t, "", &Config{ClientSend: true, Consumer: stuckFrames{release: release}})
	c := e.openSSE("")
	if status, _ := c.post(e, `{"type":"stuck","id":"s"}`); status != http.StatusAccepted {
		t.Fatalf("POST: %d", status)
	}
	q := &e.sessionOf(c.channel()).sse.posts
	waitFor(t, 5*time.Second, func() bool { // it is being handled
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.handling && len(q.bodies) == 0
	})
	for i := range sseQueued {
		if status, body := c.post(e, fmt.Sprintf(`{"type":"ping","id":%d}`, i)); status != http.StatusAccepted {
			t.Fatalf("POST %d within the bound: %d %s", i, status, body)
		}
	}
	if status, body := c.post(e, `{"type":"ping"}`); status != http.StatusTooManyRequests || !strings.Contains(body, CodeRateLimited) {
		t.Fatalf("POST over the bound: %d %s, want 429", status, body)
	}
	close(release)
	if f := c.frame(); f["type"] != "reply" || f["id"] != "s" {
		t.Fatalf("got %v, want the reply", f)
	}
	for i := range sseQueued {
		if f := c.frame(); f["type"] != "pong" || f["id"] != float64(i) {
			t.Fatalf("got %v, want pong %d", f, i)
		}
	}
}

// TestSSESlowConsumerClose: a stream whose outbox overflows learns why, in
// the close event (4008), and then its response ends.
func TestSSESlowConsumerClose(t *testing.T) {
	e := newEnv(t, "", &Config{OutboxFrames: 1})
	c := e.openSSE("")
	ss := e.sessionOf(c.channel())
	for i := 0; i < 10_000 && !ss.out.isClosing(); i++ {
		ss.Receive(broker.Delivery{Frame: []byte(`{"type":"message","group":"g","data":1}`), Kind: broker.KindMessage})
	}
	if f := c.closeEvent(); f["code"] != float64(CloseSlowConsumer) || f["reason"] != "slow consumer" {
		t.Fatalf("close event %v, want 4008", f)
	}
	waitFor(t, 5*time.Second, func() bool { return e.srv.openSessions() == 0 })
}

// TestSSEStuckClientDropped: a client that stops reading during a flood
// is let go: its outbox overflows and its blocked write is cut, so that
// its session ends.
func TestSSEStuckClientDropped(t *testing.T) {
	e := newEnv(t, "", &Config{OutboxFrames: 1024, OutboxBytes: 256 << 10})
	conn, err := net.Dial("tcp", e.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /sse HTTP/1.1\r\nHost: %s\r\n\r\n", e.http.Listener.Addr())
	rd := bufio.NewReader(conn)
	var welcome struct{ Channel, Secret string }
	for welcome.Secret == "" {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			json.Unmarshal([]byte(data), &welcome)
		}
	}
	if status, body := e.post("/sse/"+welcome.Channel, `{"type":"join","group":"flood"}`, SecretHeader, welcome.Secret); status != http.StatusAccepted {
		t.Fatalf("join: %d %s", status, body)
	}
	waitFor(t, 5*time.Second, func() bool { return e.broker.Stats().Groups == 1 })
	// The client reads no more. 20 MB: more than socket buffers hold.
	payload := []byte(`{"pad":"` + strings.Repeat("x", 1000) + `"}`)
	for i := 0; i < 20_000 && e.srv.openSessions() > 0; i++ {
		if err := e.broker.GroupSend("flood", payload); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, func() bool { return e.srv.openSessions() == 0 })
}

// TestSSEMaxConnections: streams and WebSockets share MAX_CONNECTIONS,
// and a refused stream gets what a refused WebSocket gets.
func TestSSEMaxConnections(t *testing.T) {
	e := newEnv(t, "", &Config{MaxConnections: 1})
	c := e.openSSE("")
	wsStatus, wsBody := e.dialStatus("", nil)
	_, status, body := e.trySSE("")
	if status != http.StatusServiceUnavailable || status != wsStatus || body != wsBody {
		t.Fatalf("stream over the limit: %d %s; WebSocket: %d %s", status, body, wsStatus, wsBody)
	}
	c.close()
	waitFor(t, 5*time.Second, func() bool { return e.srv.openSessions() == 0 })
	waitFor(t, 5*time.Second, func() bool { status, _ := e.dialStatus("", nil); return status == 0 })
}

// TestSSERefusalsAsWebSocket: a refused stream gets the status and body a
// refused WebSocket gets (origin, token); an allowed cross-site page
// gets the CORS headers on the stream, the POSTs and their preflight.
func TestSSERefusalsAsWebSocket(t *testing.T) {
	e := authEnv(t, &Config{AllowedOrigins: []string{"https://app.example.com"}})
	for _, c := range []struct {
		query  string
		header []string
	}{
		{"", nil},
		{"?token=junk", nil},
		{"?token=" + sign(t, claims("u", []string{"*"}, nil, time.Hour)), []string{"Origin", "https://evil.test"}},
	} {
		h := http.Header{}
		for i := 0; i+1 < len(c.header); i += 2 {
			h.Set(c.header[i], c.header[i+1])
		}
		wsStatus, wsBody := e.dialStatus(c.query, h)
		_, status, body := e.trySSE(c.query, c.header...)
		if status == 0 || status != wsStatus || body != wsBody {
			t.Errorf("%s %v: stream %d %s; WebSocket %d %s", c.query, c.header, status, body, wsStatus, wsBody)
		}
	}

	origin := "https://app.example.com"
	c := e.openSSE("?token="+sign(t, claims("u", []string{"*"}, nil, time.Hour)), "Origin", origin)
	if c.resp.Header.Get("Access-Control-Allow-Origin") != origin || c.resp.Header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Errorf("stream's CORS headers: %v", c.resp.Header)
	}
	if c.Welcome["user"] != "u" {
		t.Errorf("welcome %v: the token's user is missing", c.Welcome)
	}
	req, _ := http.NewRequest("OPTIONS", e.http.URL+"/sse/"+c.channel(), nil)
	req.Header.Set("Origin", origin)
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "x-groupcast-secret,content-type")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	allowed := strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers"))
	if resp.StatusCode/100 != 2 || resp.Header.Get("Access-Control-Allow-Origin") != origin ||
		!strings.Contains(allowed, "x-groupcast-secret") || !strings.Contains(allowed, "content-type") ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "POST") {
		t.Errorf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	req, _ = http.NewRequest("POST", e.http.URL+"/sse/"+c.channel(), strings.NewReader(`{"type":"ping","id":1}`))
	req.Header.Set("Origin", origin)
	req.Header.Set(SecretHeader, c.secret())
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Access-Control-Allow-Origin") != origin ||
		resp.Header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Errorf("POST from the allowed page: %d %v", resp.StatusCode, resp.Header)
	}
	if f := c.frame(); f["type"] != "pong" {
		t.Fatalf("answer %v", f)
	}
	// A page of another site may not post, even with the secret.
	if status, _ := e.post("/sse/"+c.channel(), `{"type":"ping"}`, SecretHeader, c.secret(), "Origin", "https://evil.test"); status != http.StatusForbidden {
		t.Errorf("POST from another site: %d, want 403", status)
	}
}

// TestSSEClosesAsWebSocket: the server's reasons to close a connection
// end a stream with the WebSocket's code and reason in its close event:
// a token's expiry (4001), a backend's disconnect (4003), the age cap
// (1012).
func TestSSEClosesAsWebSocket(t *testing.T) {
	// A token's exp is in whole seconds: one made to last 2 s ends 1–2 s
	// from now, before the age cap (2.7–3 s) ends its stream.
	e := authEnv(t, &Config{Auth: AuthConfig{Leeway: time.Millisecond}, MaxConnectionAge: 3 * time.Second})
	token := func(ttl time.Duration) string { return "?token=" + sign(t, claims("u", []string{"*"}, nil, ttl)) }

	expiring, disconnected, aged := e.openSSE(token(2*time.Second)), e.openSSE(token(time.Hour)), e.openSSE(token(time.Hour))
	if status, body := e.post("/api/channels/"+disconnected.channel()+"/disconnect", ""); status != http.StatusAccepted {
		t.Fatalf("disconnect: %d %s", status, body)
	}
	for _, c := range []struct {
		stream *sseClient
		code   int
		reason string
	}{
		{disconnected, protocol.CloseDisconnected, "disconnected"},
		{expiring, protocol.CloseTokenExpired, "token expired"},
		{aged, protocol.CloseServiceRestart, "max connection age"},
	} {
		if f := c.stream.closeEvent(); f["code"] != float64(c.code) || f["reason"] != c.reason {
			t.Errorf("close event %v, want %d %q", f, c.code, c.reason)
		}
	}
}

// TestSSEShutdown: Shutdown ends every stream with the planned
// reconnect's close event, 1012 and reconnect_within_ms.
func TestSSEShutdown(t *testing.T) {
	e := newEnv(t, "", &Config{DrainPeriod: 500 * time.Millisecond})
	streams := []*sseClient{e.openSSE(""), e.openSSE(""), e.openSSE("")}
	ws := e.dial()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(ctx) }()
	for _, c := range streams {
		f := c.closeEvent()
		if f["code"] != float64(protocol.CloseServiceRestart) || f["reconnect_within_ms"] != 500.0 ||
			f["reason"] != protocol.ReconnectReason("server restart", 500*time.Millisecond) {
			t.Errorf("close event %v, want 1012 with reconnect_within_ms 500", f)
		}
	}
	ws.Raw()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// As a WebSocket then, a stream opens only to be closed with 1012.
	late, status, _ := e.trySSE("")
	if late == nil {
		t.Fatalf("a stream after Shutdown: %d", status)
	}
	if f := late.closeEvent(); f["code"] != float64(protocol.CloseServiceRestart) {
		t.Errorf("a stream after Shutdown: %v, want 1012", f)
	}
}

// TestSSEResume: a resume over a stream gets the replay (chunks of
// several frames, one event each) and then live messages, nothing lost,
// nothing twice.
func TestSSEResume(t *testing.T) {
	e := newEnvBroker(t, broker.Config{Policies: chatPolicies}, nil)
	var epoch string
	for i := range 50 {
		receipt, err := e.broker.GroupPublish("chat.r", []byte(fmt.Sprint(i)), "")
		if err != nil {
			t.Fatal(err)
		}
		epoch = receipt.Epoch
	}
	c := e.openSSE("")
	if status, body := c.post(e, `{"type":"join","group":"chat.r","id":1,"since":{"offset":10,"epoch":"`+epoch+`"}}`); status != http.StatusAccepted {
		t.Fatalf("resume: %d %s", status, body)
	}
	next := 10
	for {
		f := c.frame()
		if f["type"] == "ack" {
			if f["recovered"] != true {
				t.Fatalf("ack %v, want recovered", f)
			}
			break
		}
		if f["type"] != "message" || f["data"] != float64(next) || f["offset"] != float64(next+1) {
			t.Fatalf("replayed %v, want data %d at offset %d", f, next, next+1)
		}
		next++
	}
	if next != 50 {
		t.Fatalf("replayed up to %d, want 50", next)
	}
	if _, err := e.broker.GroupPublish("chat.r", []byte(`"live"`), ""); err != nil {
		t.Fatal(err)
	}
	if f := c.frame(); f["data"] != "live" {
		t.Fatalf("live after the replay: %v", f)
	}
}

// TestSSEInboxBytes: the bodies waiting for a stream's reader are bounded
// in bytes too, by MAX_BODY_BYTES.
func TestSSEInboxBytes(t *testing.T) {
	release := make(chan struct{})
	e := newEnv(t, "", &Config{ClientSend: true, MaxBodyBytes: 2048, MaxFrameBytes: 2048, Consumer: stuckFrames{release: release}})
	c := e.openSSE("")
	pad := func(n int) string { return `{"type":"ping","pad":"` + strings.Repeat("x", n) + `"}` }
	if status, _ := c.post(e, `{"type":"stuck"}`); status != http.StatusAccepted {
		t.Fatalf("POST: %d", status)
	}
	if status, body := c.post(e, pad(1500)); status != http.StatusAccepted {
		t.Fatalf("POST within the bytes: %d %s", status, body)
	}
	if status, body := c.post(e, pad(600)); status != http.StatusTooManyRequests {
		t.Fatalf("POST past the bytes waiting: %d %s, want 429", status, body)
	}
	close(release)
	c.frame() // the reply
	if f := c.frame(); f["type"] != "pong" {
		t.Fatalf("got %v, want the pong", f)
	}
	q := &e.sessionOf(c.channel()).sse.posts
	waitFor(t, 5*time.Second, func() bool { // the pong goes out before the body is done
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.bytes == 0
	})
	if f := c.call(e, pad(1500)); f["type"] != "pong" {
		t.Fatalf("once handled, the bytes are free again: %v", f)
	}
}
