package web

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/groupcast/groupcast/broker"
)

// TestImmediateWriteAllocatesNothing: a delivery the socket takes at once
// is written without an allocation (and so without a goroutine woken):
// every member of a large group takes this path once per message.
// testing.AllocsPerRun counts every goroutine's allocations, so the client
// reads only after it (the socket's buffers hold the deliveries).
func TestImmediateWriteAllocatesNothing(t *testing.T) {
	e := newEnv(t, "", nil)
	c := e.dial()
	e.srv.mu.Lock()
	var ss *session
	for s := range e.srv.sessions {
		ss = s
	}
	e.srv.mu.Unlock()
	immediateWrites(t, ss)
	for range immediateRuns + 1 { // AllocsPerRun runs once more, to warm up
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, p, err := c.Conn.Read(ctx)
		cancel()
		if err != nil || strings.Count(string(p), "\n") != 1 {
			t.Fatalf("%q, %v; want two frames", p, err)
		}
	}
}

// TestImmediateSSEWriteAllocatesNothing: the same on an SSE stream that
// has its connection, whose deliveries go out as events in one chunk. The
// stream is read on this goroutine, after the writes, as above.
func TestImmediateSSEWriteAllocatesNothing(t *testing.T) {
	e := newEnv(t, "", nil)
	conn, err := net.Dial("tcp", e.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "GET /sse HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", e.http.Listener.Addr())
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /sse: %v %v", resp, err)
	}
	lines := bufio.NewScanner(resp.Body)
	frame := func() map[string]any {
		t.Helper()
		for lines.Scan() {
			if data, ok := strings.CutPrefix(lines.Text(), "data: "); ok {
				var f map[string]any
				if err := json.Unmarshal([]byte(data), &f); err != nil {
					t.Fatalf("event %q: %v", data, err)
				}
				return f
			}
		}
		t.Fatalf("stream ended: %v", lines.Err())
		return nil
	}
	welcome := frame()
	e.srv.mu.Lock()
	ss := e.srv.byChannel[fmt.Sprint(welcome["channel"])]
	e.srv.mu.Unlock()
	if ss == nil || ss.sse.sock.rc == nil {
		t.Fatalf("no stream with its own socket for %v", welcome)
	}
	immediateWrites(t, ss)
	for i := range 2 * (immediateRuns + 1) {
		if f := frame(); f["type"] != "message" || f["data"] != float64(1+i%2) {
			t.Fatalf("event %d: %v, want message %d", i, f, 1+i%2)
		}
	}
}

// immediateRuns is small enough for the socket buffers to hold its
// deliveries while nobody reads.
const immediateRuns = 100

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
