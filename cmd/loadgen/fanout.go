package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Targets a run can measure. All but nats-ws speak groupcast's protocol
// (or the subset of it a run uses) and publish over its HTTP API.
const (
	targetGroupcast = "groupcast"
	targetNATSWS    = "nats-ws"
	targetFloor     = "floor"    // loadgen serve-floor: one write(2) per delivery, nothing else
	targetChannels  = "channels" // Django Channels with channels_redis, the seed system (seed/)
)

// Modes of a run. A connect run (runConnect) is a series of fan-out runs
// whose ramp is the measurement.
const (
	modeFanout  = "fanout"
	modeRooms   = "rooms"
	modeConnect = "connect"
)

const (
	joinTimeout      = 15 * time.Second // dial + join + ack, per connection
	writeTimeout     = 5 * time.Second
	maxFrameBytes    = 16 << 20    // largest server frame accepted
	maxBitsetBytes   = 256 << 20   // above this, duplicates are found by order
	maxPublishes     = 100_000_000 // bound on rate*duration
	maxRoomPublishes = 5_000_000   // bound on rate*duration in rooms mode (per-publish records)
	maxConns         = 1_000_000   // bound on -conns
	maxInstances     = 64          // bound on -url
	progressEvery    = time.Second // ramp progress lines
	pollEvery        = 10 * time.Millisecond
)

// Config describes one run. Zero values of optional fields take the
// defaults noted.
type Config struct {
	Mode   string // modeFanout (default) or modeRooms
	Target string // targetGroupcast, targetNATSWS, targetFloor or targetChannels
	// Transport is transportWS (default) or, with groupcast,
	// transportSSE: streams and POSTs instead of sockets.
	Transport string
	URLs      []string // WebSocket URLs, one per instance: connection i dials URLs[i % len(URLs)]
	APIs      []string // HTTP base URLs (publishing), one per instance; all targets but nats-ws
	PIDs      []int    // server processes to measure, one per URL, or none

	// WithPIDs are processes that serve beside PIDs[0] (the seed system's
	// redis-server): their CPU and RSS count as the first instance's.
	WithPIDs []int

	// BrokerPID is an external nats-server that the instances share (its
	// CPU is reported apart); NATSMonitor is its monitoring base URL
	// (http://host:port), whose /varz message counts show how often each
	// message crossed NATS. Both optional.
	BrokerPID   int
	NATSMonitor string

	Conns       int           // receiving connections
	Group       string        // group (groupcast) or subject (nats-ws); rooms are Group.0, Group.1, …
	Rooms       int           // modeRooms: how many groups the connections are split into
	Churn       float64       // modeRooms: visits started per second (a join, a stay, a leave)
	ChurnStay   time.Duration // modeRooms: how long a visitor stays; default 1s
	Rate        float64       // publishes per second (all rooms together)
	Duration    time.Duration // publishing window
	Size        int           // payload bytes
	Batch       int           // groupcast: publish through POST /api/messages, this many a request; 0: one request each
	ConnectRate float64       // connections opened per second while ramping; default 2000; +Inf: no limit
	MaxInflight int           // connections dialing or joining at once; default 500
	Settle      time.Duration // wait after the ramp before the idle RSS sample (and the idle CPU figure's window); default 2s
	Drain       time.Duration // wait for stragglers after publishing; default 5s
	SourceIPs   int           // local 127.0.0.x addresses to dial from; 0: as many as needed

	// Profile is a groupcast PPROF_ADDR base URL (http://127.0.0.1:6060):
	// a CPU profile of the publishing window goes to ProfileOut, and with
	// HeapOut a heap profile of the idle connections (after Settle).
	// With ProfileRamp > 0 the CPU profile covers that long from the
	// ramp's start instead, and the run keeps its connections until it has
	// been written (so that no teardown is in it).
	Profile     string
	ProfileOut  string
	HeapOut     string
	ProfileRamp time.Duration

	Deliveries *series   // per-second deliveries and their latency; nil: none
	Joins      *series   // per-second join acks and connect latency; nil: none
	Log        io.Writer // progress lines; nil: none
}

