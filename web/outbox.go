package web

import (
	"sync"
	"time"

	"github.com/groupcast/groupcast/broker"
)

// outbox is a connection's bounded queue of frames waiting to be written,
// and the state of its writer goroutine. The writer runs while there is
// work. When it runs out, it exits, unless the connection is streaming
// (several bursts within about a second): then it parks until the next
// burst, and the watchdog retires it after a second of idleness. So a busy
// connection does not start a goroutine per message, and a quiet one costs
// no goroutine at all, nor any of the watchdog's time.
//
// push never blocks: a push beyond either bound fails, and the connection
// is then closed as a slow consumer.
type outbox struct {
	maxFrames int
	maxBytes  int
	wake      chan struct{} // capacity 1: wakes a parked writer

	// now is held from claim to release: one immediate write at a time,
	// and one that comes during another waits for it rather than
	// starting a writer. Its holder never blocks (its write does not)
	// and calls nothing that takes now or the Broker's locks: the
	// fan-out waits on it with a group's lock held.
	now sync.Mutex

	mu      sync.Mutex
	frames  [][]byte
	message bool // frames[0] is a message: what WriteDelay may hold
	bytes   int
	rest    []byte // what an immediate write left of its frame: written first
	full    bool   // a push failed
	ping    bool   // a keepalive ping is due
	closing bool   // the connection is to be closed; nothing more is queued
	running bool   // a writer goroutine exists
	parked  bool   // it waits on wake
	claimed bool   // an immediate write holds the writer's duty (see claim)
	retire  bool   // it is to exit when it finds nothing to do
	idle    int    // watchdog ticks the writer has been parked
	bursts  int    // writer starts and wake-ups in the current burst window
	window  int64  // when the current burst window began (unix ns)
}

// streamingBursts is how many bursts within burstWindow make a connection
// count as streaming, so that its writer parks instead of exiting.
const streamingBursts = 3

// burstWindow is the window in which bursts are counted.
const burstWindow = time.Second

func newOutbox(maxFrames, maxBytes int) *outbox {
	return &outbox{maxFrames: maxFrames, maxBytes: maxBytes, wake: make(chan struct{}, 1)}
}

// push queues d unless the outbox is closing or the frame would pass a
// bound. It reports whether the frame was queued, and whether the caller
// must start a writer.
func (o *outbox) push(d broker.Delivery) (queued, start bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closing || o.full || len(o.frames) >= o.maxFrames || o.bytes+len(d.Frame) > o.maxBytes {
		o.full = o.full || !o.closing
		return false, false
	}
	if len(o.frames) == 0 {
		o.message = d.Kind == broker.KindMessage
	}
	o.frames = append(o.frames, d.Frame)
	o.bytes += len(d.Frame)
	return true, o.wakeWriter()
}

// requestPing marks a ping due; it reports whether to start a writer.
func (o *outbox) requestPing() (start bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closing {
		return false
	}
	o.ping = true
	return o.wakeWriter()
}

// requestClose stops queueing; it reports whether to start a writer.
func (o *outbox) requestClose() (start bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closing = true
	return o.wakeWriter()
}

// wakeWriter gets a writer going: it wakes a parked one, or reports that one
// must be started. o.mu must be held.
func (o *outbox) wakeWriter() (start bool) {
	o.idle = 0
	if o.claimed {
		return false // release gets the writer going
	}
	if o.parked || !o.running {
		o.countBurst()
	}
	if o.parked {
		o.parked = false
		o.wake <- struct{}{} // never blocks: parked means the slot is free
		return false
	}
	if o.running {
		return false
	}
	o.running, o.retire = true, false
	return true
}

// countBurst counts a writer start or wake-up in the current burst window,
// which begins anew at the first burst after it has passed. o.mu must be
// held.
func (o *outbox) countBurst() {
	if now := time.Now().UnixNano(); now-o.window >= int64(burstWindow) {
		o.window, o.bursts = now, 0
	}
	o.bursts++
}

// claim takes the writer's duty for an immediate write, which it gets
// only when there is nothing else to do: no writer at work (none, or a
// parked one, which stays parked until release), nothing queued or left
// over, no ping or close due. It waits for an immediate write under way
// to be released: that is microseconds (its write does not block), and
// two answers in a row then need no writer.
func (o *outbox) claim() bool {
	o.now.Lock()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.running && !o.parked || o.closing || o.ping || len(o.frames) > 0 || o.rest != nil {
		o.now.Unlock()
		return false
	}
	o.claimed = true
	return true
}

// release gives back the duty claim took: rest is what the immediate
// write left of its message, unwritten the deliveries it could not write
// at all; both go before anything queued meanwhile. It wakes a parked
// writer for them, or for what was queued, or for a ping or close, or
// reports that one must start.
func (o *outbox) release(rest []byte, unwritten []broker.Delivery) (start bool) {
	defer o.now.Unlock() // after o.mu
	o.mu.Lock()
	defer o.mu.Unlock()
	o.claimed = false
	o.rest = rest
	if len(unwritten) > 0 {
		n := len(o.frames)
		o.frames = append(o.frames, make([][]byte, len(unwritten))...)
		copy(o.frames[len(unwritten):], o.frames[:n])
		for i, d := range unwritten {
			o.frames[i] = d.Frame
			o.bytes += len(d.Frame)
		}
		o.message = unwritten[0].Kind == broker.KindMessage
	}
	if o.rest == nil && len(o.frames) == 0 && !o.ping && !o.closing {
		return false
	}
	return o.wakeWriter()
}

// work is what a writer does next.
type work struct {
	rest    []byte // raw bytes to write first
	frames  [][]byte
	message bool // frames[0] is a message: WriteDelay may hold the batch
	ping    bool
	closing bool
}

// next hands the writer everything queued (in dst, reused so the queue
// and the batch being written swap storage) and whether to ping or close.
// With nothing to do it parks a streaming connection's writer until there
// is, or reports false: the writer must exit.
func (o *outbox) next(dst [][]byte) (work, bool) {
	o.mu.Lock()
	for len(o.frames) == 0 && o.rest == nil && !o.ping && !o.closing {
		if o.retire || o.bursts < streamingBursts {
			o.running, o.retire = false, false
			o.mu.Unlock()
			return work{}, false
		}
		o.parked = true
		o.mu.Unlock()
		<-o.wake
		o.mu.Lock()
	}
	w := work{rest: o.rest, frames: o.frames, message: o.message && len(o.frames) > 0, ping: o.ping, closing: o.closing}
	o.frames, o.bytes, o.ping, o.rest = dst[:0], 0, false, nil
	o.mu.Unlock()
	return w, true
}

// more adds to w what was queued since next handed it over.
func (o *outbox) more(w work) work {
	o.mu.Lock()
	defer o.mu.Unlock()
	w.frames = append(w.frames, o.frames...)
	clear(o.frames)
	o.frames, o.bytes = o.frames[:0], 0
	w.ping, w.closing = w.ping || o.ping, o.closing
	o.ping = false
	return w
}

// tick is called by the watchdog while the connection has a writer
// goroutine: a writer parked for more than idleTicks ticks is told to
// exit. It reports whether the writer goroutine still exists.
func (o *outbox) tick(idleTicks int) (running bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.parked && !o.claimed { // a claimed one: the immediate write's release decides
		if o.idle++; o.idle > idleTicks {
			o.parked, o.retire = false, true
			o.wake <- struct{}{}
		}
	}
	return o.running
}

// isClosing reports whether the connection is being closed.
func (o *outbox) isClosing() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.closing
}
