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
	// No TCP keep-alive probes: WebSockets and streams are pinged
	// (PING_INTERVAL) and idle HTTP connections end (HTTP_IDLE_TIMEOUT),
	// and the four socket options per connection are a connect's cost.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(ctx, "tcp", ":"+strconv.Itoa(cfg.Port))
	if err != nil {
		return fmt.Errorf("PORT=%d: %v", cfg.Port, err)
	}
	defer ln.Close()

	metrics := web.NewMetrics()
	b, err := startBroker(cfg, metrics, log)
	if err != nil {
		return err
	}
	log = log.With("node", b.Node(), "region", cfg.Broker.Region)
	w, err := startWeb(cfg, b, metrics, log)
	if err != nil {
		b.Close(context.Background())
		return err
	}
	srv := &http.Server{
		Handler:           w.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       cfg.HTTPIdleTimeout,
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
	shutdown(cfg.ShutdownTimeout, srv, served, err == nil, w, b, log)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// startBroker connects to NATS, or starts the embedded server.
func startBroker(cfg *settings, metrics *web.Metrics, log *slog.Logger) (*broker.Broker, error) {
	bc := cfg.Broker
	bc.OnFanout, bc.Logger = metrics.ObserveFanout, log
	b, err := broker.New(bc)
	if errors.Is(err, broker.ErrStoreDir) {
		return nil, errors.New("JETSTREAM_DIR: required with HISTORY_STORE=file and the embedded server")
	}
	if err != nil {
		return nil, err
	}
	if b.Embedded() {
		log.Info("NATS_URL is unset: using an embedded NATS server; right for one instance only")
	}
	return b, nil
}

// startWeb makes the HTTP side, and warns of what is left open.
func startWeb(cfg *settings, b *broker.Broker, metrics *web.Metrics, log *slog.Logger) (*web.Server, error) {
	wc := cfg.Web
	wc.Metrics, wc.Logger = metrics, log
	w, err := web.New(b, wc)
	if err != nil {
		return nil, err
	}
	if len(wc.APIKeys) == 0 {
		log.Warn("API_KEY is unset: the server API answers loopback callers only")
	}
	if !wc.Auth.Enabled() {
		log.Warn("ANONYMOUS CONNECTIONS: neither JWT_SECRET nor JWKS_URL is set, so any client may join any group; set one before exposing this server")
	}
	return w, nil
}

// shutdown stops accepting, closes every WebSocket (http.Server.Shutdown
// ignores hijacked connections), then drains NATS and stops the embedded
// server, within timeout. wait tells it to wait for Serve to return.
func shutdown(timeout time.Duration, srv *http.Server, served <-chan error, wait bool, w *web.Server, b *broker.Broker, log *slog.Logger) {
	start := time.Now()
	log.Info("shutting down", "timeout", timeout.String())
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	httpDone := make(chan error, 1)
	go func() { httpDone <- srv.Shutdown(ctx) }()
	if err := w.Shutdown(ctx); err != nil {
		log.Warn("some WebSockets did not close in time", "error", err)
	}
	if err := <-httpDone; err != nil {
		log.Warn("HTTP shutdown", "error", err)
		srv.Close()
	}
	if wait {
		<-served
	}
	if err := b.Close(ctx); err != nil {
		log.Warn("NATS drain", "error", err)
	}
	log.Info("stopped", "took", time.Since(start).Round(time.Millisecond).String())
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
