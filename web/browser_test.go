package web

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"io/fs"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats.go"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/natstest"
	"github.com/groupcast/groupcast/internal/wstest"
)

// TestBrowser drives the demo page and /client.js in a real Chromium,
// against real servers. One browser serves every subtest.
func TestBrowser(t *testing.T) {
	browser := newBrowser(t)
	t.Run("Chat", func(t *testing.T) { testBrowserChat(t, browser) })
	t.Run("JoinLeave", func(t *testing.T) { testBrowserJoinLeave(t, browser) })
	t.Run("Errors", func(t *testing.T) { testBrowserErrors(t, browser) })
	t.Run("Restart", func(t *testing.T) { testBrowserRestart(t, browser) })
	t.Run("Tokens", func(t *testing.T) { testBrowserTokens(t, browser) })
	t.Run("Screenshot", func(t *testing.T) { testBrowserScreenshot(t, browser) })
	t.Run("Call", func(t *testing.T) { testBrowserCall(t, browser) })
	t.Run("Presence", func(t *testing.T) { testBrowserPresence(t, browser) })
	t.Run("Resume", func(t *testing.T) { testBrowserResume(t, browser) })
	t.Run("Gap", func(t *testing.T) { testBrowserGap(t, browser) })
	t.Run("ReconnectSpread", func(t *testing.T) { testBrowserReconnectSpread(t, browser) })
}

// Twenty clients in a page are closed at once with 1012 and a reason
// asking for reconnects spread over 2 s: they come back at random
// moments over those 2 s, not together.
func testBrowserReconnectSpread(t *testing.T, browser context.Context) {
	closes := wstest.NewPlannedCloses("server restart reconnect_within_ms=2000")
	sub, _ := fs.Sub(static, "static")
	mux := http.NewServeMux()
	mux.Handle("/client.js", http.FileServerFS(sub))
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "<!doctype html><title>spread</title>")
	})
	mux.Handle("/ws", closes)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	t.Cleanup(closes.Stop)
	p := openPage(t, browser, hs.URL+"/")
	eval[bool](p, `import("/client.js").then((m) => {
		window.clients = Array.from({ length: 20 }, (_, i) => m.connect("/ws?c=" + i));
		return true;
	})`)
	wstest.CheckSpread(t, closes.Delays(t, 20), 2*time.Second)
}

