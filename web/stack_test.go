package web

import (
	"context"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// stackHandler is a JSON handler to nowhere that keeps the goroutine stack
// each line of message msg was logged from.
type stackHandler struct {
	slog.Handler
	msg    string
	mu     *sync.Mutex
	stacks *[]string
}

func (h stackHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(as)
	return h
}

func (h stackHandler) WithGroup(name string) slog.Handler {
	h.Handler = h.Handler.WithGroup(name)
	return h
}

func (h stackHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		buf := make([]byte, 16<<10)
		buf = buf[:runtime.Stack(buf, false)]
		h.mu.Lock()
		*h.stacks = append(*h.stacks, string(buf))
		h.mu.Unlock()
	}
	return h.Handler.Handle(ctx, r)
}

// TestIdleConnectionStack: an idle connection's reader, parked in its
// read, keeps a small stack. The deep calls it makes before its first
// read (the connect's log line) and between reads (a frame's handling)
// run on goroutines of their own, which end: a stack grown by them would
// stay with the reader (8 KiB of stack per idle connection instead of 4).
func TestIdleConnectionStack(t *testing.T) {
	var mu sync.Mutex
	var stacks []string
	h := stackHandler{slog.NewJSONHandler(io.Discard, nil), "websocket connected", &mu, &stacks}
	e := newEnv(t, "", &Config{Logger: slog.New(h)}) // as the binary logs: JSON, info
	addr := strings.TrimPrefix(e.http.URL, "http://")
	upgrade := []byte("GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	join := maskedText([]byte(`{"type":"join","group":"idle","id":1}`))
	inUse := func() (stack, heap uint64) {
		runtime.GC() // shrinks the stacks that can be
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.StackInuse, ms.HeapAlloc
	}
	const n = 200
	stack0, heap0 := inUse()
	buf := make([]byte, 4096)
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		for _, p := range [][]byte{upgrade, join} {
			if _, err := c.Write(p); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Read(buf); err != nil { // the welcome, then the ack
				t.Fatal(err)
			}
		}
	}
	waitFor(t, 5*time.Second, func() bool { return e.srv.openSessions() == n })
	stack1, heap1 := inUse()
	t.Logf("per idle connection: %.0f bytes of goroutine stack, %.0f of heap", float64(stack1-stack0)/n, float64(heap1-heap0)/n)
	mu.Lock()
	defer mu.Unlock()
	if len(stacks) != n {
		t.Fatalf("%d connect lines logged, want %d", len(stacks), n)
	}
	for _, s := range stacks {
		if strings.Contains(s, "web.(*Server).run(") {
			t.Fatalf("the connect line was logged on the reader, which keeps the stack it grows:\n%s", s)
		}
	}
}
