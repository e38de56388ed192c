package web

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/labstack/echo/v4"

	"github.com/groupcast/groupcast/protocol"
)

// Refusals of upgrades that have a reason of their own in metrics and logs
// (the others are counted by their code).
var (
	errHandshakeRate = refuse(CodeRateLimited, "too many new connections from this address; retry later")
	errIPConnections = refuse(CodeRateLimited, "this address has as many WebSockets open as allowed; close some or retry later")
)

// refusalLogsPerSecond bounds the "websocket refused" log lines.
const refusalLogsPerSecond = 5

// countRefusals counts and logs the upgrades serveWS refuses.
func (s *Server) countRefusals(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		err := next(c)
		if err != nil {
			code, message, status := classify(err)
			reason := code
			switch {
			case errors.Is(err, errHandshakeRate):
				reason = "handshake_rate"
			case errors.Is(err, errIPConnections):
				reason = "ip_connections"
			case errors.Is(err, errOriginRefused):
				reason = "origin"
			}
			s.refused(c.Request(), reason, status, message)
		}
		return err
	}
}

// refused counts a refused upgrade by reason and logs it, a few a second.
func (s *Server) refused(r *http.Request, reason string, status int, message string) {
	s.metrics.upgradesRefused.WithLabelValues(reason).Inc()
	if s.refusalLogs.Allow() {
		s.log.Info("websocket refused", "path", r.URL.Path, "reason", reason, "status", status, "message", message,
			"remote_ip", clientIP(r, s.cfg.TrustedProxies), "origin", r.Header.Get("Origin"), "user_agent", r.UserAgent())
	}
}

// serveWS upgrades to a WebSocket and starts its session, once it is a
// valid upgrade and admit allows it.
func (s *Server) serveWS(c echo.Context) error {
	r := c.Request()
	opts := &websocket.AcceptOptions{
		InsecureSkipVerify: true, // checkOrigin checks the Origin
		CompressionMode:    websocket.CompressionDisabled,
	}
	if !isUpgrade(r) {
		// Accept answers what is wrong (426, 400...). Should it accept
		// after all, the connection has no session: close it.
		if conn, err := websocket.Accept(c.Response(), r, opts); err == nil {
			conn.Close(websocket.StatusInternalError, "refused")
		}
		s.refused(r, "handshake", c.Response().Status, "not a valid WebSocket upgrade")
		return nil
	}
	a, err := s.admit(r)
	if err != nil {
		return err
	}
	hj := &hijacker{ResponseWriter: c.Response()}
	var ss *session
	opts.OnPongReceived = func(ctx context.Context, p []byte) { ss.pong(ctx, p) } // read once ss is set
	conn, err := websocket.Accept(hj, c.Request(), opts)
	if err != nil {
		a.release()
		s.refused(r, "handshake", c.Response().Status, err.Error())
		return nil // Accept has answered the request
	}
	conn.SetReadLimit(s.cfg.MaxFrameBytes)
	ss = s.newSession(a)
	ss.conn, ss.raw = conn, hj.conn
	if !s.start(ss, a, nil) {
		conn.Close(websocket.StatusServiceRestart, "server restart")
	}
	return nil
}

// admission is a connection that passed admit's checks, before its
// transport starts: who it is, and the MAX_CONNECTIONS slot and per-IP
// count it holds until its session's run takes them over, or release
// gives them back.
type admission struct {
	srv       *Server
	r         *http.Request
	ip        string // the client IP, holding one of its connections; "" for loopback
	slot      bool   // a slot is held
	cr        *ConnectRequest
	expires   time.Time
	token     Permissions // the token's, to tell whether Connect set its own
	tokenUser string
}

