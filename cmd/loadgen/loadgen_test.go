package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
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

func TestClassifyGroupcast(t *testing.T) {
	line := []byte(`{"type":"message","group":"g","data":{"seq":3,"t":9,"pad":"}x"},"t":1,"seq":99}`)
	kind, data := classifyGroupcast(line)
	if kind != gcMessage {
		t.Fatalf("kind %v", kind)
	}
	data = data[:objectEnd(data)]
	if string(data) != `{"seq":3,"t":9,"pad":"}x"}` {
		t.Fatalf("data %s", data)
	}
	for in, want := range map[string]gcLineKind{
		`{"type":"ack","id":1}`:                               gcAck,
		`{"type": "error","id":1,"code":"bad","message":"m"}`: gcError,
		`{"type":"welcome","channel":"c","node":"n"}`:         gcOther,
		`not json`: gcOther,
	} {
		if k, _ := classifyGroupcast([]byte(in)); k != want {
			t.Errorf("%s: kind %v, want %v", in, k, want)
		}
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
}

// smallRun is the configuration CI uses: small, quick, exact.
func smallRun(target, wsURL, api string) Config {
	return Config{
		Target: target, URL: wsURL, API: api,
		Conns: 50, Group: "bench", Rate: 20, Duration: time.Second, Size: 64,
		Settle: 100 * time.Millisecond, Drain: 3 * time.Second,
	}
}

func checkExact(t *testing.T, res *Result) {
	t.Helper()
	t.Logf("%+v", *res)
	if res.Publishes < 15 || res.PublishErrors != 0 {
		t.Errorf("publishes %d, errors %d", res.Publishes, res.PublishErrors)
	}
	if res.Expected != res.Publishes*int64(res.Conns) || res.Delivered != res.Expected ||
		res.Lost != 0 || res.Duplicates != 0 || res.Malformed != 0 || res.Disconnects != 0 {
		t.Errorf("expected %d delivered %d lost %d dups %d malformed %d disconnects %d",
			res.Expected, res.Delivered, res.Lost, res.Duplicates, res.Malformed, res.Disconnects)
	}
	if res.Latency.Max <= 0 || res.Latency.P50 > res.Latency.Max {
		t.Errorf("latency %+v", res.Latency)
	}
}

func TestFanoutNATSWS(t *testing.T) {
	srv, err := startNATSWS("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cfg := smallRun(targetNATSWS, srv.URL, "")
	res, err := runFanout(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkExact(t, res)
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
	cfg := smallRun(targetNATSWS, "ws://"+addr, "")
	if _, err := runFanout(ctx, cfg); err == nil || ctx.Err() != nil {
		t.Fatalf("err %v, ctx %v", err, ctx.Err())
	}
}

// TestFanoutGroupcast builds ./app, runs it on a free port with the embedded
// NATS, and checks an exact small run against it.
func TestFanoutGroupcast(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "app", "main.go")); err != nil {
		t.Skip("no ./app yet")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	bin := filepath.Join(t.TempDir(), "groupcast")
	build := exec.CommandContext(t.Context(), goBin, "build", "-o", bin, "./app")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./app: %v\n%s", err, out)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	var logs bytes.Buffer
	cmd := exec.Command(bin)
	cmd.Env = append(envWithout("NATS_URL", "API_KEY", "PORT"), fmt.Sprintf("PORT=%d", port))
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("server output:\n%s", logs.String())
		}
	}()

	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitReady(t.Context(), base+"/readyz", exited, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	cfg := smallRun(targetGroupcast, fmt.Sprintf("ws://127.0.0.1:%d/ws", port), base)
	cfg.PID = cmd.Process.Pid
	res, err := runFanout(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkExact(t, res)
	if res.ServerRSSIdleKiB <= 0 {
		t.Errorf("server rss %d", res.ServerRSSIdleKiB)
	}
}

func envWithout(names ...string) []string {
	var env []string
next:
	for _, kv := range os.Environ() {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		env = append(env, kv)
	}
	return env
}

// waitReady polls url until it answers 200, the process exits, or d passes.
func waitReady(ctx context.Context, url string, exited <-chan error, d time.Duration) error {
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
			return fmt.Errorf("server exited: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestMain fails the package if any test leaves a goroutine behind: every
// goroutine a run starts must be stopped and awaited.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
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
		_, data := classifyGroupcast(gc)
		c.deliver(data[:objectEnd(data)])
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