func (c *Config) setDefaults() error {
	if c.Batch < 0 || c.Batch > 1000 || c.Batch > 0 && c.Target != targetGroupcast {
		return errors.New("-batch must be 0..1000, and needs -target groupcast")
	}
	switch c.Mode {
	case "", modeFanout:
		c.Mode, c.Rooms, c.Churn = modeFanout, 1, 0
	case modeRooms:
		if c.Rooms < 1 || c.Rooms > c.Conns {
			return fmt.Errorf("-rooms must be 1..-conns (%d)", c.Conns)
		}
	default:
		return fmt.Errorf("mode %q: not %s or %s", c.Mode, modeFanout, modeRooms)
	}
	if err := checkTransport(c); err != nil {
		return err
	}
	if len(c.URLs) == 0 || len(c.URLs) > maxInstances {
		return fmt.Errorf("1 to %d -url needed", maxInstances)
	}
	for _, u := range c.URLs {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "ws" && p.Scheme != "wss") {
			return fmt.Errorf("-url %q is not a ws:// URL", u)
		}
	}
	switch c.Target {
	case targetGroupcast, targetFloor, targetChannels:
		if len(c.APIs) == 0 {
			return fmt.Errorf("-api is required for -target %s", c.Target)
		}
		for _, a := range c.APIs {
			if p, err := url.Parse(a); err != nil || (p.Scheme != "http" && p.Scheme != "https") {
				return fmt.Errorf("-api %q is not an http:// URL", a)
			}
		}
	case targetNATSWS:
	default:
		return fmt.Errorf("-target must be %s, %s, %s or %s, not %q", targetGroupcast, targetNATSWS, targetFloor, targetChannels, c.Target)
	}
	if len(c.PIDs) != 0 && len(c.PIDs) != len(c.URLs) {
		return fmt.Errorf("%d -pid for %d -url: give one per instance, or none", len(c.PIDs), len(c.URLs))
	}
	if len(c.WithPIDs) != 0 && len(c.PIDs) == 0 {
		return errors.New("-with-pid needs -pid")
	}
	if c.Conns < 1 || c.Conns > maxConns {
		return fmt.Errorf("-conns must be 1..%d", maxConns)
	}
	if c.Group == "" || strings.ContainsAny(c.Group, " \t\r\n*>") {
		return fmt.Errorf("-group %q: empty, or has white space or wildcards", c.Group)
	}
	if !(c.Rate > 0) || c.Duration <= 0 {
		return errors.New("-rate and -duration must be positive")
	}
	p := c.Rate * c.Duration.Seconds()
	if p > maxPublishes {
		return fmt.Errorf("-rate × -duration is %.0f publishes, over %d", p, maxPublishes)
	}
	if c.Mode == modeRooms && p > maxRoomPublishes {
		return fmt.Errorf("rooms: -rate × -duration is %.0f publishes, over %d", p, maxRoomPublishes)
	}
	if c.Size < 0 || c.Size > maxFrameBytes/2 {
		return fmt.Errorf("-size must be 0..%d", maxFrameBytes/2)
	}
	if c.Churn < 0 || c.Churn > 100_000 {
		return errors.New("-churn must be 0..100000")
	}
	if c.ChurnStay <= 0 {
		c.ChurnStay = time.Second
	}
	if !(c.ConnectRate > 0) {
		c.ConnectRate = 2000
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = 500
	}
	if c.Settle <= 0 {
		c.Settle = 2 * time.Second
	}
	if c.Drain <= 0 {
		c.Drain = 5 * time.Second
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return nil
}

// Latency is a latency summary in milliseconds.
type Latency struct {
	Mean float64 `json:"mean_ms"`
	P50  float64 `json:"p50_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p999_ms"`
	Max  float64 `json:"max_ms"`
}

func (h *histogram) latency() Latency {
	return Latency{
		Mean: h.mean() / 1e6,
		P50:  float64(h.quantile(0.50)) / 1e6,
		P99:  float64(h.quantile(0.99)) / 1e6,
		P999: float64(h.quantile(0.999)) / 1e6,
		Max:  float64(h.max.Load()) / 1e6,
	}
}

// Instance is what one server instance (one -url, -api and -pid) did.
type Instance struct {
	URL          string  `json:"url"`
	PID          int     `json:"pid,omitempty"`
	Conns        int     `json:"conns"`
	Delivered    int64   `json:"delivered"`
	CPUSecs      float64 `json:"cpu_s"` // publishing window + drain
	USPerDeliv   float64 `json:"us_per_delivery"`
	RampCPUSecs  float64 `json:"ramp_cpu_s"`
	USPerConnect float64 `json:"us_per_connect"`
	RSSBeforeKiB int64   `json:"rss_before_kib"`
	RSSIdleKiB   int64   `json:"rss_idle_kib"`
	KiBPerConn   float64 `json:"kib_per_conn"`
	// NATSReceived is groupcast_nats_received_total over the publishing
	// window and drain: how many messages reached this instance from
	// NATS (-1: unknown).
	NATSReceived int64 `json:"nats_received"`
}

