package web

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/natstest"
)

// TestBrowserSSE drives the demo page and /client.js in a real Chromium
// through a loopback HTTP proxy that refuses WebSocket upgrades, as a
// corporate proxy does, while it passes plain HTTP and streams responses:
// the page falls back to Server-Sent Events and works exactly as over a
// WebSocket. One browser serves every subtest.
func TestBrowserSSE(t *testing.T) {
	browser := newBrowser(t)
	t.Run("JoinLeave", func(t *testing.T) { testSSEJoinLeave(t, browser) })
	t.Run("Chat", func(t *testing.T) { testSSEChat(t, browser) })
	t.Run("Presence", func(t *testing.T) { testSSEPresence(t, browser) })
	t.Run("Resume", func(t *testing.T) { testSSEResume(t, browser) })
	t.Run("Cut", func(t *testing.T) { testSSECut(t, browser) })
	t.Run("Tokens", func(t *testing.T) { testSSETokens(t, browser) })
	t.Run("CrossOrigin", func(t *testing.T) { testSSECrossOrigin(t, browser) })
	t.Run("PlannedClose", func(t *testing.T) { testSSEPlannedClose(t, browser) })
	t.Run("Drain", func(t *testing.T) { testSSEDrain(t, browser) })
	t.Run("Burst", func(t *testing.T) { testSSEBurst(t, browser) })
	t.Run("Stalled", func(t *testing.T) { testSSEStalled(t, browser) })
	t.Run("KeepsWebSocket", func(t *testing.T) { testSSEKeepsWebSocket(t, browser) })
}

// upgradeRule is what a proxy does with a WebSocket upgrade.
type upgradeRule int

const (
	refuseUpgrades upgradeRule = iota // 403, as a corporate proxy does
	passUpgrades                      // proxied like any request
	stallUpgrades                     // never answered, as a middlebox that swallows it
)

// proxy is a loopback reverse proxy in front of one server address that
// streams responses (FlushInterval -1) and counts what passes.
type proxy struct {
	URL string

	hs       *httptest.Server
	upgrades atomic.Int64 // WebSocket upgrade requests, whatever came of them
	streams  atomic.Int64 // GET /sse passed on
	posts    atomic.Int64 // POST /sse/{channel} passed on
}

// startProxy serves a proxy to addr (host:port) until the test ends. The
// Host header passes unchanged, so the page's origin is the proxy's and
// the server sees same-origin requests.
func startProxy(t *testing.T, addr string, upgrades upgradeRule) *proxy {
	t.Helper()
	target := &url.URL{Scheme: "http", Host: addr}
	transport := &http.Transport{}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = transport
	rp.FlushInterval = -1
	rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, err error) {
		http.Error(w, "proxy: "+err.Error(), http.StatusBadGateway) // the server is down
	}
	p := &proxy{}
	stop := make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			p.upgrades.Add(1)
			switch upgrades {
			case refuseUpgrades:
				http.Error(w, "WebSockets are not allowed", http.StatusForbidden)
				return
			case stallUpgrades:
				select {
				case <-r.Context().Done():
				case <-stop:
				}
				return
			}
		}
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/sse":
			p.streams.Add(1)
		case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/sse/"):
			p.posts.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		close(stop)
		hs.CloseClientConnections()
		hs.Close()
		transport.CloseIdleConnections()
	})
	p.URL, p.hs = hs.URL, hs
	return p
}

// cut breaks every connection through the proxy, streams included,
// without a word to either end.
func (p *proxy) cut() { p.hs.CloseClientConnections() }

// counts is what the proxy has seen: upgrades, streams, posts.
func (p *proxy) counts() [3]int64 {
	return [3]int64{p.upgrades.Load(), p.streams.Load(), p.posts.Load()}
}

