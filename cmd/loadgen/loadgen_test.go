package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/groupcast/groupcast/internal/apptest"
)

func TestPayloadRoundTrip(t *testing.T) {
	for _, size := range []int{0, 10, 64, 100, 1000} {
		p := appendPayload(nil, 12345, 1_700_000_000_123_456_789, size)
		if size >= 64 && len(p) != size {
			t.Errorf("size %d: got %d bytes: %s", size, len(p), p)
		}
		seq, ts, ok := parsePayload(p)
		if !ok || seq != 12345 || ts != 1_700_000_000_123_456_789 {
			t.Errorf("size %d: parse %s = %d %d %v", size, p, seq, ts, ok)
		}
	}
	// A server may re-encode the JSON: other key order, whitespace.
	seq, ts, ok := parsePayload([]byte(`{ "pad" : "x", "t" : 42, "seq" : 7 }`))
	if !ok || seq != 7 || ts != 42 {
		t.Errorf("re-encoded: %d %d %v", seq, ts, ok)
	}
	if _, _, ok := parsePayload([]byte(`{"type":"x"}`)); ok {
		t.Error("parsed a payload without seq")
	}
	if _, ok := parseInt([]byte("99999999999999999999"), 0); ok {
		t.Error("overflow accepted")
	}
}

// TestGroupcastObject: a client counts what each server object says.
func TestGroupcastObject(t *testing.T) {
	r := &fanoutRun{seqLimit: 1000, bitset: true}
	c := &client{r: r, seen: make([]uint64, 16), lastSeq: -1, release: func() {}}
	for _, obj := range []string{
		`{"type":"message","group":"g","data":{"seq":3,"t":9,"pad":"}x"},"t":1,"seq":99}`,
		`{"type":"message","group":"g","data":{"seq":3,"t":9}}`, // a duplicate
		`{"type":"message","group":"g"}`, `not json`, `{"type":"message","data":{"seq":"3"}}`,
		`{"type":"welcome","channel":"c","node":"n"}`, `{"type":"ack","id":"x"}`,
	} {
		if err := c.groupcastObject([]byte(obj)); err != nil {
			t.Fatalf("%s: %v", obj, err)
		}
	}
	if c.unique.Load() != 1 || c.dups.Load() != 1 || c.bad.Load() != 3 || c.isJoined.Load() {
		t.Fatalf("unique %d dups %d bad %d joined %v", c.unique.Load(), c.dups.Load(), c.bad.Load(), c.isJoined.Load())
	}
	if err := c.groupcastObject([]byte(`{"type": "error","id":1,"code":"bad","message":"m"}`)); err == nil || c.errFrames.Load() != 1 {
		t.Fatalf("an error before the join: %v, %d error frames", err, c.errFrames.Load())
	}
	if err := c.groupcastObject([]byte(`{"type":"ack","id":1}`)); err != nil || !c.isJoined.Load() {
		t.Fatalf("the join's ack: %v, joined %v", err, c.isJoined.Load())
	}
}

type recHandler struct {
	msgs        []string
	pings, pong int
	errs        []string
}

func (h *recHandler) natsMsg(p []byte)    { h.msgs = append(h.msgs, string(p)) }
func (h *recHandler) natsPing()           { h.pings++ }
func (h *recHandler) natsPong()           { h.pong++ }
func (h *recHandler) natsErr(line []byte) { h.errs = append(h.errs, string(line)) }

