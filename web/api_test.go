package web

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/groupcast/groupcast/broker"
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
		req.RemoteAddr, req.Host = remote, "localhost"
		rec := httptest.NewRecorder()
		e.srv.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusAccepted {
			t.Errorf("remote %s: %d %s", remote, rec.Code, rec.Body)
		}
	}
}

// TestAPIWithoutKeyRefusesBrowsersAndProxies: with no API key, a
// loopback request that a browser page sent (CSRF), a proxy relayed or
// that names a foreign Host (DNS rebinding) is refused, and publishes
// nothing; local tools and key holders are served.
func TestAPIWithoutKeyRefusesBrowsersAndProxies(t *testing.T) {
	e := newEnv(t, "", nil)
	member := e.dial()
	member.Join("g")
	body := `"refused"`
	do := func(e *env, host string, header ...string) (int, string) {
		req, _ := http.NewRequest("POST", e.http.URL+"/api/groups/g/messages", strings.NewReader(body))
		req.Header.Set("Content-Type", "text/plain")
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		if host != "" {
			req.Host = host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, h := range [][]string{
		{"Origin", "https://evil.example"},
		{"Origin", "null"},
		{"Sec-Fetch-Site", "cross-site"},
		{"Forwarded", "for=203.0.113.9"},
		{"X-Forwarded-For", "203.0.113.9"},
		{"X-Forwarded-Host", "groupcast.example"},
		{"Via", "1.1 nginx"},
	} {
		if status, body := do(e, "", h...); status != http.StatusForbidden || !strings.Contains(body, h[0]) || !strings.Contains(body, "API_KEY") {
			t.Errorf("%v: %d %s, want 403 naming the header", h, status, body)
		}
	}
	for _, host := range []string{"evil.example", "rebind.example:8080", "10.0.0.1", "localhost.evil.example"} {
		if status, body := do(e, host); status != http.StatusForbidden || !strings.Contains(body, "Host") {
			t.Errorf("Host %s: %d %s, want 403", host, status, body)
		}
	}
	body = `"served"` // the first delivery below shows nothing refused was published
	_, port, _ := strings.Cut(strings.TrimPrefix(e.http.URL, "http://"), ":")
	for _, host := range []string{"", "localhost:" + port, "LOCALHOST", "[::1]:" + port, "app.localhost"} {
		if status, body := do(e, host); status != http.StatusAccepted {
			t.Errorf("local tool with Host %q: %d %s", host, status, body)
		}
		member.ExpectMessage("g", `"served"`)
	}
	keyed := newEnv(t, "", &Config{APIKeys: []string{"k"}})
	if status, body := do(keyed, "groupcast.example", "Origin", "https://app.example", "Authorization", "Bearer k"); status != http.StatusAccepted {
		t.Errorf("with a key, a browser's request: %d %s", status, body)
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
		"/metrics":   `groupcast_connections{transport="ws"} 1`,
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

// TestBatchPublish: one request publishes to groups and channels, in
// order; each message is answered on its own, and a bad one refuses only
// itself.
func TestBatchPublish(t *testing.T) {
	e := newEnvBroker(t, broker.Config{Policies: chatPolicies}, nil)
	member := e.dial()
	member.Join("room")
	member.Join("chat.kept")
	direct := e.dial()
	body := `{"messages":[
		{"group":"room","data":1},
		{"channel":"` + direct.Channel() + `","data":{"to":"you"}},
		{"group":"a..b","data":2},
		{"group":"room","channel":"` + direct.Channel() + `","data":3},
		{"group":"room"},
		{"group":"room","data":4,"idempotency_key":"k"},
		{"group":"chat.kept","data":5,"idempotency_key":"k"},
		{"group":"chat.kept","data":5,"idempotency_key":"k"},
		{"group":"room","data":6}
	]}`
	status, answer := e.post("/api/messages", body, "Content-Type", "application/json")
	var got struct {
		OK      bool
		Results []struct {
			OK        bool
			Offset    uint64
			Duplicate bool
			Error     *struct{ Code string }
		}
	}
	if err := json.Unmarshal([]byte(answer), &got); status != http.StatusOK || err != nil || len(got.Results) != 9 {
		t.Fatalf("batch: %d %s", status, answer)
	}
	if got.OK {
		t.Errorf("top-level ok with refused messages: %s", answer)
	}
	wantCodes := []string{"", "", CodeInvalidGroup, CodeInvalidData, CodeInvalidData, CodeInvalidData, "", "", ""}
	for i, r := range got.Results {
		code := ""
		if r.Error != nil {
			code = r.Error.Code
		}
		if code != wantCodes[i] || r.OK != (code == "") {
			t.Errorf("message %d: %+v, want error code %q", i, r, wantCodes[i])
		}
	}
	if r := got.Results; r[6].Offset == 0 || r[6].Duplicate || r[7].Offset != r[6].Offset || !r[7].Duplicate {
		t.Errorf("idempotent pair: %+v then %+v, want one offset, the second a duplicate", r[6], r[7])
	}
	// Order is kept per group; the kept group's message comes through
	// JetStream, so it may pass or trail the other group's.
	byGroup := map[string][]string{}
	for range 3 {
		m := member.Next()
		data, _ := json.Marshal(m["data"])
		g, _ := m["group"].(string)
		byGroup[g] = append(byGroup[g], string(data))
	}
	if got := fmt.Sprint(byGroup); got != "map[chat.kept:[5] room:[1 6]]" {
		t.Errorf("member got %s, want room 1 then 6 and chat.kept 5 once", got)
	}
	member.Quiet(100 * time.Millisecond)
	if m := direct.Next(); m["type"] != "message" || m["data"].(map[string]any)["to"] != "you" {
		t.Errorf("direct: %v", m)
	}

	var many strings.Builder
	many.WriteString(`{"messages":[`)
	for i := range maxBatchMessages + 1 {
		if i > 0 {
			many.WriteString(",")
		}
		many.WriteString(`{"group":"room","data":0}`)
	}
	many.WriteString(`]}`)
	for _, tc := range []struct{ body, code string }{
		{many.String(), CodeInvalidData},
		{`[1]`, CodeInvalidJSON},
		{`{"messages":`, CodeInvalidJSON},
	} {
		if status, answer := e.post("/api/messages", tc.body); status != http.StatusBadRequest || !strings.Contains(answer, tc.code) {
			t.Errorf("batch %.40q: %d %s, want 400 %s", tc.body, status, answer, tc.code)
		}
	}
	member.Quiet(100 * time.Millisecond)
}

// TestStalledBodyClosed: a request that declares a body and never sends
// it is answered and its connection closed after ReadTimeout, on the API
// and on any other route; a WebSocket outlives that timeout.
func TestStalledBodyClosed(t *testing.T) {
	e := newEnv(t, "", &Config{ReadTimeout: 300 * time.Millisecond})
	ws := e.dial()
	for _, head := range []string{
		"POST /api/groups/g/messages HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{",
		"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n",
	} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(e.http.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		conn.SetReadDeadline(start.Add(3 * time.Second))
		if _, err := conn.Write([]byte(head)); err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadAll(conn) // whatever the answer, then EOF
		conn.Close()
		if err != nil {
			t.Fatalf("%q: connection still open after %v: %v", head, time.Since(start), err)
		}
	}
	if m := ws.Call(map[string]any{"type": "ping"}); m["type"] != "pong" {
		t.Fatalf("websocket after the read timeout: %v", m)
	}
}
