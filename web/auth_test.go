package web

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/groupcast/groupcast/internal/apptest"
	"github.com/groupcast/groupcast/internal/wstest"
)

const testSecret = "0123456789abcdef0123456789abcdef"

// sign makes an HS256 token with the test secret.
func sign(t testing.TB, c jwt.Claims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claims(sub string, join, send []string, ttl time.Duration) *Claims {
	return &Claims{
		RegisteredClaims: jwt.RegisteredClaims{Subject: sub, Issuer: "app", Audience: jwt.ClaimStrings{"groupcast"},
			ExpiresAt: jwt.NewNumericDate(time.Now().Add(ttl))},
		Join: join, Send: send,
	}
}

func authEnv(t *testing.T, cfg *Config) *env {
	if cfg == nil {
		cfg = &Config{}
	}
	cfg.ClientSend = true
	if cfg.Auth.JWKSURL == "" {
		cfg.Auth.Secret = []byte(testSecret)
	}
	cfg.Auth.Issuer, cfg.Auth.Audience = "app", "groupcast"
	return newEnv(t, "", cfg)
}

// dialStatus tries an upgrade and returns the HTTP status and body on
// refusal (0 when it succeeded).
func (e *env) dialStatus(query string, header http.Header) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, e.wsURL()+query, &websocket.DialOptions{HTTPHeader: header})
	if err == nil {
		c.CloseNow()
		return 0, ""
	}
	if resp == nil {
		e.t.Fatalf("dial: %v", err)
	}
	var body strings.Builder
	buf := make([]byte, 4096)
	n, _ := resp.Body.Read(buf)
	body.Write(buf[:n])
	return resp.StatusCode, body.String()
}

func TestTokenPermissions(t *testing.T) {
	e := authEnv(t, nil)
	cl := claims("alice", []string{"room.*", "news"}, []string{"room.*"}, time.Hour)
	cl.Info = json.RawMessage(`{"name":"Alice"}`)
	tok := sign(t, cl)
	c := wstest.Dial(t, e.wsURL()+"?token="+tok, nil)
	if c.Welcome["user"] != "alice" {
		t.Fatalf("welcome %v", c.Welcome)
	}
	if info := e.sessionInfo(c.Channel()); info != `{"name":"Alice"}` {
		t.Fatalf("token info: %q", info)
	}
	c.Join("room.lobby")
	c.Join("news")
	for _, f := range []map[string]any{
		{"type": "join", "group": "secret"},
		{"type": "join", "group": "roomy"},
		{"type": "send", "group": "news", "data": 1},
		{"type": "send", "group": "admin", "data": 1},
	} {
		if m := c.Call(f); m["code"] != CodeForbidden {
			t.Errorf("%v: got %v, want forbidden", f, m)
		}
	}
	// Names that try to be wildcards are not names at all.
	for _, g := range []string{"room.*", "room.>", "*", ">"} {
		if m := c.Call(map[string]any{"type": "join", "group": g}); m["code"] != CodeInvalidGroup {
			t.Errorf("join %q: got %v", g, m)
		}
	}
	if m := c.Call(map[string]any{"type": "send", "group": "room.lobby", "data": "hi"}); m["type"] != "ack" {
		t.Fatalf("allowed send: %v", m)
	}
	c.ExpectMessage("room.lobby", `"hi"`)

	// The same token in an Authorization header.
	h := http.Header{"Authorization": {"Bearer " + tok}}
	if d := wstest.Dial(t, e.wsURL(), h); d.Welcome["user"] != "alice" {
		t.Fatalf("header token: %v", d.Welcome)
	}
}

