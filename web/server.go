// Package web serves groupcast over HTTP with Echo: the WebSocket endpoint
// /ws, the server API for backends, health, metrics and the demo page.
package web

import (
	"bufio"
	"cmp"
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/groupcast/groupcast/broker"
)

// Broker is what the web layer needs from the channel layer.
type Broker interface {
	Node() string
	Ready() error
	NewChannel(broker.Receiver) (string, error)
	CloseChannel(channel string)
	GroupJoin(ctx context.Context, group, channel string, since *broker.Since) (broker.Recovery, error)
	GroupPublishWith(group string, data []byte, o broker.PublishOptions) (broker.Receipt, error)
	History(ctx context.Context, group string, since uint64, limit int) ([]broker.HistoryMessage, string, error)
	GroupDiscard(group, channel string) error
	Send(channel string, data []byte) error
	Stats() broker.Stats
	HandleCommands(func(cmd []byte))
	Command(channel string, cmd []byte) error
	Broadcast(cmd []byte) error
}

// Config configures a Server. Zero fields take the defaults given (see
// DefaultConfig).
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
	// MaxConnectionsPerIP bounds the WebSockets of one client IP (as
	// TrustedProxies sees it); more get 429, so that one address cannot
	// take the whole instance. Loopback clients are not limited.
	// Default 1000.
	MaxConnectionsPerIP int
	// TrustedProxies is how many proxies in front of the server append to
	// X-Forwarded-For: the client IP is that many entries from its end.
	// 0 (default): the TCP peer; 1 on Cloud Run; 2 behind Google's
	// external Application Load Balancer.
	TrustedProxies int
	// AllowedOrigins are origin patterns (path.Match syntax) of pages
	// allowed to open WebSockets besides this server's own: a bare host
	// ("*.example.com") admits https pages only; give the scheme
	// ("http://localhost:*") to admit another. Default none: same-origin
	// pages and non-browser clients (no Origin header) only.
	AllowedOrigins []string
	// ClientSend lets clients publish with "send" frames. Off in a zero
	// Config; on in DefaultConfig, and so in the groupcast binary.
	ClientSend bool
	// MaxFrameBytes bounds a client frame; a larger one closes the
	// connection with 1009. Default 64 KiB.
	MaxFrameBytes int64
	// MaxBodyBytes bounds a server API body; a larger one gets 413.
	// Default 1 MiB.
	MaxBodyBytes int64
	// ReadTimeout bounds a plain HTTP request (every route but /ws) from
	// the end of its headers: a body not sent by then fails and the
	// connection closes. (Headers and idle keep-alives are the
	// http.Server's ReadHeaderTimeout and IdleTimeout.) Default 10s.
	ReadTimeout time.Duration
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
	// DrainPeriod spreads Shutdown's 1012 closes over this long (in
	// steps of 100 ms, sockets in random order, within the time ctx
	// leaves less 2 s), and each close tells its client to spread its
	// reconnect over as long again (reconnect_within_ms in the close
	// reason): of an instance's sockets, at most h/DrainPeriod then
	// reconnect within any span h. 0 in a zero Config: every socket at
	// once; DefaultConfig has 5s.
	DrainPeriod time.Duration
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

// DefaultConfig returns the values New gives a Config's zero (or
// negative) fields, with ClientSend on and the Cookie header forwarded to
// hooks, as the groupcast binary runs.
func DefaultConfig() Config {
	return Config{
		Auth:                AuthConfig{Leeway: 30 * time.Second},
		NATSLossGrace:       5 * time.Second,
		MaxConnections:      10000,
		MaxConnectionsPerIP: 1000,
		ReadTimeout:         10 * time.Second,
		DrainPeriod:         5 * time.Second,
		FramesPerSecond:     20,
		HandshakesPerSecond: 10,
		ClientSend:          true,
		MaxFrameBytes:       64 << 10,
		MaxBodyBytes:        1 << 20,
		MaxGroups:           100,
		OutboxFrames:        1024,
		OutboxBytes:         1 << 20,
		WriteTimeout:        10 * time.Second,
		PingInterval:        25 * time.Second,
		JoinTimeout:         5 * time.Second,
		MaxConnectionAge:    55 * time.Minute,
		Hooks:               HookConfig{Headers: []string{"Cookie"}, Timeout: 2 * time.Second, MaxConcurrent: 64, DisconnectQueue: 10000},
	}
}

