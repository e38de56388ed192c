package infra

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/groupcast/groupcast/protocol"
)

// wsMember is a WebSocket client of a groupcast instance; it records its deliveries.
type wsMember struct {
	inbox
	conn *websocket.Conn
	done chan struct{} // closed when the socket has ended

	mu   sync.Mutex
	acks map[string]bool // ids of acknowledged requests
}

// dialMember opens a WebSocket to app, checks that the welcome names region, and joins
// group. The socket is closed when the test ends.
func dialMember(t *testing.T, name string, app *App, region, group string) *wsMember {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(app.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatalf("%s: dial: %v", name, err)
	}
	conn.SetReadLimit(-1)
	w := &wsMember{inbox: inbox{name: name}, conn: conn, done: make(chan struct{}), acks: map[string]bool{}}
	w.checkFrames(t)
	welcome := make(chan string, 1)
	go w.read(welcome)
	t.Cleanup(func() {
		_ = conn.CloseNow()
		<-w.done
	})
	select {
	case r := <-welcome:
		if r != region {
			t.Fatalf("%s: welcomed by region %q, want %q", name, r, region)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no welcome", name)
	}
	req, _ := json.Marshal(map[string]any{"type": "join", "group": group, "id": "join-" + group})
	if err := conn.Write(ctx, websocket.MessageText, req); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	waitUntil(t, 5*time.Second, name+": join acknowledged", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.acks[`"join-`+group+`"`] // the id, raw as the ack carries it
	})
	return w
}

// read records every frame until the socket ends.
func (w *wsMember) read(welcome chan<- string) {
	defer close(w.done)
	for {
		_, data, err := w.conn.Read(context.Background())
		if err != nil {
			return
		}
		at := time.Now()
		for _, line := range bytes.Split(data, []byte("\n")) {
			f, err := protocol.Decode(line)
			if err != nil {
				w.add(line, at) // recorded as bad
				continue
			}
			switch f.Type {
			case "welcome":
				welcome <- f.Region
			case "ack":
				w.mu.Lock()
				w.acks[string(f.ID)] = true
				w.mu.Unlock()
			default:
				w.add(line, at)
			}
		}
	}
}

// open reports whether the socket is still up.
func (w *wsMember) open() bool {
	select {
	case <-w.done:
		return false
	default:
		return true
	}
}

func (w *wsMember) String() string { return w.name }

// httpPublisher publishes through an instance's server API, as a backend does.
func httpPublisher(name string, app *App, apiKey string) publisher {
	return publisher{name: name, publish: func(group string, seq int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return publish(ctx, app, apiKey, group, payload{From: name, Seq: seq})
	}}
}