// Through a proxy that refuses upgrades, /client.js falls back to SSE at
// once (not after its open timeout), and there joins, receives, sends in
// order, leaves and closes as over a WebSocket; refusals, whether in an
// error frame or in a POST's answer, reach their promises; a second
// client in the page goes straight to SSE.
func testSSEJoinLeave(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{ClientSend: true})
	px := startProxy(t, s.Addr, refuseUpgrades)
	p := openPage(t, browser, px.URL+"/healthz")
	// openTimeout 20 s: only the refused upgrade, not the timeout, can
	// bring the fallback within the 15 s this waits.
	eval[bool](p, `(async () => {
		const { connect } = await import("/client.js");
		const start = performance.now();
		const c = connect(undefined, { openTimeout: 20000 });
		window.t = { c, got: [], fence: [], states: [] };
		c.addEventListener("state", (e) => t.states.push(e.detail));
		c.addEventListener("welcome", (e) => (t.welcome = e.detail));
		await c.join("news", (data, msg) => t.got.push([data, msg.group, msg.region]));
		t.ms = performance.now() - start;
		await c.join("fence", (data) => t.fence.push(data));
		return true })()`)
	t.Logf("joined over SSE %.0f ms after connect", eval[float64](p, `t.ms`))
	if got := eval[string](p, `t.c.transport`); got != "sse" {
		t.Fatalf("transport %q, want sse", got)
	}
	if got := px.counts(); got[0] != 1 || got[1] != 1 || got[2] < 1 {
		t.Fatalf("proxy saw %d upgrades, %d streams, %d posts; want 1, 1, some", got[0], got[1], got[2])
	}
	// The welcome is the WebSocket's: the stream's secret stays inside.
	if got := eval[string](p, `[typeof t.welcome.channel, typeof t.welcome.node, "secret" in t.welcome, t.welcome === t.c.welcome].join()`); got != "string,string,false,true" {
		t.Fatalf("welcome: %s (%s)", got, eval[string](p, `JSON.stringify(t.welcome)`))
	}

	s.Publish("news", `{"n":1}`)
	p.wait(`t.got.length === 1`)
	if got := eval[string](p, `JSON.stringify(t.got[0])`); got != `[{"n":1},"news","test-region"]` {
		t.Fatalf("delivery %s", got)
	}
	if got := eval[string](p, `t.states.join()`); got != "connected" {
		t.Fatalf("states %s", got)
	}

	// Thirty sends at once: every one acknowledged, delivered in the
	// order sent, in fewer POSTs than frames (those queued behind a POST
	// in flight go together).
	before := px.posts.Load()
	eval[bool](p, `Promise.all(Array.from({ length: 30 }, (_, i) => t.c.send("fence", { i }))).then(() => true)`)
	p.wait(`t.fence.length === 30`)
	if got := eval[string](p, `t.fence.map((d) => d.i).join()`); got != "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29" {
		t.Fatalf("delivered in this order: %s", got)
	}
	if n := px.posts.Load() - before; n >= 30 || n < 1 {
		t.Fatalf("30 frames took %d POSTs", n)
	}

	// Refusals: in an error frame over the stream (a bad name), and in the
	// answer to a POST (a body over the server's limit); the connection
	// stays usable after both.
	// A frame over the server's limit, sent between two others, is
	// refused alone.
	codes := eval[string](p, `(async () => {
		const code = (promise) => promise.then(() => "resolved", (e) => e.code);
		const bad = await code(t.c.join("bad..name"));
		const sends = await Promise.all([t.c.send("fence", "a"), t.c.send("fence", "x".repeat(100 << 10)), t.c.send("fence", "b")].map(code));
		const ping = typeof (await t.c.ping());
		return [bad, ...sends, ping, t.c.state].join() })()`)
	if codes != "invalid_group,resolved,too_large,resolved,number,connected" {
		t.Fatalf("got %s", codes)
	}
	p.wait(`t.fence.length === 32 && t.fence[30] === "a" && t.fence[31] === "b"`)

	// Leave: nothing more for the group (a message to another group,
	// published after it, is the fence).
	eval[bool](p, `t.c.leave("news").then(() => true)`)
	s.Publish("news", `{"n":2}`)
	s.Publish("fence", `"after"`)
	p.wait(`t.fence.length === 33`)
	if n := eval[int](p, `t.got.length`); n != 1 {
		t.Fatalf("%d deliveries after leave, want none", n-1)
	}
	eval[bool](p, `t.c.send("fence", {from: "quiet"}, {echo: false}).then(() => true)`)
	eval[bool](p, `t.c.send("fence", {from: "page"}).then(() => true)`)
	p.wait(`t.fence.length === 34 && t.fence[33].from === "page"`)

	// The page remembers SSE: a second client does not try the upgrade.
	if got := eval[string](p, `(async () => {
		const { connect } = await import("/client.js");
		const c2 = connect();
		await c2.ping();
		const tr = c2.transport;
		c2.close();
		return tr })()`); got != "sse" {
		t.Fatalf("second client on %q", got)
	}
	if got := px.counts(); got[0] != 1 || got[1] != 2 {
		t.Fatalf("proxy saw %d upgrades and %d streams; want 1 and 2", got[0], got[1])
	}

	if got := eval[string](p, `(t.c.close(), t.c.ping().catch((e) => e.code))`); got != "closed" {
		t.Fatalf("ping after close: %s", got)
	}
	p.wait(`t.states.join() === "connected,closed"`)
	// The stream ends with the client: the server lets the connection go.
	waitFor(t, 5*time.Second, func() bool { return s.B.Stats().Channels == 0 })
}

