package wstest

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// PlannedCloses is a WebSocket endpoint for testing clients' reconnects:
// it welcomes each client (named by ?c=), closes its first connection
// with 1012 and Reason, and holds its second one open until Stop.
type PlannedCloses struct {
	Reason string

	mu     sync.Mutex
	closed map[string]time.Time
	back   map[string]time.Time
	done   chan struct{}
	stop   sync.Once
}

// NewPlannedCloses returns an endpoint that closes with reason.
func NewPlannedCloses(reason string) *PlannedCloses {
	return &PlannedCloses{Reason: reason, closed: map[string]time.Time{}, back: map[string]time.Time{}, done: make(chan struct{})}
}

func (p *PlannedCloses) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	id := r.URL.Query().Get("c")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := conn.Write(ctx, websocket.MessageText, []byte(`{"type":"welcome","channel":"n.c`+id+`","node":"n","region":""}`)); err != nil {
		return
	}
	p.mu.Lock()
	_, again := p.closed[id]
	if !again {
		p.closed[id] = time.Now()
	} else if _, ok := p.back[id]; !ok {
		p.back[id] = time.Now()
	}
	p.mu.Unlock()
	if !again {
		conn.Close(websocket.StatusServiceRestart, p.Reason)
		return
	}
	<-p.done
}

// Stop lets the connections held open go.
func (p *PlannedCloses) Stop() { p.stop.Do(func() { close(p.done) }) }

// Delays waits until n clients have come back and returns, sorted, how
// long after its close each one did.
func (p *PlannedCloses) Delays(t testing.TB, n int) []time.Duration {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		p.mu.Lock()
		got := len(p.back)
		p.mu.Unlock()
		if got >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d clients came back", got, n)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var delays []time.Duration
	for id, at := range p.back {
		delays = append(delays, at.Sub(p.closed[id]))
	}
	slices.Sort(delays)
	return delays
}

// CheckSpread fails the test unless delays (sorted) fall within
// [0, within] (with slack for a loaded machine) and spread over at least
// two fifths of it.
func CheckSpread(t testing.TB, delays []time.Duration, within time.Duration) {
	t.Helper()
	first, last := delays[0], delays[len(delays)-1]
	t.Logf("%d reconnects %v to %v after their close", len(delays), first.Round(time.Millisecond), last.Round(time.Millisecond))
	// The upper bound leaves room for a loaded machine: what it catches is
	// a hint misread (seconds for milliseconds), not a late scheduler.
	if last > 2*within+time.Second || last-first < within*2/5 {
		t.Fatalf("reconnect delays %v, want spread over %v", delays, within)
	}
}
