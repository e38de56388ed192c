package web

import (
	"fmt"
	"testing"

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
	if o.claim() {
		t.Fatal("claimed twice")
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
