package broker

import (
	"runtime"
	"slices"
)

// Fan-out: one group message (or several merged, see dispatchLoop) handed
// to every local member. Each member's frames go to its Receiver's
// ReceiveNow, which writes them on the calling goroutine when the socket
// takes them without blocking, so no goroutine is woken per delivery; only
// what a socket does not take is queued (Receive). A large group's members
// are split into shares written at once by the dispatching goroutine and
// the Broker's fan-out workers, so one message's fan-out spreads over
// cores. The dispatching goroutine waits for every share before the
// group's next message: each member gets a group's messages in publish
// order, whichever goroutine writes them.

// minShare is the fewest members worth handing to a worker: below it,
// waking a worker and waiting for it costs more than the writes it takes.
const minShare = 256

// maxFanoutWorkers bounds the fan-out workers, whatever GOMAXPROCS.
const maxFanoutWorkers = 15

// fanoutWorkers is how many fan-out workers a Broker starts: one per core
// beyond the first, which the dispatching goroutine uses itself.
func fanoutWorkers() int {
	return min(runtime.GOMAXPROCS(0)-1, maxFanoutWorkers)
}

// A fanout is what every member of one fan-out gets. It is read, never
// written, by the goroutines sharing it.
type fanout struct {
	ds         []Delivery            // the frames, in order
	seqs       []uint64              // their offsets, in a kept group
	except     string                // the channel left out ("" for none)
	recovering map[*member]*recovery // the group's, read-locked
}

// share is the part of a fan-out one goroutine delivers, and its result.
type share struct {
	f       *fanout
	members []*member
	n       int  // deliveries made (members reached)
	over    bool // a recovery went over for good
	done    chan<- *share
}

// run delivers the share.
func (s *share) run() {
	s.n, s.over = s.f.to(s.members)
}

// to delivers f to members: the number reached, and whether a recovery
// went over for good (see recovery.offer).
func (f *fanout) to(members []*member) (n int, over bool) {
	if f.except == "" && f.recovering == nil {
		for _, m := range members {
			if m.now == nil || !m.now.ReceiveNow(f.ds) { // deliver, inlined
				queue(m.recv, f.ds)
			}
		}
		return len(members), false
	}
	for _, m := range members {
		if m.name == f.except {
			continue
		}
		n++
		if f.recovering != nil {
			if r := f.recovering[m]; r != nil {
				for i, d := range f.ds {
					over = r.offer(f.seqs[i], d.Frame, m.recv) || over
				}
				continue
			}
		}
		deliver(m, f.ds)
	}
	return n, over
}

// deliver hands ds to m's receiver at once when it takes them so, else
// queues them one by one.
func deliver(m *member, ds []Delivery) {
	if m.now == nil || !m.now.ReceiveNow(ds) {
		queue(m.recv, ds)
	}
}

func queue(r Receiver, ds []Delivery) {
	for _, d := range ds {
		r.Receive(d)
	}
}

// fanWorker runs shares handed over on jobs until Close.
func (b *Broker) fanWorker() {
	defer b.workers.Done()
	for {
		select {
		case s := <-b.jobs:
			s.run()
			s.done <- s // never blocks: done has room for every share
		case <-b.stop:
			return
		}
	}
}

// splitter is one dispatching goroutine's state for splitting fan-outs:
// its shares and the channel their workers report on, reused from one
// message to the next.
type splitter struct {
	shares []share
	done   chan *share
}

func newSplitter(workers int) *splitter {
	return &splitter{shares: make([]share, workers+1), done: make(chan *share, workers)}
}

// fan delivers f to members, handing shares of a large group to the free
// workers and delivering the rest itself, and returns once every share is
// delivered.
func (b *Broker) fan(sp *splitter, f *fanout, members []*member) (n int, over bool) {
	parts := min(len(sp.shares), len(members)/minShare)
	if parts <= 1 {
		return f.to(members)
	}
	size := (len(members) + parts - 1) / parts
	handed := 0
	for i := 1; i < parts; i++ {
		s := &sp.shares[i]
		*s = share{f: f, members: members[i*size : min((i+1)*size, len(members))], done: sp.done}
		select {
		case b.jobs <- s: // a worker is free
			handed++
		default:
			s.run()
			n, over = n+s.n, over || s.over
		}
	}
	k, o := f.to(members[:size])
	n, over = n+k, over || o
	for range handed {
		s := <-sp.done
		n, over = n+s.n, over || s.over
	}
	return n, over
}

