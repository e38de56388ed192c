package main

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// natsWS is an in-process nats-server that accepts clients only on its
// WebSocket listener: the reference point with no application layer.
type natsWS struct {
	srv *server.Server
	// URL is the ws:// URL clients connect to.
	URL string
}

// startNATSWS starts a nats-server whose only client listener is a plain
// (no TLS, no auth, no compression) WebSocket listener on addr ("host:port";
// port 0 picks a free one). The plain NATS client port is not opened. With
// logging, the server's notices go to stderr.
func startNATSWS(addr string, logging bool) (*natsWS, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("addr %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("addr %q: bad port", addr)
	}
	if port == 0 {
		port = -1 // nats-server's "random port"; 0 would disable the listener
	}
	opts := &server.Options{
		ServerName: "loadgen-nats-ws",
		Host:       "127.0.0.1",
		Port:       -1,
		DontListen: true, // no plain NATS client listener
		NoSigs:     true,
		NoLog:      !logging,
		Websocket: server.WebsocketOpts{
			Host:             host,
			Port:             port,
			NoTLS:            true,
			HandshakeTimeout: 10 * time.Second,
		},
	}
	srv, err := runServer(opts, logging, "websocket listener on "+addr)
	if err != nil {
		return nil, err
	}
	// Start resolved a random port into opts (under the server's lock, which
	// ReadyForConnections took after the listener was set), so this read is
	// ordered after the write.
	u := "ws://" + net.JoinHostPort(host, strconv.Itoa(opts.Websocket.Port))
	return &natsWS{srv: srv, URL: u}, nil
}

// Close shuts the server down and waits until it has stopped.
func (n *natsWS) Close() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}

// natsTCP is an in-process nats-server with a plain NATS client listener
// (and optionally its HTTP monitoring port), for several groupcast
// instances to share as their external NATS.
type natsTCP struct {
	srv *server.Server
	// URL is the nats:// URL clients connect to; MonitorURL the
	// monitoring base URL ("" without one).
	URL, MonitorURL string
}

// startNATS starts a nats-server listening for NATS clients on addr
// ("host:port"; port 0 picks a free one) and, unless httpAddr is empty,
// serving monitoring (/varz) on httpAddr.
func startNATS(addr, httpAddr string, logging bool) (*natsTCP, error) {
	host, port, err := splitPort(addr)
	if err != nil {
		return nil, err
	}
	opts := &server.Options{
		ServerName: "loadgen-nats",
		Host:       host,
		Port:       port,
		NoSigs:     true,
		NoLog:      !logging,
		MaxPayload: 1 << 20,
	}
	if httpAddr != "" {
		if opts.HTTPHost, opts.HTTPPort, err = splitPort(httpAddr); err != nil {
			return nil, err
		}
	}
	srv, err := runServer(opts, logging, "listener on "+addr)
	if err != nil {
		return nil, err
	}
	n := &natsTCP{srv: srv, URL: srv.ClientURL()}
	if httpAddr != "" {
		if a := srv.MonitorAddr(); a != nil {
			n.MonitorURL = "http://" + a.String()
		}
	}
	return n, nil
}

// splitPort splits "host:port" into host and a nats-server port number
// (-1, a random port, for 0).
func splitPort(addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("addr %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("addr %q: bad port", addr)
	}
	if port == 0 {
		port = -1
	}
	return host, port, nil
}

// Close shuts the server down and waits until it has stopped.
func (n *natsTCP) Close() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}

// runServer starts a nats-server and waits until it takes connections;
// what names the listener in errors.
func runServer(opts *server.Options, logging bool, what string) (*server.Server, error) {
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats-server: %w", err)
	}
	if logging {
		srv.ConfigureLogger()
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("nats-server: %s not ready", what)
	}
	return srv, nil
}
