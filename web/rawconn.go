package web

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"net/http"
	"sync"
	"syscall"
)

// A WebSocket's buffers, smaller than net/http's 4 KiB each: client frames
// are small, and memory saved here is saved on every idle connection. The
// write buffer carries only the WebSocket library's control frames (the
// session writes data frames to the frameConn itself): it holds a whole
// one, a 2-byte header and at most 125 bytes of payload, so each goes out
// in one write.
const (
	readBufferSize  = 512
	writeBufferSize = 2 + 125
)

// hijacker hands the WebSocket library smaller buffers than net/http's
// when nothing is buffered in them yet, and writes through a frameConn,
// which it keeps for the session. It holds the 101 answer back from
// net/http and gives it to the frameConn, which sends it with the first
// frame (the welcome): one write for both instead of two.
type hijacker struct {
	http.ResponseWriter
	conn     *frameConn
	switched bool // WriteHeader(101) was called and held
}

func (w *hijacker) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// WriteHeader holds a 101 (the head then goes out with the first frame)
// and passes any other status on.
func (w *hijacker) WriteHeader(code int) {
	if code != http.StatusSwitchingProtocols {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.switched = true
}

func (w *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return conn, brw, err
	}
	if brw.Reader.Buffered() == 0 {
		brw.Reader = bufio.NewReaderSize(conn, readBufferSize)
	}
	if err := brw.Writer.Flush(); err != nil {
		return conn, brw, err
	}
	w.conn = &frameConn{Conn: conn}
	if w.switched {
		w.conn.head = switchingHead(w.Header())
	}
	w.conn.sock.init(conn)
	brw.Writer = bufio.NewWriterSize(w.conn, writeBufferSize)
	return conn, brw, nil
}

// frameConn serialises the writes to a connection, so that a session can
// write whole data frames itself, each in one Write, between the control
// frames (ping, pong, close) that the WebSocket library writes, each
// flushed in one Write as well.
type frameConn struct {
	net.Conn
	sock socketWriter // for writes that must not block, under mu
	mu   sync.Mutex
	// head is the part of the 101 answer not written yet, sent before
	// the next bytes written; guarded by mu.
	head []byte
}

// switchingHead is the 101 answer with the upgrade's headers, as net/http
// would have written it.
func switchingHead(h http.Header) []byte {
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	h.Write(&b)
	b.WriteString("\r\n")
	return b.Bytes()
}

func (c *frameConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.head == nil {
		return c.Conn.Write(p)
	}
	n, err := c.Conn.Write(append(c.head, p...))
	n -= len(c.head)
	if n < 0 {
		c.head, n = c.head[n+len(c.head):], 0
	} else {
		c.head = nil
	}
	return n, err
}

// errWouldBlock declines an immediate write: the socket, or the
// connection's lock, is busy.
var errWouldBlock = errors.New("write would block")

// tryWrite writes what of p the socket takes at once, without waiting
// for it or for the lock: errWouldBlock when it takes nothing.
func (c *frameConn) tryWrite(p []byte) (int, error) {
	if c.sock.rc == nil || !c.mu.TryLock() {
		return 0, errWouldBlock
	}
	defer c.mu.Unlock()
	if c.head != nil {
		p = append(c.head, p...)
	}
	n, err := c.sock.try(p)
	if err != nil {
		return 0, err
	}
	if c.head != nil {
		if n < len(c.head) {
			c.head = c.head[n:]
			return 0, errWouldBlock
		}
		n -= len(c.head)
		c.head = nil
	}
	return n, nil
}

// socketWriter makes writes to a socket that never wait for it: one write
// system call each, which takes what the socket has room for. Its user
// serialises them.
type socketWriter struct {
	rc syscall.RawConn // nil when the connection is not a socket

	// The write in flight: its bytes and result, for rawWrite, which
	// rc.Write calls through write (a method value made once: a closure
	// per write would cost three allocations).
	p     []byte
	n     int
	err   error
	write func(fd uintptr) bool
}

// init sets w up to write to conn; it stays unset (rc nil) when conn is
// not a socket.
func (w *socketWriter) init(conn net.Conn) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return
	}
	if rc, err := sc.SyscallConn(); err == nil {
		w.rc, w.write = rc, w.rawWrite
	}
}

// try writes what of p the socket takes at once: errWouldBlock when it
// takes nothing.
func (w *socketWriter) try(p []byte) (int, error) {
	w.p = p
	rerr := w.rc.Write(w.write)
	n, err := w.n, w.err
	w.p, w.err = nil, nil
	switch {
	case rerr != nil:
		return 0, rerr
	case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) || n <= 0 && err == nil:
		return 0, errWouldBlock
	case err != nil:
		return 0, err
	}
	return n, nil
}

// rawWrite is try's one write system call; it never waits for the socket.
func (w *socketWriter) rawWrite(fd uintptr) bool {
	w.n, w.err = syscall.Write(int(fd), w.p)
	return true
}
