package web

import (
	"context"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/coder/websocket"
)

// Shutdown closes every WebSocket with 1012 (service restart) so clients
// reconnect elsewhere, spread over DrainPeriod, refuses new ones, and
// waits for every goroutine it started (sessions, commands, the watchdog)
// to end, then for the disconnect hook's queued reports. When ctx ends
// first it drops the remaining connections without a handshake, and the
// reports not yet sent. /readyz answers 503 from the first call on.
func (s *Server) Shutdown(ctx context.Context) error {
	s.goroutines.close()
	s.mu.Lock()
	open := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		open = append(open, ss)
	}
	s.mu.Unlock()
	s.wakeWatchdog() // it returns now if there is no session
	s.drain(ctx, open)
	done := make(chan struct{})
	go func() { // Shutdown's own: it always waits for done
		s.goroutines.wait()
		close(done)
	}()
	defer s.auth.close()
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		for ss := range s.sessions {
			ss.conn.CloseNow()
		}
		s.mu.Unlock()
		<-done
	}
	if s.hooks != nil {
		s.hooks.drain(ctx) // every session has reported its disconnect
	}
	return ctx.Err()
}

// Drain pacing: closes go out every drainStep, and the drain ends
// drainMargin before Shutdown's deadline, to leave time for the close
// handshakes and the rest of the shutdown.
const (
	drainStep   = 100 * time.Millisecond
	drainMargin = 2 * time.Second
)

// drain closes sessions with 1012, spread over DrainPeriod (or what ctx
// leaves of it): an equal share every drainStep, in random order. The
// close reason tells clients how long to spread their reconnects over.
func (s *Server) drain(ctx context.Context, sessions []*session) {
	period := s.cfg.DrainPeriod
	if deadline, ok := ctx.Deadline(); ok {
		period = min(period, time.Until(deadline)-drainMargin)
	}
	reason := "server restart"
	if period < drainStep || len(sessions) < 2 {
		for _, ss := range sessions {
			ss.close(websocket.StatusServiceRestart, reason)
		}
		return
	}
	reason = planned(reason, period)
	rand.Shuffle(len(sessions), func(i, j int) { sessions[i], sessions[j] = sessions[j], sessions[i] })
	steps := int(period / drainStep)
	tick := time.NewTicker(drainStep)
	defer tick.Stop()
	s.log.Info("draining WebSockets", "sockets", len(sessions), "over", period.String())
	for i := range steps {
		for _, ss := range sessions[i*len(sessions)/steps : (i+1)*len(sessions)/steps] {
			ss.close(websocket.StatusServiceRestart, reason)
		}
		if i == steps-1 {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			for _, ss := range sessions[(i+1)*len(sessions)/steps:] {
				ss.close(websocket.StatusServiceRestart, reason)
			}
			return
		}
	}
}

// planned appends to a close reason how long the client should spread
// its reconnect over: " reconnect_within_ms=<n>" (PROTOCOL: clients wait
// a random time up to n ms before reconnecting).
func planned(reason string, within time.Duration) string {
	return reason + " reconnect_within_ms=" + strconv.FormatInt(within.Milliseconds(), 10)
}
