// Package apptest builds and runs the real groupcast binary for tests.
package apptest

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
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
// killed when the test ends. It skips with -short.
func Start(t testing.TB, stderr io.Writer, env ...string) *Process {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := Build(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin)
	cmd.Env = append(append(os.Environ(), fmt.Sprintf("PORT=%d", port)), env...)
	if stderr == nil {
		stderr = io.Discard
	}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Process{Cmd: cmd, Base: fmt.Sprintf("http://127.0.0.1:%d", port), Exited: make(chan struct{})}
	go func() { p.Err = cmd.Wait(); close(p.Exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-p.Exited })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := http.Get(p.Base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-p.Exited:
			t.Fatal("groupcast exited before it was ready")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("groupcast not ready in 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
