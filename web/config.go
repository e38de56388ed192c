package web

import (
	"cmp"
	"log/slog"
	"time"
)

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
	// its writer goroutine writes them, so that more of them go out in one
	// write: fewer system calls per delivery (on both ends) for that much
	// latency. Replies to the client's own requests are not held. Default
	// 0: deliveries are written at once by the goroutine that fans them
	// out, and merged only when they queue up (the fan-out is behind, or
	// the socket is full).
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
	// Logger is required. A connection's lines go to its Handler
	// without a caller's PC (see connLogger), so AddSource shows none
	// for them.
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
