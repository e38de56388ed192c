package web

import (
	"time"

	"github.com/coder/websocket"
)

// watchdog ends WebSocket writes that take longer than allowed, since
// writes carry no context of their own, and retires writer goroutines that
// have been idle. It runs until the Server is shutting down and every
// session has ended: the sessions being drained still need it.
func (s *Server) watchdog() {
	tick := time.NewTicker(watchdogInterval)
	defer tick.Stop()
	var stuck []*session
	var lostSince time.Time // when the broker stopped being able to deliver
	for {
		select {
		case <-s.ended:
			if s.finished() {
				return
			}
		case now := <-tick.C:
			if s.finished() {
				return
			}
			stuck = stuck[:0]
			s.withWriterMu.Lock()
			for ss := range s.withWriter {
				if ss.overdue(now.UnixNano()) {
					stuck = append(stuck, ss)
				}
				if !ss.out.tick(writerIdleTicks) {
					delete(s.withWriter, ss)
				}
			}
			s.withWriterMu.Unlock()
			s.shakes.sweep(now)
			for _, ss := range stuck {
				ss.logger().Info("write timed out; dropping the connection")
				ss.drop()
			}
			lostSince = s.closeIfLost(now, lostSince)
		}
	}
}

// watch puts ss in the watchdog's care before its writer starts: every
// write that can block (all but the immediate writes, which cannot) runs
// on the writer goroutine. The writer is marked running before this, so a
// watchdog that finds it gone and removes ss does so before ss is added
// again: both happen under withWriterMu.
func (s *Server) watch(ss *session) {
	s.withWriterMu.Lock()
	s.withWriter[ss] = struct{}{}
	s.withWriterMu.Unlock()
}

// finished reports whether the Server is shutting down with no session
// left: none can be tracked any more.
func (s *Server) finished() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions) == 0 && s.goroutines.closing()
}

// closeIfLost closes every WebSocket with 1012 once the broker has been
// unable to deliver for NATSLossGrace, so that clients reconnect to an
// instance that can (another region, behind a global load balancer)
// instead of waiting, connected and told nothing. It returns when the
// loss began (zero while the broker is ready).
func (s *Server) closeIfLost(now, since time.Time) time.Time {
	if s.broker.Ready() == nil {
		return time.Time{}
	}
	if since.IsZero() {
		return now
	}
	if now.Sub(since) < s.cfg.NATSLossGrace {
		return since
	}
	s.mu.Lock()
	n := 0
	for ss := range s.sessions {
		if !ss.out.isClosing() {
			ss.close(websocket.StatusServiceRestart, "messaging unavailable")
			n++
		}
	}
	s.mu.Unlock()
	if n > 0 {
		s.log.Warn("NATS unavailable: closed every WebSocket so clients reconnect elsewhere",
			"sockets", n, "for", now.Sub(since).Round(time.Second).String())
	}
	return since
}

// watchdogInterval is how often writes are checked: the resolution of
// WriteTimeout.
const watchdogInterval = 250 * time.Millisecond

// writerIdleTicks is how many watchdog ticks a parked writer waits for
// work before it exits: about a second.
const writerIdleTicks = 4