// Result is what a run measured. Server figures are zero without PIDs;
// with several instances they are sums, and Instances has each one.
type Result struct {
	Mode      string  `json:"mode"`
	Target    string  `json:"target"`
	Transport string  `json:"transport"`
	URL       string  `json:"url"` // the -url values, comma-separated
	Conns     int     `json:"conns"`
	Group     string  `json:"group"`
	Rooms     int     `json:"rooms"`
	Rate      float64 `json:"rate"`
	Duration  float64 `json:"duration_s"`
	Size      int     `json:"size"`

	// The ramp: dialing, upgrading and joining every connection.
	RampSecs           float64 `json:"ramp_s"`
	ConnectLatency     Latency `json:"connect_latency"` // dial start to join ack
	RampServerCPUSecs  float64 `json:"ramp_server_cpu_s"`
	ServerUSPerConnect float64 `json:"server_us_per_connect"`
	RampLoaderCPUSecs  float64 `json:"ramp_loader_cpu_s"`
	RampOtherCPUSecs   float64 `json:"ramp_other_cpu_s"`

	Publishes     int64   `json:"publishes"`
	PublishErrors int64   `json:"publish_errors"`
	PublishRate   float64 `json:"publish_rate"`
	PublishLagMax float64 `json:"publish_lag_max_ms"` // worst start delay behind schedule
	// Expected deliveries are those the protocol promises: every publish
	// to each member of its group, and (rooms) to visitors those published
	// after the visitor's join ack and handed out before its leave was sent.
	Expected     int64   `json:"expected"`
	Delivered    int64   `json:"delivered"` // unique deliveries, visitors' included
	Lost         int64   `json:"lost"`      // expected and not delivered
	Duplicates   int64   `json:"duplicates"`
	Malformed    int64   `json:"malformed"`
	ErrorFrames  int64   `json:"error_frames"`
	Disconnects  int64   `json:"disconnects"`
	DeliveriesPS float64 `json:"deliveries_per_s"`
	WindowSecs   float64 `json:"window_s"` // publishing window
	DrainSecs    float64 `json:"drain_s"`  // from end of publishing to last delivery (or give-up)
	Latency      Latency `json:"latency"`
	// LatencyAtSocket is the latency to the kernel's receipt of the frame
	// on the loader's socket (see socketStamp): the server's and the
	// network's part of Latency, without the wait for the loader's read.
	// Zero without timestamps (SSE).
	LatencyAtSocket Latency `json:"latency_at_socket"`

	// Rooms mode: churn. A visit is a join to another room, a stay, and a
	// leave. VisitDelivered counts deliveries to visitors; VisitExtra
	// those the protocol neither promises nor forbids (in flight around a
	// join or leave); Strays are deliveries after a leave's ack, which the
	// protocol forbids.
	Visits         int64 `json:"visits,omitempty"`
	VisitsFailed   int64 `json:"visits_failed,omitempty"`
	JoinsLeaves    int64 `json:"joins_leaves,omitempty"` // acknowledged joins and leaves of visits
	VisitExpected  int64 `json:"visit_expected,omitempty"`
	VisitDelivered int64 `json:"visit_delivered,omitempty"`
	VisitLost      int64 `json:"visit_lost,omitempty"`
	VisitExtra     int64 `json:"visit_extra,omitempty"`
	Strays         int64 `json:"strays,omitempty"`

	ServerPIDs         []int   `json:"server_pids,omitempty"`
	WithPIDs           []int   `json:"with_pids,omitempty"` // counted with the first instance
	ServerCPUSecs      float64 `json:"server_cpu_s"`        // over the publishing window
	ServerCPUDrainSecs float64 `json:"server_cpu_drain_s"`  // during the drain
	ServerCPUUtil      float64 `json:"server_cpu_util"`     // cores busy over the window
	ServerUSPerDeliv   float64 `json:"server_us_per_delivery"`
	ServerRSSBeforeKiB int64   `json:"server_rss_before_kib"`
	ServerRSSIdleKiB   int64   `json:"server_rss_idle_kib"`
	ServerKiBPerConn   float64 `json:"server_kib_per_conn"`
	// Over the settle window, the connections idle: server CPU per second,
	// and per connection (what an idle connection costs: pings, timers).
	ServerIdleCPUMsPerS     float64 `json:"server_idle_cpu_ms_per_s"`
	ServerIdleUSPerConnPerS float64 `json:"server_idle_us_per_conn_per_s"`

	Instances []Instance `json:"instances,omitempty"` // with more than one -url

	// External NATS (-broker-pid, -nats-monitor): its CPU over the window
	// and drain, and the messages it took in and handed out meanwhile
	// (NATSOutPerPublish is how many subscribers each publish reached).
	BrokerCPUSecs     float64 `json:"broker_cpu_s,omitempty"`
	BrokerUSPerDeliv  float64 `json:"broker_us_per_delivery,omitempty"`
	NATSInMsgs        int64   `json:"nats_in_msgs,omitempty"`
	NATSOutMsgs       int64   `json:"nats_out_msgs,omitempty"`
	NATSOutPerPublish float64 `json:"nats_out_per_publish,omitempty"`

	LoaderCPUSecs    float64 `json:"loader_cpu_s"`    // publishing window + drain
	LoaderCPUUtil    float64 `json:"loader_cpu_util"` // cores busy over that time
	LoaderUSPerDeliv float64 `json:"loader_us_per_delivery"`

	// Machine-wide CPU over the publishing window and drain: time used by
	// processes other than the servers, the broker and this loader (noise:
	// it should be near 0), and time in interrupt/softirq handling
	// (loopback TCP work the kernel charges to no process, so neither
	// server figure includes it).
	OtherCPUSecs float64 `json:"other_cpu_s"`
	IRQCPUSecs   float64 `json:"irq_cpu_s"`

	FirstError string `json:"first_error,omitempty"`
}

