package web

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/groupcast/groupcast/internal/wstest"
)

// TestHookHeaders: the configured headers of the upgrade request reach
// every hook call of that connection verbatim; others, and the ones the
// hook call sets itself, do not; oversized ones refuse the upgrade.
func TestHookHeaders(t *testing.T) {
	backend := newHookBackend(t, func(call hookCall) (int, string) { return 200, `{}` })
	e := newEnv(t, "", &Config{ClientSend: true, Hooks: HookConfig{
		ConnectURL: backend.URL, JoinURL: backend.URL, SendURL: backend.URL, Secret: "s",
		Headers: []string{"cookie", "Accept-Language", "Authorization"},
	}})
	const cookie = `sessionid=abc123; csrftoken="x y"`
	c := wstest.Dial(t, e.wsURL(), http.Header{
		"Cookie": {cookie}, "Accept-Language": {"fr", "en;q=0.5"}, "X-Other": {"secret"},
		"Authorization": {"Bearer from-the-browser"},
	})
	c.Join("room.1")
	c.Call(map[string]any{"type": "send", "group": "room.1", "data": 1})

	backend.mu.Lock()
	defer backend.mu.Unlock()
	if len(backend.calls) != 3 {
		t.Fatalf("%d hook calls, want connect, join and send", len(backend.calls))
	}
	for i, h := range backend.headers {
		event := backend.calls[i].Event
		if got := h.Values("Cookie"); len(got) != 1 || got[0] != cookie {
			t.Errorf("%s: Cookie %q, want %q", event, got, cookie)
		}
		if got := h.Values("Accept-Language"); strings.Join(got, "|") != "fr|en;q=0.5" {
			t.Errorf("%s: Accept-Language %q", event, got)
		}
		if h.Get("X-Other") != "" {
			t.Errorf("%s: a header not configured was forwarded", event)
		}
		if h.Get("Authorization") != "Bearer s" {
			t.Errorf("%s: Authorization %q, want the hook secret", event, h.Get("Authorization"))
		}
	}

	status, body := e.dialStatus("", http.Header{"Cookie": {strings.Repeat("a", maxHookHeaderBytes)}})
	if status != http.StatusRequestEntityTooLarge || !strings.Contains(body, CodeTooLarge) {
		t.Fatalf("oversized cookie: %d %s", status, body)
	}
}

