package web

import "sync"

// gate starts the Server's goroutines and lets Shutdown wait for them:
// once closed it starts no more (as nats-server's startGoRoutine). The
// goroutines of a session's own (its writer, a frame's handler) are owned
// by the session's reader, which is started here and waits for them; the
// authenticator's JWKS loader and the hooks' senders are stopped by those.
type gate struct {
	mu      sync.Mutex
	closed  bool
	running sync.WaitGroup
}

// start runs f on a goroutine of its own unless the gate is closed, and
// reports whether it did.
func (g *gate) start(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.running.Add(1)
	go func() {
		defer g.running.Done()
		f()
	}()
	return true
}

// close refuses new goroutines from then on.
func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// closing reports whether close was called.
func (g *gate) closing() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// wait waits for every goroutine the gate started.
func (g *gate) wait() { g.running.Wait() }