// fanoutRun is the state of one run; nothing in it outlives runFanout.
type fanoutRun struct {
	cfg      Config
	ctx      context.Context // canceled when the run ends: closes every connection
	cancel   context.CancelCauseFunc
	wg       sync.WaitGroup // every goroutine the run starts
	hist     histogram      // delivery latency
	sockHist histogram      // delivery latency to the kernel's receipt
	connHist histogram      // dial start to join ack
	seqLimit int64          // publishes planned; seq is in [0, seqLimit)
	bitset   bool           // per-connection bitsets find duplicates exactly
	dialers  []*net.Dialer  // receiving WebSockets' (rawWS), one per source address
	http     []*http.Client
	groups   []string // group (subject) of each room

	// Rooms mode: when each publish started (unix ns; 0: it failed), and
	// with churn, per instance and seq, the earliest time a member of the
	// room on that instance received it (the proof that the instance had
	// handed it out by then).
	pubT    []atomic.Int64
	witness [][]atomic.Int64

	joined      atomic.Int64
	failed      atomic.Int64
	disconnects atomic.Int64

	errMu    sync.Mutex
	firstErr error
}

func (r *fanoutRun) noteErr(err error) {
	r.errMu.Lock()
	if r.firstErr == nil {
		r.firstErr = err
	}
	r.errMu.Unlock()
}

func (r *fanoutRun) err() error {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	return r.firstErr
}

// roomOf returns the room a publish goes to.
func (r *fanoutRun) roomOf(seq int64) int { return int(seq % int64(len(r.groups))) }

// homeRoom returns the room connection i joins: rooms are contiguous blocks
// of connections, so that with several instances each room has members on
// each of them.
func (r *fanoutRun) homeRoom(i int) int {
	return int(int64(i) * int64(len(r.groups)) / int64(r.cfg.Conns))
}

// instancePIDs returns the processes of instance i: PIDs[i], and for the
// first, WithPIDs.
func (c *Config) instancePIDs(i int) []int {
	if i == 0 {
		return append([]int{c.PIDs[0]}, c.WithPIDs...)
	}
	return c.PIDs[i : i+1]
}

// instanceRSS returns the summed RSS of instance i's processes, in KiB.
func (c *Config) instanceRSS(i int) (int64, error) {
	var kib int64
	for _, pid := range c.instancePIDs(i) {
		n, err := procRSS(pid)
		if err != nil {
			return 0, fmt.Errorf("server pid %d: %w", pid, err)
		}
		kib += n
	}
	return kib, nil
}

// sample is a reading of every CPU counter a run reports.
type sample struct {
	at     time.Time
	srv    []time.Duration // per PID
	broker time.Duration
	self   time.Duration
	mach   time.Duration
	irq    time.Duration
	machOK bool
}

func (r *fanoutRun) sample() sample {
	s := sample{at: time.Now(), self: selfCPU(), srv: make([]time.Duration, len(r.cfg.PIDs))}
	for i := range r.cfg.PIDs {
		for _, pid := range r.cfg.instancePIDs(i) {
			d, err := procCPU(pid)
			if err != nil {
				r.noteErr(fmt.Errorf("server cpu: %w", err))
			}
			s.srv[i] += d
		}
	}
	if r.cfg.BrokerPID > 0 {
		d, err := procCPU(r.cfg.BrokerPID)
		if err != nil {
			r.noteErr(fmt.Errorf("broker cpu: %w", err))
		}
		s.broker = d
	}
	var err error
	s.mach, s.irq, err = machineCPU()
	s.machOK = err == nil
	return s
}

// cpuUsage is the CPU used between two samples.
type cpuUsage struct {
	wall, self, broker, other, irq time.Duration
	srv                            []time.Duration
	srvTotal                       time.Duration
}

func (a sample) until(b sample) cpuUsage {
	u := cpuUsage{wall: b.at.Sub(a.at), self: b.self - a.self, broker: b.broker - a.broker, srv: make([]time.Duration, len(a.srv))}
	for i := range a.srv {
		u.srv[i] = b.srv[i] - a.srv[i]
		u.srvTotal += u.srv[i]
	}
	if a.machOK && b.machOK {
		u.irq = b.irq - a.irq
		u.other = max(0, b.mach-a.mach-u.self-u.srvTotal-u.broker)
	}
	return u
}

