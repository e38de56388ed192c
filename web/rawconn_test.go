package web

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/groupcast/groupcast/internal/wstest"
)

// writeLog records each Write on a connection, one entry per call.
type writeLog struct {
	mu     sync.Mutex
	writes [][]byte
}

func (l *writeLog) all() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][]byte(nil), l.writes...)
}

// loggedConn is a real TCP connection whose Writes are recorded.
type loggedConn struct {
	net.Conn
	log *writeLog
}

func (c *loggedConn) Write(p []byte) (int, error) {
	c.log.mu.Lock()
	c.log.writes = append(c.log.writes, append([]byte(nil), p...))
	c.log.mu.Unlock()
	return c.Conn.Write(p)
}

// loggedHijack hands hijacker a connection that records its Writes.
type loggedHijack struct {
	http.ResponseWriter
	log *writeLog
}

func (w *loggedHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return conn, brw, err
	}
	return &loggedConn{Conn: conn, log: w.log}, brw, nil
}

// wsFrame parses one unmasked server frame: its opcode and its length
// with header, or ok false when p is not one whole frame.
func wsFrame(p []byte) (opcode byte, n int, ok bool) {
	if len(p) < 2 || p[1]&0x80 != 0 {
		return 0, 0, false
	}
	header, size := 2, int(p[1]&0x7f)
	switch size {
	case 126:
		if len(p) < 4 {
			return 0, 0, false
		}
		header, size = 4, int(binary.BigEndian.Uint16(p[2:]))
	case 127:
		if len(p) < 10 {
			return 0, 0, false
		}
		header, size = 10, int(binary.BigEndian.Uint64(p[2:]))
	}
	return p[0] & 0x0f, header + size, true
}

// TestControlFramesOneWrite pins what frameConn relies on: coder/websocket
// writes each control frame (ping, pong, close) through the hijacker's
// buffer in ONE Write to the connection, so that a session's own frame
// writes (tryWrite, under frameConn's lock) never land inside one. Should
// the library split a control frame over several Writes, a session's
// write could interleave with it and corrupt the stream: this test fails
// first.
func TestControlFramesOneWrite(t *testing.T) {
	log := &writeLog{}
	accepted := make(chan struct{})
	pinged := make(chan struct{})
	served := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(served)
		hj := &hijacker{ResponseWriter: &loggedHijack{ResponseWriter: w, log: log}}
		conn, err := websocket.Accept(hj, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			t.Error(err)
			return
		}
		if hj.conn == nil {
			t.Error("hijacker kept no frameConn")
		}
		close(accepted)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		read := make(chan error, 1)
		go func() { // answers the client's ping with a pong, then its close
			for {
				if _, _, err := conn.Read(ctx); err != nil {
					read <- err
					return
				}
			}
		}()
		if err := conn.Ping(ctx); err != nil {
			t.Errorf("server ping: %v", err)
		}
		select { // the client's ping answered before the close
		case <-pinged:
		case <-ctx.Done():
		}
		// A close reason at the 123-byte limit: the largest control frame,
		// which must fit the write buffer.
		if err := conn.Close(websocket.StatusNormalClosure, strings.Repeat("r", 123)); err != nil {
			t.Errorf("close: %v", err)
		}
		<-read
	}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseNow()
	<-accepted
	readCtx := client.CloseRead(ctx) // answers the server's ping and close
	if err := client.Ping(ctx); err != nil {
		t.Fatalf("client ping: %v", err)
	}
	close(pinged)
	<-readCtx.Done()
	<-served

	seen := map[byte]int{}
	writes := log.all()
	if len(writes) == 0 || !bytes.HasPrefix(writes[0], []byte("HTTP/1.1 101 ")) {
		t.Fatalf("the first write is not the 101 answer: %q", writes)
	}
	head := bytes.Index(writes[0], []byte("\r\n\r\n")) + 4
	writes[0] = writes[0][head:] // the 101 goes out with the first frame
	for i, w := range writes {
		op, n, ok := wsFrame(w)
		if !ok || n != len(w) {
			t.Errorf("write %d (%d bytes) is not one whole frame: % x", i, len(w), w)
			continue
		}
		seen[op]++
	}
	for op, name := range map[byte]string{0x8: "close", 0x9: "ping", 0xa: "pong"} {
		if seen[op] != 1 {
			t.Errorf("%s frames written whole in one Write: %d, want 1 (writes by opcode: %v)", name, seen[op], seen)
		}
	}
}

// loggedListener records the Writes on each connection it accepts.
type loggedListener struct {
	net.Listener
	log *writeLog
}

func (l loggedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &loggedConn{Conn: c, log: l.log}, nil
}

// TestWelcomeWithSwitch: the 101 answer and the welcome frame go out in
// one write, as the floor does it: a connect costs one write less.
func TestWelcomeWithSwitch(t *testing.T) {
	e := newEnv(t, "", nil)
	log := &writeLog{}
	hs := httptest.NewUnstartedServer(e.srv.Handler())
	hs.Listener = loggedListener{Listener: hs.Listener, log: log}
	hs.Start()
	defer hs.Close()
	c := wstest.Dial(t, "ws"+strings.TrimPrefix(hs.URL, "http")+"/ws", nil)
	writes := log.all()
	if len(writes) != 1 {
		t.Fatalf("%d writes before the welcome arrived, want 1: %q", len(writes), writes)
	}
	w := writes[0]
	head := bytes.Index(w, []byte("\r\n\r\n")) + 4
	if !bytes.HasPrefix(w, []byte("HTTP/1.1 101 Switching Protocols\r\n")) || head < 4 {
		t.Fatalf("the write is not a 101 answer: %q", w)
	}
	for _, h := range []string{"Upgrade: websocket\r\n", "Connection: Upgrade\r\n", "Sec-Websocket-Accept: "} {
		if !bytes.Contains(w[:head], []byte(h)) {
			t.Errorf("the 101 answer lacks %q: %q", h, w[:head])
		}
	}
	if op, n, ok := wsFrame(w[head:]); !ok || op != 0x1 || n != len(w)-head ||
		!bytes.Contains(w[head:], []byte(`"channel":"`+c.Channel()+`"`)) {
		t.Fatalf("after the 101 comes %q, want the welcome frame whole", w[head:])
	}
	c.Join("room.one") // the connection works past it
}
