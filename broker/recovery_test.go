package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// frames is a Receiver that records what it takes.
type frames []string

func (f *frames) Receive(d Delivery) { *f = append(*f, string(d.Frame)) }

func frameOf(seq uint64) []byte { return []byte(strconv.FormatUint(seq, 10)) }

// TestRecoveryHoldsThenFollowsReplay: live frames offered during the
// replay are held, and those after the replay's last offset follow it in
// order; afterwards frames the replay sent are dropped, and the first
// newer one passes and ends the recovery for good.
func TestRecoveryHoldsThenFollowsReplay(t *testing.T) {
	var got frames
	r := &recovery{after: 3}
	for _, seq := range []uint64{4, 5, 6, 7} {
		if r.offer(seq, frameOf(seq), &got) {
			t.Fatalf("over while the replay goes on (offset %d)", seq)
		}
	}
	if len(got) != 0 {
		t.Fatalf("delivered during the replay: %v", got)
	}
	if last, missing := r.finish(&got, 5, false); last != 7 || missing != 0 { // the replay sent up to 5
		t.Fatalf("finish: last %d, missing %d, with room to spare", last, missing)
	}
	if want := []string{"6", "7"}; !slices.Equal(got, want) {
		t.Fatalf("after finish: %v, want %v", got, want)
	}
	if r.offer(7, frameOf(7), &got) || r.over() { // the live consumer, late
		t.Fatal("a frame already sent ended the recovery")
	}
	if !r.offer(8, frameOf(8), &got) || !r.over() {
		t.Fatal("a newer frame did not end the recovery")
	}
	if want := []string{"6", "7", "8"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// TestRecoveryBounded: past maxRecoveryBuffer held frames, more are
// dropped; finish sends those held and names the newest dropped, for
// another round of the replay to read, and holds newer frames again
// meanwhile. A final round ends the recovery whatever is missing.
func TestRecoveryBounded(t *testing.T) {
	var got frames
	r := &recovery{}
	for seq := uint64(1); seq <= maxRecoveryBuffer+5; seq++ {
		r.offer(seq, frameOf(seq), &got)
	}
	if len(r.frames) != maxRecoveryBuffer {
		t.Fatalf("%d frames held, want at most %d", len(r.frames), maxRecoveryBuffer)
	}
	last, missing := r.finish(&got, 0, false)
	if last != maxRecoveryBuffer || missing != maxRecoveryBuffer+5 {
		t.Fatalf("finish: last %d, missing up to %d; want %d and %d", last, missing, maxRecoveryBuffer, maxRecoveryBuffer+5)
	}
	if len(got) != maxRecoveryBuffer || got[0] != "1" || got[len(got)-1] != strconv.Itoa(maxRecoveryBuffer) {
		t.Fatalf("delivered %d frames, %v .. %v", len(got), got[0], got[len(got)-1])
	}
	// The next round replays up to maxRecoveryBuffer+5; live ones are held.
	got = nil
	for seq := uint64(maxRecoveryBuffer + 6); seq <= maxRecoveryBuffer+8; seq++ {
		if r.offer(seq, frameOf(seq), &got) {
			t.Fatal("over during the next round")
		}
	}
	if len(got) != 0 {
		t.Fatalf("delivered during the next round: %v", got)
	}
	if last, missing = r.finish(&got, maxRecoveryBuffer+5, false); last != maxRecoveryBuffer+8 || missing != 0 {
		t.Fatalf("second finish: last %d, missing %d", last, missing)
	}
	if want := []string{strconv.Itoa(maxRecoveryBuffer + 6), strconv.Itoa(maxRecoveryBuffer + 7), strconv.Itoa(maxRecoveryBuffer + 8)}; !slices.Equal(got, want) {
		t.Fatalf("after the second round: %v, want %v", got, want)
	}
	if !r.offer(maxRecoveryBuffer+9, frameOf(maxRecoveryBuffer+9), &got) {
		t.Fatal("a newer frame did not end the recovery")
	}

	// A final round ends it with frames missing.
	r = &recovery{}
	for seq := uint64(1); seq <= maxRecoveryBuffer+2; seq++ {
		r.offer(seq, frameOf(seq), &got)
	}
	if _, missing := r.finish(&got, 0, true); missing != maxRecoveryBuffer+2 {
		t.Fatalf("final finish: missing %d, want %d", missing, maxRecoveryBuffer+2)
	}
	if !r.offer(maxRecoveryBuffer+3, frameOf(maxRecoveryBuffer+3), &got) {
		t.Fatal("after a final round, a newer frame did not pass")
	}
}

// heldReceiver records the offsets of the messages it gets and holds up
// the first delivery until release is closed, as a member whose replay
// is slow.
type heldReceiver struct {
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	offsets []uint64
}

func (h *heldReceiver) Receive(d Delivery) {
	h.once.Do(func() { <-h.release })
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, line := range strings.Split(string(d.Frame), "\n") {
		var m struct{ Offset uint64 }
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			panic(fmt.Sprintf("frame %q: %v", line, err))
		}
		h.offsets = append(h.offsets, m.Offset)
	}
}

func (h *heldReceiver) received() []uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.offsets)
}