// runFanout performs one measurement: ramp, settle, publish (with churn in
// rooms mode), drain. It returns once every goroutine and connection it
// started is gone.
func runFanout(ctx context.Context, cfg Config) (_ *Result, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	r := &fanoutRun{cfg: cfg}
	r.ctx, r.cancel = context.WithCancelCause(ctx)
	r.seqLimit = int64(math.Ceil(cfg.Rate*cfg.Duration.Seconds())) + 1
	r.bitset = int64(cfg.Conns)*((r.seqLimit+63)/64)*8 <= maxBitsetBytes
	if cfg.Mode == modeRooms && !r.bitset {
		return nil, fmt.Errorf("rooms: -conns × publishes needs over %d MiB of bitsets; publish less", maxBitsetBytes>>20)
	}
	r.groups = []string{cfg.Group}
	if cfg.Mode == modeRooms {
		r.groups = make([]string, cfg.Rooms)
		for i := range r.groups {
			r.groups[i] = cfg.Group + "." + strconv.Itoa(i)
		}
		r.pubT = make([]atomic.Int64, r.seqLimit)
		if cfg.Churn > 0 {
			r.witness = make([][]atomic.Int64, len(cfg.URLs))
			for i := range r.witness {
				r.witness[i] = make([]atomic.Int64, r.seqLimit)
			}
		}
	}
	if r.dialers, r.http, err = sourceDialers(cfg); err != nil {
		return nil, err
	}
	defer func() {
		r.cancel(errors.New("run finished"))
		r.wg.Wait()
		for _, c := range r.http {
			c.CloseIdleConnections()
		}
	}()

	res := &Result{
		Mode: cfg.Mode, Target: cfg.Target, Transport: cfg.Transport, URL: strings.Join(cfg.URLs, ","), Conns: cfg.Conns,
		Group: cfg.Group, Rooms: len(r.groups), Rate: cfg.Rate, Duration: cfg.Duration.Seconds(),
		Size: cfg.Size, ServerPIDs: cfg.PIDs, WithPIDs: cfg.WithPIDs,
	}
	insts := make([]Instance, len(cfg.URLs))
	for i := range insts {
		insts[i] = Instance{URL: cfg.URLs[i], NATSReceived: -1}
		insts[i].Conns = cfg.Conns / len(cfg.URLs)
		if i < cfg.Conns%len(cfg.URLs) {
			insts[i].Conns++
		}
	}
	for i, pid := range cfg.PIDs {
		insts[i].PID = pid
		if insts[i].RSSBeforeKiB, err = cfg.instanceRSS(i); err != nil {
			return nil, err
		}
	}

	var profDone chan error
	startProfile := func(d time.Duration) {
		if cfg.Profile == "" || cfg.ProfileOut == "" {
			return
		}
		profDone = make(chan error, 1)
		secs := max(1, int(math.Round(d.Seconds())))
		go func() {
			u := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", cfg.Profile, secs)
			profDone <- fetchProfile(r.ctx, u, cfg.ProfileOut, time.Duration(secs)*time.Second+30*time.Second)
		}()
	}
	// waitProfile waits for the profile, if one is being taken.
	waitProfile := func() {
		if err != nil {
			r.cancel(err) // failed: do not wait out the profile
		}
		if profDone != nil {
			if err := <-profDone; err != nil {
				r.noteErr(fmt.Errorf("cpu profile: %w", err))
			}
			profDone = nil
		}
	}
	defer waitProfile() // before the deferred teardown (defers run last first)
	if cfg.ProfileRamp > 0 {
		startProfile(cfg.ProfileRamp)
		// Let the profiler start before the ramp does.
		if err := sleepCtx(r.ctx, 50*time.Millisecond); err != nil {
			return nil, err
		}
	}

	rs0 := r.sample()
	clients, err := r.ramp()
	rs1 := r.sample()
	res.RampSecs = rs1.at.Sub(rs0.at).Seconds()
	if err != nil {
		return nil, err
	}
	ru := rs0.until(rs1)
	res.ConnectLatency = r.connHist.latency()
	res.RampServerCPUSecs = ru.srvTotal.Seconds()
	res.ServerUSPerConnect = ru.srvTotal.Seconds() * 1e6 / float64(cfg.Conns)
	res.RampLoaderCPUSecs = ru.self.Seconds()
	res.RampOtherCPUSecs = ru.other.Seconds()
	for i := range ru.srv {
		insts[i].RampCPUSecs = ru.srv[i].Seconds()
		insts[i].USPerConnect = ru.srv[i].Seconds() * 1e6 / float64(max(1, insts[i].Conns))
	}

	is0 := r.sample()
	if err := sleepCtx(r.ctx, cfg.Settle); err != nil {
		return nil, err
	}
	if iu := is0.until(r.sample()); len(cfg.PIDs) > 0 {
		res.ServerIdleCPUMsPerS = iu.srvTotal.Seconds() * 1e3 / iu.wall.Seconds()
		res.ServerIdleUSPerConnPerS = res.ServerIdleCPUMsPerS * 1e3 / float64(cfg.Conns)
	}
	for i := range cfg.PIDs {
		if insts[i].RSSIdleKiB, err = cfg.instanceRSS(i); err != nil {
			return nil, err
		}
		insts[i].KiBPerConn = float64(insts[i].RSSIdleKiB-insts[i].RSSBeforeKiB) / float64(max(1, insts[i].Conns))
		res.ServerRSSBeforeKiB += insts[i].RSSBeforeKiB
		res.ServerRSSIdleKiB += insts[i].RSSIdleKiB
	}
	if len(cfg.PIDs) > 0 {
		res.ServerKiBPerConn = float64(res.ServerRSSIdleKiB-res.ServerRSSBeforeKiB) / float64(cfg.Conns)
	}
	if cfg.Profile != "" && cfg.HeapOut != "" {
		if err := fetchProfile(r.ctx, cfg.Profile+"/debug/pprof/heap", cfg.HeapOut, 30*time.Second); err != nil {
			r.noteErr(fmt.Errorf("heap profile: %w", err))
		}
	}

	pub, err := r.newPublisher()
	if err != nil {
		return nil, err
	}
	defer pub.close()

	// Publishing window (and churn).
	recv0 := r.scrapeReceived()
	varz0, varzErr := scrapeVarz(r.ctx, cfg.NATSMonitor)
	s0 := r.sample()
	if cfg.ProfileRamp <= 0 {
		startProfile(cfg.Duration)
	}
	var ch *churn
	if cfg.Mode == modeRooms && cfg.Churn > 0 {
		ch = r.startChurn(clients)
	}
	var ps pubStats
	err = r.publishLoop(pub, s0.at, &ps)
	if ch != nil {
		ch.stop()
	}
	if err != nil {
		return nil, err
	}
	s1 := r.sample()
	ok := ps.ok.Load()
	res.Publishes, res.PublishErrors = ok, ps.failed.Load()
	res.PublishLagMax = float64(ps.lagMax.Load()) / 1e6
	homeExpected := r.homeExpected(clients, ok)

	// Drain: wait for stragglers.
	deadline := s1.at.Add(cfg.Drain)
	for time.Now().Before(deadline) && (sumUnique(clients) < homeExpected || ch.pending() > 0) {
		if err := sleepCtx(r.ctx, pollEvery); err != nil {
			return nil, err
		}
	}
	s2 := r.sample()
	waitProfile()
	recv1 := r.scrapeReceived()
	varz1, varzErr1 := scrapeVarz(r.ctx, cfg.NATSMonitor)

	// Stop receiving, then read the per-connection figures.
	r.cancel(errors.New("run finished"))
	r.wg.Wait()

	var lastRecv, homeDelivered int64
	for _, c := range clients {
		homeDelivered += c.unique.Load()
		res.VisitDelivered += c.away.Load()
		res.Duplicates += c.dups.Load()
		res.Malformed += c.bad.Load()
		res.ErrorFrames += c.errFrames.Load()
		insts[c.inst].Delivered += c.unique.Load() + c.away.Load()
		lastRecv = max(lastRecv, c.lastRecv.Load())
	}
	res.Delivered = homeDelivered + res.VisitDelivered
	res.Expected = homeExpected
	res.Lost = max(0, homeExpected-homeDelivered)
	if ch != nil {
		ch.account(res, clients)
	}
	res.Disconnects = r.disconnects.Load()
	window := s1.at.Sub(s0.at)
	res.WindowSecs = window.Seconds()
	res.PublishRate = float64(ok) / window.Seconds()
	end := s1.at
	if lastRecv > s1.at.UnixNano() {
		end = time.Unix(0, lastRecv)
	}
	if homeDelivered < homeExpected {
		end = s2.at // gave up waiting
	}
	res.DrainSecs = end.Sub(s1.at).Seconds()
	if recvSpan := time.Unix(0, lastRecv).Sub(s0.at).Seconds(); lastRecv > 0 && recvSpan > 0 {
		res.DeliveriesPS = float64(res.Delivered) / max(recvSpan, window.Seconds())
	}
	res.Latency = r.hist.latency()
	if r.sockHist.count() > 0 {
		res.LatencyAtSocket = r.sockHist.latency()
	}

	u1, u2 := s0.until(s1), s0.until(s2)
	if len(cfg.PIDs) > 0 {
		res.ServerCPUSecs = u1.srvTotal.Seconds()
		res.ServerCPUDrainSecs = (u2.srvTotal - u1.srvTotal).Seconds()
		res.ServerCPUUtil = res.ServerCPUSecs / window.Seconds()
		if res.Delivered > 0 {
			res.ServerUSPerDeliv = u2.srvTotal.Seconds() * 1e6 / float64(res.Delivered)
		}
		for i := range insts {
			insts[i].CPUSecs = u2.srv[i].Seconds()
			if insts[i].Delivered > 0 {
				insts[i].USPerDeliv = u2.srv[i].Seconds() * 1e6 / float64(insts[i].Delivered)
			}
		}
	}
	if recv0 != nil && recv1 != nil {
		for i := range insts {
			if recv0[i] >= 0 && recv1[i] >= 0 {
				insts[i].NATSReceived = recv1[i] - recv0[i]
			}
		}
	}
	if len(insts) > 1 || recv0 != nil {
		res.Instances = insts
	}
	if cfg.BrokerPID > 0 {
		res.BrokerCPUSecs = u2.broker.Seconds()
		if res.Delivered > 0 {
			res.BrokerUSPerDeliv = u2.broker.Seconds() * 1e6 / float64(res.Delivered)
		}
	}
	if varzErr == nil && varzErr1 == nil && cfg.NATSMonitor != "" {
		res.NATSInMsgs = varz1.InMsgs - varz0.InMsgs
		res.NATSOutMsgs = varz1.OutMsgs - varz0.OutMsgs
		if ok > 0 {
			res.NATSOutPerPublish = float64(res.NATSOutMsgs) / float64(ok)
		}
	} else if cfg.NATSMonitor != "" {
		r.noteErr(fmt.Errorf("nats monitor: %w", errors.Join(varzErr, varzErr1)))
	}
	res.LoaderCPUSecs = u2.self.Seconds()
	res.LoaderCPUUtil = u2.self.Seconds() / u2.wall.Seconds()
	if res.Delivered > 0 {
		res.LoaderUSPerDeliv = u2.self.Seconds() * 1e6 / float64(res.Delivered)
	}
	res.IRQCPUSecs = u2.irq.Seconds()
	res.OtherCPUSecs = u2.other.Seconds()
	if err := r.err(); err != nil {
		res.FirstError = err.Error()
	}
	return res, nil
}