// admit runs the checks of a new connection, WebSocket or SSE stream
// alike, cheapest first: the handshake rate, the Origin, the per-IP
// count, the broker's readiness and a MAX_CONNECTIONS slot, then the
// token and last the connect decision (Consumer and hook).
func (s *Server) admit(r *http.Request) (_ *admission, err error) {
	ip := clientIP(r, s.cfg.TrustedProxies)
	local := isLoopbackIP(ip)
	if !local && !s.shakes.allow(ip, time.Now()) {
		return nil, errHandshakeRate
	}
	if err := s.checkOrigin(r); err != nil {
		return nil, err
	}
	a := &admission{srv: s, r: r, cr: &ConnectRequest{Request: r}}
	if !local {
		if !s.perIP.acquire(ip) {
			return nil, errIPConnections
		}
		a.ip = ip
	}
	defer func() {
		if err != nil {
			a.release()
		}
	}()
	if err := s.broker.Ready(); err != nil {
		return nil, refuse(CodeUnavailable, "messaging is unavailable here; retry, elsewhere if need be")
	}
	if a.slot = s.reserve(); !a.slot {
		return nil, refuse(CodeUnavailable, "this instance has as many connections as allowed; retry elsewhere")
	}
	cr := a.cr
	if s.hooks != nil {
		if cr.hookHeaders, err = s.hooks.forwarded(r.Header); err != nil {
			return nil, err
		}
	}
	if s.auth != nil {
		cr.Token = requestToken(r)
		id, err := s.auth.connection(cr.Token)
		if err != nil {
			return nil, err
		}
		cr.User, cr.Permissions, cr.Info, a.expires = id.user, &Permissions{Join: id.join, Send: id.send}, id.info, id.expires
		a.token, a.tokenUser = Permissions{Join: slices.Clone(id.join), Send: slices.Clone(id.send)}, id.user
	}
	if err := s.consumer.Connect(r.Context(), cr); err != nil {
		return nil, err
	}
	return a, nil
}

// release gives back the slot and the IP's count when no session takes
// them over.
func (a *admission) release() {
	if a.slot {
		a.srv.release()
	}
	if a.ip != "" {
		a.srv.perIP.release(a.ip)
	}
}

// newSession makes the session of an admitted connection, its transport
// left for the caller to set.
func (s *Server) newSession(a *admission) *session {
	cr := a.cr
	ss := &session{
		srv:         s,
		out:         newOutbox(s.cfg.OutboxFrames, s.cfg.OutboxBytes),
		uid:         cr.User,
		info:        s.presenceInfo(cr.Info),
		hookHeaders: cr.hookHeaders,
		opened:      time.Now(),
		perms:       cr.Permissions,
		expires:     a.expires,
		tokenUser:   a.tokenUser,
		bound:       connectBound(a.token, cr.Permissions),
		frames:      bucket{tokens: 2 * s.cfg.FramesPerSecond, filled: time.Now()},
		ip:          a.ip,
	}
	ss.public.s = ss
	ss.trace = traceAttrs(a.r, s.cfg.TraceProject)
	return ss
}

// start runs the session on a goroutine of its own, awaited by Shutdown,
// which then owns a's slot and IP count, and closes done (when not nil)
// once it has ended. When shutting down it starts nothing, releases a
// and reports false: the caller ends the connection.
func (s *Server) start(ss *session, a *admission, done chan<- struct{}) bool {
	// A timer, not a goroutine: an idle connection costs no writer. Armed
	// once the transport is set, which the keepalive writes to, and the
	// field, which it resets.
	ss.pinger = time.AfterFunc(math.MaxInt64, ss.ping)
	ss.rearm(time.Now().UnixNano(), s.cfg.PingInterval)
	remoteIP, userAgent := clientIP(a.r, s.cfg.TrustedProxies), a.r.UserAgent()
	groups := a.cr.Groups
	ok := s.goroutines.start(func() {
		if done != nil {
			defer close(done)
		}
		s.run(ss, groups, remoteIP, userAgent)
	})
	if !ok {
		ss.pinger.Stop()
		a.release()
	}
	return ok
}

