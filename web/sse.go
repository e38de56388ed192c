package web

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/labstack/echo/v4"

	"github.com/groupcast/groupcast/protocol"
)

// The fallback over plain HTTP, for clients whose WebSocket cannot open
// (a proxy that refuses the upgrade): GET /sse streams the server's frames
// as Server-Sent Events, and the client POSTs its frames to
// /sse/{channel} (sse_post.go). A stream is a session like a WebSocket,
// with the same checks, handlers, limits and close codes; only the writes
// and the source of client frames differ.

// sseStream is the transport of a session that streams Server-Sent
// Events: the response it writes to, the secret that proves a POST comes
// from its client, and the posted frames waiting for the session's reader.
type sseStream struct {
	w      http.ResponseWriter // the response, written by the session's writer only
	rc     *http.ResponseController
	secret string
	ctx    context.Context // the request's: done once the client has gone
	inbox  chan posted     // the posted bodies, in order, for the reader
	queued atomic.Int64    // the bytes of the bodies in inbox and being handled
	ended  chan struct{}   // closed once the stream has ended
	once   sync.Once       // closes ended

	mu sync.Mutex // serialises writes to w

	deadlineMu sync.Mutex
	dropped    bool // the write deadline has passed for good
}

// sseInbox bounds the posted bodies waiting for a stream's reader, and
// MaxBodyBytes their bytes; a POST beyond either gets 429 (a client that
// waits for each POST's answer before the next never meets them).
const sseInbox = 4

// posted is the body of one POST, split into its frames.
type posted struct {
	frames [][]byte
	size   int64
}

// The stream's events: a heartbeat comment, and the head of the close event.
var (
	sseHeartbeat  = []byte(":\n\n")
	sseCloseEvent = []byte("event: close\ndata: ")
)

// serveSSE is GET /sse: the same checks as /ws (admit), and a refusal
// answered as /ws answers it; then an event stream whose first event is
// the welcome, with the secret the client's POSTs must carry. The request's
// goroutine waits for the session's end: its response is the stream.
func (s *Server) serveSSE(c echo.Context) error {
	r := c.Request()
	s.allowCORS(c)
	a, err := s.admit(r)
	if err != nil {
		return err
	}
	w := c.Response().Writer
	rc := http.NewResponseController(w)
	// Plain requests have a read deadline (readDeadline): cleared, since
	// a read that hits it while the server watches for the client leaving
	// would end the stream. Fails only for writers that cannot (tests').
	_ = rc.SetReadDeadline(time.Time{})
	h := c.Response().Header()
	h.Set(echo.HeaderContentType, "text/event-stream")
	h.Set(echo.HeaderCacheControl, "no-cache, no-transform")
	h.Set("X-Accel-Buffering", "no") // nginx and its kin: do not buffer
	c.Response().WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		a.release()
		return nil // the client has gone
	}
	ss := s.newSession(a)
	ss.sse = &sseStream{
		w:      w,
		rc:     rc,
		secret: newSecret(),
		ctx:    r.Context(),
		inbox:  make(chan posted, sseInbox),
		ended:  make(chan struct{}),
	}
	done := make(chan struct{})
	if !s.start(ss, a, done) {
		ss.endStream(websocket.StatusServiceRestart, "server restart")
		return nil
	}
	<-done
	return nil
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

// readPosts is an SSE session's reader: it handles the posted frames, in
// order, one at a time as a WebSocket's reader does, until the stream
// ends or the client goes.
func (s *session) readPosts() {
	st := s.sse
	for {
		select {
		case <-st.ended:
			return
		case <-st.ctx.Done():
			return
		case p := <-st.inbox:
			for _, f := range p.frames {
				s.handleAside(f)
			}
			st.queued.Add(-p.size)
		}
	}
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
			p = append(p, "data: "...)
			p = append(p, line...)
			p = append(p, "\n\n"...)
			n++
		}
	}
	if len(p) == 0 {
		return nil
	}
	return flush()
}

// heartbeat writes a comment, which keeps proxies from closing an idle
// stream and lets the server find a dead one.
func (s *session) heartbeat() error {
	s.writeStart.Store(time.Now().UnixNano())
	defer s.writeStart.Store(0)
	return s.sse.send(sseHeartbeat)
}

// endStream ends the stream: with code, after the close event carrying
// the code and reason a WebSocket would get in its close frame; with code
// 0 without one (a stream that breaks). The response then ends, within
// WriteTimeout.
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
	st.deadlineMu.Lock()
	st.dropped = true
	_ = st.rc.SetWriteDeadline(time.Now())
	st.deadlineMu.Unlock()
	st.once.Do(func() { close(st.ended) })
}

// send writes p to the stream and flushes it.
func (st *sseStream) send(p []byte) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if _, err := st.w.Write(p); err != nil {
		return err
	}
	return st.rc.Flush()
}
