package web

import (
	"fmt"
	"testing"
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
	if queued, start := o.push([]byte("later")); !queued || start {
		t.Fatalf("push while claimed: queued %v, start %v; want queued, no writer", queued, start)
	}
	if !o.release([]byte("end of msg"), []byte("unwritten")) {
		t.Fatal("release with work left asked for no writer")
	}
	w, ok := o.next(nil)
	if got := fmt.Sprintf("%s %q", w.rest, w.frames); !ok || got != `end of msg ["unwritten" "later"]` {
		t.Fatalf("writer got %s, want the rest, then the unwritten frame, then the later one", got)
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