// TestForgedTokens: every kind of bad token is refused at the upgrade with
// 401 and a JSON error, and the server keeps serving good ones.
func TestForgedTokens(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	jwks := newJWKSServer(t)
	jwks.set(map[string]any{"k1": &rsaKey.PublicKey})
	e := authEnv(t, &Config{Auth: AuthConfig{JWKSURL: jwks.URL, Secret: []byte(testSecret), Leeway: time.Second}})

	good := claims("mallory", []string{"*"}, nil, time.Hour)
	pubDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})

	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, good).SignedString(jwt.UnsafeAllowNoneSignatureType)
	wrongKey, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, good).SignedString([]byte("another-secret-another-secret-xx"))
	// HS/RS confusion: HMAC keyed with the RSA public key, naming its kid.
	confused := jwt.NewWithClaims(jwt.SigningMethodHS256, good)
	confused.Header["kid"] = "k1"
	confusedTok, _ := confused.SignedString(pubPEM)
	rs := func(c jwt.Claims, kid string, key *rsa.PrivateKey) string {
		tk := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
		tk.Header["kid"] = kid
		s, _ := tk.SignedString(key)
		return s
	}
	otherRSA, _ := rsa.GenerateKey(rand.Reader, 2048)
	expired := claims("m", []string{"*"}, nil, -time.Minute)
	notYet := claims("m", []string{"*"}, nil, time.Hour)
	notYet.NotBefore = jwt.NewNumericDate(time.Now().Add(time.Hour))
	wrongAud := claims("m", []string{"*"}, nil, time.Hour)
	wrongAud.Audience = jwt.ClaimStrings{"someone-else"}
	wrongIss := claims("m", []string{"*"}, nil, time.Hour)
	wrongIss.Issuer = "evil"
	badPattern := claims("m", []string{"room.>"}, nil, time.Hour)
	noExp := claims("m", []string{"*"}, nil, time.Hour)
	noExp.ExpiresAt = nil
	groupTok := claims("m", nil, nil, time.Hour)
	groupTok.Group = "room.x"
	valid := sign(t, claims("m", []string{"room.*"}, nil, time.Hour))
	parts := strings.Split(valid, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(payload), `"room.*"`, `"*"`, 1))) + "." + parts[2]

	cases := map[string]string{
		"missing":          "",
		"garbage":          "not.a.jwt",
		"alg none":         none,
		"wrong secret":     wrongKey,
		"HS/RS confusion":  confusedTok,
		"unknown RSA key":  rs(good, "k1", otherRSA),
		"unknown kid":      rs(good, "k9", otherRSA),
		"expired":          sign(t, expired),
		"not yet valid":    sign(t, notYet),
		"wrong audience":   sign(t, wrongAud),
		"wrong issuer":     sign(t, wrongIss),
		"tampered claims":  tampered,
		"wildcard pattern": sign(t, badPattern),
		"per-group token":  sign(t, groupTok),
		"no exp":           sign(t, noExp),
		"huge":             strings.Repeat("a", 10_000),
	}
	for name, tok := range cases {
		status, body := e.dialStatus("?token="+tok, nil)
		if status != http.StatusUnauthorized || !strings.Contains(body, `"code":"unauthorized"`) {
			t.Errorf("%s: got %d %s, want 401 unauthorized", name, status, body)
		}
	}
	// Good tokens of both kinds still work.
	if status, body := e.dialStatus("?token="+rs(good, "k1", rsaKey), nil); status != 0 {
		t.Errorf("RS256 token refused: %d %s", status, body)
	}
	if status, body := e.dialStatus("?token="+valid, nil); status != 0 {
		t.Errorf("HS256 token refused: %d %s", status, body)
	}
}

func TestPerGroupToken(t *testing.T) {
	e := authEnv(t, nil)
	c := wstest.Dial(t, e.wsURL()+"?token="+sign(t, claims("bob", []string{"public"}, nil, time.Hour)), nil)
	grant := func(sub, group string) string {
		cl := claims(sub, nil, nil, time.Hour)
		cl.Group = group
		return sign(t, cl)
	}
	if m := c.Call(map[string]any{"type": "join", "group": "private.1"}); m["code"] != CodeForbidden {
		t.Fatalf("join without grant: %v", m)
	}
	if m := c.Call(map[string]any{"type": "join", "group": "private.1", "token": grant("bob", "private.2")}); m["code"] != CodeForbidden {
		t.Fatalf("grant for another group: %v", m)
	}
	if m := c.Call(map[string]any{"type": "join", "group": "private.1", "token": grant("eve", "private.1")}); m["code"] != CodeForbidden {
		t.Fatalf("grant for another user: %v", m)
	}
	if m := c.Call(map[string]any{"type": "join", "group": "private.1", "token": grant("bob", "private.1")}); m["type"] != "ack" {
		t.Fatalf("grant: %v", m)
	}
}

