package web

import (
	"bytes"
	"context"
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
	"github.com/nats-io/nats.go"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/natstest"
	"github.com/groupcast/groupcast/internal/wstest"
)

// TestBrowser drives the demo page and /client.js in a real Chromium,
// against real servers: every page scenario over each transport (a
// WebSocket, and Server-Sent Events behind a proxy that refuses
// upgrades), then what only a WebSocket page does. One browser serves
// every subtest.
func TestBrowser(t *testing.T) {
	browser := newBrowser(t)
	for _, sc := range pageScenarios {
		t.Run(sc.name, func(t *testing.T) {
			for _, tr := range transports {
				t.Run(tr.name, func(t *testing.T) { sc.run(t, browser, tr) })
			}
		})
	}
	t.Run("Restart", func(t *testing.T) { testBrowserRestart(t, browser) })
	t.Run("Screenshot", func(t *testing.T) { testBrowserScreenshot(t, browser) })
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
