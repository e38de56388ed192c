package web

import (
	"context"
	"encoding/json"
	"fmt"
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
	"github.com/groupcast/groupcast/internal/livetest"
	"github.com/groupcast/groupcast/internal/natstest"
)

// pageScenarios are what a page does with /client.js and the demo, the
// same over either transport: TestBrowser runs each over both, with the
// same assertions.
var pageScenarios = []struct {
	name string
	run  func(t *testing.T, browser context.Context, tr transport)
}{
	{"JoinLeave", testPageJoinLeave},
	{"Chat", testPageChat},
	{"Errors", testPageErrors},
	{"Tokens", testPageTokens},
	{"Call", testPageCall},
	{"Presence", testPagePresence},
	{"Resume", testPageResume},
	{"PlannedClose", testPagePlannedClose},
	{"Burst", testPageBurst},
	{"Disconnect", testPageDisconnect},
}

// transport is how a scenario's pages reach their server: through a
// loopback proxy that passes WebSocket upgrades, or one that refuses them
// (as a corporate proxy does) so that /client.js falls back to
// Server-Sent Events.
type transport struct {
	name     string // what a client's transport says once connected
	upgrades upgradeRule
}

var transports = []transport{{"websocket", passUpgrades}, {"sse", refuseUpgrades}}

// front starts this transport's proxy in front of s.
func (tr transport) front(t *testing.T, s *livetest.Server) *proxy {
	t.Helper()
	return startProxy(t, s.Addr, tr.upgrades)
}