// TestTokenExpiryAndRefresh: a refreshed token keeps the socket open past
// the first token's expiry; without a refresh it closes with 4001.
func TestTokenExpiryAndRefresh(t *testing.T) {
	e := authEnv(t, &Config{Auth: AuthConfig{Leeway: time.Millisecond}})
	short := func(sub string, ttl time.Duration) string { return sign(t, claims(sub, []string{"*"}, nil, ttl)) }

	kept := wstest.Dial(t, e.wsURL()+"?token="+short("carol", 1500*time.Millisecond), nil)
	if m := kept.Call(map[string]any{"type": "refresh", "token": short("dave", time.Hour)}); m["code"] != CodeForbidden {
		t.Fatalf("refresh as another user: %v", m)
	}
	if m := kept.Call(map[string]any{"type": "refresh", "token": "junk"}); m["code"] != CodeUnauthorized {
		t.Fatalf("refresh with junk: %v", m)
	}
	if m := kept.Call(map[string]any{"type": "refresh", "token": short("carol", time.Hour)}); m["type"] != "ack" {
		t.Fatalf("refresh: %v", m)
	}
	lapsed := wstest.Dial(t, e.wsURL()+"?token="+short("carol", 1500*time.Millisecond), nil)
	_, err := lapsed.Raw()
	if status := websocket.CloseStatus(err); status != CloseTokenExpired {
		t.Fatalf("expired socket ended with %v, want %d", err, CloseTokenExpired)
	}
	if m := kept.Call(map[string]any{"type": "ping"}); m["type"] != "pong" {
		t.Fatalf("refreshed socket: %v", m)
	}
}

// TestRefreshWithoutExpiry: where tokens without exp are allowed, one
// opens a socket for good, but as a refresh it cannot lift the expiry of
// the token the socket has.
func TestRefreshWithoutExpiry(t *testing.T) {
	e := authEnv(t, &Config{Auth: AuthConfig{Leeway: time.Millisecond, AllowNoExpiry: true}})
	forever := claims("carol", []string{"*"}, nil, time.Hour)
	forever.ExpiresAt = nil
	if status, body := e.dialStatus("?token="+sign(t, forever), nil); status != 0 {
		t.Fatalf("token without exp refused: %d %s", status, body)
	}
	c := wstest.Dial(t, e.wsURL()+"?token="+sign(t, claims("carol", []string{"*"}, nil, time.Second)), nil)
	if m := c.Call(map[string]any{"type": "refresh", "token": sign(t, forever)}); m["type"] != "ack" {
		t.Fatalf("refresh: %v", m)
	}
	_, err := c.Raw()
	if status := websocket.CloseStatus(err); status != CloseTokenExpired {
		t.Fatalf("socket ended with %v, want %d", err, CloseTokenExpired)
	}
}

// TestJWKSRotation: a token signed with a key added to the JWKS after start
// is accepted once the server refetches the set for its unknown kid.
func TestJWKSRotation(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks := newJWKSServer(t)
	jwks.set(map[string]any{"old": &k1.PublicKey})
	e := authEnv(t, &Config{Auth: AuthConfig{JWKSURL: jwks.URL}})
	es := func(kid string, key *ecdsa.PrivateKey) string {
		tk := jwt.NewWithClaims(jwt.SigningMethodES256, claims("erin", []string{"*"}, nil, time.Hour))
		tk.Header["kid"] = kid
		s, _ := tk.SignedString(key)
		return s
	}
	if status, body := e.dialStatus("?token="+es("old", k1), nil); status != 0 {
		t.Fatalf("old key: %d %s", status, body)
	}
	jwks.set(map[string]any{"old": &k1.PublicKey, "new": &k2.PublicKey})
	if status, body := e.dialStatus("?token="+es("new", k2), nil); status != 0 {
		t.Fatalf("rotated key: %d %s", status, body)
	}
	if jwks.fetches() < 2 {
		t.Fatal("the set was not refetched")
	}
}

