package web

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/labstack/echo/v4"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/protocol"
)

// The fallback over plain HTTP, for clients whose WebSocket cannot open
// (a proxy that refuses the upgrade): GET /sse streams the server's frames
// as Server-Sent Events, and the client POSTs its frames to
// /sse/{channel} (sse_post.go). A stream is a session like a WebSocket,
// with the same checks, handlers, limits and close codes; only the writes
// and the source of client frames differ.

// sseStream is the transport of a session that streams Server-Sent
// Events: where the events go, the secret that proves a POST comes from
// its client, and the posted frames waiting to be handled (sse_post.go).
//
// Over HTTP/1.x the stream takes the connection over (a hijack, as a
// WebSocket does) and writes the response itself, chunked as net/http
// would (a stream that breaks then shows as a truncated body), then closes
// the connection: no net/http buffers or goroutines stay with an idle stream,
// only the session's reader, parked in a read that tells when the client
// goes. Where the connection cannot be taken (HTTP/2), events go through
// the response, flushed, and the request's goroutine waits for the
// session's end.
type sseStream struct {
	secret string

	conn    net.Conn     // the hijacked connection; nil: the response's, below
	sock    socketWriter // conn's socket, for writes that must not block (under wmu)
	chunked bool         // conn's body is chunked (HTTP/1.1), else it ends with conn (HTTP/1.0)
	wmu     sync.Mutex   // serialises writes

	w   http.ResponseWriter
	rc  *http.ResponseController
	ctx context.Context // the request's: done once the client has gone

	ended      chan struct{} // response only: closed once the stream has ended
	once       sync.Once     // closes ended
	deadlineMu sync.Mutex
	dropped    bool // the response's write deadline has passed for good

	posts postQueue
}

// The stream's events: a heartbeat comment, and the head of the close event.
var (
	sseHeartbeat = []byte(":\n\n")
	// sseHeartbeatChunk is sseHeartbeat as one chunk of a chunked body.
	sseHeartbeatChunk = []byte("3\r\n:\n\n\r\n")
	sseCloseEvent     = []byte("event: close\ndata: ")
	crlf              = []byte("\r\n")
)

// serveSSE is GET /sse: the same checks as /ws (admit), and a refusal
// answered as /ws answers it; then an event stream whose first event is
// the welcome, with the secret the client's POSTs must carry.
func (s *Server) serveSSE(c echo.Context) error {
	r := c.Request()
	s.allowCORS(c)
	a, err := s.admit(r)
	if err != nil {
		return err
	}
	st := &sseStream{secret: newSecret()}
	if err := st.open(c); err != nil {
		a.release()
		return nil // the client has gone
	}
	ss := s.newSession(a)
	ss.sse = st
	var done chan struct{}
	if st.conn == nil {
		done = make(chan struct{}) // the response lives as long as this request
	}
	if !s.start(ss, a, done) {
		ss.endStream(websocket.StatusServiceRestart, "server restart")
		return nil
	}
	if done != nil {
		<-done
	}
	return nil
}

// open answers the request with the stream's head: on a connection of its
// own when it can take it over, else through the response.
func (st *sseStream) open(c echo.Context) error {
	h := c.Response().Header()
	h.Set(echo.HeaderContentType, "text/event-stream")
	h.Set(echo.HeaderCacheControl, "no-cache, no-transform")
	h.Set("X-Accel-Buffering", "no") // nginx and its kin: do not buffer
	w := c.Response().Writer
	rc := http.NewResponseController(w)
	if c.Request().ProtoMajor == 1 {
		// Nothing of the request is kept: its buffers go with it.
		conn, _, err := rc.Hijack()
		if err == nil {
			st.conn = conn
			st.sock.init(conn)
			// Deadlines of the request's reading stay on a hijacked
			// connection: cleared, the stream lives on.
			conn.SetDeadline(time.Time{})
			h.Set(echo.HeaderConnection, "close") // the stream ends with the connection
			if st.chunked = c.Request().ProtoAtLeast(1, 1); st.chunked {
				h.Set("Transfer-Encoding", "chunked")
			}
			head := bytes.NewBufferString("HTTP/1.1 200 OK\r\n")
			h.Write(head)
			head.WriteString("\r\n")
			if _, err := conn.Write(head.Bytes()); err != nil {
				conn.Close()
				return err
			}
			return nil
		}
		if !errors.Is(err, http.ErrNotSupported) {
			return err
		}
	}
	st.w, st.rc, st.ctx = w, rc, c.Request().Context()
	st.ended = make(chan struct{})
	// Plain requests have a read deadline (readDeadline): cleared, since
	// a read that hits it while the server watches for the client leaving
	// would end the stream.
	_ = st.rc.SetReadDeadline(time.Time{})
	c.Response().WriteHeader(http.StatusOK)
	return st.rc.Flush()
}