// Two demo pages chat through the proxy, as over WebSockets.
func testSSEChat(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{ClientSend: true, Region: "europe-west1"})
	px := startProxy(t, s.Addr, refuseUpgrades)
	a := openPage(t, browser, px.URL+"/")
	b := openPage(t, browser, px.URL+"/")
	a.waitJoined("room.lobby")
	b.waitJoined("room.lobby")
	for _, p := range []*page{a, b} {
		if got := eval[string](p, `groupcast.transport`); got != "sse" {
			t.Fatalf("transport %q, want sse", got)
		}
	}
	a.setName("ada")
	b.setName("bob")
	a.say("hello from ada")
	if got, want := b.waitShown("hello from ada"), (shown{"ada", "europe-west1", s.B.Node(), "hello from ada"}); got != want {
		t.Fatalf("bob sees %+v, want %+v", got, want)
	}
	b.say("hi ada")
	if got := a.waitShown("hi ada"); got.Who != "bob" {
		t.Fatalf("ada sees %+v", got)
	}
	s.Publish("room.lobby", `{"text":"from a backend"}`)
	for _, p := range []*page{a, b} {
		if got := p.waitShown("from a backend"); got.Who != "backend" {
			t.Fatalf("backend post shows as %+v", got)
		}
	}
	a.wait(`document.getElementById("connections").textContent === "2"`)
}

// Presence over SSE: a second page appears in the first one's list, and
// leaves it when its tab closes (the stream ends with it).
func testSSEPresence(t *testing.T, browser context.Context) {
	s := startLiveWith(t, broker.Config{Presence: []string{"room.*"}}, Config{})
	px := startProxy(t, s.Addr, refuseUpgrades)
	a := openPage(t, browser, px.URL+"/")
	a.waitJoined("room.lobby")
	a.wait(`document.getElementById("people-title").textContent === "In the room (1)"`)
	b := openPage(t, browser, px.URL+"/")
	b.waitJoined("room.lobby")
	a.wait(`document.getElementById("people-title").textContent === "In the room (2)"`)
	b.cancel()
	a.wait(`document.getElementById("people-title").textContent === "In the room (1)"`)
	if got := eval[string](a, `groupcast.transport`); got != "sse" {
		t.Fatalf("transport %q, want sse", got)
	}
}

