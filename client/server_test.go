package client_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/apptest"
	"github.com/groupcast/groupcast/web"
)

// server is a real groupcast instance under test: a broker and a
// web.Server behind an http.Server on a fixed address, which can be
// stopped and started again on the same address (a restart).
type server struct {
	t       testing.TB
	addr    string
	natsURL string
	cfg     web.Config
	kept    int // history size of every group, recoverable; 0: none kept

	b    *broker.Broker
	web  *web.Server
	http *http.Server
	done chan struct{}
}

// startServer starts an instance on natsURL (embedded NATS when empty).
// cfg.Region defaults to "test-region" (set on the broker too, so that
// deliveries carry it). It stops when the test ends.
func startServer(t testing.TB, natsURL string, cfg web.Config) *server {
	t.Helper()
	if cfg.Region == "" {
		cfg.Region = "test-region"
	}
	s := &server{t: t, natsURL: natsURL, cfg: cfg, addr: "127.0.0.1:0"}
	s.start()
	t.Cleanup(s.stop)
	return s
}

// startKeptServer is startServer with every group recoverable, keeping
// size messages, on the JetStream server at natsURL.
func startKeptServer(t testing.TB, natsURL string, size int) *server {
	t.Helper()
	s := &server{t: t, natsURL: natsURL, cfg: web.Config{Region: "test-region"}, addr: "127.0.0.1:0", kept: size}
	s.start()
	t.Cleanup(s.stop)
	return s
}

// start (re)starts the instance on its address, with a new node id.
func (s *server) start() {
	s.t.Helper()
	ln, err := net.Listen("tcp", s.addr)
	for i := 0; err != nil && i < 50; i++ { // the old socket may linger a moment
		time.Sleep(20 * time.Millisecond)
		ln, err = net.Listen("tcp", s.addr)
	}
	if err != nil {
		s.t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	log := apptest.Logger(s.t)
	bcfg := broker.Config{URL: s.natsURL, Region: s.cfg.Region, Logger: log, ReconnectWait: 50 * time.Millisecond}
	if s.kept > 0 {
		bcfg.Policies, bcfg.HistorySize = []broker.PolicyRule{{Pattern: "*", Policy: broker.Recoverable}}, s.kept
	}
	s.b, err = broker.New(bcfg)
	if err != nil {
		ln.Close()
		s.t.Fatal(err)
	}
	cfg := s.cfg
	cfg.Logger = log
	if s.web, err = web.New(s.b, cfg); err != nil {
		ln.Close()
		s.t.Fatal(err)
	}
	s.http = &http.Server{Handler: s.web.Handler()}
	s.done = make(chan struct{})
	go func(hs *http.Server, done chan struct{}) {
		defer close(done)
		hs.Serve(ln)
	}(s.http, s.done)
}

// stop shuts the instance down as SIGTERM would: every WebSocket is
// closed with 1012, then the listener and the broker.
func (s *server) stop() {
	if s.http == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.web.Shutdown(ctx)
	// Close, not Shutdown: the WebSockets are closed already, and a
	// browser's speculative connections would hold Shutdown for 5 s.
	s.http.Close()
	<-s.done
	s.b.Close(ctx)
	s.http = nil
}

// restart stops the instance and starts a new one on the same address.
func (s *server) restart() {
	s.t.Helper()
	s.stop()
	s.start()
}

func (s *server) wsURL() string { return "ws://" + s.addr + "/ws" }

// publish posts data to a group through the server API.
func (s *server) publish(group, data string) {
	s.t.Helper()
	resp, err := http.Post("http://"+s.addr+"/api/groups/"+group+"/messages", "application/json", strings.NewReader(data))
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		b, _ := io.ReadAll(resp.Body)
		s.t.Fatalf("publish to %s: %d %s", group, resp.StatusCode, b)
	}
}

// sendDirect posts data to one connection through the server API.
func (s *server) sendDirect(channel, data string) {
	s.t.Helper()
	resp, err := http.Post("http://"+s.addr+"/api/channels/"+channel+"/messages", "application/json", strings.NewReader(data))
	if err != nil {
		s.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		s.t.Fatalf("send to %s: %d", channel, resp.StatusCode)
	}
}
