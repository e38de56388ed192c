// Package web serves groupcast over HTTP with Echo: the WebSocket endpoint
// /ws, the server API for backends, health, metrics and the demo page.
package web

import (
	"bufio"
	"context"
	"crypto/subtle"
	"embed"
	"errors"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/groupcast/groupcast/broker"
)

// Broker is what the web layer needs from the channel layer.
type Broker interface {
	Node() string
	Ready() error
	NewChannel(broker.Receiver) (string, error)
	CloseChannel(channel string)
	GroupAdd(ctx context.Context, group, channel string) error
	GroupJoin(ctx context.Context, group, channel string, since *broker.Since) (broker.Recovery, error)
	GroupPublish(group string, data []byte, idempotencyKey string) (broker.Receipt, error)
	GroupPublishFrom(source broker.Source, group string, data []byte, idempotencyKey string) (broker.Receipt, error)
	History(ctx context.Context, group string, since uint64, limit int) ([]broker.HistoryMessage, string, error)
	GroupDiscard(group, channel string) error
	GroupSend(group string, data []byte) error
	Send(channel string, data []byte) error
	Stats() broker.Stats
	HandleCommands(func(cmd []byte))
	Command(channel string, cmd []byte) error
	Broadcast(cmd []byte) error
}

// Config configures a Server. Zero fields take the defaults given.
type Config struct {
	// Region labels this instance in the welcome frame.
	Region string
	// APIKeys, when any is set, are accepted as "Authorization: Bearer
	// <key>" on the server API (several, so that keys rotate without
	// downtime). When empty, only loopback callers may use it.
	APIKeys []string
	// Auth configures connection tokens. Zero: anonymous connections.
	Auth AuthConfig
	// NATSLossGrace is how long NATS may be unavailable before every
	// WebSocket is closed with 1012 (and new ones refused with 503), so that
	// clients reconnect to an instance that can deliver. Default 5s.
	NATSLossGrace time.Duration
	// MaxConnections bounds this instance's WebSockets; more are refused
	// with 503. Default 10000.
	MaxConnections int
	// FramesPerSecond bounds each connection's client frames (a token
	// bucket with a burst of twice as many). A frame over it is refused
	// with "rate_limited"; a client that keeps on is closed with 1008.
	// Default 20.
	FramesPerSecond float64
	// HandshakesPerSecond bounds new WebSockets per client IP (burst twice
	// as many); more get 429. Loopback clients (local tools and load
	// tests) are not limited. Default 10.
	HandshakesPerSecond float64
	// TrustedProxies is how many proxies in front of the server append to
	// X-Forwarded-For: the client IP is that many entries from its end.
	// 0 (default): the TCP peer; 1 on Cloud Run; 2 behind Google's
	// external Application Load Balancer.
	TrustedProxies int
	// AllowedOrigins are host patterns (path.Match syntax, e.g.
	// "*.example.com") of pages allowed to open WebSockets besides this
	// server's own origin. Default none: same-origin pages and non-browser
	// clients (no Origin header) only.
	AllowedOrigins []string
	// ClientSend lets clients publish with "send" frames. Default false.
	ClientSend bool
	// MaxFrameBytes bounds a client frame; a larger one closes the
	// connection with 1009. Default 64 KiB.
	MaxFrameBytes int64
	// MaxBodyBytes bounds a server API body; a larger one gets 413.
	// Default 1 MiB.
	MaxBodyBytes int64
	// MaxGroups bounds the groups one connection may be in. Default 100.
	MaxGroups int
	// OutboxFrames and OutboxBytes bound the frames waiting to be written
	// to one connection; past either, it is closed with 4008. Defaults
	// 1024 frames and 1 MiB.
	OutboxFrames int
	OutboxBytes  int
	// WriteTimeout bounds one write or ping. Default 10s.
	WriteTimeout time.Duration
	// WriteDelay, when set, holds a connection's messages that long before
	// writing them, so that more of them go out in one write: fewer system
	// calls per delivery (on both ends) for that much latency. Replies to
	// the client's own requests are not held. Default 0: write at once.
	WriteDelay time.Duration
	// PingInterval is how often an idle connection is pinged. Default 25s.
	PingInterval time.Duration
	// JoinTimeout bounds how long a join waits for NATS. Default 5s.
	JoinTimeout time.Duration
	// MaxConnectionAge closes a WebSocket with 1012 after this long (less
	// up to a tenth, at random, so that sockets opened together do not
	// reconnect together), before a proxy's request timeout cuts it: the
	// client reconnects on its own terms. Default 55m, under Cloud Run's
	// 60-minute maximum request timeout.
	MaxConnectionAge time.Duration
	// TraceProject is the Google Cloud project whose trace ids appear in
	// connection logs ("logging.googleapis.com/trace"). Optional.
	TraceProject string
	// Consumer runs the application's code in each connection's life.
	// Default DefaultConsumer.
	Consumer Consumer
	// Hooks forward decisions to an HTTP backend, after Consumer allows.
	Hooks HookConfig
	// Metrics, when set, are the metrics to fill (see NewMetrics); by
	// default the server makes its own.
	Metrics *Metrics
	// Logger is required.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	setInt64(&c.MaxFrameBytes, 64<<10)
	setInt64(&c.MaxBodyBytes, 1<<20)
	setInt(&c.MaxGroups, 100)
	setInt(&c.OutboxFrames, 1024)
	setInt(&c.OutboxBytes, 1<<20)
	setDuration(&c.WriteTimeout, 10*time.Second)
	setDuration(&c.PingInterval, 25*time.Second)
	setDuration(&c.JoinTimeout, 5*time.Second)
	setDuration(&c.MaxConnectionAge, 55*time.Minute)
	setInt(&c.MaxConnections, 10000)
	setDuration(&c.NATSLossGrace, 5*time.Second)
	if c.FramesPerSecond <= 0 {
		c.FramesPerSecond = 20
	}
	if c.HandshakesPerSecond <= 0 {
		c.HandshakesPerSecond = 10
	}
}

