package apptest

import (
	"io"
	"net"
	"strings"
	"testing"
)

// TestLaunchTakenPort: a binary whose port another process holds fails
// to start with the words Start looks for to try another port, and its
// output comes back with the error.
func TestLaunchTakenPort(t *testing.T) {
	bin := Build(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p, out, err := launch(bin, ln.Addr().(*net.TCPAddr).Port, io.Discard, []string{"LOG_FORMAT=json"})
	if err == nil {
		p.Cmd.Process.Kill()
		t.Fatal("started on a port another process holds")
	}
	if !strings.Contains(out, PortTaken) {
		t.Fatalf("error %v, output %q: want the output to say %q", err, out, PortTaken)
	}
}

// TestStart: a binary that starts is ready and answers.
func TestStart(t *testing.T) {
	p := Start(t, nil)
	select {
	case <-p.Exited:
		t.Fatalf("exited: %v", p.Err)
	default:
	}
}