func (c *Config) setDefaults() {
	d := DefaultConfig()
	c.MaxFrameBytes = cmp.Or(max(c.MaxFrameBytes, 0), d.MaxFrameBytes)
	c.MaxBodyBytes = cmp.Or(max(c.MaxBodyBytes, 0), d.MaxBodyBytes)
	c.ReadTimeout = cmp.Or(max(c.ReadTimeout, 0), d.ReadTimeout)
	c.MaxGroups = cmp.Or(max(c.MaxGroups, 0), d.MaxGroups)
	c.OutboxFrames = cmp.Or(max(c.OutboxFrames, 0), d.OutboxFrames)
	c.OutboxBytes = cmp.Or(max(c.OutboxBytes, 0), d.OutboxBytes)
	c.WriteTimeout = cmp.Or(max(c.WriteTimeout, 0), d.WriteTimeout)
	c.PingInterval = cmp.Or(max(c.PingInterval, 0), d.PingInterval)
	c.JoinTimeout = cmp.Or(max(c.JoinTimeout, 0), d.JoinTimeout)
	c.MaxConnectionAge = cmp.Or(max(c.MaxConnectionAge, 0), d.MaxConnectionAge)
	c.MaxConnections = cmp.Or(max(c.MaxConnections, 0), d.MaxConnections)
	c.MaxConnectionsPerIP = cmp.Or(max(c.MaxConnectionsPerIP, 0), d.MaxConnectionsPerIP)
	c.NATSLossGrace = cmp.Or(max(c.NATSLossGrace, 0), d.NATSLossGrace)
	c.FramesPerSecond = cmp.Or(max(c.FramesPerSecond, 0), d.FramesPerSecond)
	c.HandshakesPerSecond = cmp.Or(max(c.HandshakesPerSecond, 0), d.HandshakesPerSecond)
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
	hooks    *hookConsumer // nil without hooks; also in consumer
	shakes   *ipLimiter
	perIP    *ipConns
	// refusalLogs bounds the log lines of refused upgrades; the metric
	// counts every one.
	refusalLogs *rate.Limiter

	mu        sync.Mutex
	sessions  map[*session]struct{}
	byChannel map[string]*session
	slots     int // of MaxConnections: sessions plus upgrades being decided
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

// New returns a Server that serves b, or an error for a configuration it
// cannot serve. It starts one goroutine, a write watchdog (and, while a
// JWK Set has not loaded, its loader), which Shutdown stops.
func New(b Broker, cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := checkOriginPatterns(cfg.AllowedOrigins); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("component", "web")
	auth, err := newAuthenticator(cfg.Auth, log)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		auth:     auth,
		broker:   b,
		log:      log,
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
	s.perIP = newIPConns(cfg.MaxConnectionsPerIP)
	s.refusalLogs = rate.NewLimiter(refusalLogsPerSecond, 2*refusalLogsPerSecond)
	s.consumer = cfg.Consumer
	if s.consumer == nil {
		s.consumer = DefaultConsumer{}
	}
	if cfg.Hooks.Enabled() {
		s.hooks = newHookConsumer(s.consumer, cfg.Hooks, b.Node(), cfg.Region, cfg.TrustedProxies, s.metrics, s.log)
		s.consumer = s.hooks
	}
	s.buffers.New = func() any { p := make([]byte, 0, 4096); return &p }

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.httpError
	e.Use(s.readDeadline)
	e.GET("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{})))
	e.GET("/stats", s.stats)
	e.GET("/ws", s.countRefusals(s.serveWS))
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
	return s, nil
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
	if err := s.auth.ready(); err != nil {
		return writeError(c, http.StatusServiceUnavailable, CodeUnavailable, err.Error())
	}
	return c.String(http.StatusOK, "ready\n")
}

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
	if !local {
		ss.ip = ip
	}
	running = true
	go s.run(ss, cr.Groups)
	return nil
}

// run is a session's reader goroutine: it reads until the connection
// ends, then releases the channel and waits for the writer.
func (s *Server) run(ss *session, groups []string) {
	defer s.release()
	defer s.untrack(ss)
	if ss.ip != "" {
		defer s.perIP.release(ss.ip)
	}
	s.metrics.connects.Inc()
	s.metrics.connections.Inc()
	defer s.metrics.connections.Dec()

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
		"seconds", time.Since(ss.opened).Round(time.Millisecond).Seconds(), "groups", ss.count())
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

// reserve takes one of MaxConnections' slots for an upgrade before it is
// decided (the connect hook may take a while), so that concurrent
// upgrades never overshoot; release gives it back.
func (s *Server) reserve() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slots >= s.cfg.MaxConnections {
		return false
	}
	s.slots++
	return true
}

func (s *Server) release() {
	s.mu.Lock()
	s.slots--
	s.mu.Unlock()
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

// Shutdown closes every WebSocket with 1012 (service restart) so clients
// reconnect elsewhere, spread over DrainPeriod, refuses new ones, and
// waits for the sessions to end, then for the disconnect hook's queued
// reports. When ctx ends first it drops the remaining connections without
// a handshake, and the reports not yet sent. /readyz answers 503 from the
// first call on.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	open := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		open = append(open, ss)
	}
	s.mu.Unlock()
	s.drain(ctx, open)
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
		if err := localTool(c.Request()); err != nil {
			return err
		}
		return next(c)
	}
}

// localTool refuses, without an API key, a loopback request that a local
// tool did not make on its own: one a browser sent for a page (Origin,
// Sec-Fetch-*: a cross-site POST would be CSRF), one a proxy on this
// machine relayed (Forwarded, Via, X-Forwarded-*), or one for a Host that
// is not this machine (DNS rebinding: a page's own name made to point at
// 127.0.0.1).
func localTool(r *http.Request) error {
	for name := range r.Header {
		if name == "Origin" || name == "Forwarded" || name == "Via" ||
			strings.HasPrefix(name, "Sec-Fetch-") || strings.HasPrefix(name, "X-Forwarded-") {
			return refuse(CodeForbidden, "API_KEY is not set, so the server API serves local tools only, and this request carries "+
				name+" (sent by a browser or a proxy); set API_KEY to call it from there")
		}
	}
	if !isLocalHost(r.Host) {
		return refuse(CodeForbidden, "API_KEY is not set, so the server API serves local tools only, and Host names another machine; "+
			"use localhost or a loopback address, or set API_KEY")
	}
	return nil
}

// isLocalHost reports whether a Host header names this machine: localhost
// (or a name under it) or a loopback address, with any port.
func isLocalHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	return host == "localhost" || strings.HasSuffix(host, ".localhost") || isLoopbackIP(host)
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
