package broker

import "sync"

// The recovery of a member joining a kept group: the group holds one
// recovery per member whose history is being replayed (group.recovering),
// and dispatch offers it the live frames meanwhile.

// recovery buffers a joining member's live frames while its history is
// replayed, so that nothing is lost between the two and nothing doubled.
// Once the replay is over, live frames it already sent (the live
// consumer may deliver them late) are dropped until a newer one passes.
type recovery struct {
	after  uint64 // the group's last offset dispatched before the member was added; later ones are held here
	mu     sync.Mutex
	frames []seqFrame
	lost   bool   // more arrived than the buffer holds
	done   bool   // the replay is over
	last   uint64 // when done: the newest offset the member has
	passed bool   // a live frame newer than last went through: over for good
}

type seqFrame struct {
	seq   uint64
	frame []byte
}

// maxRecoveryBuffer bounds the live frames held for one recovering member.
const maxRecoveryBuffer = 10_000

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
		r.lost = true
		return false
	}
	r.frames = append(r.frames, seqFrame{seq, frame})
	return false
}

// finish ends the replay, which sent the member everything up to offset
// last: the held frames after last go to recv, in order. It reports
// whether frames were lost for want of room. From then on offer drops
// the frames the replay or finish sent and passes newer ones.
func (r *recovery) finish(recv Receiver, last uint64) (lost bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.frames {
		if f.seq > last {
			recv.Receive(Delivery{f.frame, KindMessage})
			last = f.seq
		}
	}
	r.frames, r.done, r.last = nil, true, last
	return r.lost
}

// over reports whether the recovery is over for good: a live frame newer
// than the replay's went through, so none can come doubled.
func (r *recovery) over() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.passed
}

// recovered ends m's recovery: the frames held for it that came after
// offset last go to it, in order, before any live one can. It reports
// whether frames were lost for want of room.
func (g *group) recovered(m *member, rec *recovery, last uint64) (lost bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.recovering[m] != rec {
		return false // left meanwhile
	}
	// It stays among the recovering until a newer live frame passes (see
	// recovery.offer): one the replay sent may still come live.
	return rec.finish(m.recv, last)
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