// readyz returns the status code of app's /readyz, or 0 without an answer.
func readyz(app *App) int {
	client := http.Client{Timeout: time.Second}
	resp, err := client.Get(app.URL + "/readyz")
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// TestRegionOutage runs the groupcast binary, one instance per region, against three
// regions of two nats-servers, with a WebSocket member and an HTTP publisher (10 ms
// apart) in every region, and stops the first region's whole NATS cluster. The other
// two regions keep fanning out to each other without a loss or a pause. The failed
// region's instance answers 503 on /readyz, and its member moves to another region
// (as the load balancer sends it once Cloud Run marks the region unhealthy), where it
// receives the third region's messages. When the cluster returns, the instance
// reconnects and resubscribes, and fan-out in and out of the region resumes with no
// instance restarted; a member that stayed on its socket there receives again.
func TestRegionOutage(t *testing.T) {
	bin := buildImageBinary(t)
	sc := startSupercluster(t, 2)
	waitInterestOnly(t, sc)
	regions := sc.Topology.Regions
	const apiKey, group = "outage-test-key", "live"

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	apps := startRegionApps(ctx, t, bin, sc, apiKey, nil)
	a, b, c := 0, 1, 2
	mover := dialMember(t, "mover@"+regions[a], apps[a], regions[a], group)
	stayer := dialMember(t, "stayer@"+regions[a], apps[a], regions[a], group)
	mb := dialMember(t, "member@"+regions[b], apps[b], regions[b], group)
	mc := dialMember(t, "member@"+regions[c], apps[c], regions[c], group)
	pubs := make([]publisher, len(regions))
	for i, r := range regions {
		pubs[i] = httpPublisher(r, apps[i], apiKey)
	}
	flows := startFlows(t, pubs, group, []*wsMember{mover, stayer, mb, mc})

	// The first region's NATS cluster goes.
	down := time.Now()
	var wg sync.WaitGroup
	for i, spec := range sc.Topology.Servers {
		if spec.Region == regions[a] {
			wg.Go(func() { sc.StopServer(i) })
		}
	}
	wg.Wait()
	waitUntil(t, 10*time.Second, regions[a]+" /readyz failing", func() bool { return readyz(apps[a]) == http.StatusServiceUnavailable })
	notReady := time.Since(down)

	// Its member goes elsewhere and hears the third region there.
	moved := dialMember(t, "mover@"+regions[b], apps[b], regions[b], group)
	_ = mover.conn.Close(websocket.StatusGoingAway, "moving")
	joinedB := time.Now()
	waitUntil(t, 5*time.Second, "the moved member hearing "+regions[c], func() bool {
		_, ok := deliveredSince(moved, flows[c], joinedB)
		return ok
	})
	hearing := time.Since(down)

	// Meanwhile the other two regions trade, 100 messages each way.
	for _, p := range []struct {
		r receiver
		f *flow
	}{{mb, flows[c]}, {mc, flows[b]}} {
		waitUntil(t, 10*time.Second, fmt.Sprintf("%s hearing %s during the outage", p.r, p.f.pub.name), func() bool {
			n, sent := 0, p.f.records()
			for _, s := range p.r.seqs(group, p.f.pub.name) {
				if s > 0 && s <= len(sent) && sent[s-1].at.After(down) {
					n++
				}
			}
			return n >= 100
		})
	}

	// The cluster returns; nothing else is touched.
	back := time.Now()
	for i, spec := range sc.Topology.Servers {
		if spec.Region == regions[a] {
			if err := sc.StartServer(i); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitUntil(t, 10*time.Second, regions[a]+" /readyz back", func() bool { return readyz(apps[a]) == http.StatusOK })
	ready := time.Since(back)
	recovered := map[string]time.Duration{}
	for _, p := range []struct {
		r receiver
		f *flow
	}{{stayer, flows[b]}, {stayer, flows[c]}, {mb, flows[a]}, {mc, flows[a]}} {
		var at time.Time
		what := fmt.Sprintf("%s -> %s", p.f.pub.name, p.r)
		waitUntil(t, 10*time.Second, what+" after the return", func() bool {
			var ok bool
			at, ok = deliveredSince(p.r, p.f, back)
			return ok
		})
		recovered[what] = at.Sub(back)
	}
	sent := stopFlows(t, flows, []*wsMember{moved, stayer, mb, mc})

	var pause time.Duration
	for _, p := range []struct {
		r receiver
		f *flow
	}{{mb, flows[c]}, {mc, flows[b]}, {mb, flows[b]}, {mc, flows[c]}} {
		l := lossOf(p.r, p.f, sent[p.f], time.Time{})
		if l.missed > 0 || l.pause > maxPause {
			t.Errorf("%s -> %s across the outage: %d lost, longest wait %v", p.f.pub.name, p.r, l.missed, l.pause)
		}
		pause = max(pause, l.pause)
	}
	for _, f := range []*flow{flows[b], flows[c]} {
		if l := lossOf(moved, f, sent[f], joinedB.Add(100*time.Millisecond)); l.missed > 0 {
			t.Errorf("%s -> %s after moving: %d lost", f.pub.name, moved, l.missed)
		}
	}
	var worst time.Duration
	for what, d := range recovered {
		worst = max(worst, d)
		t.Logf("%s: first delivery %v after the cluster's return", what, d.Round(time.Millisecond))
	}
	// From then on, nothing is lost in or out of the returned region.
	for _, p := range []struct {
		r receiver
		f *flow
	}{{stayer, flows[b]}, {stayer, flows[c]}, {mb, flows[a]}, {mc, flows[a]}, {stayer, flows[a]}} {
		if l := lossOf(p.r, p.f, sent[p.f], back.Add(worst)); l.missed > 0 {
			t.Errorf("%s -> %s after recovering: %d lost", p.f.pub.name, p.r, l.missed)
		}
	}
	if !stayer.open() {
		t.Errorf("%s: the instance closed the socket", stayer)
	}
	select {
	case <-apps[a].Done():
		t.Errorf("%s's instance exited", regions[a])
	default:
	}
	t.Logf("%s down: /readyz 503 after %v; its member heard %s from %s %v after the outage began; %s and %s lost nothing, longest wait %v (published every %v); cluster back: /readyz 200 after %v, fan-out in and out after at most %v",
		regions[a], notReady.Round(time.Millisecond), regions[c], regions[b], hearing.Round(time.Millisecond),
		regions[b], regions[c], pause.Round(time.Millisecond), flowPeriod, ready.Round(time.Millisecond), worst.Round(time.Millisecond))
}
