// Package natstest is the one way tests start real nats-servers: Start
// (a plain server), StartJetStream and StartJetStreamAt (one that keeps
// streams), and StartWith for any other options (limits, authorization,
// gateways between regions, leaf nodes). Every server listens on
// loopback, logs nothing, and stops when its test ends.
package natstest

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Start starts a nats-server listening on 127.0.0.1:port (-1: a random
// port), the stand-in for an external cluster. It stops when the test ends.
func Start(t testing.TB, port int) *server.Server {
	t.Helper()
	return start(t, &server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true})
}

// StartWith starts a nats-server with opts on loopback, on a random port
// unless opts name one, without signal handlers or logs; it stops when
// the test ends (a test may Shutdown it sooner, and start another on the
// same ports).
func StartWith(t testing.TB, opts server.Options) *server.Server {
	t.Helper()
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = -1
	}
	opts.NoSigs, opts.NoLog = true, true
	return start(t, &opts)
}

func start(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// Port returns the client port of ns.
func Port(ns *server.Server) int { return ns.Addr().(*net.TCPAddr).Port }

// Subscriptions counts ns's subscriptions that match a literal subject.
func Subscriptions(t testing.TB, ns *server.Server, subject string) int {
	t.Helper()
	sz, err := ns.Subsz(&server.SubszOptions{Subscriptions: true, Test: subject})
	if err != nil {
		t.Fatal(err)
	}
	return sz.Total
}

// WaitFor polls cond every few milliseconds until it holds, failing the
// test after timeout.
func WaitFor(t testing.TB, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// StartJetStream starts a nats-server with JetStream (memory and a
// temporary store) on a random port, the stand-in for an external cluster
// that keeps history.
func StartJetStream(t testing.TB) *server.Server {
	t.Helper()
	return StartJetStreamAt(t, -1, t.TempDir())
}

// StartJetStreamAt starts a nats-server with JetStream on a port (-1:
// random) keeping its files in dir, so that a test can restart it with
// its streams.
func StartJetStreamAt(t testing.TB, port int, dir string) *server.Server {
	t.Helper()
	return start(t, &server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true, JetStream: true, StoreDir: dir})
}