func TestCheckHookHeaders(t *testing.T) {
	if err := CheckHookHeaders([]string{"Cookie", "x-forwarded-user", "Accept-Language"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"authorization", "Content-Length", "X-Groupcast-Token", "Sec-WebSocket-Key", "Host", "bad header", ""} {
		if err := CheckHookHeaders([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestReceiveHook: frame types of the application's own go to the
// receive hook as event "receive" with the whole frame; its answer is the
// client's reply, or a refusal. A Go consumer's own types stay its own.
func TestReceiveHook(t *testing.T) {
	backend := newHookBackend(t, func(call hookCall) (int, string) {
		var frame struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		json.Unmarshal(call.Data, &frame)
		switch frame.Type {
		case "chat.echo":
			return 200, `{"reply":{"user":"` + call.User + `","text":"` + frame.Text + `"}}`
		case "chat.nope":
			return 200, `{"error":{"code":"nope","message":"not now"}}`
		case "chat.fails":
			return 500, `<html>Server Error</html>`
		case "chat.garbled":
			return 200, `{"reply":`
		}
		return 200, `{}`
	})
	e := newEnv(t, "", &Config{Consumer: &shouting{}, Hooks: HookConfig{
		ReceiveURL: backend.URL, Headers: []string{"Cookie"},
	}})
	c := wstest.Dial(t, e.wsURL()+"?name=ada", http.Header{"Cookie": {"sessionid=s1"}})

	m := c.Call(map[string]any{"type": "chat.echo", "text": "hi"})
	if m["type"] != "reply" || fmt.Sprint(m["data"]) != "map[text:hi user:ada]" {
		t.Fatalf("echo: %v", m)
	}
	if m := c.Call(map[string]any{"type": "chat.quiet"}); m["type"] != "reply" || m["data"] != nil {
		t.Fatalf("an answer without a reply: %v", m)
	}
	if m := c.Call(map[string]any{"type": "whoami"}); m["type"] != "reply" || fmt.Sprint(m["data"]) != "map[groups:[lobby] user:ada]" {
		t.Fatalf("the Go consumer's own type: %v", m)
	}
	for typ, code := range map[string]string{
		"chat.nope": "nope", "chat.fails": CodeUnavailable, "chat.garbled": CodeUnavailable,
		"bad type": CodeInvalidType, strings.Repeat("x", 65): CodeInvalidType,
	} {
		if m := c.Call(map[string]any{"type": typ}); m["type"] != "error" || m["code"] != code {
			t.Errorf("%s: %v, want %s", typ, m, code)
		}
	}

	backend.mu.Lock()
	defer backend.mu.Unlock()
	if len(backend.calls) != 5 { // echo, quiet, nope, fails (not retried), garbled
		t.Fatalf("%d receive calls, want 5", len(backend.calls))
	}
	for i, call := range backend.calls {
		if call.Event != "receive" || call.User != "ada" || call.Channel != c.Channel() {
			t.Errorf("call %+v", call)
		}
		if backend.headers[i].Get("Cookie") != "sessionid=s1" {
			t.Errorf("receive call without the cookie: %v", backend.headers[i])
		}
	}
	if got := string(backend.calls[0].Data); got != `{"id":1,"text":"hi","type":"chat.echo"}` {
		t.Errorf("the frame reached the hook as %s", got)
	}
}

// disconnectBackend records disconnect calls; fail makes the first calls
// fail with 503; a call waits for gate, when it is not nil, to answer.
type disconnectBackend struct {
	*httptest.Server
	mu      sync.Mutex
	calls   []disconnectCall
	cookies []string
	tries   int
	arrived atomic.Int32
}

func newDisconnectBackend(t *testing.T, fail int, gate chan struct{}) *disconnectBackend {
	d := &disconnectBackend{}
	d.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var call disconnectCall
		json.NewDecoder(r.Body).Decode(&call)
		if d.arrived.Add(1); gate != nil {
			<-gate
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.tries++; d.tries <= fail {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		d.calls = append(d.calls, call)
		d.cookies = append(d.cookies, r.Header.Get("Cookie"))
	}))
	t.Cleanup(d.Close)
	return d
}

func (d *disconnectBackend) reported() []disconnectCall {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.calls)
}

// metric returns the value of one sample line on /metrics, or -1.
func (e *env) metric(sample string) float64 {
	e.t.Helper()
	resp, err := http.Get(e.http.URL + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// TestDisconnectHook: every closed connection is reported once, with its
// user, groups, close code and reason and the forwarded cookie, whoever
// closed it; a failing backend is retried.
func TestDisconnectHook(t *testing.T) {
	backend := newDisconnectBackend(t, 2, nil)
	e := newEnv(t, "", &Config{APIKeys: []string{"k"}, Hooks: HookConfig{
		DisconnectURL: backend.URL, Headers: []string{"Cookie"},
	}})
	a := wstest.Dial(t, e.wsURL(), http.Header{"Cookie": {"sessionid=a"}})
	a.Join("room.2")
	a.Join("room.1")
	b := e.dial()
	c := e.dial()

	a.Conn.Close(4321, "bye") // the client closes
	e.post("/api/channels/"+b.Channel()+"/disconnect", ``, "Authorization", "Bearer k")
	for err := error(nil); err == nil; _, err = b.Raw() {
	}
	c.Conn.CloseNow() // dropped without a close frame
	waitFor(t, 5*time.Second, func() bool { return len(backend.reported()) == 3 })

	got := map[string]disconnectCall{}
	for _, call := range backend.reported() {
		if _, dup := got[call.Channel]; dup {
			t.Errorf("%s reported twice", call.Channel)
		}
		got[call.Channel] = call
	}
	if r := got[a.Channel()]; r.Event != "disconnect" || r.Code != 4321 || r.Reason != "bye" ||
		!slices.Equal(r.Groups, []string{"room.1", "room.2"}) || r.Node != e.broker.Node() || r.Seconds <= 0 {
		t.Errorf("client close: %+v", r)
	}
	if r := got[b.Channel()]; r.Code != int(CloseDisconnected) || r.Groups == nil {
		t.Errorf("server API disconnect: %+v", r)
	}
	if r := got[c.Channel()]; r.Code != int(websocket.StatusAbnormalClosure) {
		t.Errorf("dropped connection: %+v", r)
	}
	backend.mu.Lock()
	if !slices.Contains(backend.cookies, "sessionid=a") || backend.tries != 5 {
		t.Errorf("cookies %q, %d tries (want 2 failed and 3 sent)", backend.cookies, backend.tries)
	}
	backend.mu.Unlock()
	// The sender counts a report once the backend's answer is in, just
	// after the backend has recorded it.
	waitFor(t, 5*time.Second, func() bool { return e.metric(`groupcast_hook_disconnects_total{outcome="sent"}`) == 3 })
}

// TestDisconnectHookQueueAndDrain: a slow backend never holds up a
// socket's teardown; past the queue's bound reports are dropped and
// counted; on shutdown what is queued is sent within the budget.
func TestDisconnectHookQueueAndDrain(t *testing.T) {
	gate := make(chan struct{})
	backend := newDisconnectBackend(t, 0, gate)
	e := newEnv(t, "", &Config{Hooks: HookConfig{DisconnectURL: backend.URL, DisconnectQueue: 4}})
	for range 12 {
		e.dial().Conn.Close(websocket.StatusNormalClosure, "")
	}
	// Every socket is gone while the backend holds its 4 calls: 4 more
	// wait in the queue, 4 are dropped.
	waitFor(t, 5*time.Second, func() bool { return e.srv.openSessions() == 0 && backend.arrived.Load() == 4 })
	if n := e.metric(`groupcast_hook_disconnects_total{outcome="dropped"}`); n != 4 {
		t.Errorf("dropped %v, want 4", n)
	}
	close(gate)
	for range 3 {
		e.dial().Conn.Close(websocket.StatusNormalClosure, "")
	}
	waitFor(t, 5*time.Second, func() bool { return e.srv.openSessions() == 0 })
	// Everything not dropped is sent by the time Shutdown returns.
	dropped := int(e.metric(`groupcast_hook_disconnects_total{outcome="dropped"}`))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(backend.reported()); n != 15-dropped || dropped < 4 {
		t.Errorf("%d reported at shutdown and %d dropped of 15", n, dropped)
	}
}

// TestDisconnectHookDrainBudget: a backend that never answers cannot
// hold up shutdown past its budget.
func TestDisconnectHookDrainBudget(t *testing.T) {
	release := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer backend.Close()
	defer close(release)
	e := newEnv(t, "", &Config{Hooks: HookConfig{DisconnectURL: backend.URL, Timeout: time.Minute}})
	for range 6 {
		e.dial().Conn.Close(websocket.StatusNormalClosure, "")
	}
	waitFor(t, 2*time.Second, func() bool { return e.srv.openSessions() == 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	e.srv.Shutdown(ctx)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("shutdown took %v with a 300ms budget", d)
	}
	if n := e.metric(`groupcast_hook_disconnects_total{outcome="dropped"}`) + e.metric(`groupcast_hook_disconnects_total{outcome="failed"}`); n != 6 {
		t.Errorf("%v reports dropped or failed, want 6", n)
	}
}

// TestMaxConnectionsWithSlowConnectHook: a burst of upgrades behind a slow
// connect hook never takes more than MaxConnections; refused and failed
// upgrades give their slot back.
func TestMaxConnectionsWithSlowConnectHook(t *testing.T) {
	backend := newHookBackend(t, func(call hookCall) (int, string) {
		time.Sleep(300 * time.Millisecond)
		return 200, `{}`
	})
	e := newEnv(t, "", &Config{MaxConnections: 5, Hooks: HookConfig{ConnectURL: backend.URL, Headers: []string{"Cookie"}}})
	const burst = 20
	statuses := make(chan int, burst)
	var held sync.WaitGroup
	release := make(chan struct{})
	for range burst {
		held.Add(1)
		go func() {
			defer held.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, resp, err := websocket.Dial(ctx, e.wsURL(), nil)
			if err != nil {
				if resp == nil {
					statuses <- -1
					return
				}
				statuses <- resp.StatusCode
				return
			}
			statuses <- 0
			<-release
			c.CloseNow()
		}()
	}
	counts := map[int]int{}
	for range burst {
		counts[<-statuses]++
	}
	close(release)
	held.Wait()
	if counts[0] != 5 || counts[http.StatusServiceUnavailable] != burst-5 {
		t.Fatalf("upgrades by status (0: accepted): %v, want 5 accepted", counts)
	}
	// Every slot comes back, also from refused upgrades: five more fit
	// once those are gone.
	waitFor(t, 5*time.Second, func() bool { return e.srv.openSessions() == 0 })
	for range 6 {
		if status, _ := e.dialStatus("", http.Header{"Cookie": {strings.Repeat("a", maxHookHeaderBytes)}}); status != http.StatusRequestEntityTooLarge {
			t.Fatalf("oversized cookie: %d", status)
		}
	}
	for range 5 {
		e.dial()
	}
	if status, _ := e.dialStatus("", nil); status != http.StatusServiceUnavailable {
		t.Fatalf("a sixth: %d", status)
	}
}

// TestConnectHookRunsLastAndNoRedirects: upgrades the server refuses
// anyway (a foreign Origin, not a WebSocket request) never reach the
// connect hook, and a hook's redirect is a refusal, not followed.
func TestConnectHookRunsLastAndNoRedirects(t *testing.T) {
	var elsewhere atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		io.WriteString(w, `{}`)
	}))
	defer target.Close()
	var redirect atomic.Bool
	var asked atomic.Int32
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if redirect.Load() {
			http.Redirect(w, r, target.URL, http.StatusTemporaryRedirect)
			return
		}
		asked.Add(1)
		io.WriteString(w, `{}`)
	}))
	defer backend.Close()
	e := newEnv(t, "", &Config{AllowedOrigins: []string{"app.example.com"}, Hooks: HookConfig{ConnectURL: backend.URL}})

	if status, _ := e.dialStatus("", http.Header{"Origin": {"https://evil.example.net"}}); status != http.StatusForbidden {
		t.Fatalf("foreign origin: %d", status)
	}
	resp, err := http.Get(e.http.URL + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired {
		t.Fatalf("plain GET /ws: %d", resp.StatusCode)
	}
	if n := asked.Load(); n != 0 {
		t.Fatalf("the connect hook was asked %d times about upgrades refused anyway", n)
	}
	if status, _ := e.dialStatus("", http.Header{"Origin": {"https://app.example.com"}}); status != 0 || asked.Load() != 1 {
		t.Fatalf("allowed origin: %d, %d hook calls", status, asked.Load())
	}

	redirect.Store(true)
	if status, body := e.dialStatus("?token=t", nil); status != http.StatusServiceUnavailable || !strings.Contains(body, CodeUnavailable) {
		t.Fatalf("a redirecting hook: %d %s", status, body)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Fatalf("the redirect was followed %d times", n)
	}
}

// TestHookBadAnswers: a hook view that fails (a 500 error page) or
// answers what is not a JSON object refuses, as unavailable, whatever
// the event: the client always hears, and null never allows.
func TestHookBadAnswers(t *testing.T) {
	var answer atomic.Pointer[[2]any] // status, body
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := answer.Load()
		w.WriteHeader(a[0].(int))
		io.WriteString(w, a[1].(string))
	}))
	defer backend.Close()
	e := newEnv(t, "", &Config{ClientSend: true, Hooks: HookConfig{
		ConnectURL: backend.URL + "/connect", JoinURL: backend.URL, SendURL: backend.URL, ReceiveURL: backend.URL,
	}})
	answer.Store(&[2]any{200, `{}`})
	c := e.dial()
	c.Join("room")
	for _, bad := range [][2]any{
		{500, `<!DOCTYPE html><title>Server Error (500)</title>`},
		{200, `<html>oops</html>`},
		{200, `{"user":`},
		{200, `null`},
		{200, `[{}]`},
		{200, `{"error":"not an object"}`},
	} {
		answer.Store(&bad)
		if status, body := e.dialStatus("", nil); status != http.StatusServiceUnavailable || !strings.Contains(body, CodeUnavailable) {
			t.Errorf("connect answered %v: %d %s", bad, status, body)
		}
		for _, frame := range []map[string]any{
			{"type": "join", "group": "other"},
			{"type": "send", "group": "room", "data": 1},
			{"type": "chat.hello"},
		} {
			if m := c.Call(frame); m["type"] != "error" || m["code"] != CodeUnavailable {
				t.Errorf("%v answered %v: %v", frame["type"], bad, m)
			}
		}
	}
}

// TestConnectRefusedWithOwnCode: a connect hook that refuses with a code of
// the application's own is a refusal (403, the code in the body), not a
// server error.
func TestConnectRefusedWithOwnCode(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"error":{"code":"login_required","message":"log in first"}}`)
	}))
	defer backend.Close()
	e := newEnv(t, "", &Config{Hooks: HookConfig{ConnectURL: backend.URL}})
	if status, body := e.dialStatus("", nil); status != http.StatusForbidden || !strings.Contains(body, "login_required") {
		t.Errorf("connect refused with the application's code: %d %s, want 403 login_required", status, body)
	}
}
