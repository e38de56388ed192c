package web

import (
	"context"
	"errors"
	"time"
)

// pingFrame is a WebSocket ping with no payload.
var pingFrame = []byte{0x89, 0x00}

// ping is the keepalive timer's callback. A WebSocket's ping is written
// at once when nothing else is being written, as deliveries are
// (pingNow), and the timer comes back to check that its pong arrived
// within WriteTimeout, then to send the next ping PingInterval after this
// one: no goroutine waits for the pong. An SSE stream's heartbeat is
// written at once the same way. Otherwise the writer goroutine pings (and
// waits for the pong itself) or writes the heartbeat.
func (s *session) ping() {
	cfg := s.srv.cfg
	now := time.Now().UnixNano()
	if sent := s.pingAwaited.Load(); sent != 0 {
		if wait := int64(cfg.WriteTimeout) - (now - sent); wait > 0 {
			s.pinger.Reset(time.Duration(wait)) // PingInterval is the shorter
			return
		}
		s.logger().Debug("ping failed", "error", "no pong within the write timeout")
		s.close(0, "") // dead: a close handshake would only time out
		return
	}
	if due := s.pingLast.Load() + int64(cfg.PingInterval); now < due {
		s.pinger.Reset(time.Duration(due - now)) // the pong came: on to the next ping
		return
	}
	s.pingLast.Store(now)
	if s.sse != nil {
		if s.pingNow(s.sse.heartbeatBytes()) { // nothing comes back: a dead stream's writes fail
			s.pinger.Reset(cfg.PingInterval)
			return
		}
	} else {
		s.pingAwaited.Store(now) // before the write: the pong may beat its return
		if s.pingNow(pingFrame) {
			s.pinger.Reset(min(cfg.WriteTimeout, cfg.PingInterval))
			return
		}
		s.pingAwaited.Store(0)
	}
	if s.out.requestPing() {
		s.startWriter()
	}
}

// pong is told of every pong the client sends; it ends the wait for the
// ping written at once.
func (s *session) pong(context.Context, []byte) { s.pingAwaited.Store(0) }

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
