// Package web serves groupcast over HTTP with Echo: the WebSocket endpoint
// /ws, the server API for backends, health, metrics and the demo page.
package web

import (
	"context"
	"embed"
	"io/fs"
	"log/slog"
	"net/http"
	"sync"

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
	HandleForwards(func(channel string, msg []byte) []byte) error
	Forward(ctx context.Context, channel string, msg []byte) ([]byte, error)
	Send(channel string, data []byte) error
	Stats() broker.Stats
	HandleCommands(func(cmd []byte))
	Command(channel string, cmd []byte) error
	Broadcast(cmd []byte) error
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

	// withWriter holds the sessions that have had a writer goroutine since
	// the watchdog last looked: the only ones it has anything to check, so
	// idle connections cost it nothing. startWriter adds; the watchdog
	// removes a session once it finds the writer gone.
	withWriterMu sync.Mutex
	withWriter   map[*session]struct{}

	// goroutines starts every goroutine of the Server (the watchdog,
	// sessions' readers, commands); closed, it means shutting down.
	goroutines gate
	// ended wakes the watchdog when the last session has left during
	// shutdown, so that it returns without waiting for its next tick.
	ended chan struct{}

	commandSlots chan struct{}
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

		withWriter: make(map[*session]struct{}),

		byChannel:    make(map[string]*session),
		commandSlots: make(chan struct{}, maxCommandsInFlight),
		ended:        make(chan struct{}, 1),
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
	e.GET("/sse", s.countRefusals(s.serveSSE))
	e.POST("/sse/:channel", s.postSSE)
	e.OPTIONS("/sse/:channel", s.preflightSSE)
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
	if err := b.HandleForwards(s.takeForward); err != nil {
		return nil, err
	}
	s.goroutines.start(s.watchdog)
	return s, nil
}

// Handler returns the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.echo }

func (s *Server) readyz(c echo.Context) error {
	if s.goroutines.closing() {
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
	// Checked under mu: Shutdown closes the gate before it takes mu to
	// list the sessions, so it lists every session tracked here.
	if s.goroutines.closing() {
		return false
	}
	s.sessions[ss] = struct{}{}
	return true
}

func (s *Server) untrack(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	if s.byChannel[ss.channel] == ss {
		delete(s.byChannel, ss.channel)
	}
	last := len(s.sessions) == 0
	s.mu.Unlock()
	if last && s.goroutines.closing() {
		s.wakeWatchdog()
	}
}

// wakeWatchdog has the watchdog check at once whether it may return.
func (s *Server) wakeWatchdog() {
	select {
	case s.ended <- struct{}{}:
	default: // already woken
	}
}