// A recoverable room over SSE misses nothing across a restart of its
// server: what another instance published meanwhile arrives, once each,
// after the page reconnected, still over SSE (no second upgrade try),
// to the new instance.
func testSSEResume(t *testing.T, browser context.Context) {
	ns := natstest.StartJetStream(t)
	keep := []broker.PolicyRule{{Pattern: "room.*", Policy: broker.Recoverable}}
	s := startLiveWith(t, broker.Config{URL: ns.ClientURL(), Policies: keep}, Config{})
	other := startLiveWith(t, broker.Config{URL: ns.ClientURL(), Policies: keep}, Config{})
	px := startProxy(t, s.Addr, refuseUpgrades)

	p := openPage(t, browser, px.URL+"/")
	p.waitJoined("room.lobby")
	eval[bool](p, `(window.states = [], groupcast.addEventListener("state", (e) => states.push(e.detail)), true)`)
	s.Publish("room.lobby", `{"text":"before"}`)
	p.waitShown("before")
	old := s.B.Node()
	upgrades := px.upgrades.Load()
	s.Stop()
	other.Publish("room.lobby", `{"text":"while away 1"}`)
	other.Publish("room.lobby", `{"text":"while away 2"}`)
	s.Restart()
	p.waitShown("while away 1")
	p.waitShown("while away 2")
	s.Publish("room.lobby", `{"text":"after"}`)
	p.waitShown("after")
	for _, text := range []string{"before", "while away 1", "while away 2", "after"} {
		sel := fmt.Sprintf(`#messages .msg[data-text=%q]`, text)
		if n := eval[int](p, fmt.Sprintf(`document.querySelectorAll(%q).length`, sel)); n != 1 {
			t.Fatalf("%q shown %d times, want once", text, n)
		}
	}
	if got := eval[string](p, `[groupcast.transport, groupcast.welcome.node !== "`+old+`", states[0], states.at(-1)].join()`); got != "sse,true,reconnecting,connected" {
		t.Fatalf("after the restart: %s", got)
	}
	if n := px.upgrades.Load(); n != upgrades {
		t.Fatalf("%d more upgrade tries after the restart: the page forgot that SSE works", n-upgrades)
	}
}

// A stream cut by the network (no close event) is reconnected by the
// client alone, after its backoff and with since, not by EventSource's own
// retry as well: one new stream, one connection on the server, and what
// was published in a recoverable room meanwhile arrives once.
func testSSECut(t *testing.T, browser context.Context) {
	ns := natstest.StartJetStream(t)
	s := startLiveWith(t, broker.Config{URL: ns.ClientURL(),
		Policies: []broker.PolicyRule{{Pattern: "room.*", Policy: broker.Recoverable}}}, Config{})
	px := startProxy(t, s.Addr, refuseUpgrades)
	p := openPage(t, browser, px.URL+"/healthz")
	// A backoff of 1 to 2 s: the publishes below happen while it is away.
	eval[bool](p, `(async () => {
		const { connect } = await import("/client.js");
		const c = connect(undefined, { minDelay: 2000, maxDelay: 2000 });
		window.t = { c, got: [], welcomes: 0 };
		c.addEventListener("welcome", () => t.welcomes++);
		await c.join("room.7", (data) => t.got.push(data));
		return true })()`)
	s.Publish("room.7", `1`)
	p.wait(`t.got.length === 1`)
	streams := px.streams.Load()

	px.cut()
	p.wait(`t.c.state === "reconnecting"`)
	s.Publish("room.7", `2`)
	s.Publish("room.7", `3`)
	if n := eval[int](p, `t.welcomes`); n != 1 {
		t.Fatalf("%d welcomes right after the cut: back sooner than the client's backoff allows (EventSource's own retry?)", n)
	}
	p.wait(`t.c.state === "connected" && t.welcomes === 2 && t.got.length === 3`)
	// Longer than EventSource's own retry (3 s): had it reconnected too,
	// another stream would be open by now.
	time.Sleep(3500 * time.Millisecond)
	if got := eval[string](p, `[t.got.join(), t.welcomes, t.c.transport].join(" ")`); got != "1,2,3 2 sse" {
		t.Fatalf("got %s, want 1,2,3 over two connections", got)
	}
	if n := px.streams.Load() - streams; n != 1 {
		t.Fatalf("%d new streams after the cut, want 1", n)
	}
	if n := s.B.Stats().Channels; n != 1 {
		t.Fatalf("%d connections on the server, want 1", n)
	}
}

