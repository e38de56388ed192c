// Package livetest runs real groupcast instances in tests: a broker and a
// web server behind an http.Server on a fixed loopback address, which can
// be stopped and started again on that address (a restart).
//
// It does not import package web, so that web's own tests can use it: the
// test hands it the constructor of the web side (web.New, in effect).
package livetest

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/apptest"
	"github.com/groupcast/groupcast/internal/natstest"
)

// Web is the web side of an instance, a *web.Server.
type Web interface {
	Handler() http.Handler
	// Shutdown closes every connection as SIGTERM does (1012).
	Shutdown(ctx context.Context) error
}

// Config says how to make an instance.
type Config struct {
	// Broker is the broker's configuration: URL "" for embedded NATS;
	// Logger defaults to the test's log, ReconnectWait to 50 ms, Region
	// to "test-region".
	Broker broker.Config
	// Web makes the web side on the broker, logging to log.
	Web func(b *broker.Broker, log *slog.Logger) (Web, error)
}

// Server is one running instance. Its fields change on Restart.
type Server struct {
	Addr string         // host:port, the same across restarts
	B    *broker.Broker // the running broker; nil while stopped
	Web  Web            // the running web side; nil while stopped

	t    testing.TB
	cfg  Config
	http *http.Server
	done chan struct{} // closed when Serve returns
}

// Start starts an instance on a random port and waits until its broker
// is ready. It stops when the test ends.
func Start(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.Broker.Logger == nil {
		cfg.Broker.Logger = apptest.Logger(t)
	}
	if cfg.Broker.ReconnectWait == 0 {
		cfg.Broker.ReconnectWait = 50 * time.Millisecond
	}
	if cfg.Broker.Region == "" {
		cfg.Broker.Region = "test-region"
	}
	s := &Server{t: t, cfg: cfg, Addr: "127.0.0.1:0"}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// start (re)starts the instance on its address, with a new broker (and
// node id).
func (s *Server) start() {
	s.t.Helper()
	ln, err := net.Listen("tcp", s.Addr)
	for i := 0; err != nil && i < 50; i++ { // the old socket may linger a moment
		time.Sleep(20 * time.Millisecond)
		ln, err = net.Listen("tcp", s.Addr)
	}
	if err != nil {
		s.t.Fatal(err)
	}
	s.Addr = ln.Addr().String()
	if s.B, err = broker.New(s.cfg.Broker); err != nil {
		ln.Close()
		s.t.Fatal(err)
	}
	if s.Web, err = s.cfg.Web(s.B, s.cfg.Broker.Logger); err != nil {
		ln.Close()
		s.B.Close(context.Background())
		s.t.Fatal(err)
	}
	s.http = &http.Server{Handler: s.Web.Handler()}
	s.done = make(chan struct{})
	go func(hs *http.Server, done chan struct{}) {
		defer close(done)
		hs.Serve(ln)
	}(s.http, s.done)
	natstest.WaitFor(s.t, 5*time.Second, func() bool { return s.B.Ready() == nil })
}

// Stop shuts the instance down as SIGTERM does: every WebSocket closes
// with 1012, then the listener and the broker stop. Stopping a stopped
// instance does nothing.
func (s *Server) Stop() {
	if s.http == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Web.Shutdown(ctx)
	// Close, not Shutdown: the WebSockets are closed already, and a
	// browser's speculative connections would hold Shutdown for 5 s.
	s.http.Close()
	<-s.done
	s.B.Close(ctx)
	s.http, s.B, s.Web = nil, nil, nil
}

// Restart stops the instance, unless it is stopped, and starts a new one
// on the same address.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// URL is the instance's base URL, http://host:port.
func (s *Server) URL() string { return "http://" + s.Addr }

// WSURL is the instance's WebSocket endpoint.
func (s *Server) WSURL() string { return "ws://" + s.Addr + "/ws" }

// Publish posts body to group through the server API, failing the test
// unless it is accepted.
func (s *Server) Publish(group, body string) {
	s.t.Helper()
	s.post("/api/groups/"+group+"/messages", body)
}

// Send posts body to one connection's channel through the server API,
// failing the test unless it is accepted.
func (s *Server) Send(channel, body string) {
	s.t.Helper()
	s.post("/api/channels/"+channel+"/messages", body)
}

func (s *Server) post(path, body string) {
	s.t.Helper()
	resp, err := http.Post(s.URL()+path, "application/json", strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		b, _ := io.ReadAll(resp.Body)
		s.t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
	}
}