func setInt(p *int, def int) {
	if *p <= 0 {
		*p = def
	}
}

func setInt64(p *int64, def int64) {
	if *p <= 0 {
		*p = def
	}
}

func setDuration(p *time.Duration, def time.Duration) {
	if *p <= 0 {
		*p = def
	}
}

// Server is the HTTP side of one instance. Create it with New, serve
// Handler, and call Shutdown to close every WebSocket.
type Server struct {
	cfg      Config
	broker   Broker
	log      *slog.Logger
	echo     *echo.Echo
	metrics  *Metrics
	buffers  sync.Pool      // *[]byte for batching frames
	auth     *authenticator // nil: anonymous connections
	consumer Consumer
	shakes   *ipLimiter

	mu        sync.Mutex
	sessions  map[*session]struct{}
	byChannel map[string]*session
	draining  bool
	active    sync.WaitGroup // one per running session

	commandSlots    chan struct{}
	commandsRunning sync.WaitGroup

	stopWatchdog chan struct{}
	watchdogDone sync.WaitGroup
	stopOnce     sync.Once
}

//go:embed static
var static embed.FS

// New returns a Server that serves b. It starts one goroutine, a write
// watchdog, which Shutdown stops.
func New(b Broker, cfg Config) *Server {
	cfg.setDefaults()
	s := &Server{
		cfg:      cfg,
		broker:   b,
		log:      cfg.Logger.With("component", "web"),
		metrics:  cfg.Metrics,
		sessions: make(map[*session]struct{}),

		byChannel:    make(map[string]*session),
		commandSlots: make(chan struct{}, maxCommandsInFlight),

		stopWatchdog: make(chan struct{}),
	}
	if s.metrics == nil {
		s.metrics = NewMetrics()
	}
	s.metrics.registry.MustRegister(brokerCollector{b})
	s.shakes = newIPLimiter(cfg.HandshakesPerSecond, maxTrackedIPs)
	auth, err := newAuthenticator(cfg.Auth, s.log)
	if err != nil {
		// Fail closed: with tokens configured but unverifiable, refuse all.
		s.log.Error("tokens cannot be verified; refusing every connection", "error", err)
		auth = &authenticator{cfg: cfg.Auth, parser: nil, stop: func() {}}
	}
	s.auth = auth
	s.consumer = cfg.Consumer
	if s.consumer == nil {
		s.consumer = DefaultConsumer{}
	}
	if cfg.Hooks.Enabled() {
		s.consumer = newHookConsumer(s.consumer, cfg.Hooks, b.Node(), cfg.Region, cfg.TrustedProxies)
	}
	s.buffers.New = func() any { p := make([]byte, 0, 4096); return &p }

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.httpError
	e.GET("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{})))
	e.GET("/stats", s.stats)
	e.GET("/ws", s.serveWS)
	api := e.Group("/api", s.authorize)
	api.POST("/groups/:group/messages", s.publishGroup)
	api.POST("/messages", s.publishBatch)
	api.GET("/groups/:group/history", s.history)
	api.POST("/channels/:channel/messages", s.publishChannel)
	api.POST("/channels/:channel/disconnect", s.disconnectChannel)
	api.POST("/users/:user/disconnect", s.disconnectUser)
	api.PUT("/groups/:group/channels/:channel", s.addToGroup)
	api.DELETE("/groups/:group/channels/:channel", s.removeFromGroup)
	api.GET("/groups/:group/presence", s.getPresence)
	sub, _ := fs.Sub(static, "static")
	e.StaticFS("/", sub)
	s.echo = e
	b.HandleCommands(s.handleCommand)
	s.watchdogDone.Add(1)
	go s.watchdog(s.stopWatchdog)
	return s
}

// Handler returns the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.echo }

func (s *Server) readyz(c echo.Context) error {
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	if draining {
		return writeError(c, http.StatusServiceUnavailable, CodeUnavailable, "shutting down")
	}
	if err := s.broker.Ready(); err != nil {
		return writeError(c, http.StatusServiceUnavailable, CodeUnavailable, err.Error())
	}
	return c.String(http.StatusOK, "ready\n")
}

// serveWS upgrades to a WebSocket and starts its session.
func (s *Server) serveWS(c echo.Context) error {
	r := c.Request()
	if ip := clientIP(r, s.cfg.TrustedProxies); !isLoopbackIP(ip) && !s.shakes.allow(ip, time.Now()) {
		return refuse(CodeRateLimited, "too many new connections from this address; retry later")
	}
	if err := s.broker.Ready(); err != nil {
		return refuse(CodeUnavailable, "messaging is unavailable here; retry, elsewhere if need be")
	}
	if s.openSessions() >= s.cfg.MaxConnections {
		return refuse(CodeUnavailable, "this instance has as many connections as allowed; retry elsewhere")
	}
	cr := &ConnectRequest{Request: r}
	var expires time.Time
	if s.auth != nil {
		cr.Token = requestToken(r)
		id, err := s.auth.connection(cr.Token)
		if err != nil {
			return err
		}
		cr.User, cr.Permissions, cr.Info, expires = id.user, &Permissions{Join: id.join, Send: id.send}, id.info, id.expires
	}
	if err := s.consumer.Connect(r.Context(), cr); err != nil {
		return err
	}
	hj := &hijacker{ResponseWriter: c.Response()}
	conn, err := websocket.Accept(hj, c.Request(), &websocket.AcceptOptions{
		OriginPatterns:  s.cfg.AllowedOrigins,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return nil // Accept has answered the request
	}
	conn.SetReadLimit(s.cfg.MaxFrameBytes)
	ss := &session{
		srv:     s,
		conn:    conn,
		raw:     hj.conn,
		out:     newOutbox(s.cfg.OutboxFrames, s.cfg.OutboxBytes),
		uid:     cr.User,
		info:    s.presenceInfo(cr.Info),
		perms:   cr.Permissions,
		expires: expires,
		frames:  bucket{tokens: 2 * s.cfg.FramesPerSecond, filled: time.Now()},
	}
	ss.public.s = ss
	// Timers, not goroutines: an idle connection costs no writer.
	ss.pinger = time.AfterFunc(s.cfg.PingInterval, ss.ping)
	if !s.track(ss) {
		ss.pinger.Stop()
		conn.Close(websocket.StatusServiceRestart, "server restart")
		return nil
	}
	ss.channel, err = s.broker.NewChannel(ss)
	if err != nil {
		ss.pinger.Stop()
		s.untrack(ss)
		conn.Close(websocket.StatusTryAgainLater, "messaging unavailable")
		return nil
	}
	s.mu.Lock()
	s.byChannel[ss.channel] = ss
	s.mu.Unlock()
	ss.trace = traceAttrs(c.Request(), s.cfg.TraceProject)
	ss.logger().Info("websocket connected", "remote_ip", clientIP(r, s.cfg.TrustedProxies), "user", ss.user(), "user_agent", r.UserAgent())
	// The session reads on a goroutine of its own, awaited by Shutdown,
	// and this one returns: the HTTP server's goroutine, its deep stack
	// and the request's state are not kept for the socket's lifetime.
	go s.run(ss, cr.Groups)
	return nil
}

// run is a session's reader goroutine: it reads until the connection
// ends, then releases the channel and waits for the writer.
func (s *Server) run(ss *session, groups []string) {
	defer s.untrack(ss)
	s.metrics.connects.Inc()
	s.metrics.connections.Inc()
	defer s.metrics.connections.Dec()
	opened := time.Now()

	defer ss.pinger.Stop()
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
		"seconds", time.Since(opened).Round(time.Millisecond).Seconds(), "groups", ss.count())
}

// A WebSocket's buffers, smaller than net/http's 4 KiB each: client frames
// are small, and memory saved here is saved on every idle connection. A
// delivery that fits the write buffer (with its 2–10 byte frame header)
// goes out in one write call; a bigger one takes two.
const (
	readBufferSize  = 512
	writeBufferSize = 2048
)

// hijacker hands the WebSocket library smaller buffers than net/http's
// when nothing is buffered in them yet, and writes through a frameConn,
// which it keeps for the session.
type hijacker struct {
	http.ResponseWriter
	conn *frameConn
}

func (w *hijacker) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return conn, brw, err
	}
	if brw.Reader.Buffered() == 0 {
		brw.Reader = bufio.NewReaderSize(conn, readBufferSize)
	}
	if err := brw.Writer.Flush(); err != nil {
		return conn, brw, err
	}
	w.conn = &frameConn{Conn: conn}
	if sc, ok := conn.(syscall.Conn); ok {
		w.conn.rc, _ = sc.SyscallConn()
	}
	brw.Writer = bufio.NewWriterSize(w.conn, writeBufferSize)
	return conn, brw, nil
}

