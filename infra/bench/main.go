// Command bench measures groupcast's fan-out between regions at real distances. It
// runs the supercluster of infra/nats (the very configuration and region files, at
// the production addresses) with each region in a Linux network namespace, the
// groupcast binary in each region, and the distance between regions emulated on the
// links that join the namespaces. It then reports how long a message takes from a
// publisher in one region to WebSocket members in the others, against the emulated
// round trip, at a given publishing rate; how long after a join a publish from another
// region is sure to arrive; what crossed the gateways, from nats-server's counters; and,
// with -throughput, the highest rate the machine sustains.
//
// It needs root (ip netns, veth, TUN) and Linux. The kernel here has no sch_netem, so
// the delay is not tc netem's: the namespaces are joined by TUN devices whose packets
// this process forwards, holding each for its pair's one-way delay (a user-space netem
// "delay", per packet, both directions). Build, then run as root from the repository:
//
//	go build -o /tmp/gcbench ./infra/bench && sudo /tmp/gcbench
//	sudo /tmp/gcbench -rtt 30,90,150 -rate 1000 -duration 20s -throughput
//
// Nothing but loopback, the namespaces it creates (gcb-<region>) and their links is
// touched; all are removed on exit, and at start if a crashed run left them behind.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/groupcast/groupcast/infra"
)

// config is the benchmark's flags.
type config struct {
	rtt        []time.Duration // round trips between regions 1-2, 1-3 and 2-3
	servers    int             // nats-servers per region
	instances  int             // groupcast instances per region
	members    int             // WebSocket members per instance
	deliveries float64         // deliveries per second to each region's members
	rate       float64         // messages published per second in each region (0: from deliveries)
	duration   time.Duration   // measured publishing
	warmup     time.Duration   // publishing before measuring
	joins      int             // join trials per ordered pair of regions
	throughput bool            // also find the highest sustained rate
	cc         string          // TCP congestion control between regions
	bin        string          // groupcast binary; empty: build ./app
	logDir     string          // where the processes' output goes
}