// TestResumeOutlastsRecoveryBuffer: more live messages arrive during one
// member's replay than its recovery buffer holds. The replay goes on from
// the last offset it delivered and reads the ones dropped from the
// history, so the resume still recovers: every message once, in order.
// It used to end with recovered:false, a gap, in a merely busy group.
func TestResumeOutlastsRecoveryBuffer(t *testing.T) {
	const live = maxRecoveryBuffer + 1500
	rec, got, want := resumeDuringFlood(t, 2*live, live)
	if !rec.Recovered {
		t.Fatalf("resume with %d live messages during the replay: %+v; want recovered", live, rec)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("the member got %d messages (first %v, last %v), want %d, every offset once, in order (first %v, last %v)",
			len(got), got[:min(3, len(got))], got[max(0, len(got)-3):], len(want), want[:3], want[len(want)-3:])
	}
}

// TestResumeOutlastsWindow: when the window moved past the last offset
// delivered before the next round could read on, the resume says
// recovered:false, and what the member got is still in order, once each.
func TestResumeOutlastsWindow(t *testing.T) {
	const live = maxRecoveryBuffer + 1500
	rec, got, _ := resumeDuringFlood(t, 1000, live)
	if rec.Recovered {
		t.Fatalf("resume after the window moved on: %+v; want not recovered", rec)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("offset %d after %d", got[i], got[i-1])
		}
	}
}

// resumeDuringFlood resumes a member of a group keeping size messages
// after the first of five, and holds up the delivery of its replay while
// live more messages arrive. It returns the resume's answer, the offsets
// the member got (once a later live message reached it) and those every
// member got after the offset resumed from.
func resumeDuringFlood(t *testing.T, size, live int) (Recovery, []uint64, []uint64) {
	t.Helper()
	b := historyBroker(t, "", size, PolicyRule{"*", Recoverable})
	watcher := &heldReceiver{release: make(chan struct{})} // a member all along
	close(watcher.release)
	cw, err := b.NewChannel(watcher)
	if err != nil {
		t.Fatal(err)
	}
	join(t, b, "g", cw)
	sent := publishN(t, b, "g", 0, 5)
	waitFor(t, 5*time.Second, func() bool { return len(watcher.received()) == 5 })

	member := &heldReceiver{release: make(chan struct{})}
	c, err := b.NewChannel(member)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		rec Recovery
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		rec, err := b.GroupJoin(ctx, "g", c, &Since{Offset: sent[0].Offset, Epoch: sent[0].Epoch})
		done <- result{rec, err}
	}()
	// The replay of the four missed is held up in its delivery while the
	// group gets more live messages than the member's buffer holds.
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < live; i += 4 {
				if _, err := b.GroupPublish("g", []byte(fmt.Sprint(i)), ""); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Every live message has been dispatched (the watcher has it), so
	// offered to the held member's recovery.
	waitFor(t, 20*time.Second, func() bool { return len(watcher.received()) == 5+live })
	close(member.release)
	r := <-done
	if r.err != nil {
		t.Fatalf("resume with %d live messages during the replay: %v", live, r.err)
	}
	last := publishN(t, b, "g", live, 1)[0] // and live ones follow
	waitFor(t, 10*time.Second, func() bool {
		got := member.received()
		return len(got) > 0 && got[len(got)-1] == last.Offset
	})
	time.Sleep(50 * time.Millisecond) // a moment for a late duplicate
	return r.rec, member.received(), watcher.received()[1:]
}