// With tokens required, over SSE: the token goes in ?token= (EventSource
// sends no custom headers), a refresh in a POST keeps the stream past the
// first token's exp, and a per-group token opens a private group.
func testSSETokens(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{ClientSend: true, Auth: AuthConfig{Secret: []byte(testSecret), Leeway: time.Millisecond}})
	px := startProxy(t, s.Addr, refuseUpgrades)
	p := openPage(t, browser, px.URL+"/healthz")
	// Tokens of 3 s (JWTs count whole seconds), minted once the page is
	// up: the first runs out while the test waits, so the stream lives on
	// only if the refresh worked.
	exp := time.Now().Add(3 * time.Second).Truncate(time.Second)
	var tokens []string
	for i := range 4 {
		tokens = append(tokens, sign(t, jwt.MapClaims{"sub": "ada", "exp": exp.Add(time.Duration(i) * 3 * time.Second).Unix(), "join": []string{"room.*"}}))
	}
	list, _ := json.Marshal(tokens)
	group := sign(t, jwt.MapClaims{"sub": "ada", "group": "private.7", "exp": time.Now().Add(time.Hour).Unix()})
	got := eval[string](p, fmt.Sprintf(`(async () => {
		const { connect } = await import("/client.js");
		const tokens = %s;
		window.t = { welcomes: 0, got: [], fetched: 0 };
		const c = connect(undefined, { getToken: async () => (t.fetched++, tokens.shift()) });
		t.c = c;
		c.addEventListener("welcome", () => t.welcomes++);
		const refused = await c.join("private.7").then(() => "joined", (e) => e.code);
		await c.join("private.7", (data) => t.got.push(data), { token: %q });
		return [c.transport, c.welcome.user, refused].join() })()`, list, group))
	if got != "sse,ada,forbidden" {
		t.Fatalf("got %s", got)
	}
	s.Publish("private.7", `"for ada"`)
	p.wait(`t.got[0] === "for ada"`)
	time.Sleep(time.Until(exp) + 700*time.Millisecond)
	if n := eval[int](p, `t.c.ping().then(() => t.welcomes)`); n != 1 {
		t.Fatalf("%d connections: the token was not refreshed before it expired", n)
	}
	if n := eval[int](p, `t.fetched`); n < 2 {
		t.Fatalf("getToken called %d times", n)
	}
	if got := px.counts(); got[1] != 1 {
		t.Fatalf("%d streams, want 1", got[1])
	}
}

// A page of another origin (an application's own site) that the server
// allows: over SSE it joins, receives and sends, its POSTs answered
// preflights and all.
func testSSECrossOrigin(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{ClientSend: true, AllowedOrigins: []string{"http://127.0.0.1:*"}})
	px := startProxy(t, s.Addr, refuseUpgrades)
	sub, _ := fs.Sub(static, "static")
	mux := http.NewServeMux()
	mux.Handle("/client.js", http.FileServerFS(sub))
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "<!doctype html><title>an application</title>")
	})
	site := httptest.NewServer(mux)
	t.Cleanup(site.Close)
	p := openPage(t, browser, site.URL+"/")
	got := eval[string](p, fmt.Sprintf(`(async () => {
		const { connect } = await import("/client.js");
		const c = connect(%q);
		window.t = { c, got: [] };
		await c.join("news", (data) => t.got.push(data));
		await c.send("news", "from the page");
		return c.transport })()`, px.URL+"/ws"))
	if got != "sse" {
		t.Fatalf("transport %q, want sse", got)
	}
	s.Publish("news", `"from a backend"`)
	p.wait(`t.got.length === 2`)
	if got := eval[string](p, `t.got.join()`); got != "from the page,from a backend" {
		t.Fatalf("got %s", got)
	}
	eval[bool](p, `(t.c.close(), true)`)
}