// homeExpected returns the deliveries promised to the rooms' members: each
// successful publish once per member of its room.
func (r *fanoutRun) homeExpected(clients []*client, ok int64) int64 {
	if len(r.groups) == 1 {
		return ok * int64(len(clients))
	}
	members := make([]int64, len(r.groups))
	for _, c := range clients {
		members[c.room]++
	}
	var n int64
	for seq := range r.pubT {
		if r.pubT[seq].Load() != 0 {
			n += members[r.roomOf(int64(seq))]
		}
	}
	return n
}

// scrapeReceived reads groupcast_nats_received_total from each instance's
// /metrics (groupcast, one -api per -url); nil otherwise. -1: unknown.
func (r *fanoutRun) scrapeReceived() []int64 {
	if r.cfg.Target != targetGroupcast || len(r.cfg.APIs) != len(r.cfg.URLs) {
		return nil
	}
	out := make([]int64, len(r.cfg.APIs))
	for i, api := range r.cfg.APIs {
		v, err := scrapeMetric(r.ctx, strings.TrimRight(api, "/")+"/metrics", "groupcast_nats_received_total")
		if err != nil {
			r.noteErr(fmt.Errorf("metrics: %w", err))
			v = -1
		}
		out[i] = v
	}
	return out
}

func sumUnique(cs []*client) int64 {
	var n int64
	for _, c := range cs {
		n += c.unique.Load()
	}
	return n
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// sourceDialers returns the dialers of the receiving WebSockets, and HTTP
// clients over them (SSE streams, publishes): one per local source
// address, so that more connections than one address has ephemeral ports
// can reach a loopback server.
func sourceDialers(cfg Config) ([]*net.Dialer, []*http.Client, error) {
	u, err := url.Parse(cfg.URLs[0])
	if err != nil {
		return nil, nil, err
	}
	n := 1
	var srcs []net.IP
	if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsLoopback() && ip.To4() != nil {
		n = cfg.SourceIPs
		if n <= 0 {
			perIP := ephemeralPorts() * 9 / 10
			n = (cfg.Conns + perIP - 1) / perIP
		}
		if n > 254 {
			return nil, nil, fmt.Errorf("%d source addresses needed, at most 254", n)
		}
		if n > 1 {
			for i := range n {
				srcs = append(srcs, net.IPv4(127, 0, 0, byte(1+i)))
			}
		}
	} else if cfg.SourceIPs > 1 {
		return nil, nil, errors.New("-source-ips needs an IPv4 loopback -url")
	}
	dialers, clients := make([]*net.Dialer, n), make([]*http.Client, n)
	for i := range clients {
		d := &net.Dialer{Timeout: joinTimeout, KeepAlive: -1}
		if srcs != nil {
			d.LocalAddr = &net.TCPAddr{IP: srcs[i]}
		}
		dialers[i] = d
		clients[i] = &http.Client{Transport: &http.Transport{
			Proxy:              nil,
			DialContext:        d.DialContext,
			DisableCompression: true,
			MaxIdleConns:       1,
		}}
	}
	return dialers, clients, nil
}

// ramp opens cfg.Conns connections at cfg.ConnectRate, at most
// cfg.MaxInflight dialing or joining at once, and waits until all have joined.
// Any connection failing to join fails the run.
func (r *fanoutRun) ramp() ([]*client, error) {
	cfg := r.cfg
	start := time.Now()
	interval := time.Duration(float64(time.Second) / cfg.ConnectRate) // 0 when unlimited
	sem := make(chan struct{}, cfg.MaxInflight)
	clients := make([]*client, 0, cfg.Conns)
	nextLog := start.Add(progressEvery)
	words := (r.seqLimit + 63) / 64
	for i := range cfg.Conns {
		if interval > 0 {
			if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
				if err := sleepCtx(r.ctx, d); err != nil {
					return nil, r.rampErr(err)
				}
			}
		}
		select {
		case sem <- struct{}{}:
		case <-r.ctx.Done():
			return nil, r.rampErr(context.Cause(r.ctx))
		}
		c := &client{r: r, id: i, lastSeq: -1, room: r.homeRoom(i), inst: i % len(cfg.URLs)}
		if r.bitset {
			c.seen = make([]uint64, words)
		}
		clients = append(clients, c)
		r.wg.Add(1)
		go c.run(sem)
		if now := time.Now(); now.After(nextLog) {
			fmt.Fprintf(cfg.Log, "ramp: %d dialed, %d joined\n", i+1, r.joined.Load())
			nextLog = now.Add(progressEvery)
		}
	}
	for r.joined.Load()+r.failed.Load() < int64(cfg.Conns) {
		if err := sleepCtx(r.ctx, time.Millisecond); err != nil {
			return nil, r.rampErr(err)
		}
		if now := time.Now(); now.After(nextLog) {
			fmt.Fprintf(cfg.Log, "ramp: %d joined\n", r.joined.Load())
			nextLog = now.Add(progressEvery)
		}
	}
	d := time.Since(start)
	if f := r.failed.Load(); f > 0 {
		return nil, r.rampErr(fmt.Errorf("%d connections failed", f))
	}
	fmt.Fprintf(cfg.Log, "ramp: %d connections joined %d group(s) in %.2fs\n", cfg.Conns, len(r.groups), d.Seconds())
	return clients, nil
}