// allowCORS lets a page of an allowed origin read the answer: the CORS
// headers, when the request has an Origin that checkOrigin allows.
func (s *Server) allowCORS(c echo.Context) {
	origin := c.Request().Header.Get(echo.HeaderOrigin)
	if origin == "" || s.checkOrigin(c.Request()) != nil {
		return
	}
	h := c.Response().Header()
	h.Set(echo.HeaderAccessControlAllowOrigin, origin)
	h.Set(echo.HeaderAccessControlAllowCredentials, "true")
	h.Add(echo.HeaderVary, echo.HeaderOrigin)
}

// newSecret returns 256 random bits, base64url: unguessable.
func newSecret() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// awaitStream is an SSE session's reader: it lets the posted frames be
// handled, in order, from now on, and returns once the stream has ended or
// the client has gone, and no frame is being handled.
func (s *session) awaitStream() {
	st := s.sse
	st.posts.start(s)
	if st.conn != nil {
		// The client sends nothing after its request: a read ends when
		// it goes, or when endStream or dropStream closes the connection.
		var buf [64]byte
		for {
			if _, err := st.conn.Read(buf[:]); err != nil {
				break
			}
		}
	} else {
		select {
		case <-st.ended:
		case <-st.ctx.Done():
		}
	}
	st.posts.stop()
}

// writeEvents writes a batch as events, one per frame (a frame of
// several objects, a replay's chunk, is split at its newlines), in writes
// of at most about maxBatchBytes. Like a WebSocket's writes, they carry
// no deadline: the watchdog ends one that takes too long.
func (s *session) writeEvents(batch [][]byte) error {
	s.writeStart.Store(time.Now().UnixNano())
	defer s.writeStart.Store(0)
	buf := s.srv.buffers.Get().(*[]byte)
	p, n := (*buf)[:0], 0
	defer func() {
		*buf = p
		s.srv.buffers.Put(buf)
	}()
	flush := func() error {
		if err := s.sse.send(p); err != nil {
			return err
		}
		s.srv.metrics.writes.Inc()
		s.srv.metrics.framesWritten.Add(float64(n))
		s.srv.metrics.bytesWritten.Add(float64(len(p)))
		p, n = p[:0], 0
		return nil
	}
	for _, f := range batch {
		for len(f) > 0 {
			var line []byte
			line, f, _ = bytes.Cut(f, []byte{'\n'})
			if len(line) == 0 {
				continue
			}
			if len(p) > 0 && len(p)+len(line) > maxBatchBytes {
				if err := flush(); err != nil {
					return err
				}
			}
			p = appendEvent(p, line)
			n++
		}
	}
	if len(p) == 0 {
		return nil
	}
	return flush()
}

// appendEvent appends one frame's event: line holds no newline.
func appendEvent(p, line []byte) []byte {
	p = append(p, "data: "...)
	p = append(p, line...)
	return append(p, "\n\n"...)
}

// sseChunkHead is the room appendChunk leaves for a chunk's head: the
// size in hex, at most 16 digits, and CRLF.
const sseChunkHead = 18

