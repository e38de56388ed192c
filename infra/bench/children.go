package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/groupcast/groupcast/infra"
	"github.com/nats-io/nats-server/v2/server"
)

// The benchmark starts copies of itself inside the namespaces, with -role.

// runNATSRole runs one nats-server from the configuration file conf, its variables
// (NATS_SERVER_NAME, ...) taken from the environment, until SIGTERM.
func runNATSRole(conf string) error {
	opts, err := infra.LoadNATSOptions(conf, nil)
	if err != nil {
		return err
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return err
	}
	s.SetLoggerV2(stderrLogger{name: opts.ServerName}, false, false, false)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		return fmt.Errorf("%s: not ready for connections", opts.ServerName)
	}
	<-sig
	s.Shutdown()
	s.WaitForShutdown()
	return nil
}

// stderrLogger passes a server's warnings and errors on; notices are chatty.
type stderrLogger struct{ name string }

func (l stderrLogger) Noticef(string, ...any) {}
func (l stderrLogger) Debugf(string, ...any)  {}
func (l stderrLogger) Tracef(string, ...any)  {}
func (l stderrLogger) Warnf(f string, v ...any) {
	fmt.Fprintf(os.Stderr, "%s: warning: %s\n", l.name, fmt.Sprintf(f, v...))
}
func (l stderrLogger) Errorf(f string, v ...any) {
	fmt.Fprintf(os.Stderr, "%s: error: %s\n", l.name, fmt.Sprintf(f, v...))
}
func (l stderrLogger) Fatalf(f string, v ...any) {
	fmt.Fprintf(os.Stderr, "%s: fatal: %s\n", l.name, fmt.Sprintf(f, v...))
}

// rttResult is what -role rtt prints: TCP handshake times to an address, in µs.
type rttResult struct {
	Min, Median, Max int64
}

// runRTTRole times n TCP handshakes (SYN to SYN-ACK: one round trip) to addr from
// inside a namespace, and prints them as JSON.
func runRTTRole(addr string, n int) error {
	var us []int64
	for range n {
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		us = append(us, time.Since(start).Microseconds())
		_ = c.Close()
	}
	slices.Sort(us)
	return json.NewEncoder(os.Stdout).Encode(rttResult{Min: us[0], Median: us[len(us)/2], Max: us[len(us)-1]})
}

// childRole runs the role named by -role, if any, and reports whether it did.
func childRole(role string) bool {
	var err error
	switch role {
	case "":
		return false
	case "nats":
		err = runNATSRole(flag.Arg(0))
	case "wan":
		err = runWANRole()
	case "rtt":
		var n int
		if _, err = fmt.Sscan(flag.Arg(1), &n); err == nil {
			err = runRTTRole(flag.Arg(0), n)
		}
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	return true
}
