package web

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/groupcast/groupcast/internal/natstest"
	"github.com/groupcast/groupcast/internal/wstest"
)

// shouting is a test consumer: it refuses joins to "closed.*", upper-cases
// sent text, answers "whoami" frames and counts disconnects.
type shouting struct {
	DefaultConsumer
	gone atomic.Int32
}

func (c *shouting) Connect(ctx context.Context, r *ConnectRequest) error {
	if r.Request.URL.Query().Get("name") == "" {
		return Refuse(CodeForbidden, "say your name")
	}
	r.User = r.Request.URL.Query().Get("name")
	r.Groups = []string{"lobby"}
	return nil
}

func (c *shouting) Join(ctx context.Context, conn *Conn, r *JoinRequest) error {
	if strings.HasPrefix(r.Group, "closed.") {
		return Refuse("closed", "that room is closed")
	}
	return c.DefaultConsumer.Join(ctx, conn, r)
}

func (c *shouting) Send(ctx context.Context, conn *Conn, r *SendRequest) error {
	if err := c.DefaultConsumer.Send(ctx, conn, r); err != nil {
		return err
	}
	var text string
	if json.Unmarshal(r.Data, &text) == nil {
		r.Data, _ = json.Marshal(strings.ToUpper(text))
	}
	return nil
}

func (c *shouting) Frame(ctx context.Context, conn *Conn, typ string, frame json.RawMessage) (any, error) {
	if typ == "whoami" {
		return map[string]any{"user": conn.User(), "groups": conn.Groups()}, nil
	}
	return c.DefaultConsumer.Frame(ctx, conn, typ, frame)
}

func (c *shouting) Disconnect(*Conn) { c.gone.Add(1) }

func TestConsumer(t *testing.T) {
	con := &shouting{}
	e := newEnv(t, "", &Config{ClientSend: true, Consumer: con})
	if status, body := e.dialStatus("", nil); status != http.StatusForbidden || !strings.Contains(body, "say your name") {
		t.Fatalf("refused connect: %d %s", status, body)
	}
	c := wstest.Dial(t, e.wsURL()+"?name=ann", nil)
	if m := c.Next(); m["type"] != "joined" || m["group"] != "lobby" {
		t.Fatalf("want the connect-time join, got %v", m)
	}
	if m := c.Call(map[string]any{"type": "join", "group": "closed.1"}); m["code"] != "closed" {
		t.Fatalf("refused join: %v", m)
	}
	if m := c.Call(map[string]any{"type": "send", "group": "lobby", "data": "hi there"}); m["type"] != "ack" {
		t.Fatalf("send: %v", m)
	}
	c.ExpectMessage("lobby", `"HI THERE"`)
	m := c.Call(map[string]any{"type": "whoami"})
	if m["type"] != "reply" || m["data"].(map[string]any)["user"] != "ann" || len(m["data"].(map[string]any)["groups"].([]any)) != 1 {
		t.Fatalf("whoami: %v", m)
	}
	if m := c.Call(map[string]any{"type": "dance"}); m["code"] != CodeUnknownType {
		t.Fatalf("unknown frame: %v", m)
	}
	c.Conn.Close(websocket.StatusNormalClosure, "")
	waitFor(t, 5*time.Second, func() bool { return con.gone.Load() == 1 })
}

// hookBackend is a test backend for HTTP hooks.
type hookBackend struct {
	*httptest.Server
	mu      sync.Mutex
	calls   []hookCall
	auth    []string
	headers []http.Header
	reply   func(call hookCall) (int, string)
}

// newHookBackend starts a backend; with t, it stops when the test ends.
func newHookBackend(t *testing.T, reply func(hookCall) (int, string)) *hookBackend {
	h := &hookBackend{reply: reply}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var call hookCall
		raw, _ := io.ReadAll(r.Body)
		json.Unmarshal(raw, &call)
		h.mu.Lock()
		h.calls = append(h.calls, call)
		h.auth = append(h.auth, r.Header.Get("Authorization")+"|"+r.Header.Get("X-Groupcast-Token"))
		h.headers = append(h.headers, r.Header.Clone())
		h.mu.Unlock()
		status, body := h.reply(call)
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	if t != nil {
		t.Cleanup(h.Close)
	}
	return h
}

func (h *hookBackend) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.calls)
}

