package web

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/groupcast/groupcast/broker"
)

// Close codes the server uses, beyond the standard ones.
const (
	// CloseSlowConsumer closes a connection whose outbox overflowed: the
	// client did not read fast enough and has missed messages.
	CloseSlowConsumer websocket.StatusCode = 4008
)

// session is one WebSocket connection: a channel in the broker, a reader
// (the handler's goroutine) and a writer goroutine, owned by serveWS.
type session struct {
	srv     *Server
	conn    *websocket.Conn
	log     *slog.Logger
	channel string
	out     *outbox
	groups  map[string]struct{} // reader-owned
	refused int                 // reader-owned: refusals so far

	closing   chan struct{}      // closed by close: the writer stops
	abort     context.Context    // ends a write in flight: the client is stuck
	abortNow  context.CancelFunc // called on overflow
	closeOnce sync.Once
	code      websocket.StatusCode // why; written once, before closing is closed
	reason    string
	dropped   atomic.Bool
}

// Receive implements broker.Receiver: it queues the frame without blocking
// and closes the session as a slow consumer if the outbox is full.
func (s *session) Receive(frame []byte) {
	if !s.out.push(frame) {
		if s.dropped.CompareAndSwap(false, true) {
			s.srv.metrics.slowConsumers.Inc()
		}
		s.close(CloseSlowConsumer, "slow consumer")
	}
}

// send queues an answer of the session's own; it never blocks either.
func (s *session) send(frame []byte) { s.Receive(frame) }

// close asks the writer to end the connection with code (0: the reader
// already saw it end). It never blocks and only the first call counts.
func (s *session) close(code websocket.StatusCode, reason string) {
	s.closeOnce.Do(func() {
		s.code, s.reason = code, reason
		close(s.closing)
		if code == CloseSlowConsumer {
			// A write blocked on the client's full socket would hold the
			// connection for up to WriteTimeout; give the close frame a
			// moment to go out, then drop the connection.
			time.AfterFunc(slowConsumerGrace, s.abortNow)
		}
	})
}

// writeLoop writes queued frames, batching everything queued into one
// WebSocket message, and pings the client when idle. On close it ends the
// connection with the requested code, which also unblocks the reader.
func (s *session) writeLoop() {
	cfg := &s.srv.cfg
	ping := time.NewTicker(cfg.PingInterval)
	defer ping.Stop()
	var batch [][]byte
	for {
		select {
		case <-s.out.wake:
			batch = s.out.take(batch)
			if err := s.write(batch); err != nil {
				s.log.Debug("write failed", "error", err)
				s.close(websocket.StatusGoingAway, "")
			}
			clear(batch)
			if cap(batch) > 64 {
				batch = nil // do not keep a burst's storage on an idle connection
			}
		case <-ping.C:
			ctx, cancel := context.WithTimeout(context.Background(), cfg.WriteTimeout)
			err := s.conn.Ping(ctx)
			cancel()
			if err != nil {
				s.log.Debug("ping failed", "error", err)
				s.close(websocket.StatusGoingAway, "")
			}
		case <-s.closing:
			if s.code == 0 {
				s.conn.CloseNow()
			} else {
				s.conn.Close(s.code, s.reason)
			}
			return
		}
	}
}

// write sends a batch as one message, frames separated by newlines.
func (s *session) write(batch [][]byte) error {
	if len(batch) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.abort, s.srv.cfg.WriteTimeout)
	defer cancel()
	if len(batch) == 1 {
		return s.countWrite(ctx, batch[0], 1)
	}
	buf := s.srv.buffers.Get().(*[]byte)
	defer s.srv.buffers.Put(buf)
	p := (*buf)[:0]
	n := 0
	for _, f := range batch {
		if len(p) > 0 && len(p)+1+len(f) > maxBatchBytes {
			if err := s.countWrite(ctx, p, n); err != nil {
				return err
			}
			p, n = p[:0], 0
		}
		if len(p) > 0 {
			p = append(p, '\n')
		}
		p = append(p, f...)
		n++
	}
	*buf = p
	return s.countWrite(ctx, p, n)
}

// maxLoggedRefusals bounds the refusals logged per connection, so that a
// misbehaving client cannot flood the logs.
const maxLoggedRefusals = 5

// slowConsumerGrace is how long a slow consumer's blocked write may go on
// once it is being closed.
const slowConsumerGrace = time.Second

// maxBatchBytes bounds one batched WebSocket message.
const maxBatchBytes = 64 << 10

func (s *session) countWrite(ctx context.Context, p []byte, frames int) error {
	if err := s.conn.Write(ctx, websocket.MessageText, p); err != nil {
		return err
	}
	s.srv.metrics.framesWritten.Add(float64(frames))
	s.srv.metrics.bytesWritten.Add(float64(len(p)))
	return nil
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
			if status := websocket.CloseStatus(err); status == -1 && !errors.Is(err, context.Canceled) {
				s.log.Debug("read ended", "error", err)
			}
			return
		}
		if typ != websocket.MessageText {
			s.send(errorFrame(nil, CodeInvalidFrame, "frames must be UTF-8 JSON text"))
			continue
		}
		s.handle(p)
	}
}

func (s *session) handle(p []byte) {
	f, err := parseFrame(p)
	if err == nil {
		err = s.dispatch(&f)
	}
	if err != nil {
		code, message, _ := classify(err)
		s.refused++
		switch {
		case code == CodeInternal:
			s.log.Error("frame failed", "type", f.Type, "error", err)
		case s.refused <= maxLoggedRefusals:
			s.log.Info("frame refused", "type", f.Type, "code", code, "refusals", s.refused)
		}
		s.srv.metrics.errors.WithLabelValues(code).Inc()
		s.send(errorFrame(f.ID, code, message))
	}
}

func (s *session) dispatch(f *clientFrame) error {
	b := s.srv.broker
	switch f.Type {
	case "join":
		if _, ok := s.groups[f.Group]; ok {
			break
		}
		if !broker.ValidGroup(f.Group) {
			return broker.ErrInvalidGroup
		}
		if len(s.groups) >= s.srv.cfg.MaxGroups {
			return refuse(CodeTooManyGroups, "this connection is in as many groups as allowed")
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.JoinTimeout)
		err := b.GroupAdd(ctx, f.Group, s.channel)
		cancel()
		if err != nil {
			return err
		}
		s.groups[f.Group] = struct{}{}
		s.srv.metrics.joins.Inc()
	case "leave":
		if err := b.GroupDiscard(f.Group, s.channel); err != nil {
			return err
		}
		delete(s.groups, f.Group)
	case "send":
		if !s.srv.cfg.ClientSend {
			return refuse(CodeForbidden, "clients may not send on this server")
		}
		if f.Data == nil {
			return refuse(CodeInvalidData, `"data" is required`)
		}
		if err := b.GroupSend(f.Group, f.Data); err != nil {
			return err
		}
		s.srv.metrics.published.WithLabelValues("client").Inc()
	case "ping":
		s.send(appendReply(nil, "pong", f.ID))
		return nil
	case "":
		return refuse(CodeUnknownType, `"type" is required`)
	default:
		return refuse(CodeUnknownType, "unknown frame type")
	}
	s.send(appendReply(nil, "ack", f.ID))
	return nil
}