// TestFrameFlood: a client over its frame rate gets rate_limited errors,
// then a 1008 close if it goes on; a client beside it is not affected.
func TestFrameFlood(t *testing.T) {
	e := newEnv(t, "", &Config{FramesPerSecond: 5})
	calm := e.dial()
	calm.Join("g")
	flood := e.dial()
	limited := 0
	var err error
	for i := 0; i < 200 && err == nil; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = flood.Conn.Write(ctx, websocket.MessageText, []byte(`{"type":"ping"}`))
		cancel()
	}
	for err == nil {
		var p []byte
		if p, err = flood.Raw(); err == nil && strings.Contains(string(p), CodeRateLimited) {
			limited++
		}
	}
	if status := websocket.CloseStatus(err); status != websocket.StatusPolicyViolation || limited == 0 {
		t.Fatalf("flood ended with %v after %d rate_limited errors", err, limited)
	}
	e.post("/api/groups/g/messages", `1`)
	calm.ExpectMessage("g", `1`)
}

func TestHandshakeLimitAndMaxConnections(t *testing.T) {
	e := newEnv(t, "", &Config{HandshakesPerSecond: 2, TrustedProxies: 1, MaxConnections: 6})
	from := func(ip string) http.Header { return http.Header{"X-Forwarded-For": {"198.51.100.9, " + ip}} }
	var refused int
	for range 8 {
		if status, _ := e.dialStatus("", from("203.0.113.7")); status == http.StatusTooManyRequests {
			refused++
		}
	}
	if refused != 4 { // a burst of 4, then the rest within the same second
		t.Fatalf("%d of 8 quick handshakes refused, want 4", refused)
	}
	if status, body := e.dialStatus("", from("203.0.113.8")); status != 0 {
		t.Fatalf("another address refused: %d %s", status, body)
	}
	// MaxConnections: hold six open, the seventh is refused.
	waitFor(t, 5*time.Second, func() bool { return e.broker.Stats().Channels == 0 })
	for range 6 {
		e.dial()
	}
	if status, body := e.dialStatus("", nil); status != http.StatusServiceUnavailable {
		t.Fatalf("over MaxConnections: %d %s", status, body)
	}
}

// TestConnectionsPerIP: one address (behind the trusted proxy) holds at
// most MaxConnectionsPerIP sockets, gets one back when one closes, and
// does not limit another address or loopback.
func TestConnectionsPerIP(t *testing.T) {
	e := newEnv(t, "", &Config{MaxConnectionsPerIP: 3, TrustedProxies: 1, HandshakesPerSecond: 1000})
	from := func(ip string) http.Header { return http.Header{"X-Forwarded-For": {ip}} }
	var held []*wstest.Client
	for range 3 {
		held = append(held, wstest.Dial(t, e.wsURL(), from("203.0.113.7")))
	}
	if status, body := e.dialStatus("", from("203.0.113.7")); status != http.StatusTooManyRequests || !strings.Contains(body, CodeRateLimited) {
		t.Fatalf("fourth socket of one address: %d %s, want 429", status, body)
	}
	if status, body := e.dialStatus("", from("203.0.113.8")); status != 0 {
		t.Fatalf("another address: %d %s", status, body)
	}
	for range 5 {
		e.dial() // loopback, not limited
	}
	held[0].Conn.Close(websocket.StatusNormalClosure, "")
	waitFor(t, 5*time.Second, func() bool {
		status, _ := e.dialStatus("", from("203.0.113.7"))
		return status == 0
	})
	if got := e.metric(`groupcast_upgrades_refused_total{reason="ip_connections"}`); got <= 0 {
		t.Fatalf("per-address refusals not counted: %v", got)
	}
}

func TestSeveralAPIKeys(t *testing.T) {
	e := newEnv(t, "", &Config{APIKeys: []string{"old-key", "new-key"}})
	for _, k := range []string{"old-key", "new-key"} {
		if status, body := e.post("/api/groups/g/messages", `1`, "Authorization", "Bearer "+k); status != 202 {
			t.Errorf("key %s: %d %s", k, status, body)
		}
	}
	if status, _ := e.post("/api/groups/g/messages", `1`, "Authorization", "Bearer old-keynew-key"); status != 401 {
		t.Errorf("joined keys accepted: %d", status)
	}
}