// A planned close (1012, here at MAX_CONNECTION_AGE) brings the client
// back at once over either transport, not after its backoff: the SSE
// close event means what the WebSocket close frame means.
func testSSEPlannedClose(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{MaxConnectionAge: 1500 * time.Millisecond})
	for _, tc := range []struct {
		name     string
		upgrades upgradeRule
	}{{"websocket", passUpgrades}, {"sse", refuseUpgrades}} {
		name := tc.name
		px := startProxy(t, s.Addr, tc.upgrades)
		p := openPage(t, browser, px.URL+"/healthz")
		// Backoff of 6 s: a close taken for a drop would come back late.
		got := eval[map[string]any](p, `(async () => {
			const { connect } = await import("/client.js");
			const c = connect(undefined, { minDelay: 6000, maxDelay: 6000 });
			await c.ready();
			const first = c.welcome.channel;
			let lost;
			c.addEventListener("state", (e) => { if (e.detail === "reconnecting") lost = performance.now(); });
			await new Promise((resolve) => c.addEventListener("welcome", resolve, { once: true }));
			await c.ready();
			const out = { transport: c.transport, gap: performance.now() - lost, renewed: c.welcome.channel !== first };
			c.close();
			return out })()`)
		t.Logf("%s: back %.0f ms after the planned close", name, got["gap"])
		if got["transport"] != name || got["renewed"] != true || got["gap"].(float64) > 2000 {
			t.Fatalf("%s: %v", name, got)
		}
	}
}

// A drain's close events ask for reconnects spread over DRAIN_PERIOD:
// each client of a page waits a random time within it before its next
// try, neither at once nor after its (here 5 s) backoff.
func testSSEDrain(t *testing.T, browser context.Context) {
	const drain = time.Second
	s := startLive(t, "", Config{DrainPeriod: drain})
	px := startProxy(t, s.Addr, refuseUpgrades)
	p := openPage(t, browser, px.URL+"/healthz")
	// Five clients (six connections per host is the browser's limit);
	// each notes when it lost its stream and when it tried again.
	eval[bool](p, `(async () => {
		const { connect } = await import("/client.js");
		window.cs = Array.from({ length: 5 }, () => connect(undefined, { minDelay: 5000, maxDelay: 5000 }));
		await Promise.all(cs.map((c) => c.ready()));
		for (const c of cs) {
			c.addEventListener("state", (e) => { if (e.detail === "reconnecting") c.lostAt ??= performance.now(); });
			const open = c.open.bind(c);
			c.open = () => { if (c.lostAt !== undefined) c.retryAt ??= performance.now(); return open(); };
		}
		return cs.every((c) => c.transport === "sse") })()`)
	s.Stop()
	p.wait(`cs.every((c) => c.retryAt !== undefined)`)
	waits := eval[[]float64](p, `cs.map((c) => Math.round(c.retryAt - c.lostAt))`)
	t.Logf("tried again %v ms after the close", waits)
	longest := 0.0
	for _, w := range waits {
		if w < 0 || w > float64(drain.Milliseconds())+200 {
			t.Fatalf("waits %v ms: each should be within the %v the close event asks for", waits, drain)
		}
		longest = max(longest, w)
	}
	if longest < 150 { // five waits at random over 1 s: all under 150 ms once in 10^4 runs
		t.Fatalf("waits %v ms: the reconnects were not spread", waits)
	}
}

