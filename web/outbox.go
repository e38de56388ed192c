package web

import "sync"

// outbox is a connection's bounded queue of frames waiting to be written,
// and the state of its writer goroutine, which runs only while there is
// something to do: an idle connection has no writer and no stack for it.
//
// push never blocks: a push beyond either bound fails, and the connection
// is then closed as a slow consumer.
type outbox struct {
	maxFrames int
	maxBytes  int

	mu      sync.Mutex
	frames  [][]byte
	bytes   int
	full    bool // a push failed
	ping    bool // a keepalive ping is due
	closing bool // the connection is to be closed; nothing more is queued
	running bool // a writer goroutine is on duty
}

func newOutbox(maxFrames, maxBytes int) *outbox {
	return &outbox{maxFrames: maxFrames, maxBytes: maxBytes}
}

// push queues frame unless the outbox is closing or the frame would pass a
// bound. It reports whether the frame was queued, and whether the caller
// must start a writer.
func (o *outbox) push(frame []byte) (queued, start bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closing || o.full || len(o.frames) >= o.maxFrames || o.bytes+len(frame) > o.maxBytes {
		o.full = o.full || !o.closing
		return false, false
	}
	o.frames = append(o.frames, frame)
	o.bytes += len(frame)
	return true, o.wake()
}

// requestPing marks a ping due; it reports whether to start a writer.
func (o *outbox) requestPing() (start bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closing {
		return false
	}
	o.ping = true
	return o.wake()
}

// requestClose stops queueing; it reports whether to start a writer.
func (o *outbox) requestClose() (start bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closing = true
	return o.wake()
}

// wake claims writer duty if nobody has it. o.mu must be held.
func (o *outbox) wake() bool {
	if o.running {
		return false
	}
	o.running = true
	return true
}

// work is what a writer does next.
type work struct {
	frames  [][]byte
	ping    bool
	closing bool
}

// next hands the writer everything queued (in dst, reused so the queue
// and the batch being written swap storage) and whether to ping or close.
// With nothing to do it releases writer duty and reports false: the
// writer exits.
func (o *outbox) next(dst [][]byte) (work, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.frames) == 0 && !o.ping && !o.closing {
		o.running = false
		return work{}, false
	}
	w := work{frames: o.frames, ping: o.ping, closing: o.closing}
	o.frames, o.bytes, o.ping = dst[:0], 0, false
	return w, true
}

// isClosing reports whether the connection is being closed.
func (o *outbox) isClosing() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.closing
}
