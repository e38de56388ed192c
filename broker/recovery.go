package broker

import (
	"context"
	"sync"
	"time"
)

// The recovery of a member joining a kept group: the group holds one
// recovery per member whose history is being replayed (group.recovering),
// and dispatch offers it the live frames meanwhile.

// recover replays to m, a member just added to the kept group g, the
// history after since, while rec holds its live frames; those after the
// replay's last offset follow it. When more came than rec holds, the
// replay goes on from the last offset m has up to the newest dropped, for
// at most maxReplayRounds rounds, then the resume ends as a gap
// (Recovered false). A replay that fails leaves m out of the group.
func (b *Broker) recover(ctx context.Context, g *group, m *member, rec *recovery, since *Since) (Recovery, error) {
	gone := func() bool { return !g.recovers(m, rec) || closing(m.recv) }
	began := time.Now()
	_, epoch := g.kept.reading()
	got, last, err := b.replay(ctx, g.kept, g, m.recv, since, rec.after, gone)
	lost := false
	rounds := 1
	for err == nil {
		final := rounds == maxReplayRounds || g.kept.policy == Latest
		var missing uint64
		if last, missing = g.recovered(m, rec, last, final); missing == 0 {
			break
		}
		if final {
			lost, got.Recovered = true, false
			break
		}
		rounds++
		var more Recovery
		var next uint64
		more, next, err = b.replay(ctx, g.kept, g, m.recv, &Since{Offset: last, Epoch: epoch}, missing, gone)
		got.Replayed += more.Replayed
		if err == nil && !more.Recovered {
			// The window moved past what m has: a gap after all. The
			// frames held meanwhile follow.
			lost, got.Recovered = true, false
			g.recovered(m, rec, last, true)
			break
		}
		last = next
	}
	if err != nil {
		// The live frames held for m came after what it missed, which it
		// was not all sent: they are dropped with its membership, so that
		// it resumes from the last offset replayed when it tries again.
		b.discard(m, g)
	}
	if since != nil || rounds > 1 {
		var from uint64
		if since != nil {
			from = since.Offset
		}
		b.log.Debug("resume", "group", g.name, "channel", m.name, "since", from, "after", rec.after, "last", last,
			"replayed", got.Replayed, "recovered", got.Recovered, "rounds", rounds, "held_lost", lost,
			"took", time.Since(began), "error", err)
	}
	if err != nil {
		return Recovery{}, err
	}
	return got, nil
}

// recovery buffers a joining member's live frames while its history is
// replayed, so that nothing is lost between the two and nothing doubled.
// Once the replay is over, live frames it already sent (the live
// consumer may deliver them late) are dropped until a newer one passes.
// When more arrive than the buffer holds, the newer ones are dropped and
// the replay goes on for another round, reading them from the history
// (see Broker.GroupJoin).
type recovery struct {
	after   uint64 // the group's last offset dispatched before the member was added; later ones are held here
	mu      sync.Mutex
	frames  []seqFrame
	dropped uint64 // the newest offset offered while the buffer was full (0: none)
	done    bool   // the replay is over
	last    uint64 // when done: the newest offset the member has
	passed  bool   // a live frame newer than last went through: over for good
}

type seqFrame struct {
	seq   uint64
	frame []byte
}

// maxRecoveryBuffer bounds the live frames held for one recovering member.
const maxRecoveryBuffer = 10_000

// maxReplayRounds bounds the rounds of one member's replay: a round after
// the first reads the live frames its buffer had no room for.
const maxReplayRounds = 4

// offer hands a live frame to the recovering member: held while the
// replay goes on; afterwards dropped when the replay sent it already, and
// delivered otherwise. It reports whether the recovery is over for good
// (a newer frame went through), so that it can be forgotten.
func (r *recovery) offer(seq uint64, frame []byte, recv Receiver) (over bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		if seq <= r.last {
			return false
		}
		recv.Receive(Delivery{frame, KindMessage})
		r.passed = true
		return true
	}
	if len(r.frames) >= maxRecoveryBuffer {
		r.dropped = seq // offered in order: the newest yet
		return false
	}
	r.frames = append(r.frames, seqFrame{seq, frame})
	return false
}

// finish ends a round of the replay, which sent the member everything up
// to offset last: the held frames after last go to recv, in order, and
// delivered is the newest offset the member has. When the buffer had no
// room for some frames newer than that, missing is the newest of them:
// unless final, the replay is not over, newer frames are held again, and
// another round is to read (delivered, missing] from the history. A
// final round ends the replay whatever is missing. Once it is over, offer
// drops the frames the replay or finish sent and passes newer ones.
func (r *recovery) finish(recv Receiver, last uint64, final bool) (delivered, missing uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.frames {
		if f.seq > last {
			recv.Receive(Delivery{f.frame, KindMessage})
			last = f.seq
		}
	}
	r.frames = nil
	if r.dropped > last {
		missing = r.dropped
	}
	r.dropped = 0
	if missing == 0 || final {
		r.done, r.last = true, last
	}
	return last, missing
}

// over reports whether the recovery is over for good: a live frame newer
// than the replay's went through, so none can come doubled.
func (r *recovery) over() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.passed
}

// recovered ends a round of m's recovery (see recovery.finish): the
// frames held for it that came after offset last go to it, in order,
// before any live one can. It reports the newest offset m has and, when
// frames were dropped for want of room, the newest of them.
func (g *group) recovered(m *member, rec *recovery, last uint64, final bool) (delivered, missing uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.recovering[m] != rec {
		return last, 0 // left meanwhile
	}
	// It stays among the recovering until a newer live frame passes (see
	// recovery.offer): one the replay sent may still come live.
	return rec.finish(m.recv, last, final)
}

// recovers reports whether m's recovery rec is still going on: m has not
// left meanwhile.
func (g *group) recovers(m *member, rec *recovery) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.recovering[m] == rec
}

// forgetRecovered drops the recoveries that are over for good.
func (g *group) forgetRecovered() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for m, rec := range g.recovering {
		if rec.over() {
			delete(g.recovering, m)
		}
	}
	if len(g.recovering) == 0 {
		g.recovering = nil
	}
}
