// Package apptest builds and runs the real groupcast binary for tests.
package apptest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Process is a running groupcast binary.
type Process struct {
	Cmd    *exec.Cmd
	Base   string        // http://127.0.0.1:<port>
	Exited chan struct{} // closed when the process has exited
	Err    error         // how it exited; read after Exited is closed
}

// Start builds ./app of this module and runs it on a free port with env
// (KEY=value) added to the test's environment, its logs going to stderr
// (nil: discarded). It returns once /readyz answers 200; the process is
// killed when the test ends. A start that fails reports the process's
// output; one that lost its port to another process before it listened
// (the port is found free, then let go for the binary to take) is
// tried again on another. It skips with -short.
func Start(t testing.TB, stderr io.Writer, env ...string) *Process {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := Build(t)
	if stderr == nil {
		stderr = io.Discard
	}
	for attempt := 1; ; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		p, out, err := launch(bin, port, stderr, env)
		if p != nil {
			t.Cleanup(func() { p.Cmd.Process.Kill(); <-p.Exited })
		}
		if err == nil {
			return p
		}
		if attempt < maxStarts && strings.Contains(out, PortTaken) {
			continue
		}
		t.Fatalf("%v; its output:\n%s", err, out)
	}
}

// maxStarts bounds the starts Start tries when the port it found is taken.
const maxStarts = 5

// PortTaken is how the binary's error reads when its port is taken.
const PortTaken = "address already in use"

// launch runs bin on port and waits, 10 s at most, until it is ready. A
// process that is not is killed, and its output so far returned with the
// error.
func launch(bin string, port int, stderr io.Writer, env []string) (*Process, string, error) {
	out := &startLog{}
	cmd := exec.Command(bin)
	cmd.Env = append(append(os.Environ(), fmt.Sprintf("PORT=%d", port)), env...)
	cmd.Stderr = io.MultiWriter(stderr, out)
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	p := &Process{Cmd: cmd, Base: fmt.Sprintf("http://127.0.0.1:%d", port), Exited: make(chan struct{})}
	go func() { p.Err = cmd.Wait(); close(p.Exited) }()
	defer out.done.Store(true)
	// Each poll bounded: whatever holds a taken port may never answer.
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := client.Get(p.Base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, "", nil
			}
		}
		select {
		case <-p.Exited:
			return p, out.String(), fmt.Errorf("groupcast exited before it was ready (%v)", p.Err)
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-p.Exited
			return p, out.String(), errors.New("groupcast not ready in 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startLog keeps what a process writes until it is ready (or has
// failed), for the message of a start that fails.
type startLog struct {
	Buffer
	done atomic.Bool
}

func (l *startLog) Write(p []byte) (int, error) {
	if l.done.Load() {
		return len(p), nil
	}
	return l.Buffer.Write(p)
}
