package broker

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// flusher coalesces flushes of one NATS connection. A flush (a PING the
// server answers after everything sent before it) started after a caller
// arrived answers for that caller; callers that arrive while one is in
// flight share the next, so a storm of first joins costs a few round
// trips, not one each.
type flusher struct {
	nc      *nats.Conn
	timeout time.Duration

	mu     sync.Mutex
	cond   *sync.Cond
	busy   bool        // a flush is in flight
	next   *flushRound // the round that starts when it ends
	rounds int         // flushes run, for tests
}

type flushRound struct {
	done bool
	err  error
}

func newFlusher(nc *nats.Conn, timeout time.Duration) *flusher {
	f := &flusher{nc: nc, timeout: timeout}
	f.cond = sync.NewCond(&f.mu)
	return f
}

// flush returns once the server has processed everything this connection
// sent before the call, or with the error of the flush that was to show it.
func (f *flusher) flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.next == nil {
		f.next = &flushRound{}
	}
	r := f.next
	for !r.done {
		if f.busy {
			f.cond.Wait()
			continue
		}
		// Nobody is flushing: run this round for everyone in it.
		f.busy, f.next = true, nil
		f.rounds++
		f.mu.Unlock()
		err := f.nc.FlushTimeout(f.timeout)
		f.mu.Lock()
		r.done, r.err, f.busy = true, err, false
		f.cond.Broadcast()
	}
	return r.err
}
