package web

import (
	"context"
	"errors"
	"time"
)

// pingFrame is a WebSocket ping with no payload.
var pingFrame = []byte{0x89, 0x00}

// keepaliveGrid is the grid that keepalive timers fire on (a tenth of
// PingInterval when that is finer): the pings of many connections go out
// together, on one wakeup of the server, rather than each on a wakeup of
// its own, which on an otherwise idle core costs more than the ping's
// write. A ping goes out up to one grid step late.
const keepaliveGrid = 250 * time.Millisecond

// grid is the step of the keepalive's grid in ns (0: none).
func (s *session) grid() int64 {
	return int64(min(keepaliveGrid, s.srv.cfg.PingInterval/10))
}

// gridUp returns the first point of a grid of step grid (0: none) at or
// after t.
func gridUp(t, grid int64) int64 {
	if grid <= 0 {
		return t
	}
	return (t + grid - 1) / grid * grid
}

// rearm sets the keepalive timer to fire at the first grid point at or
// after d from now (unix ns).
func (s *session) rearm(now int64, d time.Duration) {
	s.pinger.Reset(time.Duration(gridUp(now+int64(d), s.grid()) - now))
}

// nextPing sets the keepalive timer for the next ping, PingInterval after
// the last (never further off: a wall clock set back moves no ping).
func (s *session) nextPing(now int64) {
	interval := int64(s.srv.cfg.PingInterval)
	s.rearm(now, time.Duration(min(max(s.pingLast.Load()+interval-now, 0), interval)))
}

// ping is the keepalive timer's callback. A WebSocket's ping is written
// at once when nothing else is being written, as deliveries are
// (pingNow); its pong sets the timer for the next ping, PingInterval
// after this one, and a pong that has not come within WriteTimeout (as
// the timer finds when it comes back, on the grid) drops the connection:
// no goroutine waits for the pong. An SSE stream's heartbeat is written
// at once the same way. Otherwise the writer goroutine pings (and waits
// for the pong itself) or writes the heartbeat.
func (s *session) ping() {
	cfg := s.srv.cfg
	now := time.Now().UnixNano()
	if sent := s.pingAwaited.Load(); sent != 0 {
		if wait := int64(cfg.WriteTimeout) - (now - sent); wait > 0 {
			s.rearm(now, time.Duration(min(wait, int64(cfg.WriteTimeout)))) // PingInterval is the shorter
			if s.pingAwaited.Load() == 0 {
				s.nextPing(now) // the pong came meanwhile: its timer is the one to keep
			}
			return
		}
		s.logger().Debug("ping failed", "error", "no pong within the write timeout")
		s.close(0, "") // dead: a close handshake would only time out
		return
	}
	if now < s.pingLast.Load()+int64(cfg.PingInterval) {
		s.nextPing(now) // the pong came: on to the next ping
		return
	}
	s.pingLast.Store(now - now%max(s.grid(), 1)) // the grid point it fired for: the next is PingInterval on
	if s.sse != nil {
		if s.pingNow(s.sse.heartbeatBytes()) { // nothing comes back: a dead stream's writes fail
			s.nextPing(now)
			return
		}
	} else {
		// The timer for the pong's check, then the wait, both before the
		// write: the pong, which sets the timer for the next ping, may beat
		// the write's return.
		s.rearm(now, min(cfg.WriteTimeout, cfg.PingInterval))
		s.pingAwaited.Store(now)
		if s.pingNow(pingFrame) {
			return
		}
		s.pingAwaited.Store(0) // the writer pings, and then sets the timer
	}
	if s.out.requestPing() {
		s.startWriter()
	}
}

// pong is told of every pong the client sends. One that ends the wait
// for the ping written at once sets the timer for the next ping, so the
// timer does not come back to find the pong.
func (s *session) pong(context.Context, []byte) {
	if s.pingAwaited.Swap(0) != 0 {
		s.nextPing(time.Now().UnixNano())
	}
}

// pingNow writes p, a ping frame or a heartbeat, at once, as ReceiveNow
// writes frames, when nothing else is being written and the socket has
// room; what it could not write of it goes to the writer, ahead of
// anything else. It reports whether p went out (or the connection turned
// out broken).
func (s *session) pingNow(p []byte) bool {
	if !s.writesNow() || !s.out.claim() {
		return false
	}
	n, err := s.tryWrite(p)
	var rest []byte
	switch {
	case errors.Is(err, errWouldBlock):
		if s.out.release(nil, nil) {
			s.startWriter()
		}
		return false
	case err != nil:
		s.out.release(nil, nil)
		s.close(0, "") // broken: drop it
		return true
	case n < len(p):
		rest = append([]byte(nil), p[n:]...)
	}
	if s.out.release(rest, nil) {
		s.startWriter()
	}
	return true
}

// keepalive pings the client from the writer goroutine and waits for the
// pong, within WriteTimeout; an SSE stream gets a heartbeat.
func (s *session) keepalive() error {
	if s.sse != nil {
		return s.heartbeat()
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.WriteTimeout)
	defer cancel()
	return s.conn.Ping(ctx)
}
