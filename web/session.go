package web

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/protocol"
)

// Close codes the server uses, beyond the standard ones.
const (
	// CloseSlowConsumer closes a connection whose outbox overflowed: the
	// client did not read fast enough and has missed messages.
	CloseSlowConsumer websocket.StatusCode = protocol.CloseSlowConsumer
	// CloseTokenExpired closes a connection whose token expired without a
	// refresh: the client needs a new token to reconnect.
	CloseTokenExpired websocket.StatusCode = protocol.CloseTokenExpired
)

// session is one connection, a WebSocket or an SSE stream (sse.go): a
// channel in the broker, a reader goroutine (Server.run, started by
// serveWS or serveSSE and awaited by Shutdown) and a
// writer goroutine that runs while there is something to write, awaited
// by the reader before it returns. Fields marked reader-owned are used only
// by the reader and by the frame handler it starts and waits for
// (aside), or by an SSE stream's handler of posted frames while its
// reader waits (postQueue), one at a time, so they need no lock.
type session struct {
	srv     *Server
	conn    *websocket.Conn
	raw     *frameConn // conn's connection: data frames are written here
	sse     *sseStream // set for an SSE stream, which takes the writes instead of conn
	trace   []any      // the upgrade request's trace fields, for logs
	channel string
	out     *outbox
	writers sync.WaitGroup
	pinger  *time.Timer
	groupSet
	public Conn         // what the Consumer sees
	uid    string       // the user id; set before the session starts
	perms  *Permissions // reader-owned; nil: every group
	// bound is what Connect decided when it set permissions of its own
	// (nil: it kept the token's): a refresh never allows more.
	bound     *Permissions
	tokenUser string      // the token's subject, which a refresh must match
	ip        string      // the client IP holding one of its connections; "" for loopback
	expires   time.Time   // reader-owned: when the token expires (zero: never)
	refused   int         // reader-owned: refusals so far
	frames    bucket      // reader-owned: the client's frame rate
	flooded   int         // reader-owned: frames refused in a row for rate
	expiry    *time.Timer // closes the connection when the token expires

	info        json.RawMessage // presence info, from Connect; set before the session starts
	hookHeaders http.Header     // forwarded to every hook call; set before the session starts
	opened      time.Time       // when the upgrade was accepted

	// The client's close code and reason, when it sent a close frame;
	// written by the reader when it ends.
	peerCode   websocket.StatusCode
	peerReason string

	closeOnce sync.Once
	code      websocket.StatusCode // why it closes; written once, before the outbox closes
	reason    string

	// writeStart is when the write in flight began (unix ns; 0: none), for
	// the server's watchdog, which ends writes that take too long.
	writeStart atomic.Int64

	// The keepalive (keepalive.go): when the ping written at once that
	// still awaits its pong went out (unix ns; 0: none awaited), and the
	// grid point the last ping was sent for.
	pingAwaited atomic.Int64
	pingLast    atomic.Int64
}

// user is the connection's user id ("" when anonymous).
func (s *session) user() string { return s.uid }

// refresh replaces the connection's token with a fresh one for the same
// token subject (whatever user Connect made of it), before the old one
// expires. Permissions become the new token's, within what Connect
// decided when it set its own. A token without exp (with AllowNoExpiry)
// keeps the expiry the connection had: a refresh moves a deadline, it
// never removes one.
func (s *session) refresh(token string) error {
	if s.srv.auth == nil {
		return refuse(CodeForbidden, "this server does not use tokens")
	}
	id, err := s.srv.auth.connection(token)
	if err != nil {
		return err
	}
	if id.user != s.tokenUser {
		return refuse(CodeForbidden, "the token is for another user")
	}
	s.perms = &Permissions{Join: id.join, Send: id.send}
	if s.bound != nil {
		s.perms = &Permissions{Join: intersect(s.bound.Join, id.join), Send: intersect(s.bound.Send, id.send)}
	}
	if !id.expires.IsZero() {
		s.stopExpiry()
		s.expires = id.expires
		s.armExpiry()
	}
	return nil
}

// armExpiry closes the connection with 4001 when its token expires.
func (s *session) armExpiry() {
	if s.expires.IsZero() {
		return
	}
	s.expiry = time.AfterFunc(time.Until(s.expires), func() {
		s.close(CloseTokenExpired, "token expired")
	})
}

func (s *session) stopExpiry() {
	if s.expiry != nil {
		s.expiry.Stop()
	}
}

// logger returns the connection's logger, which puts its trace and
// channel in front of every line's fields. It is made when needed, not
// kept (a logger per idle connection is memory), and costs nothing: a
// line is built only when its level is enabled, without the handler copy
// that slog.Logger.With makes.
func (s *session) logger() connLogger { return connLogger{s} }

// connLogger is a session's logger; see session.logger.
type connLogger struct{ s *session }