// Sweeping: a large group's fan-out is milliseconds of writes, and under
// load the group's next messages arrive while it runs. Instead of waiting
// for the whole fan-out to end, the sweep takes them from the dispatch
// queue as it goes (every yieldEvery members, after letting the goroutines
// that bring them run) and writes each member everything it does not have
// yet, in one write: a member the sweep reaches after a message came in
// gets it merged with the rest, and a further pass over the members before
// that point gives them what they missed. Under load, each member gets a
// write per pass rather than one per message; a message that comes in
// while nothing else is queued still goes out at once. Order per member is
// kept: every member gets the frames in the order they were added.
//
// A sweep goes on for as long as the group's messages keep coming: after
// each pass it forgets the frames every member has, so what it holds is
// what came in during about one pass (bounded by maxMerge and
// maxMergeBytes). It ends when a pass brings nothing new, or when it stops
// taking messages: a message of another subscription is next (the shard's
// other groups are not kept waiting), a join or leave of the group waits
// for its lock, the window is full, or the Broker is closing. Ending costs
// the messages that come meanwhile a wait of up to a pass (the pass that
// gives the members before the stopping point what they lack), so a sweep
// that ended after a fixed number of messages put that wait in the tail of
// the latency over and over.

// yieldEvery is how many members a sweep writes between looks at its
// dispatch queue: a message that comes in waits that many writes at most
// to join the sweep (about 2 ms at 14 µs a write).
const yieldEvery = 128

// sweepMembers is the fewest members whose fan-out sweeps.
const sweepMembers = 512

// sweeps reports whether f goes out by sweep: on one core (no fan-out
// workers to share it with), to a group with more than sweepMembers
// members, without history, exclusions or recoveries.
func (d *dispatcher) sweeps(g *group, f *fanout) bool {
	return len(d.split.shares) == 1 && len(g.members) > sweepMembers &&
		g.kept == nil && f.except == "" && f.recovering == nil
}

// sweep delivers f, and the messages of g that come in meanwhile, to g's
// members (g.mu read-held): the members reached and the deliveries made.
func (b *Broker) sweep(d *dispatcher, g *group, f *fanout) (reached, delivered int) {
	members := g.members
	if cap(d.sent) < len(members) {
		d.sent = make([]int32, len(members))
	}
	sent := d.sent[:len(members)]
	clear(sent)
	size := 0
	for _, x := range f.ds {
		size += len(x.Frame)
	}
	open := d.next == nil // more messages may join the sweep
	for {
		total := len(f.ds)
		for i, m := range members {
			if open && i%yieldEvery == yieldEvery-1 {
				runtime.Gosched()
				open, size = b.catchUp(d, g, f, size)
			}
			if k := int(sent[i]); k < len(f.ds) {
				deliver(m, f.ds[k:])
				delivered += len(f.ds) - k
				sent[i] = int32(len(f.ds))
			}
		}
		if len(f.ds) == total {
			return len(members), delivered
		}
		size = forgetSent(f, sent, size)
	}
}

// forgetSent drops from f the frames that every member of a sweep has
// (sent: how many of f.ds each has), and returns f's size without them.
func forgetSent(f *fanout, sent []int32, size int) int {
	low := slices.Min(sent)
	if low == 0 {
		return size
	}
	for _, d := range f.ds[:low] {
		size -= len(d.Frame)
	}
	clear(f.ds[:low]) // keep none of them alive
	f.ds = f.ds[low:]
	for i := range sent {
		sent[i] -= low
	}
	return size
}

// catchUp adds to f the frames of g's messages waiting in d's queue, while
// f stays within maxMerge and maxMergeBytes: whether more may join, and
// f's size now. A message of another subscription, or with an excluded
// channel, ends it and is dispatched next; a join or leave waiting for
// g.mu ends it at once, and so does Close (in practice by the leaves of
// the channels it closes first, before it stops the dispatchers).
func (b *Broker) catchUp(d *dispatcher, g *group, f *fanout, size int) (bool, int) {
	select {
	case <-b.stop:
		return false, size
	default:
	}
	if g.waiting.Load() > 0 {
		return false, size
	}
	for len(f.ds) < maxMerge && size < maxMergeBytes {
		select {
		case m := <-d.queue:
			if m.Sub != g.sub || excluded(m) != "" {
				d.next = m
				return false, size
			}
			b.stats.received.Add(1)
			frame, err := b.frame(g, m)
			if err != nil {
				continue
			}
			f.ds = append(f.ds, Delivery{frame, KindMessage})
			size += len(frame)
		default:
			return true, size
		}
	}
	return false, size
}
