package web

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestAPIErrors(t *testing.T) {
	e := newEnv(t, "", &Config{MaxBodyBytes: 100})
	cases := []struct {
		path, body string
		status     int
		code       string
	}{
		{"/api/groups/g/messages", `{"ok":1}`, 202, ""},
		{"/api/groups/g/messages", `{"ok":`, 400, CodeInvalidJSON},
		{"/api/groups/g/messages", ``, 400, CodeInvalidJSON},
		{"/api/groups/a..b/messages", `1`, 400, CodeInvalidGroup},
		{"/api/groups/a%2A/messages", `1`, 400, CodeInvalidGroup},
		{"/api/groups/g/messages", `"` + strings.Repeat("x", 200) + `"`, 413, CodeTooLarge},
		{"/api/channels/nope/messages", `1`, 400, CodeInvalidChan},
		{"/api/channels/a.b.c/messages", `1`, 400, CodeInvalidChan},
		{"/api/nothing", `1`, 404, CodeNotFound},
	}
	for _, tc := range cases {
		status, body := e.post(tc.path, tc.body, "Content-Type", "application/json")
		if status != tc.status || (tc.code != "" && !strings.Contains(body, `"code":"`+tc.code+`"`)) {
			t.Errorf("POST %s %q: %d %s, want %d %s", tc.path, tc.body, status, body, tc.status, tc.code)
		}
	}
}

func TestAPIKey(t *testing.T) {
	e := newEnv(t, "", &Config{APIKeys: []string{"s3cret"}})
	for _, h := range [][]string{nil, {"Authorization", "Bearer wrong"}, {"Authorization", "s3cret"}, {"Authorization", "Bearer s3cret2"}} {
		if status, body := e.post("/api/groups/g/messages", `1`, h...); status != 401 || !strings.Contains(body, CodeUnauthorized) {
			t.Errorf("header %v: %d %s, want 401", h, status, body)
		}
	}
	if status, body := e.post("/api/groups/g/messages", `1`, "Authorization", "Bearer s3cret"); status != 202 {
		t.Fatalf("right key: %d %s", status, body)
	}
}

// TestAPILoopbackOnlyWithoutKey: with no API key, a caller that is not on
// this machine is refused, whatever forwarded headers claim.
func TestAPILoopbackOnlyWithoutKey(t *testing.T) {
	e := newEnv(t, "", nil)
	for _, remote := range []string{"10.1.2.3:5555", "[2001:db8::1]:443", "garbage"} {
		req := httptest.NewRequest("POST", "/api/groups/g/messages", strings.NewReader(`1`))
		req.RemoteAddr = remote
		req.Header.Set("X-Forwarded-For", "127.0.0.1")
		rec := httptest.NewRecorder()
		e.srv.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized {
			t.Errorf("remote %s: %d %s", remote, rec.Code, rec.Body)
		}
	}
	for _, remote := range []string{"127.0.0.1:5555", "[::1]:80", "[::ffff:127.0.0.1]:80"} {
		req := httptest.NewRequest("POST", "/api/groups/g/messages", strings.NewReader(`1`))
		req.RemoteAddr = remote
		rec := httptest.NewRecorder()
		e.srv.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusAccepted {
			t.Errorf("remote %s: %d %s", remote, rec.Code, rec.Body)
		}
	}
}

func TestHealthReadyPageMetrics(t *testing.T) {
	e := newEnv(t, "", nil)
	c := e.dial()
	c.Join("g")
	e.post("/api/groups/g/messages", `1`)
	c.ExpectMessage("g", `1`)
	for path, want := range map[string]string{
		"/healthz":   "ok",
		"/readyz":    "ready",
		"/":          "<html",
		"/metrics":   "groupcast_connections 1",
		"/client.js": "export function connect",
	} {
		resp, err := http.Get(e.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		var sb strings.Builder
		buf := make([]byte, 1<<20)
		for {
			n, err := resp.Body.Read(buf)
			sb.Write(buf[:n])
			if err != nil {
				break
			}
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(sb.String(), want) {
			t.Errorf("GET %s: %d, body lacks %q", path, resp.StatusCode, want)
		}
	}
}