// isUpgrade reports whether r is a WebSocket upgrade that the WebSocket
// library would accept (the Origin aside: checkOrigin decides it), so that
// nothing is spent on one it would refuse (no slot, no token check, no
// connect hook). It follows the checks of coder/websocket's Accept, which
// answers the refusals itself.
func isUpgrade(r *http.Request) bool {
	key := r.Header.Values("Sec-WebSocket-Key")
	if !r.ProtoAtLeast(1, 1) || r.Method != http.MethodGet ||
		!hasToken(r.Header, "Connection", "upgrade") || !hasToken(r.Header, "Upgrade", "websocket") ||
		r.Header.Get("Sec-WebSocket-Version") != "13" || len(key) != 1 {
		return false
	}
	k := strings.TrimSpace(key[0])
	if len(k) != 24 { // the base64 of 16 bytes
		return false
	}
	var v [18]byte // room for 24 characters' worth, padding included
	n, err := base64.StdEncoding.Decode(v[:], []byte(k))
	return err == nil && n == 16
}

// hasToken reports whether a comma-separated header holds token, in any case.
func hasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// run is a session's reader goroutine: it tracks the session and opens
// its channel, reads until the connection ends, then releases the channel
// and waits for the writer. It owns the upgrade's slot and IP count.
func (s *Server) run(ss *session, groups []string, remoteIP, userAgent string) {
	defer s.release()
	if ss.ip != "" {
		defer s.perIP.release(ss.ip)
	}
	defer ss.pinger.Stop()
	if !s.track(ss) {
		ss.end(websocket.StatusServiceRestart, "server restart")
		return
	}
	defer s.untrack(ss)
	var err error
	ss.channel, err = s.broker.NewChannel(ss)
	if err != nil {
		ss.end(websocket.StatusTryAgainLater, "messaging unavailable")
		return
	}
	s.mu.Lock()
	s.byChannel[ss.channel] = ss
	s.mu.Unlock()
	transport := ss.transport()
	if log := ss.logger(); log.Enabled(slog.LevelInfo) { // no goroutine for a line not logged
		aside(func() {
			log.Info("websocket connected", "transport", transport, "remote_ip", remoteIP, "user", ss.user(), "user_agent", userAgent)
		})
	}
	s.metrics.connects.WithLabelValues(transport).Inc()
	s.metrics.connections.WithLabelValues(transport).Inc()
	defer s.metrics.connections.WithLabelValues(transport).Dec()

	maxAge := s.cfg.MaxConnectionAge - rand.N(s.cfg.MaxConnectionAge/10+1)
	expire := time.AfterFunc(maxAge, func() { ss.close(websocket.StatusServiceRestart, "max connection age") })
	defer expire.Stop()

	ss.armExpiry()
	defer ss.stopExpiry()
	ss.send(ss.welcome())
	for _, g := range groups {
		if err := ss.serverJoin(context.Background(), g); err != nil {
			ss.logger().Warn("joining a group chosen at connect failed", "group", g, "error", err)
		}
	}
	if ss.sse != nil {
		ss.awaitStream()
	} else {
		ss.readLoop()
	}
	s.broker.CloseChannel(ss.channel)
	ss.close(0, "")
	ss.writers.Wait()
	s.consumer.Disconnect(&ss.public)
	ss.logger().Info("websocket closed", "transport", transport, "code", int(ss.code), "reason", ss.reason,
		"seconds", time.Since(ss.opened).Round(time.Millisecond).Seconds(), "groups", ss.count())
}

// welcome is the session's first frame; an SSE stream's carries its secret.
func (s *session) welcome() []byte {
	if s.sse != nil {
		return protocol.AppendStreamWelcome(nil, s.channel, s.srv.broker.Node(), s.srv.cfg.Region, s.user(), s.sse.secret)
	}
	return protocol.AppendWelcome(nil, s.channel, s.srv.broker.Node(), s.srv.cfg.Region, s.user())
}
