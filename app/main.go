// Command groupcast is a real-time server: browsers join channel groups
// over WebSockets, backends publish to a group or a connection over HTTP,
// and NATS fans every message out to every instance. Settings come from
// the environment; see README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/web"
)

// version is stamped at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "groupcast:", err)
		os.Exit(1)
	}
}

// run starts the server with the given environment and serves until ctx
// ends, then shuts down gracefully. When listening is not nil it receives
// the bound address once the server accepts connections.
func run(ctx context.Context, getenv func(string) string, stderr io.Writer, listening func(net.Addr)) error {
	cfg, err := loadSettings(getenv)
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogFormat, cfg.LogLevel)

	ln, err := net.Listen("tcp", ":"+strconv.Itoa(cfg.Port))
	if err != nil {
		return fmt.Errorf("PORT=%d: %v", cfg.Port, err)
	}
	defer ln.Close()

	metrics := web.NewMetrics()
	b, err := broker.New(broker.Config{
		URL:               cfg.NATSURL,
		Node:              cfg.NodeID,
		Region:            cfg.Region,
		Prefix:            cfg.NATSPrefix,
		CredsFile:         cfg.NATSCreds,
		NKeyFile:          cfg.NATSNKey,
		Token:             cfg.NATSToken,
		TLSCA:             cfg.NATSTLSCA,
		TLSCert:           cfg.NATSTLSCert,
		TLSKey:            cfg.NATSTLSKey,
		ListenAddr:        cfg.NATSListen,
		OnFanout:          metrics.ObserveFanout,
		Presence:          cfg.PresenceGroups,
		Policies:          cfg.Policies,
		HistorySize:       cfg.HistorySize,
		HistoryTTL:        cfg.HistoryTTL,
		FileStore:         cfg.FileStore,
		StoreDir:          cfg.JetStreamDir,
		DedupWindow:       cfg.DedupWindow,
		Replicas:          cfg.Replicas,
		HistoryRegion:     cfg.HistoryRegion,
		MaxReplays:        cfg.MaxReplays,
		MaxPresenceGroups: cfg.MaxPresence,
		Logger:            log,
	})
	if err != nil {
		return err
	}
	log = log.With("node", b.Node(), "region", cfg.Region)
	if b.Embedded() {
		log.Info("NATS_URL is unset: using an embedded NATS server; right for one instance only")
	}
	w := web.New(b, web.Config{
		Region:  cfg.Region,
		APIKeys: cfg.APIKeys,
		Auth: web.AuthConfig{
			Secret:   []byte(cfg.JWTSecret),
			JWKSURL:  cfg.JWKSURL,
			Issuer:   cfg.JWTIssuer,
			Audience: cfg.JWTAudience,
			Leeway:   cfg.JWTLeeway,
		},
		MaxConnections:      cfg.MaxConnections,
		FramesPerSecond:     float64(cfg.FramesPerSecond),
		HandshakesPerSecond: float64(cfg.HandshakesPerIP),
		TrustedProxies:      cfg.TrustedProxies,
		Hooks: web.HookConfig{
			ConnectURL:    cfg.HookConnectURL,
			JoinURL:       cfg.HookJoinURL,
			SendURL:       cfg.HookSendURL,
			Secret:        cfg.HookSecret,
			Timeout:       cfg.HookTimeout,
			MaxConcurrent: cfg.HookConcurrency,
		},
		AllowedOrigins:   cfg.AllowedOrigins,
		ClientSend:       cfg.ClientSend,
		MaxFrameBytes:    int64(cfg.MaxFrameBytes),
		MaxBodyBytes:     int64(cfg.MaxBodyBytes),
		MaxGroups:        cfg.MaxGroups,
		OutboxFrames:     cfg.OutboxFrames,
		OutboxBytes:      cfg.OutboxBytes,
		WriteTimeout:     cfg.WriteTimeout,
		WriteDelay:       cfg.WriteDelay,
		PingInterval:     cfg.PingInterval,
		MaxConnectionAge: cfg.MaxConnAge,
		NATSLossGrace:    cfg.NATSLossGrace,
		TraceProject:     cfg.TraceProject,
		Metrics:          metrics,
		Logger:           log,
	})
	if len(cfg.APIKeys) == 0 {
		log.Warn("API_KEY is unset: the server API answers loopback callers only")
	}
	if cfg.JWTSecret == "" && cfg.JWKSURL == "" {
		log.Warn("ANONYMOUS CONNECTIONS: neither JWT_SECRET nor JWKS_URL is set, so any client may join any group; set one before exposing this server")
	}
	srv := &http.Server{
		Handler:           w.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if cfg.PprofAddr != "" {
		stopPprof, err := servePprof(cfg.PprofAddr, log)
		if err != nil {
			b.Close(context.Background())
			return fmt.Errorf("PPROF_ADDR=%s: %v", cfg.PprofAddr, err)
		}
		defer stopPprof()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("groupcast listening", "addr", ln.Addr().String(), "version", version)
	if listening != nil {
		listening(ln.Addr())
	}

	select {
	case <-ctx.Done():
	case err = <-served:
		err = fmt.Errorf("serve: %w", err)
	}
	start := time.Now()
	log.Info("shutting down", "timeout", cfg.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()

	// Stop accepting, close every WebSocket (Shutdown ignores hijacked
	// connections), then drain NATS and stop the embedded server.
	httpDone := make(chan error, 1)
	go func() { httpDone <- srv.Shutdown(sctx) }()
	if werr := w.Shutdown(sctx); werr != nil {
		log.Warn("some WebSockets did not close in time", "error", werr)
	}
	if herr := <-httpDone; herr != nil {
		log.Warn("HTTP shutdown", "error", herr)
		srv.Close()
	}
	if err == nil {
		<-served
	}
	if berr := b.Close(sctx); berr != nil {
		log.Warn("NATS drain", "error", berr)
	}
	log.Info("stopped", "took", time.Since(start).Round(time.Millisecond).String())
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// servePprof serves net/http/pprof on its own listener, apart from the
// public port. The returned function stops it and waits.
func servePprof(addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	log.Warn("profiler enabled", "addr", ln.Addr().String())
	return func() { srv.Close(); <-done }, nil
}