// frameConn serialises the writes to a connection, so that a session can
// write whole data frames itself, each in one Write, between the control
// frames (ping, pong, close) that the WebSocket library writes, each
// flushed in one Write as well.
type frameConn struct {
	net.Conn
	rc syscall.RawConn // for writes that must not block; nil when not a socket
	mu sync.Mutex
}

func (c *frameConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Conn.Write(p)
}

// errWouldBlock declines an immediate write: the socket, or the
// connection's lock, is busy.
var errWouldBlock = errors.New("write would block")

// tryWrite writes what of p the socket takes at once, without waiting
// for it or for the lock: errWouldBlock when it takes nothing.
func (c *frameConn) tryWrite(p []byte) (int, error) {
	if c.rc == nil || !c.mu.TryLock() {
		return 0, errWouldBlock
	}
	defer c.mu.Unlock()
	var n int
	var err error
	if rerr := c.rc.Write(func(fd uintptr) bool {
		n, err = syscall.Write(int(fd), p)
		return true // never wait for the socket
	}); rerr != nil {
		return 0, rerr
	}
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) || n <= 0 && err == nil {
		return 0, errWouldBlock
	}
	return max(n, 0), err
}

// watchdog ends WebSocket writes that take longer than allowed, since
// writes carry no context of their own, and retires writer goroutines that
// have been idle. It runs until stop is closed.
func (s *Server) watchdog(stop <-chan struct{}) {
	defer s.watchdogDone.Done()
	tick := time.NewTicker(watchdogInterval)
	defer tick.Stop()
	var stuck []*session
	var lostSince time.Time // when the broker stopped being able to deliver
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			stuck = stuck[:0]
			s.mu.Lock()
			for ss := range s.sessions {
				if ss.overdue(now.UnixNano()) {
					stuck = append(stuck, ss)
				}
				ss.out.tick(writerIdleTicks)
			}
			s.mu.Unlock()
			s.shakes.sweep(now)
			for _, ss := range stuck {
				ss.logger().Info("write timed out; dropping the connection")
				ss.conn.CloseNow()
			}
			lostSince = s.closeIfLost(now, lostSince)
		}
	}
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