func (l connLogger) Debug(msg string, args ...any) { l.log(slog.LevelDebug, msg, args) }
func (l connLogger) Info(msg string, args ...any)  { l.log(slog.LevelInfo, msg, args) }
func (l connLogger) Warn(msg string, args ...any)  { l.log(slog.LevelWarn, msg, args) }
func (l connLogger) Error(msg string, args ...any) { l.log(slog.LevelError, msg, args) }

// Enabled reports whether lines of level are logged.
func (l connLogger) Enabled(level slog.Level) bool {
	return l.s.srv.log.Enabled(context.Background(), level)
}

// log hands the line to the handler itself, with no caller's PC: a
// Logger's own methods walk the stack for it on every line, and the
// handlers here report no source.
func (l connLogger) log(level slog.Level, msg string, args []any) {
	h, ctx := l.s.srv.log.Handler(), context.Background()
	if !h.Enabled(ctx, level) {
		return
	}
	r := slog.NewRecord(time.Now(), level, msg, 0)
	r.Add(l.s.trace...)
	r.Add("channel", l.s.channel)
	r.Add(args...)
	_ = h.Handle(ctx, r) // as Logger.Log, which drops the handler's error
}

// Receive implements broker.Receiver: it queues the frame without blocking
// and closes the session as a slow consumer if the outbox is full.
func (s *session) Receive(d broker.Delivery) {
	queued, start := s.out.push(d)
	if start {
		s.startWriter()
	}
	if !queued {
		s.close(CloseSlowConsumer, "slow consumer")
	}
}

// Closing implements broker.ClosingReceiver: a closing connection, say a
// slow consumer's, takes no more frames, so a replay to it stops.
func (s *session) Closing() bool { return s.out.isClosing() }

// ReceiveNow implements broker.ImmediateReceiver: when the connection has
// nothing queued and no writer, it writes the frames, as one WebSocket
// message (or, on an SSE stream, as events in one chunk), on the caller's
// goroutine, as much as the socket takes without blocking; a writer is
// started only for what is left. It waits for another immediate write to
// the connection under way (see outbox.claim), declines when there is
// other writing to do or the socket takes nothing, and always with
// WriteDelay or on a stream that is not a socket of its own (HTTP/2).
func (s *session) ReceiveNow(ds []broker.Delivery) bool {
	if !s.writesNow() || !s.out.claim() {
		return false
	}
	buf := s.srv.buffers.Get().(*[]byte)
	var p []byte
	var start, size int
	if s.sse != nil {
		p, start, size = appendChunk((*buf)[:0], ds, s.sse.chunked)
	} else {
		p = append((*buf)[:0], make([]byte, maxFrameHeader)...)
		for i, d := range ds {
			if i > 0 {
				p = append(p, '\n')
			}
			p = append(p, d.Frame...)
		}
		start, size = frameHeader(p), len(p)-maxFrameHeader
	}
	*buf = p
	var n int
	var err error
	if size > 0 {
		n, err = s.tryWrite(p[start:])
	}
	var rest []byte
	var unwritten []broker.Delivery
	switch {
	case size == 0: // nothing to write (a stream's empty frames)
	case errors.Is(err, errWouldBlock):
		unwritten = ds
	case err != nil:
		s.srv.buffers.Put(buf)
		s.out.release(nil, nil)
		s.close(0, "") // broken: drop it
		return true
	default:
		if n < len(p)-start {
			rest = append([]byte(nil), p[start+n:]...)
		}
		s.srv.metrics.writes.Inc()
		s.srv.metrics.framesWritten.Add(float64(len(ds)))
		s.srv.metrics.bytesWritten.Add(float64(size))
	}
	s.srv.buffers.Put(buf)
	if s.out.release(rest, unwritten) {
		s.startWriter()
	}
	return true
}

// writesNow reports whether ReceiveNow may write on its caller's
// goroutine: its connection is a socket that takes writes that do not
// block, and there is no WriteDelay.
func (s *session) writesNow() bool {
	if s.srv.cfg.WriteDelay > 0 {
		return false
	}
	if s.sse != nil {
		return s.sse.sock.rc != nil
	}
	return s.raw != nil && s.raw.sock.rc != nil
}

// tryWrite writes what of p the socket takes at once (errWouldBlock: none).
func (s *session) tryWrite(p []byte) (int, error) {
	if s.sse != nil {
		return s.sse.trySend(p)
	}
	return s.raw.tryWrite(p)
}

// send writes an answer of the session's own (a control frame) at once
// when nothing is queued before it, as ReceiveNow does, and queues it
// otherwise; it never blocks either.
func (s *session) send(frame []byte) {
	d := [1]broker.Delivery{{Frame: frame, Kind: broker.KindControl}}
	if !s.ReceiveNow(d[:]) {
		s.Receive(d[0])
	}
}

