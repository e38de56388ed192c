package web

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/natstest"
)

// TestBrowserSSE drives /client.js in a real Chromium through a loopback
// HTTP proxy that refuses (or swallows) WebSocket upgrades, as a corporate
// proxy does, while it passes plain HTTP and streams responses: what only
// the fallback to Server-Sent Events does. The page scenarios that work
// alike over either transport are TestBrowser's. One browser serves every
// subtest.
func TestBrowserSSE(t *testing.T) {
	browser := newBrowser(t)
	t.Run("Fallback", func(t *testing.T) { testSSEFallback(t, browser) })
	t.Run("Cut", func(t *testing.T) { testSSECut(t, browser) })
	t.Run("CrossOrigin", func(t *testing.T) { testSSECrossOrigin(t, browser) })
	t.Run("Drain", func(t *testing.T) { testSSEDrain(t, browser) })
	t.Run("Stalled", func(t *testing.T) { testSSEStalled(t, browser) })
	t.Run("KeepsWebSocket", func(t *testing.T) { testSSEKeepsWebSocket(t, browser) })
}

// Through a proxy that refuses upgrades, /client.js falls back to SSE at
// once (not after its open timeout); sends queued behind a POST in flight
// go together, in order; a frame over the server's limit, refused in a
// POST's answer, is refused alone; a second client in the page goes
// straight to SSE.
func testSSEFallback(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{ClientSend: true})
	px := startProxy(t, s.Addr, refuseUpgrades)
	p := openPage(t, browser, px.URL+"/healthz")
	// openTimeout 20 s: only the refused upgrade, not the timeout, can
	// bring the fallback within the 15 s this waits.
	eval[bool](p, `(async () => {
		const { connect } = await import("/client.js");
		const start = performance.now();
		const c = connect(undefined, { openTimeout: 20000 });
		window.t = { c, fence: [] };
		await c.join("fence", (data) => t.fence.push(data));
		t.ms = performance.now() - start;
		return true })()`)
	t.Logf("joined over SSE %.0f ms after connect", eval[float64](p, `t.ms`))
	if got := eval[string](p, `t.c.transport`); got != "sse" {
		t.Fatalf("transport %q, want sse", got)
	}
	if got := px.counts(); got[0] != 1 || got[1] != 1 || got[2] < 1 {
		t.Fatalf("proxy saw %d upgrades, %d streams, %d posts; want 1, 1, some", got[0], got[1], got[2])
	}

	// Thirty sends at once: every one acknowledged, delivered in the
	// order sent, in fewer POSTs than frames.
	before := px.posts.Load()
	eval[bool](p, `Promise.all(Array.from({ length: 30 }, (_, i) => t.c.send("fence", { i }))).then(() => true)`)
	p.wait(`t.fence.length === 30`)
	if got := eval[string](p, `t.fence.map((d) => d.i).join()`); got != "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29" {
		t.Fatalf("delivered in this order: %s", got)
	}
	if n := px.posts.Load() - before; n >= 30 || n < 1 {
		t.Fatalf("30 frames took %d POSTs", n)
	}

	// A frame over the server's limit, sent between two others, is
	// refused alone in the POST's answer; the connection stays usable.
	codes := eval[string](p, `(async () => {
		const code = (promise) => promise.then(() => "resolved", (e) => e.code);
		const sends = await Promise.all([t.c.send("fence", "a"), t.c.send("fence", "x".repeat(100 << 10)), t.c.send("fence", "b")].map(code));
		return [...sends, typeof (await t.c.ping()), t.c.state].join() })()`)
	if codes != "resolved,too_large,resolved,number,connected" {
		t.Fatalf("got %s", codes)
	}
	p.wait(`t.fence.length === 32 && t.fence[30] === "a" && t.fence[31] === "b"`)

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
	eval[bool](p, `(t.c.close(), true)`)
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
