package web

import (
	"context"
	"encoding/base64"
	"errors"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/labstack/echo/v4"
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
		s.log.Info("websocket refused", "reason", reason, "status", status, "message", message,
			"remote_ip", clientIP(r, s.cfg.TrustedProxies), "origin", r.Header.Get("Origin"), "user_agent", r.UserAgent())
	}
}

// serveWS upgrades to a WebSocket and starts its session. The checks run
// cheapest first, the connect decision (Consumer and hook) last.
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
	ip := clientIP(r, s.cfg.TrustedProxies)
	local := isLoopbackIP(ip)
	if !local && !s.shakes.allow(ip, time.Now()) {
		return errHandshakeRate
	}
	if err := s.checkOrigin(r); err != nil {
		return err
	}
	running := false // from then on the session's run releases the IP's count and the slot
	if !local {
		if !s.perIP.acquire(ip) {
			return errIPConnections
		}
		defer func() {
			if !running {
				s.perIP.release(ip)
			}
		}()
	}
	if err := s.broker.Ready(); err != nil {
		return refuse(CodeUnavailable, "messaging is unavailable here; retry, elsewhere if need be")
	}
	if !s.reserve() {
		return refuse(CodeUnavailable, "this instance has as many connections as allowed; retry elsewhere")
	}
	defer func() {
		if !running {
			s.release()
		}
	}()
	cr := &ConnectRequest{Request: r}
	if s.hooks != nil {
		var err error
		if cr.hookHeaders, err = s.hooks.forwarded(r.Header); err != nil {
			return err
		}
	}
	var expires time.Time
	var token Permissions // the token's, to tell whether Connect set its own
	var tokenUser string
	if s.auth != nil {
		cr.Token = requestToken(r)
		id, err := s.auth.connection(cr.Token)
		if err != nil {
			return err
		}
		cr.User, cr.Permissions, cr.Info, expires = id.user, &Permissions{Join: id.join, Send: id.send}, id.info, id.expires
		token, tokenUser = Permissions{Join: slices.Clone(id.join), Send: slices.Clone(id.send)}, id.user
	}
	if err := s.consumer.Connect(r.Context(), cr); err != nil {
		return err
	}
	hj := &hijacker{ResponseWriter: c.Response()}
	conn, err := websocket.Accept(hj, c.Request(), opts)
	if err != nil {
		s.refused(r, "handshake", c.Response().Status, err.Error())
		return nil // Accept has answered the request
	}
	conn.SetReadLimit(s.cfg.MaxFrameBytes)
	ss := &session{
		srv:         s,
		conn:        conn,
		raw:         hj.conn,
		out:         newOutbox(s.cfg.OutboxFrames, s.cfg.OutboxBytes),
		uid:         cr.User,
		info:        s.presenceInfo(cr.Info),
		hookHeaders: cr.hookHeaders,
		opened:      time.Now(),
		perms:       cr.Permissions,
		expires:     expires,
		tokenUser:   tokenUser,
		bound:       connectBound(token, cr.Permissions),
		frames:      bucket{tokens: 2 * s.cfg.FramesPerSecond, filled: time.Now()},
	}
	ss.public.s = ss
	// Timers, not goroutines: an idle connection costs no writer.
	ss.pinger = time.AfterFunc(s.cfg.PingInterval, ss.ping)
	ss.trace = traceAttrs(c.Request(), s.cfg.TraceProject)
	if !local {
		ss.ip = ip
	}
	remoteIP, userAgent := clientIP(r, s.cfg.TrustedProxies), r.UserAgent()
	// The session runs on a goroutine of its own, awaited by Shutdown,
	// and this one returns: the HTTP server's goroutine, its deep stack
	// and the request's state are not kept for the socket's lifetime.
	running = s.goroutines.start(func() { s.run(ss, cr.Groups, remoteIP, userAgent) })
	if !running {
		ss.pinger.Stop()
		conn.Close(websocket.StatusServiceRestart, "server restart")
	}
	return nil
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
	v, err := base64.StdEncoding.DecodeString(strings.TrimSpace(key[0]))
	return err == nil && len(v) == 16
}

// hasToken reports whether a comma-separated header holds token, in any case.
func hasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
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
		ss.conn.Close(websocket.StatusServiceRestart, "server restart")
		return
	}
	defer s.untrack(ss)
	var err error
	ss.channel, err = s.broker.NewChannel(ss)
	if err != nil {
		ss.conn.Close(websocket.StatusTryAgainLater, "messaging unavailable")
		return
	}
	s.mu.Lock()
	s.byChannel[ss.channel] = ss
	s.mu.Unlock()
	ss.logger().Info("websocket connected", "remote_ip", remoteIP, "user", ss.user(), "user_agent", userAgent)
	s.metrics.connects.Inc()
	s.metrics.connections.Inc()
	defer s.metrics.connections.Dec()

	maxAge := s.cfg.MaxConnectionAge - rand.N(s.cfg.MaxConnectionAge/10+1)
	expire := time.AfterFunc(maxAge, func() { ss.close(websocket.StatusServiceRestart, "max connection age") })
	defer expire.Stop()

	ss.armExpiry()
	defer ss.stopExpiry()
	ss.send(s.welcome(ss.channel, ss.user()))
	for _, g := range groups {
		if err := ss.serverJoin(context.Background(), g); err != nil {
			ss.logger().Warn("joining a group chosen at connect failed", "group", g, "error", err)
		}
	}
	ss.readLoop()
	s.broker.CloseChannel(ss.channel)
	ss.close(0, "")
	ss.writers.Wait()
	s.consumer.Disconnect(&ss.public)
	ss.logger().Info("websocket closed", "code", int(ss.code), "reason", ss.reason,
		"seconds", time.Since(ss.opened).Round(time.Millisecond).Seconds(), "groups", ss.count())
}

func (s *Server) welcome(channel, user string) []byte {
	buf := append([]byte(nil), `{"type":"welcome","channel":"`...)
	buf = append(buf, channel...)
	buf = append(buf, `","node":"`...)
	buf = append(buf, s.broker.Node()...)
	buf = append(buf, `","region":`...)
	buf = appendJSONString(buf, s.cfg.Region)
	if user != "" {
		buf = append(buf, `,"user":`...)
		buf = appendJSONString(buf, user)
	}
	return append(buf, '}')
}