func TestHooks(t *testing.T) {
	backend := newHookBackend(t, func(call hookCall) (int, string) {
		switch {
		case call.Event == "connect":
			return 200, `{"user":"u1","join":["room.*"],"send":["room.*"],"groups":["user.u1"],"info":{"name":"U One"}}`
		case call.Event == "join" && call.Group == "room.banned":
			return 200, `{"error":{"code":"banned","message":"you are banned"}}`
		case call.Event == "join" && call.Group == "room.gone":
			return 403, `{"error":{"code":"gone","message":"no such room"}}`
		case call.Event == "join" && call.Group == "room.flaky":
			return 503, ``
		case call.Event == "send":
			var text string
			json.Unmarshal(call.Data, &text)
			if text == "spam" {
				return 200, `{"error":{"code":"spam","message":"no spam"}}`
			}
			return 200, `{"data":{"text":"` + text + `","checked":true}}`
		}
		return 200, `{}`
	})
	e := newEnv(t, "", &Config{ClientSend: true, Hooks: HookConfig{
		ConnectURL: backend.URL + "/connect", JoinURL: backend.URL + "/join", SendURL: backend.URL + "/send", Secret: "hook-secret",
	}})
	c := e.dial()
	if c.Welcome["user"] != "u1" {
		t.Fatalf("connect hook did not set the user: %v", c.Welcome)
	}
	if m := c.Next(); m["type"] != "joined" || m["group"] != "user.u1" {
		t.Fatalf("connect hook groups: %v", m)
	}
	if info := e.sessionInfo(c.Channel()); info != `{"name":"U One"}` {
		t.Fatalf("connect hook info: %q", info)
	}
	c.Join("room.ok")
	for group, code := range map[string]string{"room.banned": "banned", "room.gone": "gone", "room.flaky": CodeUnavailable, "other": CodeForbidden} {
		if m := c.Call(map[string]any{"type": "join", "group": group}); m["code"] != code {
			t.Errorf("join %s: %v, want %s", group, m, code)
		}
	}
	if m := c.Call(map[string]any{"type": "send", "group": "room.ok", "data": "spam"}); m["code"] != "spam" {
		t.Errorf("spam: %v", m)
	}
	c.Call(map[string]any{"type": "send", "group": "room.ok", "data": "hello"})
	c.ExpectMessage("room.ok", `{"text":"hello","checked":true}`)

	backend.mu.Lock()
	defer backend.mu.Unlock()
	flaky := 0
	for i, call := range backend.calls {
		if !strings.HasPrefix(backend.auth[i], "Bearer hook-secret|") {
			t.Errorf("call %d without the secret: %q", i, backend.auth[i])
		}
		if call.Group == "room.flaky" {
			flaky++
		}
		if call.Event != "connect" && call.User != "u1" {
			t.Errorf("call %+v lacks the user", call)
		}
	}
	if flaky != 2 {
		t.Errorf("a join refused with 503 was tried %d times, want 2 (one retry)", flaky)
	}
}

// TestRefreshKeepsConnectDecision: a connect hook that narrowed the
// token's permissions and named another user: a refresh with a wider
// token of the same subject is accepted, moves the expiry, and widens
// nothing.
func TestRefreshKeepsConnectDecision(t *testing.T) {
	backend := newHookBackend(t, func(call hookCall) (int, string) {
		return 200, `{"user":"account-7","join":["room.1","room.2"],"send":["room.*"]}`
	})
	e := authEnv(t, &Config{Auth: AuthConfig{Leeway: time.Millisecond}, Hooks: HookConfig{ConnectURL: backend.URL}})
	tok := func(ttl time.Duration, join ...string) string {
		return sign(t, claims("alice", join, []string{"*"}, ttl))
	}
	c := wstest.Dial(t, e.wsURL()+"?token="+tok(1500*time.Millisecond, "*"), nil)
	if c.Welcome["user"] != "account-7" {
		t.Fatalf("welcome %v", c.Welcome)
	}
	if m := c.Call(map[string]any{"type": "refresh", "token": tok(time.Hour, "*")}); m["type"] != "ack" {
		t.Fatalf("refresh by the token's subject: %v", m)
	}
	if m := c.Call(map[string]any{"type": "join", "group": "admin.ops"}); m["code"] != CodeForbidden {
		t.Fatalf("join beyond the hook's decision after a refresh: %v", m)
	}
	c.Join("room.1")
	// A narrower token narrows further.
	if m := c.Call(map[string]any{"type": "refresh", "token": tok(time.Hour, "room.1")}); m["type"] != "ack" {
		t.Fatalf("narrowing refresh: %v", m)
	}
	if m := c.Call(map[string]any{"type": "join", "group": "room.2"}); m["code"] != CodeForbidden {
		t.Fatalf("join dropped by the new token: %v", m)
	}
	time.Sleep(1600 * time.Millisecond) // past the first token's expiry
	if m := c.Call(map[string]any{"type": "ping"}); m["type"] != "pong" {
		t.Fatalf("refreshed socket: %v", m)
	}
}

