package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
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
  loadgen serve-nats [-addr 127.0.0.1:4222] [-http 127.0.0.1:8222] [-log]
  loadgen serve-floor [-addr 127.0.0.1:8091]
  loadgen fanout  -target T [-transport ws|sse] [-url ws://...]... [-api http://...]... [-pid N]... [-with-pid N]...
                  [-conns 5000] [-group bench] [-rate 10] [-duration 20s] [-size 64] [-plot f.svg] [-json] ...
  loadgen rooms   -target T [same] [-rooms 500] [-rate 2000] [-churn 100] [-churn-stay 1s]
  loadgen connect -target T [same] [-conns 5000] [-rounds 6] [-max-inflight 0] [-verify 3]
  T is groupcast, nats-ws, floor (serve-floor) or channels (cmd/loadgen/seed).
  loadgen coldstart -bin ./groupcast [-n 20] [-cpu 0] [-env K=V]...
  loadgen scale-report -in results.jsonl [-svg plot.svg]   (cmd/loadgen/scale.sh's table and plot)
run "loadgen <subcommand> -h" for every flag.
`

// run executes one subcommand and returns the process exit code: 0 on
// success, 1 on failure, 2 on a usage error, 130 when interrupted.
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
	case "serve-nats":
		return cmdServeNATS(ctx, args[1:], stdout, stderr)
	case "serve-floor":
		return cmdServeFloor(ctx, args[1:], stdout, stderr)
	case modeFanout, modeRooms, modeConnect:
		return cmdRun(ctx, args[0], args[1:], stdout, stderr)
	case "coldstart":
		return cmdColdstart(ctx, args[1:], stdout, stderr)
	case "scale-report":
		return cmdScaleReport(args[1:], stdout, stderr)
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

func cmdServeNATS(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve-nats", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:4222", "host:port of the NATS client listener (port 0: any free port)")
	httpAddr := fs.String("http", "127.0.0.1:8222", "host:port of the monitoring listener (/varz); empty: none")
	logging := fs.Bool("log", false, "print nats-server's log to stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "serve-nats: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	srv, err := startNATS(*addr, *httpAddr, *logging)
	if err != nil {
		fmt.Fprintf(stderr, "serve-nats: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "nats listening on %s, monitoring %q (pid %d)\n", srv.URL, srv.MonitorURL, os.Getpid())
	<-ctx.Done()
	srv.Close()
	fmt.Fprintln(stdout, "nats stopped")
	return 0
}

func cmdServeFloor(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve-floor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8091", "host:port to serve WebSocket (/ws) and publishing (/api) on (port 0: any free port)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "serve-floor: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	f, err := startFloor(*addr)
	if err != nil {
		fmt.Fprintf(stderr, "serve-floor: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "floor listening on %s, publishing on %s (pid %d)\n", f.URL, f.API, os.Getpid())
	<-ctx.Done()
	f.Close()
	fmt.Fprintln(stdout, "floor stopped")
	return 0
}

// defaultBases are the -url and -api each target is found at when not given.
var defaultBases = map[string][2]string{
	targetGroupcast: {"ws://127.0.0.1:8080/ws", "http://127.0.0.1:8080"},
	targetNATSWS:    {"ws://127.0.0.1:8090", ""},
	targetFloor:     {"ws://127.0.0.1:8091/ws", "http://127.0.0.1:8091"},
	targetChannels:  {"ws://127.0.0.1:8092/ws", "http://127.0.0.1:8092"},
}

// parsePIDs parses the values of a process id flag.
func parsePIDs(name string, vals []string) ([]int, error) {
	var pids []int
	for _, v := range vals {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%s %q: not a process id", name, v)
		}
		pids = append(pids, n)
	}
	return pids, nil
}

// listFlag collects a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// cmdRun runs the fanout, rooms and connect subcommands.
func cmdRun(ctx context.Context, mode string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(mode, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	var urls, apis, pids, withPIDs listFlag
	defConns, defRate, defGroup := 5000, 10.0, "bench"
	if mode == modeRooms {
		defRate, defGroup = 2000, "room"
	}
	fs.StringVar(&cfg.Target, "target", targetGroupcast, "server kind: groupcast, nats-ws, floor (serve-floor) or channels (the seed system)")
	fs.StringVar(&cfg.Transport, "transport", transportWS, "groupcast: ws (WebSockets) or sse (Server-Sent Events streams, frames POSTed)")
	fs.Var(&urls, "url", "WebSocket URL of an instance; repeat for several (default ws://127.0.0.1:8080/ws for groupcast, ws://127.0.0.1:8090 for nats-ws, :8091/ws for floor, :8092/ws for channels)")
	fs.Var(&apis, "api", "HTTP base URL, for publishing (all targets but nats-ws); repeat, in -url order (default http://127.0.0.1:8080, :8091 for floor, :8092 for channels)")
	fs.Var(&pids, "pid", "server process id, for CPU and RSS figures; repeat, in -url order")
	fs.Var(&withPIDs, "with-pid", "another process of the first instance's system (channels: redis-server), its CPU and RSS counted with it; repeat")
	fs.IntVar(&cfg.BrokerPID, "broker-pid", 0, "external nats-server process id (several instances), for its CPU")
	fs.StringVar(&cfg.NATSMonitor, "nats-monitor", "", "external nats-server monitoring URL (http://127.0.0.1:8222): messages in and out")
	fs.IntVar(&cfg.Conns, "conns", defConns, "receiving WebSocket connections (spread over the -url in turn)")
	fs.StringVar(&cfg.Group, "group", defGroup, "group (groupcast) or subject (nats-ws); rooms: the prefix of <group>.<n>")
	fs.IntVar(&cfg.Size, "size", 64, "payload bytes")
	connectRate := fs.Float64("connect-rate", 2000, "connections opened per second while ramping (0: no limit)")
	fs.IntVar(&cfg.MaxInflight, "max-inflight", 500, "connections dialing or joining at once (connect: 0 means all)")
	fs.IntVar(&cfg.SourceIPs, "source-ips", 0, "local 127.0.0.x source addresses (0: as many as the conns need)")
	fs.StringVar(&cfg.Profile, "pprof", "", "groupcast PPROF_ADDR base URL (http://127.0.0.1:6060), for -cpu-profile and -heap-profile")
	fs.StringVar(&cfg.ProfileOut, "cpu-profile", "", "write a CPU profile of the publishing window to this file (connect: one per round, see -profile-seconds)")
	fs.StringVar(&cfg.HeapOut, "heap-profile", "", "write a heap profile of the idle connections to this file")
	selfProfile := fs.String("self-profile", "", "write a CPU profile of loadgen itself, over the whole run, to this file (is the loader the bottleneck?)")
	plot := fs.String("plot", "", "write an SVG plot of throughput and latency per second to this file")
	asJSON := fs.Bool("json", false, "print one JSON object line on stdout (the summary goes to stderr)")
	quiet := fs.Bool("quiet", false, "no progress lines")
	var rounds, verify, profSecs *int
	if mode == modeConnect {
		rounds = fs.Int("rounds", 6, "storms: round 1 on a fresh server, the rest reconnecting (the headline is their median)")
		verify = fs.Int("verify", 3, "publishes after each storm, proving every client rejoined")
		profSecs = fs.Int("profile-seconds", 1, "with -cpu-profile f: each round from round 2 writes f.round<N>, a profile of this many seconds from its storm's start")
		cfg.MaxInflight = 0
		fs.Lookup("max-inflight").DefValue = "0"
		*connectRate = 0
	} else {
		fs.Float64Var(&cfg.Rate, "rate", defRate, "publishes per second (all groups together)")
		fs.DurationVar(&cfg.Duration, "duration", 20*time.Second, "publishing window")
		fs.DurationVar(&cfg.Settle, "settle", 2*time.Second, "wait after the ramp before sampling idle RSS; the idle CPU figure is measured over it")
		fs.DurationVar(&cfg.Drain, "drain", 5*time.Second, "wait for stragglers after publishing")
		fs.IntVar(&cfg.Batch, "batch", 0, "groupcast: publish through POST /api/messages, this many messages a request (a message waits until its batch is full); 0: a request each")
	}
	if mode == modeRooms {
		fs.IntVar(&cfg.Rooms, "rooms", 500, "groups; connection i joins <group>.<i*rooms/conns>; publish n goes to <group>.<n mod rooms>")
		fs.Float64Var(&cfg.Churn, "churn", 100, "visits started per second: a connection joins another room, stays -churn-stay, leaves")
		fs.DurationVar(&cfg.ChurnStay, "churn-stay", time.Second, "how long a visitor stays after its join's ack")
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", mode, fs.Arg(0))
		return 2
	}
	cfg.URLs, cfg.APIs = urls, apis
	def := defaultBases[cfg.Target]
	if len(cfg.URLs) == 0 && def[0] != "" {
		cfg.URLs = []string{def[0]}
	}
	if len(cfg.APIs) == 0 && def[1] != "" {
		cfg.APIs = []string{def[1]}
	}
	var err error
	if cfg.PIDs, err = parsePIDs("-pid", pids); err == nil {
		cfg.WithPIDs, err = parsePIDs("-with-pid", withPIDs)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", mode, err)
		return 2
	}
	cfg.ConnectRate = *connectRate
	if cfg.ConnectRate <= 0 {
		cfg.ConnectRate = math.Inf(1)
	}
	if !*quiet {
		cfg.Log = stderr
	}
	origin := time.Now()
	if *plot != "" {
		cfg.Deliveries = newSeries(origin, maxSeriesSecs)
		cfg.Joins = newSeries(origin, maxSeriesSecs)
	}

	if *selfProfile != "" {
		f, err := os.Create(*selfProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(stderr, "%s: -self-profile: %v\n", mode, err)
			return 2
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}

	var res any
	var title string
	var notes []string
	if mode == modeConnect {
		if cfg.ProfileOut != "" && cfg.Profile == "" {
			fmt.Fprintf(stderr, "connect: -cpu-profile needs -pprof\n")
			return 2
		}
		var cr *ConnectResult
		cr, err = runConnect(ctx, ConnectConfig{Base: cfg, Rounds: *rounds, Verify: *verify, ProfileSecs: *profSecs})
		if err == nil {
			res = cr
			title = fmt.Sprintf("%s connect storm: %d clients × %d rounds", cr.Target, cr.Conns, len(cr.Rounds))
			notes = []string{fmt.Sprintf("server CPU per connect-and-join: %.1f µs (median of warm rounds), %.1f µs cold; storm %.2fs; every client rejoined: %v",
				cr.ServerUSPerConnect, cr.ColdUSPerConnect, cr.StormSecs, cr.AllRejoined)}
		}
	} else {
		cfg.Mode = mode
		var fr *Result
		fr, err = runFanout(ctx, cfg)
		if err == nil {
			res = fr
			title = fmt.Sprintf("%s %s: %d conns, %d group(s), %.0f publishes/s, %d-byte payloads", fr.Target, fr.Mode, fr.Conns, fr.Rooms, fr.Rate, fr.Size)
			notes = []string{fmt.Sprintf("%.0f deliveries/s, lost %d, duplicates %d; latency p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms; server CPU %.2f µs/delivery",
				fr.DeliveriesPS, fr.Lost, fr.Duplicates, fr.Latency.P50, fr.Latency.P99, fr.Latency.P999, fr.ServerUSPerDeliv)}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", mode, err)
		if errors.Is(err, context.Canceled) {
			return 130
		}
		return 1
	}
	if *plot != "" {
		if err := savePlot(*plot, title, notes, cfg.Deliveries.stats(), cfg.Joins.stats()); err != nil {
			fmt.Fprintf(stderr, "%s: plot: %v\n", mode, err)
			return 1
		}
	}
	summary := stdout
	if *asJSON {
		summary = stderr
	}
	switch r := res.(type) {
	case *Result:
		writeSummary(summary, r)
	case *ConnectResult:
		writeConnectSummary(summary, r)
	}
	if *asJSON {
		b, err := json.Marshal(res)
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", mode, err)
			return 1
		}
		fmt.Fprintf(stdout, "%s\n", b)
	}
	return 0
}

func savePlot(path, title string, notes []string, deliv, joins []SecondStat) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := plotRun(f, title, notes, deliv, joins); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func cmdColdstart(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("coldstart", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg ColdstartConfig
	var env listFlag
	fs.StringVar(&cfg.Bin, "bin", "", "server binary to start (required)")
	fs.IntVar(&cfg.N, "n", 20, "starts")
	fs.IntVar(&cfg.CPU, "cpu", 0, "pin the server to this core (-1: no pinning)")
	fs.Var(&env, "env", "KEY=VALUE for the server, on top of this environment less PORT and NATS_URL; repeat")
	fs.StringVar(&cfg.Path, "path", "/readyz", "path that answers 200 when ready")
	fs.DurationVar(&cfg.Poll, "poll", time.Millisecond, "wait between polls")
	asJSON := fs.Bool("json", false, "print one JSON object line on stdout (the summary goes to stderr)")
	quiet := fs.Bool("quiet", false, "no progress lines")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if cfg.Bin == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "coldstart: -bin is required, and nothing else")
		return 2
	}
	cfg.Args = nil
	cfg.Env = env
	if !*quiet {
		cfg.Log = stderr
	}
	res, err := runColdstart(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "coldstart: %v\n", err)
		return 1
	}
	w := stdout
	if *asJSON {
		w = stderr
	}
	fmt.Fprintf(w, "coldstart    %s, %d starts\n", res.Bin, res.N)
	fmt.Fprintf(w, "ready        median %.1f ms, p90 %.1f ms (min %.1f, max %.1f): exec to the first 200 on %s\n",
		res.Ready.Median, res.Ready.P90, res.Ready.Min, res.Ready.Max, cfg.Path)
	fmt.Fprintf(w, "listening    median %.1f ms, p90 %.1f ms: exec to the first accepted connection\n", res.Listen.Median, res.Listen.P90)
	fmt.Fprintf(w, "cpu          median %.1f ms, p90 %.1f ms of CPU used by then (all threads)\n", res.ReadyCPU.Median, res.ReadyCPU.P90)
	if *asJSON {
		b, _ := json.Marshal(res)
		fmt.Fprintf(stdout, "%s\n", b)
	}
	return 0
}

// writeSummary prints a fanout or rooms result for people.
func writeSummary(w io.Writer, r *Result) {
	fmt.Fprintf(w, "target       %s %s over %s, %s (%d group(s) from %q)\n", r.Target, r.Mode, r.Transport, r.URL, r.Rooms, r.Group)
	fmt.Fprintf(w, "connections  %d joined in %.2fs; connect+join p50 %.1f ms, p99 %.1f ms; server %.1f µs/connect\n",
		r.Conns, r.RampSecs, r.ConnectLatency.P50, r.ConnectLatency.P99, r.ServerUSPerConnect)
	fmt.Fprintf(w, "publishes    %d in %.1fs (%.1f/s), %d errors, %d-byte payloads, worst start lag %.1f ms\n",
		r.Publishes, r.WindowSecs, r.PublishRate, r.PublishErrors, r.Size, r.PublishLagMax)
	fmt.Fprintf(w, "deliveries   expected %d, delivered %d, lost %d, duplicates %d, malformed %d\n",
		r.Expected, r.Delivered, r.Lost, r.Duplicates, r.Malformed)
	if r.Mode == modeRooms {
		fmt.Fprintf(w, "churn        %d visits (%d joins+leaves acked, %d failed); to visitors: %d delivered, %d promised, %d lost, %d in flight around a join/leave, %d strays\n",
			r.Visits, r.JoinsLeaves, r.VisitsFailed, r.VisitDelivered, r.VisitExpected, r.VisitLost, r.VisitExtra, r.Strays)
	}
	fmt.Fprintf(w, "throughput   %.0f deliveries/s (drain %.2fs after publishing)\n", r.DeliveriesPS, r.DrainSecs)
	fmt.Fprintf(w, "latency      p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms (mean %.2f ms)\n",
		r.Latency.P50, r.Latency.P99, r.Latency.P999, r.Latency.Max, r.Latency.Mean)
	if l := r.LatencyAtSocket; l != (Latency{}) {
		fmt.Fprintf(w, "at socket    p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms (mean %.2f ms): to the kernel's receipt, before the loader's read\n",
			l.P50, l.P99, l.P999, l.Max, l.Mean)
	}
	if len(r.ServerPIDs) > 0 {
		pids := fmt.Sprint(r.ServerPIDs)
		if len(r.WithPIDs) > 0 {
			pids += fmt.Sprintf(" with %v", r.WithPIDs)
		}
		fmt.Fprintf(w, "server cpu   pids %s: %.2fs over the window (%.0f%% of a core) + %.2fs drain; %.2f µs/delivery\n",
			pids, r.ServerCPUSecs, 100*r.ServerCPUUtil, r.ServerCPUDrainSecs, r.ServerUSPerDeliv)
		fmt.Fprintf(w, "server rss   %.1f MiB before, %.1f MiB with %d idle conns: %.1f KiB/conn\n",
			float64(r.ServerRSSBeforeKiB)/1024, float64(r.ServerRSSIdleKiB)/1024, r.Conns, r.ServerKiBPerConn)
		fmt.Fprintf(w, "server idle  %.1f ms of CPU a second while the conns idled (the settle): %.2f µs/s per conn\n",
			r.ServerIdleCPUMsPerS, r.ServerIdleUSPerConnPerS)
	}
	for i, in := range r.Instances {
		recv := "?"
		if in.NATSReceived >= 0 {
			recv = strconv.FormatInt(in.NATSReceived, 10)
		}
		fmt.Fprintf(w, "instance %d   %s pid %d: %d conns, %d delivered, %.2fs CPU, %.2f µs/delivery, %.1f µs/connect, %.1f KiB/conn, %s messages from NATS\n",
			i, in.URL, in.PID, in.Conns, in.Delivered, in.CPUSecs, in.USPerDeliv, in.USPerConnect, in.KiBPerConn, recv)
	}
	if r.BrokerCPUSecs > 0 || r.NATSOutMsgs > 0 {
		fmt.Fprintf(w, "nats         broker %.2fs CPU (%.3f µs/delivery); %d messages in, %d out: %.2f out per publish\n",
			r.BrokerCPUSecs, r.BrokerUSPerDeliv, r.NATSInMsgs, r.NATSOutMsgs, r.NATSOutPerPublish)
	}
	fmt.Fprintf(w, "loader cpu   %.2fs (%.0f%% of a core), %.2f µs/delivery\n",
		r.LoaderCPUSecs, 100*r.LoaderCPUUtil, r.LoaderUSPerDeliv)
	fmt.Fprintf(w, "machine      %.2fs CPU used by other processes (noise; should be ~0), %.2fs in irq/softirq\n",
		r.OtherCPUSecs, r.IRQCPUSecs)
	if r.ErrorFrames > 0 || r.Disconnects > 0 || r.FirstError != "" {
		fmt.Fprintf(w, "problems     %d error frames, %d disconnects; first: %s\n", r.ErrorFrames, r.Disconnects, r.FirstError)
	}
}

// writeConnectSummary prints a connect result for people.
func writeConnectSummary(w io.Writer, r *ConnectResult) {
	fmt.Fprintf(w, "target       %s connect over %s, %s: %d clients, %d at once, %d rounds\n", r.Target, r.Transport, r.URL, r.Conns, r.MaxInflight, len(r.Rounds))
	for _, rd := range r.Rounds {
		fmt.Fprintf(w, "round %-2d     %.2fs, server %.2fs CPU = %.1f µs/connect, loader %.2fs, other %.2fs; connect+join p50 %.0f ms p99 %.0f ms p99.9 %.0f ms; rejoined %v\n",
			rd.Round, rd.Secs, rd.ServerCPUSecs, rd.ServerUSPerConnect, rd.LoaderCPUSecs, rd.OtherCPUSecs,
			rd.ConnectLatency.P50, rd.ConnectLatency.P99, rd.ConnectLatency.P999, rd.Rejoined)
	}
	fmt.Fprintf(w, "storm        server CPU per connect-and-join %.1f µs (median of warm rounds; cold %.1f µs), %.2fs for %d clients\n",
		r.ServerUSPerConnect, r.ColdUSPerConnect, r.StormSecs, r.Conns)
	fmt.Fprintf(w, "latency      connect+join p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms (median round)\n",
		r.ConnectLatency.P50, r.ConnectLatency.P99, r.ConnectLatency.P999)
	fmt.Fprintf(w, "rejoined     every client, every round: %v; server rss %.1f KiB/conn (round 1)\n", r.AllRejoined, r.ServerKiBPerConn)
	fmt.Fprintf(w, "machine      %.2fs CPU used by other processes during the storms (noise; should be ~0)\n", r.OtherCPUSecs)
	if r.FirstError != "" {
		fmt.Fprintf(w, "problems     %s\n", r.FirstError)
	}
}
