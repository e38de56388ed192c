package web

import (
	"fmt"
	"testing"
	"time"

	"github.com/groupcast/groupcast/broker"
)

// TestOutboxImmediateWrite: an immediate write claims the writer's duty
// only when there is nothing else to do; what it could not write goes
// before what was queued meanwhile, and a writer is asked for only then.
func TestOutboxImmediateWrite(t *testing.T) {
	o := newOutbox(10, 1<<20)
	if !o.claim() {
		t.Fatal("an idle outbox refused the claim")
	}
	if queued, start := o.push(broker.Delivery{Frame: []byte("later"), Kind: broker.KindControl}); !queued || start {
		t.Fatalf("push while claimed: queued %v, start %v; want queued, no writer", queued, start)
	}
	unwritten := []broker.Delivery{{Frame: []byte("unwritten"), Kind: broker.KindMessage}, {Frame: []byte("too"), Kind: broker.KindMessage}}
	if !o.release([]byte("end of msg"), unwritten) {
		t.Fatal("release with work left asked for no writer")
	}
	w, ok := o.next(nil)
	if got := fmt.Sprintf("%s %q", w.rest, w.frames); !ok || got != `end of msg ["unwritten" "too" "later"]` {
		t.Fatalf("writer got %s, want the rest, then the unwritten frames in order, then the later one", got)
	}
	if !w.message {
		t.Fatal("a batch led by a message is not marked as one")
	}
	o.push(broker.Delivery{Frame: []byte(`{"type":"message"}`), Kind: broker.KindControl})
	o.push(broker.Delivery{Frame: []byte("m"), Kind: broker.KindMessage})
	if w, _ := o.next(nil); w.message {
		t.Fatal("a batch led by a control frame is marked as a message, whatever its bytes")
	}

	o = newOutbox(10, 1<<20)
	if !o.claim() || o.release(nil, nil) || !o.claim() {
		t.Fatal("a clean immediate write did not leave the outbox idle")
	}
	o.release(nil, nil)
	if start := o.requestPing(); !start || o.claim() {
		t.Fatal("a due ping did not take the duty")
	}
}

// TestOutboxClaimWaitsForClaim: an immediate write that comes while
// another holds the duty waits for its release and then writes at once,
// rather than queueing its frames for a writer goroutine.
func TestOutboxClaimWaitsForClaim(t *testing.T) {
	o := newOutbox(10, 1<<20)
	if !o.claim() {
		t.Fatal("an idle outbox refused the claim")
	}
	second := make(chan bool, 1)
	go func() { second <- o.claim() }()
	select {
	case ok := <-second:
		t.Fatalf("a second claim returned %v while the first was held; want it to wait", ok)
	case <-time.After(50 * time.Millisecond):
	}
	if o.release(nil, nil) {
		t.Fatal("a clean release asked for a writer")
	}
	if !<-second {
		t.Fatal("the waiting claim was refused once the first was released")
	}
	if o.release(nil, nil) {
		t.Fatal("a clean release asked for a writer")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.running || o.bursts != 0 {
		t.Fatalf("running %v, %d writer starts; want none", o.running, o.bursts)
	}
}

// TestOutboxClaimWhileParked: a streaming connection's parked writer does
// not keep deliveries from the immediate write; what is queued while an
// immediate write holds the duty waits for its release, which wakes the
// writer for it, after what the immediate write did not take.
func TestOutboxClaimWhileParked(t *testing.T) {
	o := newOutbox(10, 1<<20)
	o.bursts, o.window = streamingBursts, time.Now().UnixNano() // streaming: its writer parks when idle
	got := make(chan work, 10)
	if _, start := o.push(broker.Delivery{Frame: []byte("a"), Kind: broker.KindControl}); !start {
		t.Fatal("no writer asked for")
	}
	go func() { // the writer
		for {
			w, ok := o.next(nil)
			if !ok {
				close(got)
				return
			}
			got <- w
			if w.closing {
				return
			}
		}
	}()
	<-got
	waitFor(t, 5*time.Second, func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		return o.parked
	})
	if !o.claim() {
		t.Fatal("a parked writer kept the duty from the immediate write")
	}
	if queued, start := o.push(broker.Delivery{Frame: []byte("later"), Kind: broker.KindMessage}); !queued || start {
		t.Fatalf("push while claimed: queued %v, start %v; want queued, no writer", queued, start)
	}
	o.tick(0) // the watchdog would retire an idle parked writer: not while claimed
	select {
	case w := <-got:
		t.Fatalf("the parked writer took %q while an immediate write held the duty", w.frames)
	case <-time.After(50 * time.Millisecond):
	}
	if o.release(nil, []broker.Delivery{{Frame: []byte("unwritten"), Kind: broker.KindMessage}}) {
		t.Fatal("release asked for a new writer while one is parked")
	}
	if w := <-got; fmt.Sprintf("%q", w.frames) != `["unwritten" "later"]` {
		t.Fatalf("the woken writer got %q, want the unwritten frame, then the later one", w.frames)
	}
	o.requestClose()
	if w := <-got; !w.closing {
		t.Fatal("no close")
	}
}
