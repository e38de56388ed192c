package main

import (
	"bytes"
	"context"
	"encoding/json"
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

	"github.com/coder/websocket"
)

// Targets a fan-out run can measure.
const (
	targetGroupcast = "groupcast"
	targetNATSWS    = "nats-ws"
)

const (
	joinTimeout    = 15 * time.Second // dial + join + ack, per connection
	writeTimeout   = 5 * time.Second
	maxFrameBytes  = 16 << 20    // largest server frame accepted
	maxBitsetBytes = 256 << 20   // above this, duplicates are found by order
	maxPublishes   = 100_000_000 // bound on rate*duration
	maxConns       = 1_000_000   // bound on -conns
	progressEvery  = time.Second // ramp progress lines
	pollEvery      = 10 * time.Millisecond
)

// Config describes one fan-out run. Zero values of optional fields take the
// defaults noted.
type Config struct {
	Target      string        // targetGroupcast or targetNATSWS
	URL         string        // WebSocket URL
	API         string        // groupcast HTTP base URL (publishing); groupcast only
	Conns       int           // receiving connections
	Group       string        // group (groupcast) or subject (nats-ws)
	Rate        float64       // publishes per second
	Duration    time.Duration // publishing window
	Size        int           // payload bytes
	PID         int           // server process to measure; 0: none
	ConnectRate float64       // connections opened per second while ramping; default 2000
	MaxInflight int           // connections dialing or joining at once; default 500
	Settle      time.Duration // wait after the ramp before the idle RSS sample; default 2s
	Drain       time.Duration // wait for stragglers after publishing; default 5s
	SourceIPs   int           // local 127.0.0.x addresses to dial from; 0: as many as needed
	Log         io.Writer     // progress lines; nil: none
}