// appendChunk appends the events of ds (a frame of several objects is
// split at its newlines), as one chunk when chunked: p[start:] is what to
// write, size the events' bytes (0: nothing to write).
func appendChunk(p []byte, ds []broker.Delivery, chunked bool) (_ []byte, start, size int) {
	p = append(p, make([]byte, sseChunkHead)...)
	for _, d := range ds {
		for f := d.Frame; len(f) > 0; {
			var line []byte
			line, f, _ = bytes.Cut(f, []byte{'\n'})
			if len(line) > 0 {
				p = appendEvent(p, line)
			}
		}
	}
	size = len(p) - sseChunkHead
	if !chunked || size == 0 {
		return p, sseChunkHead, size
	}
	var head [sseChunkHead]byte
	h := append(strconv.AppendInt(head[:0], int64(size), 16), "\r\n"...)
	start = sseChunkHead - len(h)
	copy(p[start:], h)
	return append(p, crlf...), start, size
}

// trySend writes what of p the socket takes at once, without waiting for
// it or for another write: errWouldBlock when it takes nothing.
func (st *sseStream) trySend(p []byte) (int, error) {
	if st.sock.rc == nil || !st.wmu.TryLock() {
		return 0, errWouldBlock
	}
	defer st.wmu.Unlock()
	return st.sock.try(p)
}

// sendRaw writes p to the connection as it is: what trySend left of a
// chunk, which goes on where it stopped.
func (st *sseStream) sendRaw(p []byte) error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	_, err := st.conn.Write(p)
	return err
}

// heartbeat writes a comment, which keeps proxies from closing an idle
// stream and lets the server find a dead one.
func (s *session) heartbeat() error {
	s.writeStart.Store(time.Now().UnixNano())
	defer s.writeStart.Store(0)
	return s.sse.send(sseHeartbeat)
}

// heartbeatBytes is the heartbeat as the stream's connection takes it
// raw (trySend), chunked or not.
func (st *sseStream) heartbeatBytes() []byte {
	if st.chunked {
		return sseHeartbeatChunk
	}
	return sseHeartbeat
}

// endStream ends the stream: with code, after the close event carrying
// the code and reason a WebSocket would get in its close frame; with code
// 0 without one (a stream that breaks). A hijacked connection is closed;
// a response ends within WriteTimeout.
func (s *session) endStream(code websocket.StatusCode, reason string) {
	st := s.sse
	if code != 0 {
		p := append(sseCloseEvent[:len(sseCloseEvent):len(sseCloseEvent)], protocol.AppendClose(nil, int(code), reason)...)
		s.writeStart.Store(time.Now().UnixNano())
		if err := st.send(append(p, "\n\n"...)); err != nil {
			s.logger().Debug("close event failed", "error", err)
		}
		s.writeStart.Store(0)
	}
	if st.conn != nil {
		if code != 0 && st.chunked {
			st.send(nil) // the last chunk: the body is whole
		}
		st.conn.Close()
		return
	}
	st.deadlineMu.Lock()
	if !st.dropped {
		_ = st.rc.SetWriteDeadline(time.Now().Add(s.srv.cfg.WriteTimeout))
	}
	st.deadlineMu.Unlock()
	st.once.Do(func() { close(st.ended) })
}

// dropStream ends the stream at once, without a close event: a write in
// flight fails, and the reader returns.
func (s *session) dropStream() {
	st := s.sse
	if st.conn != nil {
		st.conn.Close()
		return
	}
	st.deadlineMu.Lock()
	st.dropped = true
	_ = st.rc.SetWriteDeadline(time.Now())
	st.deadlineMu.Unlock()
	st.once.Do(func() { close(st.ended) })
}

// send writes p to the stream, at once: a chunk of its own on a chunked
// connection (nil p: the last chunk).
func (st *sseStream) send(p []byte) error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	switch {
	case p != nil && len(p) == 0:
		return nil // not the last chunk
	case st.conn != nil && st.chunked:
		var head [18]byte
		chunk := net.Buffers{append(strconv.AppendInt(head[:0], int64(len(p)), 16), "\r\n"...), p, crlf}
		_, err := chunk.WriteTo(st.conn) // one writev
		return err
	case st.conn != nil:
		_, err := st.conn.Write(p)
		return err
	}
	if _, err := st.w.Write(p); err != nil {
		return err
	}
	return st.rc.Flush()
}
