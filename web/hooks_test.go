package web

import (
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