// Fifty sends at once meet the server's frame rate (a burst of 40) alike
// on either transport: about forty acknowledged, the rest refused one by
// one with rate_limited, never a whole POST's worth at once.
func testSSEBurst(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{ClientSend: true})
	for _, tc := range []struct {
		name     string
		upgrades upgradeRule
	}{{"websocket", passUpgrades}, {"sse", refuseUpgrades}} {
		px := startProxy(t, s.Addr, tc.upgrades)
		p := openPage(t, browser, px.URL+"/healthz")
		got := eval[map[string]any](p, `(async () => {
			const { connect } = await import("/client.js");
			const c = connect();
			await c.ready();
			const codes = await Promise.all(Array.from({ length: 50 }, (_, i) =>
				c.send("burst", i).then(() => "ok", (e) => e.code)));
			const out = { transport: c.transport, state: c.state };
			for (const code of codes) out[code] = (out[code] || 0) + 1;
			c.close();
			return out })()`)
		t.Logf("%s: %v", tc.name, got)
		ok, _ := got["ok"].(float64)
		limited, _ := got["rate_limited"].(float64)
		if got["transport"] != tc.name || got["state"] != "connected" || ok < 40 || ok+limited != 50 {
			t.Fatalf("%s: %v, want 40 or a few more ok, the rest rate_limited", tc.name, got)
		}
	}
}

// A proxy that swallows the upgrade, never answering it: the client gives
// up on the WebSocket after its open timeout (3 s) and goes on over SSE.
func testSSEStalled(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{ClientSend: true})
	px := startProxy(t, s.Addr, stallUpgrades)
	p := openPage(t, browser, px.URL+"/healthz")
	got := eval[map[string]any](p, `(async () => {
		const { connect } = await import("/client.js");
		const start = performance.now();
		const c = connect();
		await c.join("news", (data) => (window.got = data));
		const out = { transport: c.transport, ms: performance.now() - start };
		window.c = c;
		return out })()`)
	t.Logf("over SSE %.0f ms after connect", got["ms"])
	if got["transport"] != "sse" || got["ms"].(float64) < 2900 || got["ms"].(float64) > 8000 {
		t.Fatalf("got %v, want sse after about 3 s", got)
	}
	s.Publish("news", `"over sse"`)
	p.wait(`window.got === "over sse"`)
	eval[bool](p, `(c.close(), true)`)
}

// A proxy that passes upgrades keeps the page on its WebSocket: the
// fallback is only a fallback.
func testSSEKeepsWebSocket(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{ClientSend: true})
	px := startProxy(t, s.Addr, passUpgrades)
	p := openPage(t, browser, px.URL+"/")
	p.waitJoined("room.lobby")
	p.say("over a websocket")
	p.waitShown("over a websocket")
	if got := eval[string](p, `groupcast.transport`); got != "websocket" {
		t.Fatalf("transport %q, want websocket", got)
	}
	if got := px.counts(); got[0] != 1 || got[1] != 0 || got[2] != 0 {
		t.Fatalf("proxy saw %d upgrades, %d streams, %d posts; want 1, 0, 0", got[0], got[1], got[2])
	}
	if got := eval[string](p, `import("/client.js").then((m) => {
		try { m.connect(undefined, { transports: ["websocket", "carrier-pigeon"] }); return "accepted" } catch (e) { return e.name + ": " + e.message } })`); got != `TypeError: transports: unknown ["carrier-pigeon"]; known: websocket, sse` {
		t.Fatalf("an unknown transport: %s", got)
	}

	// The order is the application's: SSE first where it comes first.
	if got := eval[string](p, `import("/client.js").then(async (m) => {
		const c = m.connect(undefined, { transports: ["sse", "websocket"] });
		await c.ping();
		c.close();
		return c.transport })`); got != "sse" {
		t.Fatalf("transports sse, websocket: on %q", got)
	}
	if got := px.counts(); got[0] != 1 || got[1] != 1 {
		t.Fatalf("proxy saw %d upgrades and %d streams; want 1 and 1", got[0], got[1])
	}
}