// openSessions is the number of open sessions.
func (s *Server) openSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

func (s *Server) track(ss *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.sessions[ss] = struct{}{}
	s.active.Add(1)
	return true
}

func (s *Server) untrack(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	if s.byChannel[ss.channel] == ss {
		delete(s.byChannel, ss.channel)
	}
	s.mu.Unlock()
	s.active.Done()
}

// Shutdown closes every WebSocket concurrently with 1012 (service restart)
// so clients reconnect elsewhere, refuses new ones, and waits for the
// sessions to end. When ctx ends first it drops the remaining connections
// without a handshake. /readyz answers 503 from the first call on.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	for ss := range s.sessions {
		ss.close(websocket.StatusServiceRestart, "server restart")
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.active.Wait()
		close(done)
	}()
	defer s.stopOnce.Do(func() {
		close(s.stopWatchdog)
		s.watchdogDone.Wait()
		s.commandsRunning.Wait()
		s.auth.close()
	})
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for ss := range s.sessions {
		ss.conn.CloseNow()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

// traceAttrs returns the Cloud Logging trace fields of a request that came
// through Google's front end (X-Cloud-Trace-Context or traceparent).
func traceAttrs(r *http.Request, project string) []any {
	var trace, span string
	if h := r.Header.Get("X-Cloud-Trace-Context"); h != "" {
		trace, span, _ = strings.Cut(h, "/")
		span, _, _ = strings.Cut(span, ";")
	} else if h := r.Header.Get("traceparent"); h != "" {
		// version-trace-span-flags
		if parts := strings.Split(h, "-"); len(parts) == 4 {
			trace, span = parts[1], parts[2]
		}
	}
	if trace == "" || project == "" || !isHex(trace) {
		return nil
	}
	attrs := []any{"logging.googleapis.com/trace", "projects/" + project + "/traces/" + trace}
	if span != "" {
		attrs = append(attrs, "logging.googleapis.com/spanId", span)
	}
	return attrs
}

func isHex(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return len(s) > 0 && len(s) <= 64
}

// authorize guards the server API: a Bearer API key when one is set,
// otherwise loopback callers only.
func (s *Server) authorize(next echo.HandlerFunc) echo.HandlerFunc {
	var wants [][]byte
	for _, k := range s.cfg.APIKeys {
		if k != "" {
			wants = append(wants, []byte("Bearer "+k))
		}
	}
	return func(c echo.Context) error {
		if len(wants) > 0 {
			got := []byte(c.Request().Header.Get(echo.HeaderAuthorization))
			ok := 0
			for _, want := range wants { // every key compared: no early exit
				ok |= subtle.ConstantTimeCompare(got, want)
			}
			if ok != 1 {
				return refuse(CodeUnauthorized, "a valid API key is required: Authorization: Bearer <API_KEY>")
			}
			return next(c)
		}
		if !isLoopback(c.Request().RemoteAddr) {
			return refuse(CodeUnauthorized, "API_KEY is not set, so only loopback callers may use the server API")
		}
		return next(c)
	}
}

// isLoopback reports whether a request's TCP peer is on this machine. It
// reads the connection's address, never a forwarded header.
func isLoopback(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	return err == nil && isLoopbackIP(host)
}

// isLoopbackIP reports whether ip is a loopback address.
func isLoopbackIP(ip string) bool {
	addr, err := netip.ParseAddr(ip)
	return err == nil && addr.Unmap().IsLoopback()
}

// httpError writes every HTTP error as {"error":{"code":..,"message":..}}.
func (s *Server) httpError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var he *echo.HTTPError
	if errors.As(err, &he) {
		code := CodeInternal
		switch he.Code {
		case http.StatusNotFound:
			code = CodeNotFound
		case http.StatusMethodNotAllowed:
			code = "method_not_allowed"
		case http.StatusRequestEntityTooLarge:
			code = CodeTooLarge
		}
		msg, _ := he.Message.(string)
		if msg == "" {
			msg = http.StatusText(he.Code)
		}
		s.metrics.errors.WithLabelValues(code).Inc()
		writeError(c, he.Code, code, msg)
		return
	}
	code, message, status := classify(err)
	if code == CodeInternal {
		s.log.Error("request failed", "method", c.Request().Method, "path", c.Path(), "error", err)
	}
	s.metrics.errors.WithLabelValues(code).Inc()
	writeError(c, status, code, message)
}

func writeError(c echo.Context, status int, code, message string) error {
	type body struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	return c.JSON(status, map[string]body{"error": {code, message}})
}