// TestParseNATSSplit feeds a stream cut at every possible point into two
// frames and checks that the parser sees the same operations.
func TestParseNATSSplit(t *testing.T) {
	stream := "INFO {\"server_id\":\"x\"}\r\n+OK\r\nPONG\r\nMSG bench 1 5\r\nhello\r\nPING\r\n" +
		"MSG bench 1 reply.to 0\r\n\r\nMSG a.b 22 3\r\n\r\n\n\r\n-ERR 'Slow Consumer'\r\n"
	for cut := 0; cut <= len(stream); cut++ {
		h := &recHandler{}
		var buf []byte
		for _, part := range []string{stream[:cut], stream[cut:]} {
			buf = append(buf, part...)
			n, err := parseNATS(buf, h)
			if err != nil {
				t.Fatalf("cut %d: %v", cut, err)
			}
			buf = buf[n:]
		}
		if len(buf) != 0 || h.pings != 1 || h.pong != 1 || len(h.errs) != 1 ||
			fmt.Sprint(h.msgs) != fmt.Sprint([]string{"hello", "", "\r\n\n"}) {
			t.Fatalf("cut %d: left %q, handler %+v", cut, buf, h)
		}
	}
	if _, err := parseNATS([]byte("BOGUS\r\n"), &recHandler{}); err == nil {
		t.Error("accepted an unknown operation")
	}
	if _, err := parseNATS([]byte("MSG a 1 xx\r\n"), &recHandler{}); err == nil {
		t.Error("accepted a bad MSG size")
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	for v := int64(1); v <= 100_000; v++ {
		h.record(v * 1000) // 1 µs .. 100 ms, uniform
	}
	for _, c := range []struct {
		q    float64
		want float64
	}{{0.5, 50e6}, {0.99, 99e6}, {0.999, 99.9e6}, {1, 100e6}} {
		got := float64(h.quantile(c.q))
		if d := (got - c.want) / c.want; d > 0.01 || d < -0.01 {
			t.Errorf("q%v = %.0f, want %.0f", c.q, got, c.want)
		}
	}
	if h.max.Load() != 100_000_000 || h.count() != 100_000 {
		t.Errorf("max %d count %d", h.max.Load(), h.count())
	}
	for i := range histBuckets {
		lo, hi := histBounds(i)
		if histIndex(lo) != i || histIndex(hi) != i {
			t.Fatalf("bucket %d: bounds %d..%d map to %d..%d", i, lo, hi, histIndex(lo), histIndex(hi))
		}
	}
}

func TestProcStat(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	if _, err := procCPU(os.Getpid()); err != nil {
		t.Error(err)
	}
	if rss, err := procRSS(os.Getpid()); err != nil || rss <= 0 {
		t.Errorf("rss %d, %v", rss, err)
	}
	if _, _, err := machineCPU(); err != nil {
		t.Error(err)
	}
	// -with-pid: a helper process's RSS counts with the first instance.
	cfg := Config{PIDs: []int{os.Getpid()}, WithPIDs: []int{os.Getpid()}}
	one, _ := procRSS(os.Getpid())
	if both, err := cfg.instanceRSS(0); err != nil || both < one*19/10 {
		t.Errorf("instance rss %d with a helper, %d alone, %v", both, one, err)
	}
}

// smallRun is the configuration CI uses: small, quick, exact.
func smallRun(target string, wsURLs, apis []string) Config {
	return Config{
		Target: target, URLs: wsURLs, APIs: apis,
		Conns: 50, Group: "bench", Rate: 20, Duration: time.Second, Size: 64,
		Settle: 100 * time.Millisecond, Drain: 3 * time.Second,
	}
}

// smallRooms is the rooms configuration CI uses: 60 connections in 6 rooms,
// with visits going on.
func smallRooms(target string, wsURLs, apis []string) Config {
	cfg := smallRun(target, wsURLs, apis)
	cfg.Mode, cfg.Conns, cfg.Rooms, cfg.Group = modeRooms, 60, 6, "room"
	cfg.Rate, cfg.Churn, cfg.ChurnStay = 60, 40, 150*time.Millisecond
	return cfg
}

func checkExact(t *testing.T, res *Result) {
	t.Helper()
	t.Logf("%+v", *res)
	if res.Publishes < int64(res.Rate*res.Duration*3/4) || res.PublishErrors != 0 {
		t.Errorf("publishes %d, errors %d", res.Publishes, res.PublishErrors)
	}
	if res.Delivered < res.Expected || res.Lost != 0 || res.Duplicates != 0 || res.Malformed != 0 ||
		res.Disconnects != 0 || res.ErrorFrames != 0 || res.Strays != 0 {
		t.Errorf("expected %d delivered %d lost %d dups %d malformed %d disconnects %d error frames %d strays %d",
			res.Expected, res.Delivered, res.Lost, res.Duplicates, res.Malformed, res.Disconnects, res.ErrorFrames, res.Strays)
	}
	switch res.Mode {
	case modeFanout:
		if res.Expected != res.Publishes*int64(res.Conns) || res.Delivered != res.Expected {
			t.Errorf("fanout: expected %d, delivered %d", res.Expected, res.Delivered)
		}
	case modeRooms:
		if res.Visits < 10 || res.VisitsFailed != 0 || res.JoinsLeaves < 2*res.Visits-60 || res.VisitExpected == 0 {
			t.Errorf("rooms: %d visits, %d failed, %d joins+leaves, %d promised to visitors",
				res.Visits, res.VisitsFailed, res.JoinsLeaves, res.VisitExpected)
		}
	}
	if res.Latency.Max <= 0 || res.Latency.P50 > res.Latency.Max || res.ConnectLatency.Max <= 0 {
		t.Errorf("latency %+v, connect latency %+v", res.Latency, res.ConnectLatency)
	}
}

func checkConnect(t *testing.T, res *ConnectResult, rounds int) {
	t.Helper()
	t.Logf("%+v", *res)
	if len(res.Rounds) != rounds || !res.AllRejoined {
		t.Errorf("%d rounds, all rejoined %v", len(res.Rounds), res.AllRejoined)
	}
	for _, rd := range res.Rounds {
		if rd.Verified != 2 || rd.Lost != 0 || rd.Duplicates != 0 || rd.ConnectLatency.Max <= 0 {
			t.Errorf("round %+v", rd)
		}
	}
}

func TestFanoutNATSWS(t *testing.T) {
	t.Parallel()
	srv, err := startNATSWS("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	checkEveryMode(t, smallRun(targetNATSWS, []string{srv.URL}, nil))
}

// checkEveryMode checks exact small runs of fanout, rooms and connect
// against base's target, URLs, APIs and processes.
func checkEveryMode(t *testing.T, base Config) {
	t.Helper()
	t.Run("fanout", func(t *testing.T) {
		res, err := runFanout(t.Context(), base)
		if err != nil {
			t.Fatal(err)
		}
		checkExact(t, res)
		if len(base.PIDs) > 0 && res.ServerRSSIdleKiB <= 0 {
			t.Errorf("server rss %d", res.ServerRSSIdleKiB)
		}
		if len(base.PIDs) > 0 && (res.ServerIdleCPUMsPerS < 0 || res.ServerIdleCPUMsPerS > 2000) {
			t.Errorf("server idle CPU %.1f ms/s: not a share of two cores", res.ServerIdleCPUMsPerS)
		}
	})
	t.Run("rooms", func(t *testing.T) {
		cfg := smallRooms(base.Target, base.URLs, base.APIs)
		cfg.PIDs, cfg.WithPIDs = base.PIDs, base.WithPIDs
		res, err := runFanout(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		checkExact(t, res)
	})
	t.Run("connect", func(t *testing.T) {
		cfg := base
		cfg.Conns = 100
		res, err := runConnect(t.Context(), ConnectConfig{Base: cfg, Rounds: 2, Verify: 2})
		if err != nil {
			t.Fatal(err)
		}
		checkConnect(t, res, 2)
	})
}

func TestFanoutFailsCleanly(t *testing.T) {
	// Nothing listens there: the run must fail, not hang.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cfg := smallRun(targetNATSWS, []string{"ws://" + addr}, nil)
	if _, err := runFanout(ctx, cfg); err == nil || ctx.Err() != nil {
		t.Fatalf("err %v, ctx %v", err, ctx.Err())
	}
}

// groupcast is ./app, built once per test binary.
var groupcast apptest.Binary

// instance is a groupcast process a test started.
type instance struct {
	ws, api string
	pid     int
}

// startGroupcast starts the groupcast binary on a free port with env on
// top of this environment (less NATS_URL, API_KEY and PORT), waits until it
// is ready, and stops it when the test ends.
func startGroupcast(t *testing.T, env ...string) instance {
	t.Helper()
	bin := groupcast.Path(t)
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin)
		cmd.Env = append(envWithout("NATS_URL", "API_KEY", "PORT"), fmt.Sprintf("PORT=%d", port))
		cmd.Env = append(cmd.Env, env...)
		exited, logs := startProcess(t, cmd)
		base := fmt.Sprintf("http://127.0.0.1:%d", port)
		err = waitReady(t.Context(), base+"/readyz", exited, 10*time.Second)
		if err == nil {
			return instance{ws: fmt.Sprintf("ws://127.0.0.1:%d/ws", port), api: base, pid: cmd.Process.Pid}
		}
		// The port was found free and let go for the binary to take:
		// another test's process may have taken it meanwhile.
		if attempt < 5 && strings.Contains(logs.String(), apptest.PortTaken) {
			continue
		}
		t.Fatal(err)
	}
}

// startProcess starts cmd, keeping the tail of its output, and stops it
// (SIGTERM, then after 10 s SIGKILL) when the test ends, logging the output
// if the test failed. The channel yields Wait's result: whoever takes it
// before the end puts it back, for the stop.
func startProcess(t *testing.T, cmd *exec.Cmd) (chan error, *tail) {
	t.Helper()
	logs := &tail{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		stopProcess(cmd, exited)
		if t.Failed() {
			t.Logf("%s output (tail):\n%s", filepath.Base(cmd.Path), logs.String())
		}
	})
	return exited, logs
}