func TestClientIP(t *testing.T) {
	r := httptest.NewRequest("GET", "/ws", nil)
	r.RemoteAddr = "10.0.0.1:555"
	r.Header.Set("X-Forwarded-For", "1.1.1.1, 2.2.2.2, 3.3.3.3")
	for proxies, want := range map[int]string{0: "10.0.0.1", 1: "3.3.3.3", 2: "2.2.2.2", 3: "1.1.1.1", 4: "10.0.0.1"} {
		if got := clientIP(r, proxies); got != want {
			t.Errorf("%d proxies: %s, want %s", proxies, got, want)
		}
	}
}

// TestJWKSOutageAtStart: with the JWK Set unreachable at start, the
// instance is not ready and answers tokens of the set "unavailable" (not
// "unauthorized"); once the set is back it loads by itself, unasked.
func TestJWKSOutageAtStart(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks := newJWKSServer(t)
	jwks.set(map[string]any{"k": &key.PublicKey})
	jwks.setDown(true)
	e := authEnv(t, &Config{Auth: AuthConfig{JWKSURL: jwks.URL}})
	tk := jwt.NewWithClaims(jwt.SigningMethodES256, claims("erin", []string{"*"}, nil, time.Hour))
	tk.Header["kid"] = "k"
	tok, _ := tk.SignedString(key)

	if status := e.status("/readyz"); status != http.StatusServiceUnavailable {
		t.Fatalf("readyz without keys: %d", status)
	}
	if status, body := e.dialStatus("", http.Header{"Authorization": {"Bearer " + tok}}); status != http.StatusServiceUnavailable || !strings.Contains(body, CodeUnavailable) {
		t.Fatalf("token while keys are missing: %d %s, want 503 unavailable", status, body)
	}
	// A bad token is still bad, and an HS256 one does not need the set.
	if status, _ := e.dialStatus("?token=not.a.jwt", nil); status != http.StatusUnauthorized {
		t.Fatalf("garbage while keys are missing: %d", status)
	}
	jwks.setDown(false)
	waitFor(t, 5*time.Second, func() bool { return e.status("/readyz") == http.StatusOK })
	if status, body := e.dialStatus("?token="+tok, nil); status != 0 {
		t.Fatalf("token once keys loaded: %d %s", status, body)
	}
}

// TestBadJWKSURL: New refuses a JWKS URL it cannot use instead of
// serving an instance that refuses everyone.
func TestBadJWKSURL(t *testing.T) {
	_, err := New(nil, Config{Auth: AuthConfig{JWKSURL: "ftp://keys"}, Logger: apptest.Logger(t)})
	if err == nil || !strings.Contains(err.Error(), "JWKS") {
		t.Fatalf("New with a bad JWKS URL: %v", err)
	}
}

// status returns the status of a GET of path.
func (e *env) status(path string) int {
	e.t.Helper()
	resp, err := http.Get(e.http.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// jwksServer serves a JWK Set that a test can change, or 503 while down.
type jwksServer struct {
	*httptest.Server
	mu   sync.Mutex
	body []byte
	n    int
	down bool
}

func (j *jwksServer) setDown(down bool) {
	j.mu.Lock()
	j.down = down
	j.mu.Unlock()
}

func newJWKSServer(t *testing.T) *jwksServer {
	j := &jwksServer{}
	j.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		j.mu.Lock()
		defer j.mu.Unlock()
		j.n++
		if j.down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(j.body)
	}))
	t.Cleanup(j.Close)
	return j
}

func (j *jwksServer) fetches() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.n
}

// set serves the given public keys (*rsa.PublicKey or *ecdsa.PublicKey) by kid.
func (j *jwksServer) set(keys map[string]any) {
	b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	var out []map[string]string
	for kid, k := range keys {
		switch k := k.(type) {
		case *rsa.PublicKey:
			out = append(out, map[string]string{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
				"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())})
		case *ecdsa.PublicKey:
			ecdh, _ := k.ECDH()
			raw := ecdh.Bytes() // 0x04 || X || Y
			out = append(out, map[string]string{"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
				"x": b64(raw[1:33]), "y": b64(raw[33:])})
		default:
			panic(fmt.Sprintf("key type %T", k))
		}
	}
	body, _ := json.Marshal(map[string]any{"keys": out})
	j.mu.Lock()
	j.body = body
	j.mu.Unlock()
}

func jwtSubject(sub string) jwt.RegisteredClaims {
	return jwt.RegisteredClaims{Subject: sub, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
}
