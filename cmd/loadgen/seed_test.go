package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// seedPython is the interpreter with Debian's Django, Channels, daphne and
// channels_redis (python3-daphne, python3-channels-redis).
const seedPython = "/usr/bin/python3"

// startChannels starts the seed system, redis-server and daphne serving
// seed/seedsite.py, on free ports, or skips the test saying what is missing.
// It returns daphne as the instance and redis-server's pid.
func startChannels(t *testing.T) (instance, int) {
	t.Helper()
	redis, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("no redis-server (apt-get install redis-server)")
	}
	if out, err := exec.Command(seedPython, "-c", "import daphne, channels, channels_redis").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import daphne, channels and channels_redis (apt-get install python3-daphne python3-channels-redis): %v %s", seedPython, err, out)
	}
	rport, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	rcmd := exec.Command(redis, "--port", fmt.Sprint(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	startProcess(t, rcmd)
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := filepath.Abs("seed")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(seedPython, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", fmt.Sprint(port), "seedsite:application")
	cmd.Env = append(envWithout("PYTHONPATH", "REDIS_URL"), "PYTHONPATH="+seed, fmt.Sprintf("REDIS_URL=redis://127.0.0.1:%d/0", rport))
	exited, _ := startProcess(t, cmd)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitReady(t.Context(), base+"/readyz", exited, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	return instance{ws: fmt.Sprintf("ws://127.0.0.1:%d/ws", port), api: base, pid: cmd.Process.Pid}, rcmd.Process.Pid
}

// TestFanoutChannels runs each mode against the seed system, exactly as
// against groupcast, with redis-server counted in the server figures.
func TestFanoutChannels(t *testing.T) {
	t.Parallel()
	in, redisPID := startChannels(t)
	cfg := smallRun(targetChannels, []string{in.ws}, []string{in.api})
	cfg.PIDs, cfg.WithPIDs = []int{in.pid}, []int{redisPID}
	checkEveryMode(t, cfg)
}