func (c *Config) setDefaults() error {
	switch c.Target {
	case targetGroupcast:
		if c.API == "" {
			return errors.New("-api is required for -target groupcast")
		}
		if _, err := url.Parse(c.API); err != nil {
			return fmt.Errorf("-api: %w", err)
		}
	case targetNATSWS:
	default:
		return fmt.Errorf("-target must be %s or %s, not %q", targetGroupcast, targetNATSWS, c.Target)
	}
	if _, err := url.Parse(c.URL); err != nil || c.URL == "" {
		return fmt.Errorf("-url %q is not a WebSocket URL", c.URL)
	}
	if c.Conns < 1 || c.Conns > maxConns {
		return fmt.Errorf("-conns must be 1..%d", maxConns)
	}
	if c.Group == "" || strings.ContainsAny(c.Group, " \t\r\n") {
		return fmt.Errorf("-group %q: empty or has white space", c.Group)
	}
	if !(c.Rate > 0) || c.Duration <= 0 {
		return errors.New("-rate and -duration must be positive")
	}
	if p := c.Rate * c.Duration.Seconds(); p > maxPublishes {
		return fmt.Errorf("-rate × -duration is %.0f publishes, over %d", p, maxPublishes)
	}
	if c.Size < 0 || c.Size > maxFrameBytes/2 {
		return fmt.Errorf("-size must be 0..%d", maxFrameBytes/2)
	}
	if c.ConnectRate <= 0 {
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

// Result is what a fan-out run measured. Server figures are zero without a PID.
type Result struct {
	Target   string  `json:"target"`
	URL      string  `json:"url"`
	Conns    int     `json:"conns"`
	Group    string  `json:"group"`
	Rate     float64 `json:"rate"`
	Duration float64 `json:"duration_s"`
	Size     int     `json:"size"`
	RampSecs float64 `json:"ramp_s"`

	Publishes     int64   `json:"publishes"`
	PublishErrors int64   `json:"publish_errors"`
	PublishRate   float64 `json:"publish_rate"`
	PublishLagMax float64 `json:"publish_lag_max_ms"` // worst start delay behind schedule
	Expected      int64   `json:"expected"`
	Delivered     int64   `json:"delivered"`
	Lost          int64   `json:"lost"`
	Duplicates    int64   `json:"duplicates"`
	Malformed     int64   `json:"malformed"`
	ErrorFrames   int64   `json:"error_frames"`
	Disconnects   int64   `json:"disconnects"`
	DeliveriesPS  float64 `json:"deliveries_per_s"`
	WindowSecs    float64 `json:"window_s"` // publishing window
	DrainSecs     float64 `json:"drain_s"`  // from end of publishing to last delivery (or give-up)
	Latency       Latency `json:"latency"`

	ServerPID          int     `json:"server_pid,omitempty"`
	ServerCPUSecs      float64 `json:"server_cpu_s"`       // over the publishing window
	ServerCPUDrainSecs float64 `json:"server_cpu_drain_s"` // during the drain
	ServerCPUUtil      float64 `json:"server_cpu_util"`    // cores busy over the window
	ServerUSPerDeliv   float64 `json:"server_us_per_delivery"`
	ServerRSSBeforeKiB int64   `json:"server_rss_before_kib"`
	ServerRSSIdleKiB   int64   `json:"server_rss_idle_kib"`
	ServerKiBPerConn   float64 `json:"server_kib_per_conn"`

	LoaderCPUSecs    float64 `json:"loader_cpu_s"`    // publishing window + drain
	LoaderCPUUtil    float64 `json:"loader_cpu_util"` // cores busy over that time
	LoaderUSPerDeliv float64 `json:"loader_us_per_delivery"`

	// Machine-wide CPU over the publishing window and drain: time used by
	// processes other than the server and this loader (noise: it should be
	// near 0), and time in interrupt/softirq handling (loopback TCP work the
	// kernel charges to no process, so neither server figure includes it).
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
	hist     histogram
	seqLimit int64 // publishes planned; seq is in [0, seqLimit)
	bitset   bool  // per-connection bitsets find duplicates exactly
	http     []*http.Client

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

// runFanout performs one fan-out measurement: ramp, settle, publish, drain.
// It returns once every goroutine and connection it started is gone.
func runFanout(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	r := &fanoutRun{cfg: cfg}
	r.ctx, r.cancel = context.WithCancelCause(ctx)
	r.seqLimit = int64(math.Ceil(cfg.Rate*cfg.Duration.Seconds())) + 1
	r.bitset = int64(cfg.Conns)*((r.seqLimit+63)/64)*8 <= maxBitsetBytes
	var err error
	if r.http, err = wsClients(cfg); err != nil {
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
		Target: cfg.Target, URL: cfg.URL, Conns: cfg.Conns, Group: cfg.Group,
		Rate: cfg.Rate, Duration: cfg.Duration.Seconds(), Size: cfg.Size, ServerPID: cfg.PID,
	}
	if cfg.PID > 0 {
		if res.ServerRSSBeforeKiB, err = procRSS(cfg.PID); err != nil {
			return nil, fmt.Errorf("server pid %d: %w", cfg.PID, err)
		}
	}

	clients, rampDur, err := r.ramp()
	res.RampSecs = rampDur.Seconds()
	if err != nil {
		return nil, err
	}

	if err := sleepCtx(r.ctx, cfg.Settle); err != nil {
		return nil, err
	}
	if cfg.PID > 0 {
		if res.ServerRSSIdleKiB, err = procRSS(cfg.PID); err != nil {
			return nil, fmt.Errorf("server pid %d: %w", cfg.PID, err)
		}
		res.ServerKiBPerConn = float64(res.ServerRSSIdleKiB-res.ServerRSSBeforeKiB) / float64(cfg.Conns)
	}

	pub, err := r.newPublisher()
	if err != nil {
		return nil, err
	}
	defer pub.close()

	// Publishing window.
	srv0 := r.serverCPU()
	self0 := selfCPU()
	mach0, irq0, machErr := machineCPU()
	t0 := time.Now()
	var ps pubStats
	if err := r.publishLoop(pub, t0, &ps); err != nil {
		return nil, err
	}
	t1 := time.Now()
	srv1 := r.serverCPU()
	ok := ps.ok.Load()
	res.Publishes, res.PublishErrors = ok, ps.failed.Load()
	res.PublishLagMax = float64(ps.lagMax.Load()) / 1e6
	res.Expected = ok * int64(cfg.Conns)

	// Drain: wait for stragglers.
	deadline := t1.Add(cfg.Drain)
	for time.Now().Before(deadline) && sumUnique(clients) < res.Expected {
		if err := sleepCtx(r.ctx, pollEvery); err != nil {
			return nil, err
		}
	}
	t2 := time.Now()
	srv2 := r.serverCPU()
	self2 := selfCPU()
	mach2, irq2, machErr2 := machineCPU()

	// Stop receiving, then read the per-connection figures.
	r.cancel(errors.New("run finished"))
	r.wg.Wait()

	var lastRecv int64
	for _, c := range clients {
		res.Delivered += c.unique.Load()
		res.Duplicates += c.dups.Load()
		res.Malformed += c.bad.Load()
		res.ErrorFrames += c.errFrames.Load()
		lastRecv = max(lastRecv, c.lastRecv.Load())
	}
	res.Lost = max(0, res.Expected-res.Delivered)
	res.Disconnects = r.disconnects.Load()
	window := t1.Sub(t0)
	res.WindowSecs = window.Seconds()
	res.PublishRate = float64(ok) / window.Seconds()
	end := t1
	if lastRecv > t1.UnixNano() {
		end = time.Unix(0, lastRecv)
	}
	if res.Delivered < res.Expected {
		end = t2 // gave up waiting
	}
	res.DrainSecs = end.Sub(t1).Seconds()
	if recvSpan := time.Unix(0, lastRecv).Sub(t0).Seconds(); lastRecv > 0 && recvSpan > 0 {
		res.DeliveriesPS = float64(res.Delivered) / max(recvSpan, window.Seconds())
	}
	res.Latency = Latency{
		Mean: r.hist.mean() / 1e6,
		P50:  float64(r.hist.quantile(0.50)) / 1e6,
		P99:  float64(r.hist.quantile(0.99)) / 1e6,
		P999: float64(r.hist.quantile(0.999)) / 1e6,
		Max:  float64(r.hist.max.Load()) / 1e6,
	}
	if cfg.PID > 0 {
		res.ServerCPUSecs = (srv1 - srv0).Seconds()
		res.ServerCPUDrainSecs = (srv2 - srv1).Seconds()
		res.ServerCPUUtil = res.ServerCPUSecs / window.Seconds()
		if res.Delivered > 0 {
			res.ServerUSPerDeliv = (srv2 - srv0).Seconds() * 1e6 / float64(res.Delivered)
		}
	}
	self := self2 - self0
	res.LoaderCPUSecs = self.Seconds()
	res.LoaderCPUUtil = self.Seconds() / t2.Sub(t0).Seconds()
	if res.Delivered > 0 {
		res.LoaderUSPerDeliv = self.Seconds() * 1e6 / float64(res.Delivered)
	}
	if machErr == nil && machErr2 == nil {
		res.IRQCPUSecs = (irq2 - irq0).Seconds()
		res.OtherCPUSecs = max(0, (mach2 - mach0 - self - (srv2 - srv0)).Seconds())
	}
	if err := r.err(); err != nil {
		res.FirstError = err.Error()
	}
	return res, nil
}

// serverCPU samples the server's CPU time; 0 without a PID or on error (the
// process may have exited: the final figures then show it).
func (r *fanoutRun) serverCPU() time.Duration {
	if r.cfg.PID <= 0 {
		return 0
	}
	d, err := procCPU(r.cfg.PID)
	if err != nil {
		r.noteErr(fmt.Errorf("server cpu: %w", err))
	}
	return d
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

// wsClients returns the HTTP clients WebSocket dials use: one per local
// source address, so that more connections than one address has ephemeral
// ports can reach a loopback server.
func wsClients(cfg Config) ([]*http.Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, err
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
			return nil, fmt.Errorf("%d source addresses needed, at most 254", n)
		}
		if n > 1 {
			for i := range n {
				srcs = append(srcs, net.IPv4(127, 0, 0, byte(1+i)))
			}
		}
	} else if cfg.SourceIPs > 1 {
		return nil, errors.New("-source-ips needs an IPv4 loopback -url")
	}
	clients := make([]*http.Client, n)
	for i := range clients {
		d := &net.Dialer{Timeout: joinTimeout, KeepAlive: -1}
		if srcs != nil {
			d.LocalAddr = &net.TCPAddr{IP: srcs[i]}
		}
		clients[i] = &http.Client{Transport: &http.Transport{
			Proxy:              nil,
			DialContext:        d.DialContext,
			DisableCompression: true,
			MaxIdleConns:       1,
		}}
	}
	return clients, nil
}

// ramp opens cfg.Conns connections at cfg.ConnectRate, at most
// cfg.MaxInflight dialing or joining at once, and waits until all have joined.
// Any connection failing to join fails the run.
func (r *fanoutRun) ramp() ([]*client, time.Duration, error) {
	cfg := r.cfg
	start := time.Now()
	interval := time.Duration(float64(time.Second) / cfg.ConnectRate)
	sem := make(chan struct{}, cfg.MaxInflight)
	clients := make([]*client, 0, cfg.Conns)
	nextLog := start.Add(progressEvery)
	words := (r.seqLimit + 63) / 64
	for i := range cfg.Conns {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			if err := sleepCtx(r.ctx, d); err != nil {
				return nil, time.Since(start), r.rampErr(err)
			}
		}
		select {
		case sem <- struct{}{}:
		case <-r.ctx.Done():
			return nil, time.Since(start), r.rampErr(context.Cause(r.ctx))
		}
		c := &client{r: r, id: i, lastSeq: -1}
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
		if err := sleepCtx(r.ctx, pollEvery); err != nil {
			return nil, time.Since(start), r.rampErr(err)
		}
		if now := time.Now(); now.After(nextLog) {
			fmt.Fprintf(cfg.Log, "ramp: %d joined\n", r.joined.Load())
			nextLog = now.Add(progressEvery)
		}
	}
	d := time.Since(start)
	if f := r.failed.Load(); f > 0 {
		return nil, d, r.rampErr(fmt.Errorf("%d connections failed", f))
	}
	fmt.Fprintf(cfg.Log, "ramp: %d connections joined %q in %.1fs\n", cfg.Conns, cfg.Group, d.Seconds())
	return clients, d, nil
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
// A payload's t is the moment its publish starts.
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
				if err := pub.publish(r.ctx, buf); err != nil {
					if r.ctx.Err() == nil {
						st.failed.Add(1)
						r.noteErr(fmt.Errorf("publish %d: %w", seq, err))
					}
					continue
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

// client is one receiving WebSocket connection. Its fields other than the
// atomics belong to its goroutine.
type client struct {
	r       *fanoutRun
	id      int
	ws      *websocket.Conn
	seen    []uint64 // bitset of received seqs (when r.bitset)
	lastSeq int64    // highest seq received (without bitset)
	buf     []byte
	release func() // called once: joined or failed

	isJoined  atomic.Bool // the join was acknowledged
	unique    atomic.Int64
	dups      atomic.Int64
	bad       atomic.Int64
	errFrames atomic.Int64
	lastRecv  atomic.Int64 // unix nanos of the latest delivery
}

// run dials, joins and then reads until the run ends. It gives back its
// semaphore slot once it has joined or failed.
func (c *client) run(sem chan struct{}) {
	r := c.r
	defer r.wg.Done()
	var once sync.Once
	c.release = func() { once.Do(func() { <-sem }) }
	defer c.release()

	if err := c.connect(); err != nil {
		c.fail(err)
		return
	}
	defer c.ws.CloseNow()
	stop := context.AfterFunc(r.ctx, func() { c.ws.CloseNow() })
	defer stop()
	timer := time.AfterFunc(joinTimeout, func() {
		if !c.isJoined.Load() {
			r.noteErr(fmt.Errorf("conn %d: no join answer within %s", c.id, joinTimeout))
			c.ws.CloseNow()
		}
	})
	defer timer.Stop()

	err := c.readLoop()
	if r.ctx.Err() != nil {
		return // run over: the close is ours
	}
	if !c.isJoined.Load() {
		c.fail(err)
		return
	}
	r.disconnects.Add(1)
	r.noteErr(fmt.Errorf("conn %d lost: %w", c.id, err))
}

func (c *client) fail(err error) {
	c.r.failed.Add(1)
	c.r.noteErr(fmt.Errorf("conn %d: %w", c.id, err))
	c.r.cancel(fmt.Errorf("conn %d failed", c.id))
}

// joined marks the join as acknowledged.
func (c *client) joined() {
	if c.isJoined.Swap(true) {
		return
	}
	c.r.joined.Add(1)
	c.release()
}

// connect dials and sends the join request.
func (c *client) connect() error {
	r := c.r
	ctx, cancel := context.WithTimeout(r.ctx, joinTimeout)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, r.cfg.URL, &websocket.DialOptions{
		HTTPClient: r.http[c.id%len(r.http)],
	})
	if err != nil {
		return err
	}
	ws.SetReadLimit(maxFrameBytes)
	c.ws = ws
	var msg []byte
	typ := websocket.MessageText
	if r.cfg.Target == targetNATSWS {
		msg = fmt.Appendf(nil, "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":false}\r\nSUB %s 1\r\nPING\r\n", r.cfg.Group)
		typ = websocket.MessageBinary
		c.buf = make([]byte, 0, 4096+2*r.cfg.Size)
	} else {
		msg, _ = json.Marshal(map[string]any{"type": "join", "group": r.cfg.Group, "id": 1})
		c.buf = make([]byte, 0, 1024+2*r.cfg.Size)
	}
	if err := ws.Write(ctx, typ, msg); err != nil {
		ws.CloseNow()
		return err
	}
	return nil
}

// readLoop reads frames until the connection closes. Reads use a context
// without Done, which coder/websocket serves without per-read timers; the
// connection is closed from outside (run's end, join timeout) instead.
func (c *client) readLoop() error {
	nats := c.r.cfg.Target == targetNATSWS
	for {
		_, rd, err := c.ws.Reader(context.Background())
		if err != nil {
			return err
		}
		if nats {
			err = c.readNATS(rd)
		} else {
			err = c.readGroupcast(rd)
		}
		if err != nil {
			return err
		}
	}
}

// readNATS feeds one frame into the NATS stream parser; a partial operation
// stays in c.buf for the next frame.
func (c *client) readNATS(rd io.Reader) error {
	for {
		if len(c.buf) == cap(c.buf) {
			if cap(c.buf) >= maxFrameBytes {
				return fmt.Errorf("%w: operation over %d bytes", errNATSProto, maxFrameBytes)
			}
			c.buf = append(c.buf, make([]byte, cap(c.buf))...)[:len(c.buf)]
		}
		n, err := rd.Read(c.buf[len(c.buf):cap(c.buf)])
		c.buf = c.buf[:len(c.buf)+n]
		if n > 0 {
			used, perr := parseNATS(c.buf, c)
			if perr != nil {
				return perr
			}
			c.buf = c.buf[:copy(c.buf, c.buf[used:])]
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// A client is the natsHandler of its own stream (a pointer, so passing it
// as an interface does not allocate).

func (c *client) natsMsg(p []byte) { c.deliver(p) }

func (c *client) natsPing() {
	ctx, cancel := context.WithTimeout(c.r.ctx, writeTimeout)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageBinary, []byte("PONG\r\n")); err != nil {
		c.r.noteErr(fmt.Errorf("conn %d: PONG: %w", c.id, err))
	}
}

// natsPong answers the PING sent with SUB: the subscription is live.
func (c *client) natsPong() { c.joined() }

func (c *client) natsErr(line []byte) {
	c.errFrames.Add(1)
	c.r.noteErr(fmt.Errorf("conn %d: %s", c.id, line))
	if !c.isJoined.Load() {
		c.ws.CloseNow()
	}
}

// readGroupcast reads one frame (one or more JSON objects, one per line).
func (c *client) readGroupcast(rd io.Reader) error {
	buf, err := readAllInto(rd, c.buf[:0])
	c.buf = buf
	if err != nil {
		return err
	}
	for len(buf) > 0 {
		line := buf
		if i := indexNL(buf); i >= 0 {
			line, buf = buf[:i], buf[i+1:]
		} else {
			buf = nil
		}
		kind, data := classifyGroupcast(line)
		switch kind {
		case gcMessage:
			if e := objectEnd(data); e > 0 {
				data = data[:e]
			}
			c.deliver(data)
		case gcAck:
			if !c.isJoined.Load() {
				var a struct {
					ID int `json:"id"`
				}
				if json.Unmarshal(line, &a) == nil && a.ID == 1 {
					c.joined()
				}
			}
		case gcError:
			c.errFrames.Add(1)
			c.r.noteErr(fmt.Errorf("conn %d: error frame %s", c.id, truncate(line, 200)))
			if !c.isJoined.Load() {
				return fmt.Errorf("join refused: %s", truncate(line, 200))
			}
		}
	}
	return nil
}

func indexNL(b []byte) int {
	for i, ch := range b {
		if ch == '\n' {
			return i
		}
	}
	return -1
}

// readAllInto reads rd to EOF, appending to buf and growing it as needed.
func readAllInto(rd io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// objectEnd returns the length of the JSON object or array at the start of
// b, or -1 if b does not start with a complete one.
func objectEnd(b []byte) int {
	depth := 0
	inStr := false
	for i := 0; i < len(b); i++ {
		ch := b[i]
		if inStr {
			switch ch {
			case '\\':
				i++
			case '"':
				inStr = false
			}
			continue
		}
		switch ch {
		case '"':
			inStr = true
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return i + 1
			}
		case ' ', '\t', '\r', '\n':
		default:
			if depth == 0 {
				return -1
			}
		}
	}
	return -1
}

// deliver accounts for one received payload.
func (c *client) deliver(p []byte) {
	now := time.Now().UnixNano()
	seq, t, ok := parsePayload(p)
	if !ok || seq >= c.r.seqLimit {
		c.bad.Add(1)
		return
	}
	c.lastRecv.Store(now)
	if c.seen != nil {
		w, bit := seq>>6, uint64(1)<<(seq&63)
		if c.seen[w]&bit != 0 {
			c.dups.Add(1)
			return
		}
		c.seen[w] |= bit
	} else {
		if seq <= c.lastSeq {
			c.dups.Add(1) // or reordered
			return
		}
		c.lastSeq = seq
	}
	c.unique.Add(1)
	c.r.hist.record(now - t)
}

// publisher sends the payloads of a run.
type publisher interface {
	// workers is how many goroutines may call publish at once.
	workers() int
	publish(ctx context.Context, payload []byte) error
	flush(ctx context.Context) error // wait until the server has taken every publish
	close()
}

func (r *fanoutRun) newPublisher() (publisher, error) {
	if r.cfg.Target == targetGroupcast {
		return newHTTPPublisher(r.cfg), nil
	}
	return r.newNATSPublisher()
}

// httpPublisher POSTs to groupcast's HTTP API over up to httpPublishers
// keep-alive connections.
type httpPublisher struct {
	client *http.Client
	url    string
	n      int
}

// httpPublishers is how many POSTs may be in flight at once.
const httpPublishers = 8

func (p *httpPublisher) workers() int { return p.n }

func newHTTPPublisher(cfg Config) *httpPublisher {
	base := cfg.API
	for len(base) > 0 && base[len(base)-1] == '/' {
		base = base[:len(base)-1]
	}
	return &httpPublisher{
		client: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				Proxy:               nil,
				DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
				MaxIdleConnsPerHost: httpPublishers,
				IdleConnTimeout:     time.Minute,
				DisableCompression:  true,
			},
		},
		url: base + "/api/groups/" + url.PathEscape(cfg.Group) + "/messages",
		n:   httpPublishers,
	}
}

func (p *httpPublisher) publish(ctx context.Context, payload []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(payload))
	if err != nil {
		return err
	}
	req.ContentLength = int64(len(payload))
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s: %s", resp.Status, truncate(body, 200))
	}
	return nil
}

