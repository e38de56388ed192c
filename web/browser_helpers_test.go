package web

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/livetest"
)

// newBrowser starts one headless Chromium for a test and its subtests, and
// stops it (and every goroutine of chromedp) when the test ends. Without
// chromium it skips the test, except in CI (CI=true), where it fails.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium is not installed; .ci/run installs it (apt-get install chromium)")
		}
		t.Skip("browser tests need chromium (apt-get install chromium); skipping")
	}
	dir := t.TempDir()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(dir),
		chromedp.WindowSize(1280, 800),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	// The first Run starts the browser and lives as long as ctx: no timeout.
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		cancelAlloc()
		t.Fatalf("starting chromium: %v", err)
	}
	t.Cleanup(func() {
		stop, cancelStop := context.WithTimeout(ctx, 10*time.Second)
		chromedp.Cancel(stop) // closes the browser and waits for it
		cancelStop()
		cancel()
		cancelAlloc()
	})
	return ctx
}

// page is one browser tab.
type page struct {
	t      *testing.T
	ctx    context.Context
	cancel context.CancelFunc // closes the tab

	mu         sync.Mutex
	exceptions []string // uncaught JavaScript exceptions
}

// openPage opens a tab on url and checks, when the test ends, that the
// page threw no uncaught exception.
func openPage(t *testing.T, browser context.Context, url string) *page {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	p := &page{t: t, ctx: ctx, cancel: cancel}
	if err := chromedp.Do(ctx); err != nil { // opens the tab
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, e := range p.exceptions {
			t.Errorf("uncaught exception in the page: %s", e)
		}
	})
	chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*runtime.EventExceptionThrown); ok {
			msg := e.ExceptionDetails.Text
			if e.ExceptionDetails.Exception != nil {
				msg += " " + e.ExceptionDetails.Exception.Description
			}
			p.mu.Lock()
			p.exceptions = append(p.exceptions, msg)
			p.mu.Unlock()
		}
	})
	p.do(chromedp.Navigate(url))
	return p
}

// do runs steps with a time limit, failing the test on error.
func (p *page) do(steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatal(err)
	}
}

// eval evaluates a JavaScript expression, awaiting a promise, and decodes
// its value into T.
func eval[T any](p *page, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 15*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		p.t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// wait polls a JavaScript expression until it is truthy.
func (p *page) wait(expr string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 15*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(20*time.Millisecond), chromedp.WithPollingTimeout(10*time.Second)))
	if err != nil {
		p.t.Fatalf("waiting for %s: %v", expr, err)
	}
}

// The demo page, as a person sees it.

// waitJoined waits until the demo page is connected and in room.
func (p *page) waitJoined(room string) {
	p.t.Helper()
	p.wait(fmt.Sprintf(`window.groupcast && groupcast.state === "connected" &&
		[...document.querySelectorAll("#messages .note")].some((n) => n.textContent.includes("joined #%s"))`, room))
}

// say types a message into the demo's composer and presses Enter.
func (p *page) say(text string) {
	p.t.Helper()
	p.do(chromedp.SendKeys(chromedp.CSS("#text"), text+"\r"))
}

// setName sets the demo's name field as a person would.
func (p *page) setName(name string) {
	p.t.Helper()
	eval[bool](p, fmt.Sprintf(`(() => { const n = document.getElementById("name");
		n.value = %q; n.dispatchEvent(new Event("change")); return true })()`, name))
}

// shown is one chat message as the demo page shows it.
type shown struct {
	Who, Region, Node, Text string
}

// waitShown waits for a chat message with text and returns how it shows.
func (p *page) waitShown(text string) shown {
	p.t.Helper()
	sel := fmt.Sprintf(`#messages .msg[data-text=%q]`, text)
	p.wait(fmt.Sprintf(`document.querySelector(%q)`, sel))
	return eval[shown](p, fmt.Sprintf(`(() => { const m = document.querySelector(%q);
		const t = (c) => m.querySelector(c)?.textContent || "";
		return { Who: t(".who"), Region: t(".region"), Node: t(".node"), Text: t(".text") } })()`, sel))
}

// startLive starts a real instance (internal/livetest) on natsURL
// (embedded NATS when empty) with cfg as its web configuration.
func startLive(t *testing.T, natsURL string, cfg Config) *livetest.Server {
	t.Helper()
	return startLiveWith(t, broker.Config{URL: natsURL}, cfg)
}

// startLiveWith starts an instance with bc as its broker's configuration
// (presence, policies). cfg.Region, "test-region" unless set, goes to
// both, so that deliveries carry it. It stops when the test ends.
func startLiveWith(t *testing.T, bc broker.Config, cfg Config) *livetest.Server {
	t.Helper()
	if cfg.Region == "" {
		cfg.Region = "test-region"
	}
	bc.Region = cfg.Region
	return livetest.Start(t, livetest.Config{
		Broker: bc,
		Web: func(b *broker.Broker, log *slog.Logger) (livetest.Web, error) {
			c := cfg
			c.Logger = log
			return New(b, c)
		},
	})
}
