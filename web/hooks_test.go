package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

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