func (p *httpPublisher) flush(context.Context) error { return nil }

func (p *httpPublisher) close() { p.client.CloseIdleConnections() }

// natsPublisher sends PUB operations over its own WebSocket connection.
type natsPublisher struct {
	ws    *websocket.Conn
	subj  string
	buf   []byte
	pongs chan struct{}
	done  chan struct{} // closed when the reader goroutine has exited
	stop  func() bool
}

func (r *fanoutRun) newNATSPublisher() (*natsPublisher, error) {
	ctx, cancel := context.WithTimeout(r.ctx, joinTimeout)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, r.cfg.URL, &websocket.DialOptions{HTTPClient: r.http[0]})
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	ws.SetReadLimit(maxFrameBytes)
	p := &natsPublisher{
		ws: ws, subj: r.cfg.Group,
		pongs: make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
	p.stop = context.AfterFunc(r.ctx, func() { ws.CloseNow() })
	connect := []byte("CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":false,\"echo\":false}\r\nPING\r\n")
	if err := ws.Write(ctx, websocket.MessageBinary, connect); err != nil {
		p.stop()
		ws.CloseNow()
		return nil, fmt.Errorf("publisher: %w", err)
	}
	r.wg.Add(1)
	go p.readLoop(r)
	if err := p.waitPong(ctx); err != nil {
		p.close()
		return nil, fmt.Errorf("publisher: %w", err)
	}
	return p, nil
}

