package web

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/groupcast/groupcast/broker"
)

// TestImmediateWriteAllocatesNothing: a delivery the socket takes at once
// is written without an allocation (and so without a goroutine woken):
// every member of a large group takes this path once per message.
func TestImmediateWriteAllocatesNothing(t *testing.T) {
	e := newEnv(t, "", nil)
	c := e.dial()
	e.srv.mu.Lock()
	var ss *session
	for s := range e.srv.sessions {
		ss = s
	}
	e.srv.mu.Unlock()
	read := make(chan error, 1)
	go func() { // the client reads everything, so the socket always takes the write
		for range immediateRuns + 1 { // AllocsPerRun runs once more, to warm up
			if _, p, err := c.Conn.Read(context.Background()); err != nil || strings.Count(string(p), "\n") != 1 {
				read <- fmt.Errorf("%q, %v; want two frames", p, err)
				return
			}
		}
		read <- nil
	}()
	immediateWrites(t, ss)
	select {
	case err := <-read:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not get every message")
	}
}

// TestImmediateSSEWriteAllocatesNothing: the same on an SSE stream that
// has its connection, whose deliveries go out as events in one chunk.
func TestImmediateSSEWriteAllocatesNothing(t *testing.T) {
	e := newEnv(t, "", nil)
	c := e.openSSE("")
	e.srv.mu.Lock()
	ss := e.srv.byChannel[c.channel()]
	e.srv.mu.Unlock()
	immediateWrites(t, ss)
	for i := range 2 * (immediateRuns + 1) {
		if f := c.frame(); f["type"] != "message" || f["data"] != float64(1+i%2) {
			t.Fatalf("event %d: %v, want message %d", i, f, 1+i%2)
		}
	}
}

const immediateRuns = 1000

// immediateWrites hands ss two deliveries immediateRuns+1 times through
// ReceiveNow, once its connection is free, and fails the test if one is
// declined or allocates.
func immediateWrites(t *testing.T, ss *session) {
	t.Helper()
	// The welcome's own immediate write holds the socket until it
	// returns, which on a busy machine can be well after the client read
	// the welcome; so can a writer that sent it before parking. Either
	// declines every write below (see outbox.claim): wait for them.
	waitFor(t, 5*time.Second, func() bool {
		o := ss.out
		o.mu.Lock()
		defer o.mu.Unlock()
		return !o.claimed && (!o.running || o.parked) && !o.closing && !o.ping && len(o.frames) == 0 && o.rest == nil
	})
	ds := []broker.Delivery{
		{Frame: []byte(`{"type":"message","group":"g","data":1}`), Kind: broker.KindMessage},
		{Frame: []byte(`{"type":"message","group":"g","data":2}`), Kind: broker.KindMessage},
	}
	declined := 0
	allocs := testing.AllocsPerRun(immediateRuns, func() {
		if !ss.ReceiveNow(ds) {
			declined++
		}
	})
	if declined > 0 {
		t.Fatalf("%d of the immediate writes declined", declined)
	}
	if allocs > 0 {
		t.Fatalf("%v allocations per immediate write, want none", allocs)
	}
}
