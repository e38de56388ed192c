package broker

import (
	"slices"
	"strconv"
	"testing"
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
	if r.finish(&got, 5) { // the replay sent up to 5
		t.Fatal("lost, with room to spare")
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
// dropped and finish reports the loss; those held still follow.
func TestRecoveryBounded(t *testing.T) {
	var got frames
	r := &recovery{}
	for seq := uint64(1); seq <= maxRecoveryBuffer+5; seq++ {
		r.offer(seq, frameOf(seq), &got)
	}
	if len(r.frames) != maxRecoveryBuffer {
		t.Fatalf("%d frames held, want at most %d", len(r.frames), maxRecoveryBuffer)
	}
	if !r.finish(&got, 0) {
		t.Fatal("loss not reported")
	}
	if len(got) != maxRecoveryBuffer || got[0] != "1" || got[len(got)-1] != strconv.Itoa(maxRecoveryBuffer) {
		t.Fatalf("delivered %d frames, %v .. %v", len(got), got[0], got[len(got)-1])
	}
}