// readLoop answers PINGs and reports PONGs until the connection closes.
func (p *natsPublisher) readLoop(r *fanoutRun) {
	defer r.wg.Done()
	defer close(p.done)
	h := &pubHandler{p: p, r: r}
	buf := make([]byte, 0, 4096)
	for {
		_, rd, err := p.ws.Reader(context.Background())
		if err != nil {
			return
		}
		for err == nil {
			if len(buf) == cap(buf) {
				if cap(buf) >= maxFrameBytes {
					r.noteErr(errors.New("publisher: oversized operation"))
					p.ws.CloseNow()
					return
				}
				buf = append(buf, make([]byte, cap(buf))...)[:len(buf)]
			}
			var n int
			n, err = rd.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			used, perr := parseNATS(buf, h)
			if perr != nil {
				r.noteErr(fmt.Errorf("publisher: %w", perr))
				p.ws.CloseNow()
				return
			}
			buf = buf[:copy(buf, buf[used:])]
		}
		if err != io.EOF {
			return
		}
	}
}

type pubHandler struct {
	p *natsPublisher
	r *fanoutRun
}

func (h *pubHandler) natsMsg([]byte) {}
func (h *pubHandler) natsPing() {
	ctx, cancel := context.WithTimeout(h.r.ctx, writeTimeout)
	defer cancel()
	_ = h.p.ws.Write(ctx, websocket.MessageBinary, []byte("PONG\r\n"))
}
func (h *pubHandler) natsPong() {
	select {
	case h.p.pongs <- struct{}{}:
	default:
	}
}
func (h *pubHandler) natsErr(line []byte) {
	h.r.noteErr(fmt.Errorf("publisher: %s", line))
}

func (p *natsPublisher) waitPong(ctx context.Context) error {
	select {
	case <-p.pongs:
		return nil
	case <-p.done:
		return errors.New("connection closed")
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// workers is 1: publish reuses one buffer, and one connection's writes are
// serialized anyway.
func (p *natsPublisher) workers() int { return 1 }

func (p *natsPublisher) publish(ctx context.Context, payload []byte) error {
	p.buf = append(p.buf[:0], "PUB "...)
	p.buf = append(p.buf, p.subj...)
	p.buf = append(p.buf, ' ')
	p.buf = strconv.AppendInt(p.buf, int64(len(payload)), 10)
	p.buf = append(p.buf, "\r\n"...)
	p.buf = append(p.buf, payload...)
	p.buf = append(p.buf, "\r\n"...)
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return p.ws.Write(ctx, websocket.MessageBinary, p.buf)
}

func (p *natsPublisher) flush(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := p.ws.Write(ctx, websocket.MessageBinary, []byte("PING\r\n")); err != nil {
		return err
	}
	return p.waitPong(ctx)
}

func (p *natsPublisher) close() {
	p.stop()
	p.ws.CloseNow()
	<-p.done
}