// TestHookTimeoutAndOverload: a slow backend makes its own join time out
// as unavailable, never hangs the socket, and slows nobody else.
func TestHookTimeoutAndOverload(t *testing.T) {
	release := make(chan struct{})
	backend := newHookBackend(t, func(call hookCall) (int, string) {
		if call.Group == "slow" {
			<-release
		}
		return 200, `{}`
	})
	defer close(release)
	e := newEnv(t, "", &Config{Hooks: HookConfig{JoinURL: backend.URL, Timeout: 300 * time.Millisecond, MaxConcurrent: 1}})
	slow, other := e.dial(), e.dial()
	other.Join("fast")

	done := make(chan map[string]any, 1)
	go func() { done <- slow.Call(map[string]any{"type": "join", "group": "slow"}) }()
	waitFor(t, 5*time.Second, func() bool { return backend.count() >= 2 })
	// While the one hook slot is taken: others' joins are refused at once,
	// and their deliveries and pings go on.
	start := time.Now()
	if m := other.Call(map[string]any{"type": "join", "group": "fast2"}); m["code"] != CodeUnavailable {
		t.Fatalf("join while the backend is busy: %v", m)
	}
	if m := other.Call(map[string]any{"type": "ping"}); m["type"] != "pong" {
		t.Fatalf("ping: %v", m)
	}
	e.post("/api/groups/fast/messages", `1`)
	other.ExpectMessage("fast", `1`)
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Fatalf("the other connection waited %v", d)
	}
	if m := <-done; m["code"] != CodeUnavailable {
		t.Fatalf("slow join: %v", m)
	}
}

func TestHookBackendDown(t *testing.T) {
	backend := newHookBackend(t, func(hookCall) (int, string) { return 200, `{}` })
	url := backend.URL
	backend.Close()
	e := newEnv(t, "", &Config{Hooks: HookConfig{ConnectURL: url}})
	if status, body := e.dialStatus("", nil); status != http.StatusServiceUnavailable || !strings.Contains(body, CodeUnavailable) {
		t.Fatalf("connect with the backend down: %d %s", status, body)
	}
}

// TestServerSideMembershipAndDisconnect: the server API adds a channel to
// a group, removes it and disconnects users, on whichever instance the
// connection is.
func TestServerSideMembershipAndDisconnect(t *testing.T) {
	ns := natstest.Start(t, -1)
	a := newEnv(t, ns.ClientURL(), &Config{Auth: AuthConfig{Secret: []byte(testSecret)}, APIKeys: []string{"k"}})
	b := newEnv(t, ns.ClientURL(), &Config{Auth: AuthConfig{Secret: []byte(testSecret)}, APIKeys: []string{"k"}})
	tok := func(user string) string {
		return sign(t, &Claims{RegisteredClaims: jwtSubject(user), Join: []string{"*"}})
	}
	zed := wstest.Dial(t, a.wsURL()+"?token="+tok("zed"), nil)
	zed2 := wstest.Dial(t, a.wsURL()+"?token="+tok("zed"), nil)
	yan := wstest.Dial(t, a.wsURL()+"?token="+tok("yan"), nil)
	key := []string{"Authorization", "Bearer k"}

	// From instance b, add zed's first connection to a group on a.
	req := func(e *env, method, path string) int {
		r, _ := http.NewRequest(method, e.http.URL+path, nil)
		r.Header.Set(key[0], key[1])
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if status := req(b, "PUT", "/api/groups/news/channels/"+zed.Channel()); status != 202 {
		t.Fatalf("add: %d", status)
	}
	if m := zed.Next(); m["type"] != "joined" || m["group"] != "news" {
		t.Fatalf("add: %v", m)
	}
	b.post("/api/groups/news/messages", `"extra"`, key...)
	zed.ExpectMessage("news", `"extra"`)
	if status := req(b, "DELETE", "/api/groups/news/channels/"+zed.Channel()); status != 202 {
		t.Fatalf("discard: %d", status)
	}
	if m := zed.Next(); m["type"] != "left" || m["group"] != "news" {
		t.Fatalf("discard: %v", m)
	}
	// Disconnect every connection of zed, and only those.
	if status := req(b, "POST", "/api/users/zed/disconnect"); status != 202 {
		t.Fatalf("disconnect: %d", status)
	}
	for _, c := range []*wstest.Client{zed, zed2} {
		var err error
		for err == nil {
			_, err = c.Raw()
		}
		if status := websocket.CloseStatus(err); status != CloseDisconnected {
			t.Fatalf("zed's socket ended with %v", err)
		}
	}
	if m := yan.Call(map[string]any{"type": "ping"}); m["type"] != "pong" {
		t.Fatalf("yan: %v", m)
	}
	if status := req(a, "POST", "/api/channels/"+yan.Channel()+"/disconnect"); status != 202 {
		t.Fatalf("disconnect channel: %d", status)
	}
	_, err := yan.Raw()
	if status := websocket.CloseStatus(err); status != CloseDisconnected {
		t.Fatalf("yan's socket ended with %v", err)
	}
	if status := req(a, "PUT", "/api/groups/a..b/channels/"+yan.Channel()); status != 400 {
		t.Fatalf("bad group: %d", status)
	}
}