// TestFanoutGroupcast runs ./app with the embedded NATS and checks an exact
// small run of each mode against it.
func TestFanoutGroupcast(t *testing.T) {
	t.Parallel()
	in := startGroupcast(t)
	urls, apis, pids := []string{in.ws}, []string{in.api}, []int{in.pid}
	t.Run("fanout", func(t *testing.T) {
		cfg := smallRun(targetGroupcast, urls, apis)
		cfg.PIDs = pids
		cfg.Deliveries = newSeries(time.Now(), 60)
		res, err := runFanout(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		checkExact(t, res)
		if res.ServerRSSIdleKiB <= 0 {
			t.Errorf("server rss %d", res.ServerRSSIdleKiB)
		}
		var n uint64
		for _, s := range cfg.Deliveries.stats() {
			n += s.Count
		}
		if n != uint64(res.Delivered) {
			t.Errorf("series counted %d deliveries of %d", n, res.Delivered)
		}
	})
	t.Run("rooms", func(t *testing.T) {
		cfg := smallRooms(targetGroupcast, urls, apis)
		cfg.PIDs = pids
		res, err := runFanout(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		checkExact(t, res)
	})
	t.Run("rooms-batched", func(t *testing.T) {
		cfg := smallRooms(targetGroupcast, urls, apis)
		cfg.PIDs, cfg.Batch = pids, 7 // 60 publishes: the last four go out on the flush
		res, err := runFanout(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		checkExact(t, res)
	})
	t.Run("connect", func(t *testing.T) {
		cfg := smallRun(targetGroupcast, urls, apis)
		// 400 connects take tens of milliseconds of server CPU: several of
		// /proc's 10 ms ticks, so a round never reads as free.
		cfg.Conns, cfg.PIDs = 400, pids
		res, err := runConnect(t.Context(), ConnectConfig{Base: cfg, Rounds: 2, Verify: 2})
		if err != nil {
			t.Fatal(err)
		}
		checkConnect(t, res, 2)
		if res.ServerUSPerConnect <= 0 {
			t.Errorf("server µs per connect %v", res.ServerUSPerConnect)
		}
	})
}

// TestTwoInstances runs two groupcast processes on one external NATS (an
// in-process serve-nats) and checks that each message crossed NATS once
// per instance.
func TestTwoInstances(t *testing.T) {
	t.Parallel()
	ns, err := startNATS("127.0.0.1:0", "127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	a := startGroupcast(t, "NATS_URL="+ns.URL)
	b := startGroupcast(t, "NATS_URL="+ns.URL)
	for _, mode := range []string{modeFanout, modeRooms} {
		t.Run(mode, func(t *testing.T) {
			cfg := smallRun(targetGroupcast, []string{a.ws, b.ws}, []string{a.api, b.api})
			if mode == modeRooms {
				cfg = smallRooms(targetGroupcast, []string{a.ws, b.ws}, []string{a.api, b.api})
			}
			cfg.PIDs, cfg.NATSMonitor = []int{a.pid, b.pid}, ns.MonitorURL
			res, err := runFanout(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkExact(t, res)
			if len(res.Instances) != 2 {
				t.Fatalf("instances %+v", res.Instances)
			}
			for _, in := range res.Instances {
				if in.NATSReceived != res.Publishes || in.Delivered == 0 {
					t.Errorf("instance %+v: want %d messages from NATS", in, res.Publishes)
				}
			}
			if res.NATSInMsgs != res.Publishes || res.NATSOutMsgs != 2*res.Publishes {
				t.Errorf("nats in %d out %d for %d publishes", res.NATSInMsgs, res.NATSOutMsgs, res.Publishes)
			}
		})
	}
}

func TestColdstart(t *testing.T) {
	t.Parallel()
	bin := groupcast.Path(t)
	res, err := runColdstart(t.Context(), ColdstartConfig{Bin: bin, N: 2, CPU: 0, Env: []string{"LOG_LEVEL=error"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", *res)
	if res.Ready.Min <= 0 || res.Ready.Max < res.Ready.Min || res.Listen.Median > res.Ready.Median {
		t.Errorf("ready %+v listen %+v", res.Ready, res.Listen)
	}
}

func TestStartPinned(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep")
	}
	cmd := exec.Command(sleep, "5")
	if err := startPinned(cmd, 0); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		t.Skip("no /proc")
	}
	if !bytes.Contains(b, []byte("Cpus_allowed_list:\t0\n")) {
		t.Errorf("not pinned to cpu 0:\n%s", b)
	}
}

func TestPlot(t *testing.T) {
	origin := time.Now().Add(-5 * time.Second)
	s := newSeries(origin, 10)
	for sec := range 4 {
		for i := range 100 {
			at := origin.Add(time.Duration(sec)*time.Second + time.Duration(i)*time.Millisecond).UnixNano()
			s.record(at, int64(i+1)*int64(time.Millisecond))
		}
	}
	st := s.stats()
	if len(st) != 4 || st[0].Count != 100 || st[3].P50 < 45 || st[3].P50 > 55 || st[3].P99 < 90 || st[3].P99 > 105 {
		t.Fatalf("stats %+v", st)
	}
	var buf bytes.Buffer
	if err := plotRun(&buf, "t <&> \"q\"", []string{"note"}, st, st[:2]); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&buf)
	lines := 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "polyline" {
			lines++
		}
	}
	if lines < 7 {
		t.Errorf("%d polylines", lines)
	}
}

// waitReady polls url until it answers 200, the process exits (its Wait
// result goes back on exited), or d passes.
func waitReady(ctx context.Context, url string, exited chan error, d time.Duration) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(d)
	for {
		resp, err := client.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s (last: %v)", url, d, err)
		}
		select {
		case err := <-exited:
			exited <- err // for the stop at the test's end
			return fmt.Errorf("server exited: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestWaitReadyExited: a process that exits before it is ready is
// reported at once, and its Wait result is left for the stop at the test's
// end, which would otherwise wait for it forever.
func TestWaitReadyExited(t *testing.T) {
	cmd := exec.Command("sh", "-c", "echo "+apptest.PortTaken+" >&2; exit 3")
	exited, logs := startProcess(t, cmd)
	err := waitReady(t.Context(), "http://127.0.0.1:1/readyz", exited, 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("waitReady: %v; want the exit", err)
	}
	select {
	case err := <-exited:
		exited <- err
	default:
		exited <- errors.New("taken") // for this test's own stop
		t.Fatal("waitReady took the exit's result: the stop at the test's end would wait for it forever")
	}
	if !strings.Contains(logs.String(), apptest.PortTaken) {
		t.Errorf("output kept: %q", logs.String())
	}
}

// TestMain fails the package if any test leaves a goroutine behind: every
// goroutine a run starts must be stopped and awaited.
func TestMain(m *testing.M) {
	code := m.Run()
	groupcast.Clean()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// TestHotPathAllocs: a delivery must not allocate (the loader has one core
// for 250,000 deliveries/s).
func TestHotPathAllocs(t *testing.T) {
	r := &fanoutRun{seqLimit: 1000, bitset: true}
	c := &client{r: r, seen: make([]uint64, 16), lastSeq: -1}
	payload := appendPayload(nil, 0, time.Now().UnixNano(), 64)
	gc := fmt.Appendf(nil, `{"type":"message","group":"bench","data":%s}`, payload)
	nats := fmt.Appendf(nil, "MSG bench 1 %d\r\n%s\r\n", len(payload), payload)
	allocs := testing.AllocsPerRun(200, func() {
		if err := c.groupcastObject(gc); err != nil {
			t.Fatal(err)
		}
		if _, err := parseNATS(nats, c); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per delivery", allocs)
	}
	if c.unique.Load() != 1 || c.dups.Load() < 100 {
		t.Errorf("unique %d dups %d", c.unique.Load(), c.dups.Load())
	}
}

// TestProfiles checks that runs fetch CPU and heap profiles where asked,
// against a stand-in for net/http/pprof.
func TestProfiles(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var asked []string
	pp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.URL.Path+"?"+r.URL.RawQuery)
		mu.Unlock()
		fmt.Fprint(w, "profile")
	}))
	defer pp.Close()
	srv, err := startNATSWS("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dir := t.TempDir()
	cfg := smallRun(targetNATSWS, []string{srv.URL}, nil)
	cfg.Conns, cfg.Profile = 20, pp.URL
	cfg.ProfileOut, cfg.HeapOut = filepath.Join(dir, "cpu"), filepath.Join(dir, "heap")
	if _, err := runFanout(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	cfg.HeapOut, cfg.ProfileOut = "", filepath.Join(dir, "storm")
	res, err := runConnect(t.Context(), ConnectConfig{Base: cfg, Rounds: 2, Verify: 1, ProfileSecs: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"cpu", "heap", "storm.round2"}
	for _, f := range want {
		if b, err := os.ReadFile(filepath.Join(dir, f)); err != nil || string(b) != "profile" {
			t.Errorf("%s: %q, %v", f, b, err)
		}
	}
	if len(res.Profiles) != 1 || len(asked) != 3 {
		t.Errorf("profiles %v, asked %v", res.Profiles, asked)
	}
}