func (r *fanoutRun) rampErr(err error) error {
	if first := r.err(); first != nil {
		return fmt.Errorf("ramp: %d of %d joined: %w", r.joined.Load(), r.cfg.Conns, first)
	}
	return fmt.Errorf("ramp: %d of %d joined: %w", r.joined.Load(), r.cfg.Conns, err)
}

// pubStats counts the publishes of a run.
type pubStats struct {
	ok, failed atomic.Int64
	lagMax     atomic.Int64 // ns: the latest a publish started after its slot
}

// publishLoop publishes seq 0, 1, … at cfg.Rate from t0 until the window
// ends, open loop: each slot's publish is handed to one of pub's workers
// (several concurrent HTTP requests for groupcast, one writer for nats-ws),
// so a slow answer does not slow the schedule unless every worker is busy.
// A payload's t is the moment its publish starts; publish seq goes to room
// seq mod rooms.
func (r *fanoutRun) publishLoop(pub publisher, t0 time.Time, st *pubStats) error {
	cfg := r.cfg
	interval := float64(time.Second) / cfg.Rate
	jobs := make(chan int64, pub.workers())
	var wg sync.WaitGroup
	for range pub.workers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, cfg.Size+64)
			for seq := range jobs {
				due := t0.Add(time.Duration(float64(seq) * interval))
				now := time.Now()
				for lag := int64(now.Sub(due)); ; {
					m := st.lagMax.Load()
					if lag <= m || st.lagMax.CompareAndSwap(m, lag) {
						break
					}
				}
				buf = appendPayload(buf[:0], uint64(seq), now.UnixNano(), cfg.Size)
				if err := pub.publish(r.ctx, seq, buf); err != nil {
					if r.ctx.Err() == nil {
						st.failed.Add(1)
						r.noteErr(fmt.Errorf("publish %d: %w", seq, err))
					}
					continue
				}
				if r.pubT != nil {
					r.pubT[seq].Store(now.UnixNano())
				}
				st.ok.Add(1)
			}
		}()
	}
	var err error
	for seq := int64(0); seq < r.seqLimit-1 || seq == 0; seq++ {
		due := t0.Add(time.Duration(float64(seq) * interval))
		if seq > 0 && due.Sub(t0) >= cfg.Duration {
			break
		}
		if d := time.Until(due); d > 0 {
			if err = sleepCtx(r.ctx, d); err != nil {
				break
			}
		}
		select {
		case jobs <- seq:
		case <-r.ctx.Done():
			err = context.Cause(r.ctx)
		}
		if err != nil {
			break
		}
	}
	close(jobs)
	wg.Wait()
	if err != nil {
		return err
	}
	if err := pub.flush(r.ctx); err != nil {
		r.noteErr(fmt.Errorf("publish flush: %w", err))
	}
	if d := time.Until(t0.Add(cfg.Duration)); d > 0 {
		return sleepCtx(r.ctx, d)
	}
	return nil
}