// Two pages chat through the demo: each sees the other's messages with
// their origin region and instance, and a backend's post reaches both.
func testBrowserChat(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{ClientSend: true, Region: "europe-west1"})
	a := openPage(t, browser, s.URL()+"/")
	b := openPage(t, browser, s.URL()+"/")
	a.waitJoined("room.lobby")
	b.waitJoined("room.lobby")
	a.setName("ada")
	b.setName("bob")

	a.say("hello from ada")
	got := b.waitShown("hello from ada")
	if want := (shown{"ada", "europe-west1", s.B.Node(), "hello from ada"}); got != want {
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

// With /client.js: join, receive, leave, and nothing more after the leave
// (a message to another group, published after it, is the fence).
func testBrowserJoinLeave(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{ClientSend: true})
	p := openPage(t, browser, s.URL()+"/healthz")
	eval[bool](p, `(async () => {
		const { connect } = await import("/client.js");
		const c = connect();
		window.t = { c, got: [], fence: [], states: [] };
		c.addEventListener("state", (e) => t.states.push(e.detail));
		await c.join("news", (data, msg) => t.got.push([data, msg.group, msg.region]));
		await c.join("fence", (data) => t.fence.push(data));
		return true })()`)
	s.Publish("news", `{"n":1}`)
	p.wait(`t.got.length === 1`)
	if got := eval[string](p, `JSON.stringify(t.got[0])`); got != `[{"n":1},"news","test-region"]` {
		t.Fatalf("delivery %s", got)
	}
	if got := eval[string](p, `t.states.join()`); got != "connected" {
		t.Fatalf("states %s", got)
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
}

// Refusals from the server reject the promise with its error code, the
// connection stays usable, and the demo shows them.
func testBrowserErrors(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{ClientSend: false, MaxGroups: 2})
	p := openPage(t, browser, s.URL()+"/")
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
		c.close();
		return codes })()`)
	want := map[string]string{"badGroup": "invalid_group", "send": "forbidden", "tooMany": "too_many_groups", "ping": "number", "groups": "one,two", "stray": ""}
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

// The server restarts on the same address (NATS outlives it): both pages
// see the 1012 close, reconnect to the new instance, rejoin, and chat on.
func testBrowserRestart(t *testing.T, browser context.Context) {
	ns := natstest.Start(t, -1)
	s := startLive(t, fmt.Sprintf("nats://127.0.0.1:%d", natstest.Port(ns)), Config{ClientSend: true})
	a := openPage(t, browser, s.URL()+"/")
	b := openPage(t, browser, s.URL()+"/")
	for _, p := range []*page{a, b} {
		p.waitJoined("room.lobby")
		eval[bool](p, `(window.states = [], groupcast.addEventListener("state", (e) => states.push(e.detail)), true)`)
	}
	a.setName("ada")
	b.setName("bob")
	old := s.B.Node()

	start := time.Now()
	s.Restart()
	for _, p := range []*page{a, b} {
		p.wait(fmt.Sprintf(`groupcast.state === "connected" && groupcast.welcome.node === %q`, s.B.Node()))
		if got := eval[string](p, `states.join()`); got != "reconnecting,connected" {
			t.Fatalf("states %s", got)
		}
		p.wait(fmt.Sprintf(`[...document.querySelectorAll("#messages .note")].some((n) => n.textContent.includes("reconnected to instance %s"))`, s.B.Node()))
	}
	t.Logf("both pages back %v after the restart began (old instance %s, new %s)", time.Since(start).Round(time.Millisecond), old, s.B.Node())

	a.say("still here?")
	if got := b.waitShown("still here?"); got.Who != "ada" || got.Node != s.B.Node() {
		t.Fatalf("bob sees %+v", got)
	}
	b.say("yes")
	a.waitShown("yes")
	s.Publish("room.lobby", `{"text":"rejoined"}`)
	a.waitShown("rejoined")
	b.waitShown("rejoined")
}

// The demo with two instances in two regions on one NATS, and some load:
// a screenshot must be possible; UPDATE_SCREENSHOT=1 saves it as
// docs/demo.png for the README. A narrow screen must not scroll sideways.
func testBrowserScreenshot(t *testing.T, browser context.Context) {
	ns := natstest.Start(t, -1)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", natstest.Port(ns))
	eu := startLive(t, natsURL, Config{ClientSend: true, Region: "europe-west1"})
	us := startLive(t, natsURL, Config{ClientSend: true, Region: "us-central1"})

	a := openPage(t, browser, eu.URL()+"/")
	b := openPage(t, browser, us.URL()+"/")
	a.do(chromedp.EmulateViewport(1280, 760))
	a.waitJoined("room.lobby")
	b.waitJoined("room.lobby")
	a.setName("ada")
	b.setName("grace")
	// A second room with an unread message, for the room list.
	eval[bool](a, `(location.hash = "#room.releases", true)`)
	a.waitJoined("room.releases")
	eval[bool](a, `(location.hash = "#room.lobby", true)`)
	a.wait(`document.getElementById("title").textContent === "#room.lobby"`)
	eu.Publish("room.releases", `{"text":"v1.4 is out","name":"release-bot"}`)

	// Traffic for the live panel: a member of a busy group on a's instance.
	busy := wstest.Dial(t, "ws"+strings.TrimPrefix(eu.URL(), "http")+"/ws", nil)
	busy.Join("metrics.ticks")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // reads what the busy member gets, so it never lags
		defer close(done)
		for {
			if _, err := busy.Raw(); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); busy.Conn.CloseNow(); <-done }()
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			for range 4 + int(3*math.Sin(float64(i)/70)) { // a wave, for the sparkline
				if err := us.B.GroupSend("metrics.ticks", []byte(`{"tick":1}`)); err != nil {
					return
				}
			}
		}
	}()

	b.say("Morning! Deploy to us-central1 is done.")
	a.waitShown("Morning! Deploy to us-central1 is done.")
	a.say("Nice, europe-west1 sees it too.")
	b.waitShown("Nice, europe-west1 sees it too.")
	us.Publish("room.lobby", `{"text":"build 8812 passed","name":"ci"}`)
	a.waitShown("build 8812 passed")
	b.say("Ping from the US side, all green here.")
	if got := a.waitShown("Ping from the US side, all green here."); got.Region != "us-central1" || got.Node != us.B.Node() {
		t.Fatalf("a message from the other region shows as %+v", got)
	}
	// Let the panel gather a few seconds of rates.
	a.wait(`document.querySelectorAll("#messages .msg").length === 4`)
	time.Sleep(4 * time.Second)
	a.wait(`Number(document.getElementById("rate").textContent) > 0 && document.getElementById("rtt").textContent.endsWith("ms")`)

	shot, err := chromedp.Run(a.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("screenshot is no PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 760 || distinctColors(img) < 50 {
		t.Fatalf("screenshot %v with %d colours: blank or wrong size", b, distinctColors(img))
	}
	if os.Getenv("UPDATE_SCREENSHOT") == "1" {
		out := filepath.Join("..", "docs", "demo.png")
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", out)
	}

	// A phone: one column, nothing wider than the screen.
	a.do(chromedp.EmulateViewport(390, 844))
	a.wait(`document.documentElement.scrollWidth <= innerWidth &&
		document.querySelector(".chat").getBoundingClientRect().width > 300`)
}

func distinctColors(img image.Image) int {
	seen := map[uint32]struct{}{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 3 {
		for x := b.Min.X; x < b.Max.X; x += 3 {
			r, g, bl, _ := img.At(x, y).RGBA()
			seen[r>>8<<16|g>>8<<8|bl>>8] = struct{}{}
		}
	}
	return len(seen)
}

// With tokens required: the page connects with ?token= from getToken,
// refreshes the token on the open socket before it expires (so the
// socket outlives it), and joins a private group with a per-group token.
func testBrowserTokens(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{ClientSend: true, Auth: AuthConfig{Secret: []byte(testSecret), Leeway: time.Millisecond}})
	mint := func(c jwt.MapClaims) string {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(testSecret))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	// Tokens of 3 s (JWTs count whole seconds): the first runs out while
	// the test waits, so the socket lives on only if the refresh worked.
	exp := time.Now().Add(3 * time.Second).Truncate(time.Second)
	var tokens []string
	for i := range 4 {
		tokens = append(tokens, mint(jwt.MapClaims{"sub": "ada", "exp": exp.Add(time.Duration(i) * 3 * time.Second).Unix(), "join": []string{"room.*"}}))
	}
	group := mint(jwt.MapClaims{"sub": "ada", "group": "private.7", "exp": time.Now().Add(time.Hour).Unix()})
	list, _ := json.Marshal(tokens)
	p := openPage(t, browser, s.URL()+"/healthz")
	got := eval[map[string]string](p, fmt.Sprintf(`(async () => {
		const { connect } = await import("/client.js");
		const tokens = %s;
		window.t = { welcomes: 0, got: [], fetched: 0 };
		const c = connect(undefined, { getToken: async () => (t.fetched++, tokens.shift()) });
		t.c = c;
		c.addEventListener("welcome", () => t.welcomes++);
		const out = {};
		out.private = await c.join("private.7").then(() => "joined", (e) => e.code);
		await c.join("private.7", (data) => t.got.push(data), { token: %q });
		out.user = c.welcome.user;
		return out })()`, list, group))
	if got["private"] != "forbidden" || got["user"] != "ada" {
		t.Fatalf("got %v", got)
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
// a type nobody handles rejects with unknown_type; joined events arrive.
func testBrowserCall(t *testing.T, browser context.Context) {
	s := startLive(t, "", Config{Consumer: echoFrames{}})
	p := openPage(t, browser, s.URL()+"/")
	got := eval[map[string]string](p, `(async () => {
		const { connect } = await import("/client.js");
		const c = connect();
		const out = {};
		const reply = await c.call("echo", { n: 7 });
		out.reply = String(reply.n) + reply.type;
		out.unknown = await c.call("nope").then(() => "resolved", (e) => e.code);
		c.close();
		return out })()`)
	if got["reply"] != "7echo" || got["unknown"] != "unknown_type" {
		t.Fatalf("got %v", got)
	}
}

// With presence on, the page lists who is in the room, live: a second
// page appears in the first one's list, and leaves it when it closes.
func testBrowserPresence(t *testing.T, browser context.Context) {
	s := startLiveWith(t, broker.Config{Presence: []string{"room.*"}}, Config{})
	a := openPage(t, browser, s.URL()+"/")
	a.waitJoined("room.lobby")
	a.wait(`document.getElementById("people-title").textContent === "In the room (1)"`)
	b := openPage(t, browser, s.URL()+"/")
	b.waitJoined("room.lobby")
	a.wait(`document.getElementById("people-title").textContent === "In the room (2)"`)
	b.cancel() // the tab closes, and its socket with it
	a.wait(`document.getElementById("people-title").textContent === "In the room (1)"`)
}

// In a recoverable group the page misses nothing across a restart: what
// was published (through another instance) while its server was down
// arrives once it has reconnected and resumed.
func testBrowserResume(t *testing.T, browser context.Context) {
	ns := natstest.StartJetStream(t)
	keep := []broker.PolicyRule{{Pattern: "room.*", Policy: broker.Recoverable}}
	s := startLiveWith(t, broker.Config{URL: ns.ClientURL(), Policies: keep}, Config{})
	other := startLiveWith(t, broker.Config{URL: ns.ClientURL(), Policies: keep}, Config{})

	p := openPage(t, browser, s.URL()+"/")
	p.waitJoined("room.lobby")
	s.Publish("room.lobby", `{"text":"before"}`)
	p.waitShown("before")
	s.Stop()
	other.Publish("room.lobby", `{"text":"while away 1"}`)
	other.Publish("room.lobby", `{"text":"while away 2"}`)
	s.Restart()
	p.waitShown("while away 1")
	p.waitShown("while away 2")
	for _, text := range []string{"before", "while away 1", "while away 2"} {
		sel := fmt.Sprintf(`#messages .msg[data-text=%q]`, text)
		if n := eval[int](p, fmt.Sprintf(`document.querySelectorAll(%q).length`, sel)); n != 1 {
			t.Fatalf("%q shown %d times, want once", text, n)
		}
	}
}

