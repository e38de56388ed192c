package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage:
  loadgen serve-nats-ws [-addr 127.0.0.1:8090] [-log]
  loadgen fanout -target groupcast|nats-ws [-url ws://...] [-api http://...]
                 [-conns 5000] [-group bench] [-rate 10] [-duration 20s] [-size 64]
                 [-pid N] [-connect-rate 2000] [-json] ...
run "loadgen <subcommand> -h" for every flag.
`

// run executes one subcommand and returns the process exit code: 0 on
// success, 1 on failure, 2 on a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	if _, err := raiseFileLimit(); err != nil {
		fmt.Fprintf(stderr, "loadgen: raising RLIMIT_NOFILE: %v\n", err)
	}
	switch args[0] {
	case "serve-nats-ws":
		return cmdServeNATSWS(ctx, args[1:], stdout, stderr)
	case "fanout":
		return cmdFanout(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "loadgen: unknown subcommand %q\n%s", args[0], usage)
	return 2
}

func cmdServeNATSWS(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve-nats-ws", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8090", "host:port of the WebSocket listener (port 0: any free port)")
	logging := fs.Bool("log", false, "print nats-server's log to stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "serve-nats-ws: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	srv, err := startNATSWS(*addr, *logging)
	if err != nil {
		fmt.Fprintf(stderr, "serve-nats-ws: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "nats-ws listening on %s (pid %d)\n", srv.URL, os.Getpid())
	<-ctx.Done()
	srv.Close()
	fmt.Fprintln(stdout, "nats-ws stopped")
	return 0
}

func cmdFanout(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fanout", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	fs.StringVar(&cfg.Target, "target", targetGroupcast, "server kind: groupcast or nats-ws")
	fs.StringVar(&cfg.URL, "url", "", "WebSocket URL (default ws://127.0.0.1:8080/ws for groupcast, ws://127.0.0.1:8090 for nats-ws)")
	fs.StringVar(&cfg.API, "api", "http://127.0.0.1:8080", "groupcast HTTP base URL, for publishing")
	fs.IntVar(&cfg.Conns, "conns", 5000, "receiving WebSocket connections")
	fs.StringVar(&cfg.Group, "group", "bench", "group (groupcast) or subject (nats-ws)")
	fs.Float64Var(&cfg.Rate, "rate", 10, "publishes per second")
	fs.DurationVar(&cfg.Duration, "duration", 20*time.Second, "publishing window")
	fs.IntVar(&cfg.Size, "size", 64, "payload bytes")
	fs.IntVar(&cfg.PID, "pid", 0, "server process id, for CPU and RSS figures (0: none)")
	fs.Float64Var(&cfg.ConnectRate, "connect-rate", 2000, "connections opened per second while ramping")
	fs.IntVar(&cfg.MaxInflight, "max-inflight", 500, "connections dialing or joining at once")
	fs.DurationVar(&cfg.Settle, "settle", 2*time.Second, "wait after the ramp before sampling idle RSS")
	fs.DurationVar(&cfg.Drain, "drain", 5*time.Second, "wait for stragglers after publishing")
	fs.IntVar(&cfg.SourceIPs, "source-ips", 0, "local 127.0.0.x source addresses (0: as many as the conns need)")
	asJSON := fs.Bool("json", false, "print one JSON object line on stdout (the summary goes to stderr)")
	quiet := fs.Bool("quiet", false, "no progress lines")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "fanout: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if cfg.URL == "" {
		cfg.URL = "ws://127.0.0.1:8080/ws"
		if cfg.Target == targetNATSWS {
			cfg.URL = "ws://127.0.0.1:8090"
		}
	}
	if !*quiet {
		cfg.Log = stderr
	}
	res, err := runFanout(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "fanout: %v\n", err)
		if errors.Is(err, context.Canceled) {
			return 130
		}
		return 1
	}
	if *asJSON {
		writeSummary(stderr, res)
		b, err := json.Marshal(res)
		if err != nil {
			fmt.Fprintf(stderr, "fanout: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		writeSummary(stdout, res)
	}
	return 0
}

// writeSummary prints a result for people.
func writeSummary(w io.Writer, r *Result) {
	fmt.Fprintf(w, "target       %s %s (group %q)\n", r.Target, r.URL, r.Group)
	fmt.Fprintf(w, "connections  %d joined in %.1fs\n", r.Conns, r.RampSecs)
	fmt.Fprintf(w, "publishes    %d in %.1fs (%.1f/s), %d errors, %d-byte payloads, worst start lag %.1f ms\n",
		r.Publishes, r.WindowSecs, r.PublishRate, r.PublishErrors, r.Size, r.PublishLagMax)
	fmt.Fprintf(w, "deliveries   expected %d, delivered %d, lost %d, duplicates %d, malformed %d\n",
		r.Expected, r.Delivered, r.Lost, r.Duplicates, r.Malformed)
	fmt.Fprintf(w, "throughput   %.0f deliveries/s (drain %.2fs after publishing)\n", r.DeliveriesPS, r.DrainSecs)
	fmt.Fprintf(w, "latency      p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms (mean %.2f ms)\n",
		r.Latency.P50, r.Latency.P99, r.Latency.P999, r.Latency.Max, r.Latency.Mean)
	if r.ServerPID > 0 {
		fmt.Fprintf(w, "server cpu   pid %d: %.2fs over the window (%.0f%% of a core) + %.2fs drain; %.2f µs/delivery\n",
			r.ServerPID, r.ServerCPUSecs, 100*r.ServerCPUUtil, r.ServerCPUDrainSecs, r.ServerUSPerDeliv)
		fmt.Fprintf(w, "server rss   %.1f MiB before, %.1f MiB with %d idle conns: %.1f KiB/conn\n",
			float64(r.ServerRSSBeforeKiB)/1024, float64(r.ServerRSSIdleKiB)/1024, r.Conns, r.ServerKiBPerConn)
	}
	fmt.Fprintf(w, "loader cpu   %.2fs (%.0f%% of a core), %.2f µs/delivery\n",
		r.LoaderCPUSecs, 100*r.LoaderCPUUtil, r.LoaderUSPerDeliv)
	fmt.Fprintf(w, "machine      %.2fs CPU used by other processes (noise; should be ~0), %.2fs in irq/softirq\n",
		r.OtherCPUSecs, r.IRQCPUSecs)
	if r.ErrorFrames > 0 || r.Disconnects > 0 || r.FirstError != "" {
		fmt.Fprintf(w, "problems     %d error frames, %d disconnects; first: %s\n", r.ErrorFrames, r.Disconnects, r.FirstError)
	}
}