// close asks the writer to end the connection with code, or with code 0
// to drop it without a close handshake (the reader saw it end, or the peer
// is unreachable). It never blocks and only the first call counts.
func (s *session) close(code websocket.StatusCode, reason string) {
	s.closeOnce.Do(func() {
		s.code, s.reason = code, reason
		if code == CloseSlowConsumer {
			s.srv.metrics.slowConsumers.Inc()
		}
		if s.out.requestClose() {
			s.startWriter()
		}
	})
}

// closeStatus is how the connection ended: the server's close code and
// reason, else the client's, else 1006 (dropped without a close frame).
// Call it once the reader has ended.
func (s *session) closeStatus() (websocket.StatusCode, string) {
	switch {
	case s.code != 0:
		return s.code, s.reason
	case s.peerCode > 0:
		return s.peerCode, s.peerReason
	}
	return websocket.StatusAbnormalClosure, ""
}

func (s *session) startWriter() {
	s.srv.watch(s)
	s.writers.Add(1)
	go s.writeLoop()
}

// writeLoop writes what is queued, batching every queued frame into one
// WebSocket message, pings when a ping is due, and exits when there is
// nothing left. On close it ends the connection with the requested code,
// which also unblocks the reader.
func (s *session) writeLoop() {
	defer s.writers.Done()
	var batch [][]byte
	for {
		w, ok := s.out.next(batch)
		if !ok {
			return
		}
		if d := s.srv.cfg.WriteDelay; d > 0 && !w.closing && w.message {
			time.Sleep(d)
			w = s.out.more(w)
		}
		if err := s.writeRest(w.rest); err != nil {
			s.logger().Debug("write failed", "error", err)
			s.close(0, "")
		} else if err := s.write(w.frames); err != nil {
			s.logger().Debug("write failed", "error", err)
			s.close(0, "") // broken or dead: drop it, a close handshake would only time out
		}
		clear(w.frames)
		batch = w.frames
		if cap(batch) > 64 {
			batch = nil // do not keep a burst's storage
		}
		if w.ping {
			if err := s.keepalive(); err != nil {
				s.logger().Debug("ping failed", "error", err)
				s.close(0, "") // broken or dead: drop it, a close handshake would only time out
			} else {
				s.nextPing(time.Now().UnixNano())
			}
		}
		if w.closing {
			s.pinger.Stop()
			s.end(s.code, s.reason)
			return // writer duty is never released: nothing more is written
		}
	}
}

// write sends a batch as one message, frames separated by newlines. The
// WebSocket frame is made here and written in one system call: server
// frames are unmasked and uncompressed, so a header in front of the
// payload is all it takes. Writes carry no deadline (a timer per write
// costs): the server's watchdog ends a write that takes longer than
// WriteTimeout.
func (s *session) write(batch [][]byte) error {
	if len(batch) == 0 {
		return nil
	}
	if s.sse != nil {
		return s.writeEvents(batch)
	}
	s.writeStart.Store(time.Now().UnixNano())
	defer s.writeStart.Store(0)
	buf := s.srv.buffers.Get().(*[]byte)
	defer s.srv.buffers.Put(buf)
	p := append((*buf)[:0], make([]byte, maxFrameHeader)...)
	n := 0
	for _, f := range batch {
		if n > 0 && len(p)-maxFrameHeader+1+len(f) > maxBatchBytes {
			if err := s.writeFrame(p, n); err != nil {
				return err
			}
			p, n = p[:maxFrameHeader], 0
		}
		if n > 0 {
			p = append(p, '\n')
		}
		p = append(p, f...)
		n++
	}
	*buf = p
	return s.writeFrame(p, n)
}

// drop ends the connection at once, without a close handshake; a write
// in flight fails.
func (s *session) drop() {
	if s.sse != nil {
		s.dropStream()
		return
	}
	s.conn.CloseNow()
}

// end closes the connection with code and reason, or drops it when code
// is 0. A WebSocket sends its close frame; an SSE stream its close event.
func (s *session) end(code websocket.StatusCode, reason string) {
	switch {
	case s.sse != nil:
		s.endStream(code, reason)
	case code == 0:
		s.conn.CloseNow()
	default:
		s.conn.Close(code, reason)
	}
}

// transport names the session's transport in metrics and logs.
func (s *session) transport() string {
	if s.sse != nil {
		return transportSSE
	}
	return transportWS
}

// Transports, as metrics and logs name them.
const (
	transportWS  = "ws"
	transportSSE = "sse"
)

// writeRest writes what an immediate write left of its message.
func (s *session) writeRest(rest []byte) error {
	if rest == nil {
		return nil
	}
	s.writeStart.Store(time.Now().UnixNano())
	defer s.writeStart.Store(0)
	if s.sse != nil {
		return s.sse.sendRaw(rest)
	}
	_, err := s.raw.Write(rest)
	return err
}