func main() {
	role := flag.String("role", "", "internal: the part a copy of the benchmark plays (nats, rtt, wan)")
	rtt := flag.String("rtt", "30,90,150", "round trips in ms between regions 1-2, 1-3 and 2-3 (in the order of infra/nats's gateways)")
	var cfg config
	flag.IntVar(&cfg.servers, "servers", 3, "nats-servers per region (1-3)")
	flag.IntVar(&cfg.instances, "instances", 2, "groupcast instances per region")
	flag.IntVar(&cfg.members, "members", 1, "WebSocket members per instance")
	flag.Float64Var(&cfg.deliveries, "deliveries", 1000, "deliveries per second to each region's members: every region publishes deliveries / (3 x members per region) messages per second")
	flag.Float64Var(&cfg.rate, "rate", 0, "messages published per second in each region, through the server API (overrides -deliveries)")
	flag.DurationVar(&cfg.duration, "duration", 10*time.Second, "measured publishing time")
	flag.DurationVar(&cfg.warmup, "warmup", 2*time.Second, "publishing time before measuring")
	flag.IntVar(&cfg.joins, "joins", 10, "join trials per ordered pair of regions")
	flag.BoolVar(&cfg.throughput, "throughput", false, "also raise the rate until the machine cannot keep up")
	flag.StringVar(&cfg.cc, "cc", "cubic", "TCP congestion control between regions (set on the routes): cubic, Debian's default, or bbr")
	flag.StringVar(&cfg.bin, "bin", "", "groupcast binary (default: build ./app)")
	flag.StringVar(&cfg.logDir, "logs", "", "directory for the processes' output (default: a temporary one, removed after a run without errors)")
	flag.Parse()
	if childRole(*role) {
		return
	}
	for _, f := range strings.Split(*rtt, ",") {
		ms, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || ms < 0 {
			fatal(fmt.Errorf("-rtt %q: want three numbers of milliseconds", *rtt))
		}
		cfg.rtt = append(cfg.rtt, time.Duration(ms*float64(time.Millisecond)))
	}
	if cfg.rate <= 0 {
		cfg.rate = cfg.deliveries / float64(3*cfg.instances*cfg.members)
	}
	if len(cfg.rtt) != 3 || cfg.servers < 1 || cfg.servers > 3 || cfg.instances < 1 || cfg.members < 1 || cfg.rate <= 0 {
		fatal(errors.New("bad flags; see -help"))
	}
	if os.Geteuid() != 0 {
		fatal(errors.New("needs root: it creates network namespaces and TUN devices"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

// bench is a running setup.
type bench struct {
	cfg         config
	repo        string
	sites       []*site
	wan         *exec.Cmd     // the delay line's process
	wanOut      *bufio.Reader // its standard output
	oneWay      map[[2]int]time.Duration
	natsProcs   []*exec.Cmd
	apps        [][]*infra.App // by site, instance
	appPassword string
	apiKey      string
	monitors    [][]string // monitoring URLs by site, server
}

func run(ctx context.Context, cfg config) (err error) {
	b := &bench{cfg: cfg, appPassword: randomHex(16), apiKey: randomHex(16)}
	if b.repo, err = moduleRoot(); err != nil {
		return err
	}
	if cfg.logDir == "" {
		if cfg.logDir, err = os.MkdirTemp("", "gcbench-"); err != nil {
			return err
		}
		b.cfg.logDir = cfg.logDir
		defer func() {
			if err == nil {
				_ = os.RemoveAll(cfg.logDir)
			} else {
				err = fmt.Errorf("%w (the processes' output is in %s)", err, cfg.logDir)
			}
		}()
	}
	defer b.close()
	if err := b.network(); err != nil {
		return err
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("%d CPUs, load average %s before starting; TCP congestion control %s between regions\n",
		runtime.NumCPU(), strings.Join(strings.Fields(string(load))[:3], " "), cfg.cc)
	if err := b.startNATS(ctx); err != nil {
		return err
	}
	if err := b.calibrate(); err != nil {
		return err
	}
	if err := b.startApps(ctx); err != nil {
		return err
	}
	if err := b.measureJoins(ctx); err != nil {
		return err
	}
	if _, err := b.measureFanout(ctx, cfg.rate, cfg.warmup, cfg.duration, true); err != nil {
		return err
	}
	if cfg.throughput {
		if err := b.measureThroughput(ctx); err != nil {
			return err
		}
	}
	b.stopProcesses()
	st, err := b.stopWAN()
	if err != nil {
		return err
	}
	fmt.Printf("delay line since the last report: %v\n", st)
	return nil
}

// network creates a namespace per region and starts the delay line between them.
func (b *bench) network() error {
	natsDir := filepath.Join(b.repo, "infra", "nats")
	regions, err := infra.Regions(filepath.Join(natsDir, "regions", "us-central1.env"))
	if err != nil {
		return err
	}
	for _, ns := range staleNamespaces() {
		fmt.Fprintf(os.Stderr, "removing %s, left by an earlier run\n", ns)
		_ = ipCmd("netns", "del", ns)
	}
	for i := 1; i <= len(regions); i++ {
		_ = ipCmd("link", "del", fmt.Sprintf("gcb%d", i)) // its veth end, if any
	}
	for k, r := range regions {
		env, err := infra.ReadEnvFile(filepath.Join(natsDir, "regions", r+".env"))
		if err != nil {
			return err
		}
		s := &site{Index: k + 1, Region: r}
		for _, u := range listItems(env[infra.EnvClusterRoutes])[:b.cfg.servers] {
			ap, err := netip.ParseAddrPort(strings.TrimPrefix(u, "nats://"))
			if err != nil {
				return fmt.Errorf("%s.env: route %q: %w", r, u, err)
			}
			s.Servers = append(s.Servers, ap.Addr())
		}
		s.Subnet = netip.PrefixFrom(s.Servers[0], 24).Masked()
		b.sites = append(b.sites, s)
	}
	for _, s := range b.sites {
		if err := s.setUp(); err != nil {
			return err
		}
	}
	b.oneWay = map[[2]int]time.Duration{}
	wan := wanConfig{Sites: b.sites, OneWay: map[string]time.Duration{}, CC: b.cfg.cc}
	for n, pair := range [][2]int{{0, 1}, {0, 2}, {1, 2}} {
		d := b.cfg.rtt[n] / 2
		b.oneWay[pair] = d
		b.oneWay[[2]int{pair[1], pair[0]}] = d
		wan.OneWay[fmt.Sprintf("%d-%d", pair[0], pair[1])] = d
		wan.OneWay[fmt.Sprintf("%d-%d", pair[1], pair[0])] = d
	}
	return b.startWAN(wan)
}

// startWAN starts the delay line in a process of its own, in the real-time class
// (chrt -f 10) so that its packets leave on time however busy the machine is, or at
// the highest ordinary priority (nice -20) where that is refused; and waits until it
// has attached the namespaces.
func (b *bench) startWAN(cfg wanConfig) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	j, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	var errs []error
	for _, prio := range [][]string{{"chrt", "-f", "10"}, {"nice", "-n", "-20"}} {
		cmd := exec.Command(prio[0], append(prio[1:], self, "-role", "wan")...)
		cmd.Env = append(os.Environ(), "GCBENCH_WAN="+string(j))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			errs = append(errs, err)
			continue
		}
		r := bufio.NewReader(out)
		line, err := r.ReadString('\n')
		if err == nil && strings.TrimSpace(line) == "ready" {
			b.wan, b.wanOut = cmd, r
			fmt.Printf("delay line: %s\n", strings.Join(prio, " "))
			return nil
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		errs = append(errs, fmt.Errorf("%s: %q %v", strings.Join(prio, " "), line, err))
		// A TUN device dies with the process that made it: the next attempt
		// starts clean.
	}
	return fmt.Errorf("delay line: %w", errors.Join(errs...))
}

// wanReport asks the delay line for its statistics since the last report.
func (b *bench) wanReport() (wanStats, error) {
	var st wanStats
	if err := b.wan.Process.Signal(syscall.SIGUSR1); err != nil {
		return st, err
	}
	line, err := b.wanOut.ReadString('\n')
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal([]byte(line), &st)
}

// stopWAN stops the delay line and returns its statistics.
func (b *bench) stopWAN() (wanStats, error) {
	var st wanStats
	if b.wan == nil {
		return st, nil
	}
	_ = b.wan.Process.Signal(syscall.SIGTERM)
	err := json.NewDecoder(b.wanOut).Decode(&st)
	_ = b.wan.Wait()
	b.wan = nil
	return st, err
}

// startNATS starts the supercluster, each server a copy of this program inside its
// region's namespace, configured by infra/nats, and waits until it is joined.
func (b *bench) startNATS(ctx context.Context) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	natsDir := filepath.Join(b.repo, "infra", "nats")
	conf := filepath.Join(natsDir, "nats-server.conf")
	sysPassword := randomHex(16)
	b.monitors = make([][]string, len(b.sites))
	for _, s := range b.sites {
		env, err := infra.ReadEnvFile(filepath.Join(natsDir, "regions", s.Region+".env"))
		if err != nil {
			return err
		}
		// Only the servers in use, so that nobody keeps dialling absent ones.
		env[infra.EnvClusterRoutes] = infra.ConfigList(listItems(env[infra.EnvClusterRoutes])[:b.cfg.servers])
		for n := 1; n <= infra.GatewaySlots; n++ {
			env[infra.EnvGatewayURLs(n)] = infra.ConfigList(listItems(env[infra.EnvGatewayURLs(n)])[:b.cfg.servers])
		}
		for i, addr := range s.Servers {
			name := fmt.Sprintf("nats-%s-%d", s.Region, i)
			// The region file listens on 0.0.0.0; three servers share a namespace
			// here, so each takes its own address.
			vars := map[string]string{
				infra.EnvServerName:    name,
				infra.EnvClientListen:  addr.String() + ":4222",
				infra.EnvHTTPListen:    addr.String() + ":8222",
				infra.EnvClusterListen: addr.String() + ":6222",
				infra.EnvGatewayListen: addr.String() + ":7222",
				infra.EnvAppPassword:   b.appPassword,
				infra.EnvSysPassword:   sysPassword,
			}
			cmd := exec.Command("ip", "netns", "exec", s.Netns, self, "-role", "nats", conf)
			for _, kv := range os.Environ() {
				if !strings.HasPrefix(kv, "NATS_") {
					cmd.Env = append(cmd.Env, kv)
				}
			}
			for k, v := range env {
				if _, own := vars[k]; !own {
					cmd.Env = append(cmd.Env, k+"="+v)
				}
			}
			for k, v := range vars {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			out, err := os.Create(filepath.Join(b.cfg.logDir, name+".log"))
			if err != nil {
				return err
			}
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				return err
			}
			b.natsProcs = append(b.natsProcs, cmd)
			b.monitors[s.Index-1] = append(b.monitors[s.Index-1], "http://"+addr.String()+":8222")
		}
	}
	start := time.Now()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := b.joined(ctx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("supercluster not joined: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("supercluster: %d regions x %d nats-servers joined in %v\n", len(b.sites), b.cfg.servers, time.Since(start).Round(time.Millisecond))
	return nil
}

// natsURL is the NATS_URL of an instance in site s: its region's servers in use.
func (b *bench) natsURL(s *site) string {
	var urls []string
	for _, a := range s.Servers {
		urls = append(urls, fmt.Sprintf("nats://%s:%s@%s:4222", infra.AppUser, b.appPassword, a))
	}
	return strings.Join(urls, ",")
}

// startApps starts the groupcast instances, inside their regions' namespaces.
func (b *bench) startApps(ctx context.Context) error {
	bin := b.cfg.bin
	if bin == "" {
		bin = filepath.Join(b.cfg.logDir, "groupcast")
		cmd := exec.Command("go", "build", "-o", bin, "./app")
		cmd.Dir, cmd.Stdout, cmd.Stderr = b.repo, os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build ./app: %w", err)
		}
	}
	b.apps = make([][]*infra.App, len(b.sites))
	for _, s := range b.sites {
		for i := range b.cfg.instances {
			node := fmt.Sprintf("%s-%d", s.Region, i)
			out, err := os.Create(filepath.Join(b.cfg.logDir, node+".log"))
			if err != nil {
				return err
			}
			app, err := infra.StartAppInNetns(s.Netns, s.Servers[0].String(), bin, 8081+i, map[string]string{
				"NATS_URL":  b.natsURL(s),
				"REGION":    s.Region,
				"NODE_ID":   node,
				"API_KEY":   b.apiKey,
				"LOG_LEVEL": "warn",
			}, out)
			if err != nil {
				return err
			}
			b.apps[s.Index-1] = append(b.apps[s.Index-1], app)
		}
	}
	for k, apps := range b.apps {
		for i, app := range apps {
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := app.WaitReady(rctx)
			cancel()
			if err != nil {
				return fmt.Errorf("%s instance %d: %w", b.sites[k].Region, i, err)
			}
		}
	}
	fmt.Printf("groupcast: %d instances per region, ready\n\n", b.cfg.instances)
	return nil
}

// stopProcesses stops the groupcast instances and the nats-servers.
func (b *bench) stopProcesses() {
	for _, apps := range b.apps {
		for _, a := range apps {
			_ = a.Stop(10 * time.Second)
		}
	}
	b.apps = nil
	for _, c := range b.natsProcs {
		_ = c.Process.Signal(syscall.SIGTERM)
	}
	for _, c := range b.natsProcs {
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
	}
	b.natsProcs = nil
}

// close stops every process and removes the namespaces.
func (b *bench) close() {
	b.stopProcesses()
	_, _ = b.stopWAN()
	for _, s := range b.sites {
		if s.Netns != "" {
			s.tearDown()
		}
	}
}

// listItems splits a configuration list value, [a,b,c], into its items.
func listItems(v string) []string {
	v = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(v), "["), "]")
	var items []string
	for _, it := range strings.Split(v, ",") {
		if it = strings.TrimSpace(it); it != "" {
			items = append(items, it)
		}
	}
	return items
}

// moduleRoot finds the repository from the working directory.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run it from inside the groupcast repository")
	}
	return filepath.Dir(mod), nil
}

// pairName names the pair of sites i and j.
func (b *bench) pairName(i, j int) string {
	return b.sites[i].Region + " -> " + b.sites[j].Region
}

// sortedDurations returns a sorted copy.
func sortedDurations(d []time.Duration) []time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s
}

// quantile of sorted samples.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) }
