package broker

import "runtime"

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
