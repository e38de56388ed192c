package web

import "sync"

// outbox is a connection's bounded queue of frames waiting to be written.
// push never blocks: a push beyond either bound fails, and the connection
// is then closed as a slow consumer.
type outbox struct {
	maxFrames int
	maxBytes  int
	wake      chan struct{} // capacity 1: "there is something to write"

	mu     sync.Mutex
	frames [][]byte
	bytes  int
	full   bool // a push failed; nothing more is accepted
}

func newOutbox(maxFrames, maxBytes int) *outbox {
	return &outbox{maxFrames: maxFrames, maxBytes: maxBytes, wake: make(chan struct{}, 1)}
}

// push queues frame, unless that would pass a bound. It reports whether
// the frame was queued.
func (o *outbox) push(frame []byte) bool {
	o.mu.Lock()
	if o.full || len(o.frames) >= o.maxFrames || o.bytes+len(frame) > o.maxBytes {
		o.full = true
		o.mu.Unlock()
		return false
	}
	o.frames = append(o.frames, frame)
	o.bytes += len(frame)
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return true
}

// take moves every queued frame into dst (reused, so that the queue and
// the batch being written swap storage) and returns it.
func (o *outbox) take(dst [][]byte) [][]byte {
	o.mu.Lock()
	dst, o.frames = o.frames, dst[:0]
	o.bytes = 0
	o.mu.Unlock()
	return dst
}
