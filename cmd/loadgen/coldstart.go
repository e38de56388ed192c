package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// ColdstartConfig describes a cold-start measurement: Bin is started N
// times on a free PORT (with NATS_URL and PORT removed from this process's
// environment, then Env added), and each time the loader polls
// http://127.0.0.1:PORT/<Path> every Poll until it answers 200.
type ColdstartConfig struct {
	Bin     string
	Args    []string
	Env     []string // extra KEY=VALUE settings
	N       int
	CPU     int // pin the server to this core (-1: no pinning)
	Path    string
	Poll    time.Duration
	Timeout time.Duration // per start
	Log     io.Writer
}

// Dist summarizes a sample of durations in milliseconds.
type Dist struct {
	Min    float64 `json:"min_ms"`
	Median float64 `json:"median_ms"`
	P90    float64 `json:"p90_ms"`
	Max    float64 `json:"max_ms"`
}

// ColdstartResult holds the times from exec to the first accepted TCP
// connection (listening) and to the first 200 (ready), and the CPU time the
// process's threads had used when it became ready.
type ColdstartResult struct {
	Bin       string    `json:"bin"`
	N         int       `json:"n"`
	Listen    Dist      `json:"listen"`
	Ready     Dist      `json:"ready"`
	ReadyCPU  Dist      `json:"ready_cpu"`
	ReadyEach []float64 `json:"ready_each_ms"`
}

func distOf(ms []float64) Dist {
	if len(ms) == 0 {
		return Dist{}
	}
	s := slices.Clone(ms)
	slices.Sort(s)
	q := func(p float64) float64 {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[max(0, min(len(s)-1, i))]
	}
	return Dist{Min: s[0], Median: q(0.5), P90: q(0.9), Max: s[len(s)-1]}
}

func runColdstart(ctx context.Context, cfg ColdstartConfig) (*ColdstartResult, error) {
	if cfg.N < 1 || cfg.N > 1000 {
		return nil, errors.New("-n must be 1..1000")
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Path == "" {
		cfg.Path = "/readyz"
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	bin, err := exec.LookPath(cfg.Bin)
	if err != nil {
		return nil, err
	}
	res := &ColdstartResult{Bin: bin, N: cfg.N}
	var listen, ready, cpu []float64
	for i := range cfg.N {
		l, rd, c, err := coldstartOnce(ctx, bin, cfg)
		if err != nil {
			return nil, fmt.Errorf("start %d: %w", i+1, err)
		}
		fmt.Fprintf(cfg.Log, "start %d: listening after %.1f ms, ready after %.1f ms, %.0f ms CPU\n", i+1, l, rd, c)
		listen, ready, cpu = append(listen, l), append(ready, rd), append(cpu, c)
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
	}
	res.Listen, res.Ready, res.ReadyCPU, res.ReadyEach = distOf(listen), distOf(ready), distOf(cpu), ready
	return res, nil
}

// stopProcess stops a started cmd whose Wait result comes on exited:
// SIGTERM, then SIGKILL after 10 s. It returns once the process is gone.
func stopProcess(cmd *exec.Cmd, exited <-chan error) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// coldstartOnce starts the server once and returns the milliseconds to
// listening and to ready, and its CPU milliseconds when ready; then it
// stops the server (SIGTERM, SIGKILL after 10 s) and waits for it.
func coldstartOnce(ctx context.Context, bin string, cfg ColdstartConfig) (listenMS, readyMS, cpuMS float64, err error) {
	port, err := freePort()
	if err != nil {
		return 0, 0, 0, err
	}
	cmd := exec.Command(bin, cfg.Args...)
	cmd.Env = append(envWithout("PORT", "NATS_URL"), cfg.Env...)
	cmd.Env = append(cmd.Env, "PORT="+strconv.Itoa(port))
	var out tail
	cmd.Stdout, cmd.Stderr = &out, &out

	var dialedAt atomic.Int64
	dialer := &net.Dialer{Timeout: 200 * time.Millisecond}
	client := &http.Client{
		Timeout: time.Second,
		Transport: &http.Transport{
			Proxy:             nil,
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := dialer.DialContext(ctx, network, addr)
				if err == nil {
					dialedAt.CompareAndSwap(0, time.Now().UnixNano())
				}
				return c, err
			},
		},
	}
	defer client.CloseIdleConnections()
	url := fmt.Sprintf("http://127.0.0.1:%d%s", port, cfg.Path)

	start := time.Now()
	if err := startPinned(cmd, cfg.CPU); err != nil {
		return 0, 0, 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer stopProcess(cmd, exited)

	for {
		resp, gerr := client.Get(url)
		if gerr == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				readyMS = float64(time.Since(start)) / 1e6
				break
			}
		}
		if time.Since(start) > cfg.Timeout {
			return 0, 0, 0, fmt.Errorf("%s not ready within %s (last: %v); output:\n%s", url, cfg.Timeout, gerr, out.String())
		}
		select {
		case err := <-exited:
			exited <- err // for the deferred wait
			return 0, 0, 0, fmt.Errorf("server exited: %v; output:\n%s", err, out.String())
		case <-ctx.Done():
			return 0, 0, 0, ctx.Err()
		case <-time.After(cfg.Poll):
		}
	}
	if d := dialedAt.Load(); d > 0 {
		listenMS = float64(d-start.UnixNano()) / 1e6
	}
	if c, err := procCPUFine(cmd.Process.Pid); err == nil {
		cpuMS = float64(c) / 1e6
	}
	return listenMS, readyMS, cpuMS, nil
}

// startPinned starts cmd with its CPU affinity set to cpu (unless cpu < 0):
// it forks from a thread of its own whose affinity is set first, since a
// child inherits the forking thread's mask. The thread is never unlocked,
// so it exits with its goroutine and its mask goes with it.
func startPinned(cmd *exec.Cmd, cpu int) error {
	if cpu < 0 {
		return cmd.Start()
	}
	if cpu >= 1024 {
		return fmt.Errorf("cpu %d: out of range", cpu)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		var mask [16]uint64
		mask[cpu/64] |= 1 << (cpu % 64)
		if _, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, 0, unsafe.Sizeof(mask), uintptr(unsafe.Pointer(&mask))); e != 0 {
			errc <- fmt.Errorf("sched_setaffinity cpu %d: %w", cpu, e)
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}

// freePort returns a TCP port that was free a moment ago on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// envWithout returns this process's environment without the named variables.
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

// tail keeps the last 8 KiB written to it, for error messages.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 8<<10 {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-8<<10:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