// testBrowserGap: a page whose recoverable group cannot be replayed on
// rejoin (its history was made anew while the page was away) is told so
// with a gap event, once, and stays in the group.
func testBrowserGap(t *testing.T, browser context.Context) {
	ns := natstest.StartJetStream(t)
	keep := []broker.PolicyRule{{Pattern: "room.*", Policy: broker.Recoverable}}
	s := startLiveWith(t, broker.Config{URL: ns.ClientURL(), Policies: keep}, Config{})
	p := openPage(t, browser, s.URL()+"/healthz")
	eval[bool](p, `(async () => {
		const { connect } = await import("/client.js");
		const c = connect();
		window.t = { c, got: [], gaps: [] };
		c.addEventListener("gap", (e) => t.gaps.push(e.detail));
		await c.join("room.gap", (data) => t.got.push(data.n));
		return true })()`)
	s.Publish("room.gap", `{"n":1}`)
	p.wait(`t.got.length === 1`)
	s.Stop()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := nc.JetStream()
	if err := js.DeleteStream("GROUPCAST_RECOVERABLE"); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	p.wait(`t.gaps.length === 1 && t.c.state === "connected"`)
	if got := eval[string](p, `JSON.stringify(t.gaps)`); got != `[{"type":"gap","group":"room.gap","recovered":false}]` {
		t.Fatalf("gap events %s", got)
	}
	s.Publish("room.gap", `{"n":2}`)
	p.wait(`t.got.length === 2`)
	if got := eval[string](p, `t.got.join() + " " + t.gaps.length`); got != "1,2 1" {
		t.Fatalf("got %s", got)
	}
}