// maxFrameHeader is the longest header of an unmasked WebSocket frame.
const maxFrameHeader = 10

// frameHeader puts the header of one text message holding
// p[maxFrameHeader:] in the room left in front of it, and returns where
// the message starts.
func frameHeader(p []byte) (start int) {
	size := len(p) - maxFrameHeader
	start = maxFrameHeader - 2
	switch {
	case size < 126:
		p[start+1] = byte(size)
	case size <= 0xFFFF:
		start -= 2
		p[start+1] = 126
		binary.BigEndian.PutUint16(p[start+2:], uint16(size))
	default:
		start -= 8
		p[start+1] = 127
		binary.BigEndian.PutUint64(p[start+2:], uint64(size))
	}
	p[start] = 0x81 // FIN, text
	return start
}

// writeFrame writes p[maxFrameHeader:] as one text message of frames
// frames, its header put in the room left in front of it.
func (s *session) writeFrame(p []byte, frames int) error {
	size := len(p) - maxFrameHeader
	if _, err := s.raw.Write(p[frameHeader(p):]); err != nil {
		return err
	}
	s.srv.metrics.writes.Inc()
	s.srv.metrics.framesWritten.Add(float64(frames))
	s.srv.metrics.bytesWritten.Add(float64(size))
	return nil
}

// maxIdempotencyKey bounds an idempotency key, in bytes.
const maxIdempotencyKey = 128

// maxLoggedRefusals bounds the refusals logged per connection, so that a
// misbehaving client cannot flood the logs.
const maxLoggedRefusals = 5

// slowConsumerGrace is how long a slow consumer's blocked write may go on
// once it is being closed, so that the close frame has a chance.
const slowConsumerGrace = time.Second

// maxBatchBytes bounds one batched WebSocket message.
const maxBatchBytes = 64 << 10

// overdue reports whether the write in flight has gone on too long: past
// WriteTimeout, or past slowConsumerGrace once closing as a slow consumer.
func (s *session) overdue(now int64) bool {
	start := s.writeStart.Load()
	if start == 0 {
		return false
	}
	limit := s.srv.cfg.WriteTimeout
	if s.out.isClosing() && s.code == CloseSlowConsumer {
		limit = slowConsumerGrace
	}
	return now-start > int64(limit)
}

// readLoop reads client frames until the connection ends and answers each
// in order through the outbox.
func (s *session) readLoop() {
	// A context without Done: reads end when the connection is closed,
	// not through a context (which would drop the connection unannounced).
	ctx := context.Background()
	for {
		typ, p, err := s.conn.Read(ctx)
		if err != nil {
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				s.peerCode, s.peerReason = ce.Code, ce.Reason
			}
			if status := websocket.CloseStatus(err); status == -1 && !errors.Is(err, context.Canceled) {
				s.logger().Debug("read ended", "error", err)
			}
			return
		}
		if typ != websocket.MessageText {
			s.send(protocol.AppendError(nil, nil, CodeInvalidFrame, "frames must be UTF-8 JSON text"))
			continue
		}
		aside(func() { s.handle(p) })
	}
}

// aside runs f on a short-lived goroutine and waits for it, for the deep
// calls of a session's reader (a frame's JSON decoding and join, a log
// line): what it does stays in order, and the stack it grows is freed
// with that goroutine instead of staying with the reader, which sits
// parked in a read for the rest of the connection's life (about 4 KiB
// less per idle connection for each).
func aside(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	<-done
}

func (s *session) handle(p []byte) {
	cfg := &s.srv.cfg
	if !s.frames.take(time.Now(), cfg.FramesPerSecond, 2*cfg.FramesPerSecond) {
		if s.flooded++; s.flooded > int(2*cfg.FramesPerSecond) {
			s.close(websocket.StatusPolicyViolation, "rate limit")
			return
		}
		f, _ := protocol.ParseClientFrame(p)
		s.srv.metrics.errors.WithLabelValues(CodeRateLimited).Inc()
		s.send(protocol.AppendError(nil, f.ID, CodeRateLimited, "too many frames; slow down"))
		return
	}
	s.flooded = 0
	f, err := protocol.ParseClientFrame(p)
	if err == nil {
		err = s.dispatch(&f)
	}
	if err != nil {
		code, message, _ := classify(err)
		s.refused++
		switch {
		case code == CodeInternal:
			s.logger().Error("frame failed", "type", f.Type, "error", err)
		case s.refused <= maxLoggedRefusals:
			s.logger().Info("frame refused", "type", f.Type, "code", code, "refusals", s.refused)
		}
		s.srv.metrics.errors.WithLabelValues(code).Inc()
		s.send(protocol.AppendError(nil, f.ID, code, message))
	}
}
