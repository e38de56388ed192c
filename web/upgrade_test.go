package web

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/coder/websocket"
)

// FuzzIsUpgrade: isUpgrade agrees with the WebSocket library's own checks
// (the Origin aside, which checkOrigin decides) on every request: it says
// yes exactly when Accept gets as far as the hijack (which a
// ResponseRecorder refuses with 501).
func FuzzIsUpgrade(f *testing.F) {
	f.Add("GET", "Upgrade", "websocket", "13", "dGhlIHNhbXBsZSBub25jZQ==", "", "example.com")
	f.Add("GET", "keep-alive, Upgrade", "WebSocket", "13", "dGhlIHNhbXBsZSBub25jZQ==", "https://app.example.com", "example.com")
	f.Add("GET", "Upgrade", "websocket", "13", "dGhlIHNhbXBsZSBub25jZQ==", "https://evil.example.net", "example.com")
	f.Add("GET", "Upgrade", "websocket", "13", "dGhlIHNhbXBsZSBub25jZQ==", "http://example.com", "EXAMPLE.com")
	f.Add("POST", "Upgrade", "websocket", "13", "short", "", "example.com")
	f.Add("GET", "Upgrade", "websocket", "12", "dGhlIHNhbXBsZSBub25jZQ==", "null", "example.com")
	f.Fuzz(func(t *testing.T, method, connection, upgrade, version, key, origin, host string) {
		r, err := http.NewRequest(method, "http://example.com/ws", nil)
		if err != nil {
			return
		}
		r.Host = host
		for name, v := range map[string]string{"Connection": connection, "Upgrade": upgrade,
			"Sec-WebSocket-Version": version, "Sec-WebSocket-Key": key, "Origin": origin} {
			if v != "" {
				r.Header.Set(name, v)
			}
		}
		w := httptest.NewRecorder()
		websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if got, want := isUpgrade(r), w.Code == http.StatusNotImplemented; got != want {
			t.Fatalf("isUpgrade %v, the library %d %q", got, w.Code, w.Body.String())
		}
	})
}