// check fails the test unless client, a JavaScript expression naming a
// client in p, is on this transport.
func (tr transport) check(t *testing.T, p *page, client string) {
	t.Helper()
	if got := eval[string](p, client+".transport"); got != tr.name {
		t.Fatalf("%s.transport %q, want %s", client, got, tr.name)
	}
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

// With /client.js: join, receive, a refusal that reaches its promise,
// leave and nothing more after it (a message to another group, published
// after it, is the fence), sends with and without echo, and close, after
// which the server lets the connection go.
func testPageJoinLeave(t *testing.T, browser context.Context, tr transport) {
	s := startLive(t, "", Config{ClientSend: true})
	p := openPage(t, browser, tr.front(t, s).URL+"/healthz")
	eval[bool](p, `(async () => {
		const { connect } = await import("/client.js");
		const c = connect();
		window.t = { c, got: [], fence: [], states: [] };
		c.addEventListener("state", (e) => t.states.push(e.detail));
		c.addEventListener("welcome", (e) => (t.welcome = e.detail));
		await c.join("news", (data, msg) => t.got.push([data, msg.group, msg.region]));
		await c.join("fence", (data) => t.fence.push(data));
		return true })()`)
	tr.check(t, p, "t.c")
	// The welcome is the protocol's, whatever the transport: an SSE
	// stream's secret stays inside the client.
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
	codes := eval[string](p, `(async () => {
		const bad = await t.c.join("bad..name").then(() => "resolved", (e) => e.code);
		return [bad, typeof (await t.c.ping()), t.c.state].join() })()`)
	if codes != "invalid_group,number,connected" {
		t.Fatalf("got %s", codes)
	}

	eval[bool](p, `t.c.leave("news").then(() => true)`)
	s.Publish("news", `{"n":2}`)
	s.Publish("fence", `"after"`)
	p.wait(`t.fence.length === 1`)
	if n := eval[int](p, `t.got.length`); n != 1 {
		t.Fatalf("%d deliveries after leave, want none", n-1)
	}
	if eval[bool](p, `t.c.groups.has("news")`) {
		t.Fatal("left group still listed")
	}
	// A message sent from the page comes back to it, unless it is sent
	// with echo: false; close is final.
	eval[bool](p, `t.c.send("fence", {from: "quiet"}, {echo: false}).then(() => true)`)
	eval[bool](p, `t.c.send("fence", {from: "page"}).then(() => true)`)
	p.wait(`t.fence.length === 2 && t.fence[1].from === "page"`)
	if got := eval[string](p, `(t.c.close(), t.c.ping().catch((e) => e.code))`); got != "closed" {
		t.Fatalf("ping after close: %s", got)
	}
	p.wait(`t.states.join() === "connected,closed"`)
	waitFor(t, 5*time.Second, func() bool { return s.B.Stats().Channels == 0 })
}

// Two pages chat through the demo: each sees the other's messages with
// their origin region and instance, and a backend's post reaches both.
func testPageChat(t *testing.T, browser context.Context, tr transport) {
	s := startLive(t, "", Config{ClientSend: true, Region: "europe-west1"})
	px := tr.front(t, s)
	a := openPage(t, browser, px.URL+"/")
	b := openPage(t, browser, px.URL+"/")
	a.waitJoined("room.lobby")
	b.waitJoined("room.lobby")
	for _, p := range []*page{a, b} {
		tr.check(t, p, "groupcast")
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
	a.wait(`document.querySelector('#messages .msg.mine[data-text="hello from ada"]')`)

	s.Publish("room.lobby", `{"text":"from a backend"}`)
	for _, p := range []*page{a, b} {
		if got := p.waitShown("from a backend"); got.Who != "backend" || got.Region != "europe-west1" {
			t.Fatalf("backend post shows as %+v", got)
		}
	}
	// The live panel: this instance, its region, and the two connections.
	a.wait(fmt.Sprintf(`document.getElementById("node").textContent === %q &&
		document.getElementById("region").textContent === "europe-west1" &&
		document.getElementById("connections").textContent === "2"`, s.B.Node()))
	// Recently active: both speakers.
	a.wait(`[...document.querySelectorAll("#people .who")].map((e) => e.textContent).sort().join() === "ada,bob"`)
}

// Refusals from the server reject the promise with its error code, the
// connection stays usable, and the demo shows them.
func testPageErrors(t *testing.T, browser context.Context, tr transport) {
	s := startLive(t, "", Config{ClientSend: false, MaxGroups: 2})
	p := openPage(t, browser, tr.front(t, s).URL+"/")
	p.waitJoined("room.lobby") // the demo's own client takes one group
	codes := eval[map[string]string](p, `(async () => {
		const { connect, GroupcastError } = await import("/client.js");
		const c = connect();
		const stray = [];
		c.addEventListener("error", (e) => stray.push(e.detail.code));
		const code = (promise) => promise.then(() => "resolved",
			(e) => (e instanceof GroupcastError ? "" : "not a GroupcastError: ") + e.code);
		const codes = {};
		codes.badGroup = await code(c.join("bad..name"));
		codes.send = await code(c.send("room.lobby", { text: "hi" }));
		await c.join("one");
		await c.join("two");
		codes.tooMany = await code(c.join("three"));
		codes.ping = typeof (await c.ping());
		codes.groups = [...c.groups].sort().join();
		codes.stray = stray.join(); // each refusal reached its promise, and only it
		codes.transport = c.transport;
		c.close();
		return codes })()`)
	want := map[string]string{"badGroup": "invalid_group", "send": "forbidden", "tooMany": "too_many_groups", "ping": "number", "groups": "one,two", "stray": "", "transport": tr.name}
	if fmt.Sprint(codes) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", codes, want)
	}
	// In the demo: a message the server refuses is shown as not sent.
	p.say("nobody may send")
	p.wait(`[...document.querySelectorAll("#messages .note.error")].some((n) => n.textContent.includes("forbidden"))`)
	if v := eval[string](p, `document.getElementById("text").value`); v != "nobody may send" {
		t.Fatalf("the refused text was not kept for another try: %q", v)
	}
}

// With tokens required: the page connects with ?token= from getToken
// (EventSource sends no custom headers, so both transports do), refreshes
// the token on the open connection before it expires (so the connection
// outlives it), and joins a private group with a per-group token.
func testPageTokens(t *testing.T, browser context.Context, tr transport) {
	s := startLive(t, "", Config{ClientSend: true, Auth: AuthConfig{Secret: []byte(testSecret), Leeway: time.Millisecond}})
	p := openPage(t, browser, tr.front(t, s).URL+"/healthz")
	// Tokens of 3 s (JWTs count whole seconds), minted once the page is
	// up: the first runs out while the test waits, so the connection
	// lives on only if the refresh worked.
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
	if want := tr.name + ",ada,forbidden"; got != want {
		t.Fatalf("got %s, want %s", got, want)
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
}

// echoFrames answers the "echo" frame type with the frame it got.
type echoFrames struct{ DefaultConsumer }

func (echoFrames) Frame(ctx context.Context, c *Conn, typ string, frame json.RawMessage) (any, error) {
	if typ == "echo" {
		return frame, nil
	}
	return nil, ErrUnknownFrame
}

// client.call reaches a Go consumer's Frame and resolves with its reply;
// a type nobody handles rejects with unknown_type.
func testPageCall(t *testing.T, browser context.Context, tr transport) {
	s := startLive(t, "", Config{Consumer: echoFrames{}})
	p := openPage(t, browser, tr.front(t, s).URL+"/healthz")
	got := eval[map[string]string](p, `(async () => {
		const { connect } = await import("/client.js");
		const c = connect();
		const out = {};
		const reply = await c.call("echo", { n: 7 });
		out.reply = String(reply.n) + reply.type;
		out.unknown = await c.call("nope").then(() => "resolved", (e) => e.code);
		out.transport = c.transport;
		c.close();
		return out })()`)
	if got["reply"] != "7echo" || got["unknown"] != "unknown_type" || got["transport"] != tr.name {
		t.Fatalf("got %v", got)
	}
}

// With presence on, the page lists who is in the room, live: a second
// page appears in the first one's list, and leaves it when its tab
// closes (and its connection with it).
func testPagePresence(t *testing.T, browser context.Context, tr transport) {
	s := startLiveWith(t, broker.Config{Presence: []string{"room.*"}}, Config{})
	px := tr.front(t, s)
	a := openPage(t, browser, px.URL+"/")
	a.waitJoined("room.lobby")
	tr.check(t, a, "groupcast")
	a.wait(`document.getElementById("people-title").textContent === "In the room (1)"`)
	b := openPage(t, browser, px.URL+"/")
	b.waitJoined("room.lobby")
	a.wait(`document.getElementById("people-title").textContent === "In the room (2)"`)
	b.cancel()
	a.wait(`document.getElementById("people-title").textContent === "In the room (1)"`)
}

// A recoverable room misses nothing across a restart of its server: what
// another instance published meanwhile arrives, once each, after the page
// reconnected to the new instance, on the same transport (over SSE with
// no second upgrade try).
func testPageResume(t *testing.T, browser context.Context, tr transport) {
	ns := natstest.StartJetStream(t)
	keep := []broker.PolicyRule{{Pattern: "room.*", Policy: broker.Recoverable}}
	s := startLiveWith(t, broker.Config{URL: ns.ClientURL(), Policies: keep}, Config{})
	other := startLiveWith(t, broker.Config{URL: ns.ClientURL(), Policies: keep}, Config{})
	px := tr.front(t, s)

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
	if got, want := eval[string](p, `[groupcast.transport, groupcast.welcome.node !== "`+old+`", states[0], states.at(-1)].join()`), tr.name+",true,reconnecting,connected"; got != want {
		t.Fatalf("after the restart: %s, want %s", got, want)
	}
	if n := px.upgrades.Load(); tr.upgrades == refuseUpgrades && n != upgrades {
		t.Fatalf("%d more upgrade tries after the restart: the page forgot that SSE works", n-upgrades)
	}
}

// A planned close (1012, here at MAX_CONNECTION_AGE) brings the client
// back at once, not after its backoff: the SSE close event means what the
// WebSocket close frame means.
func testPagePlannedClose(t *testing.T, browser context.Context, tr transport) {
	s := startLive(t, "", Config{MaxConnectionAge: 1500 * time.Millisecond})
	p := openPage(t, browser, tr.front(t, s).URL+"/healthz")
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
	t.Logf("back %.0f ms after the planned close", got["gap"])
	if got["transport"] != tr.name || got["renewed"] != true || got["gap"].(float64) > 2000 {
		t.Fatalf("got %v", got)
	}
}

// Fifty sends at once meet the server's frame rate (a burst of 40): about
// forty acknowledged, the rest refused one by one with rate_limited (over
// SSE never a whole POST's worth at once).
func testPageBurst(t *testing.T, browser context.Context, tr transport) {
	s := startLive(t, "", Config{ClientSend: true})
	p := openPage(t, browser, tr.front(t, s).URL+"/healthz")
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
	t.Logf("%v", got)
	ok, _ := got["ok"].(float64)
	limited, _ := got["rate_limited"].(float64)
	if got["transport"] != tr.name || got["state"] != "connected" || ok < 40 || ok+limited != 50 {
		t.Fatalf("%v, want 40 or a few more ok, the rest rate_limited", got)
	}
}

// A disconnect through the server API (4003, as at logout) is final: the
// client goes to closed, its "closed" event carries the code and reason,
// and it does not come back, though its backoff is short, until the page
// connects again.
func testPageDisconnect(t *testing.T, browser context.Context, tr transport) {
	s := startLive(t, "", Config{})
	px := tr.front(t, s)
	p := openPage(t, browser, px.URL+"/healthz")
	channel := eval[string](p, `(async () => {
		const { connect } = await import("/client.js");
		const c = connect(undefined, { minDelay: 50, maxDelay: 100 });
		window.t = { c, states: [], closed: [] };
		c.addEventListener("state", (e) => t.states.push(e.detail));
		c.addEventListener("closed", (e) => t.closed.push(e.detail));
		await c.join("news");
		return c.welcome.channel })()`)
	tr.check(t, p, "t.c")
	before := px.counts()
	resp, err := http.Post(s.URL()+"/api/channels/"+channel+"/disconnect", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("disconnect: %d", resp.StatusCode)
	}
	p.wait(`t.c.state === "closed"`)
	if got := eval[string](p, `JSON.stringify([t.states, t.closed])`); got != `[["connected","closed"],[{"code":4003,"reason":"disconnected"}]]` {
		t.Fatalf("states and closed events: %s", got)
	}
	if got := eval[string](p, `t.c.ping().then(() => "resolved", (e) => e.code)`); got != "closed" {
		t.Fatalf("ping after the disconnect: %s", got)
	}
	// Many backoffs later: no new connection, on the proxy or the server.
	time.Sleep(1500 * time.Millisecond)
	if got := px.counts(); got[0] != before[0] || got[1] != before[1] {
		t.Fatalf("proxy saw %v after the disconnect, %v before: the client came back", got, before)
	}
	if n := s.B.Stats().Channels; n != 0 {
		t.Fatalf("%d connections on the server after the disconnect", n)
	}
	// Only the page connects again; closing that client tells 1000.
	if got := eval[string](p, `(async () => {
		const { connect } = await import("/client.js");
		const c = connect();
		const closed = new Promise((resolve) => c.addEventListener("closed", (e) => resolve(e.detail)));
		await c.ping();
		c.close();
		return JSON.stringify(await closed) })()`); got != `{"code":1000,"reason":""}` {
		t.Fatalf("closed event after close(): %s", got)
	}
}
