package web

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/groupcast/groupcast/broker"
)

// SecretHeader carries, on each POST of client frames, the secret of the
// stream's welcome: the proof that the POST comes from the stream's client.
const SecretHeader = "X-Groupcast-Secret"

// Refusals of a POST of client frames, each for the whole body.
var (
	errNoSecret    = refuse(CodeForbidden, "the stream's secret is required, in the "+SecretHeader+" header")
	errWrongSecret = refuse(CodeForbidden, "the secret is not this stream's")
	errNoStream    = refuse(CodeNotFound, "no such stream: it has ended, or never was; open a new one")
	errNoFrame     = refuse(CodeInvalidFrame, "the body holds no frame")
	errFrameSize   = refuse(CodeTooLarge, "a frame is over the size limit")
	errPostsQueued = refuse(CodeRateLimited, "the stream has as many requests waiting as allowed; wait for their answers")
)

// forwardTimeout bounds the wait for the node of a stream to take a POST's
// frames: it answers at once, so longer means it cannot.
const forwardTimeout = 2 * time.Second

// postSSE is POST /sse/{channel}: the body's frames, one per line, go in
// order to the stream's session, on this node or, over NATS, on the one
// the channel names, which handles each as a WebSocket frame and answers
// over the stream. 202 once they are handed; else the whole body is
// refused.
func (s *Server) postSSE(c echo.Context) error {
	r := c.Request()
	if err := s.checkOrigin(r); err != nil {
		return err
	}
	s.allowCORS(c)
	secret := r.Header.Get(SecretHeader)
	if secret == "" {
		return errNoSecret
	}
	channel := c.Param("channel")
	if !broker.ValidChannel(channel) {
		return errNoStream
	}
	body, err := s.readBody(c)
	if err != nil {
		return err
	}
	if _, err := s.splitFrames(body); err != nil {
		return err
	}
	if strings.HasPrefix(channel, s.broker.Node()+".") {
		err = s.handPost(channel, secret, body)
	} else {
		err = s.forwardPost(r.Context(), channel, secret, body)
	}
	if err != nil {
		return err
	}
	return c.JSONBlob(http.StatusAccepted, []byte(`{}`))
}

// preflightSSE is OPTIONS /sse/{channel}: a page of an allowed origin may
// POST with the secret's header.
func (s *Server) preflightSSE(c echo.Context) error {
	if err := s.checkOrigin(c.Request()); err != nil {
		return err
	}
	s.allowCORS(c)
	h := c.Response().Header()
	h.Set(echo.HeaderAccessControlAllowMethods, http.MethodPost)
	h.Set(echo.HeaderAccessControlAllowHeaders, SecretHeader+", "+echo.HeaderContentType)
	h.Set(echo.HeaderAccessControlMaxAge, "600")
	return c.NoContent(http.StatusNoContent)
}

// splitFrames splits a body into its frames, one per line (a last
// newline ends the last frame), each within MaxFrameBytes, and at most the
// burst of the frame rate: more would only be refused.
func (s *Server) splitFrames(body []byte) ([][]byte, error) {
	body = bytes.TrimSuffix(body, []byte{'\n'})
	if len(body) == 0 {
		return nil, errNoFrame
	}
	if bytes.Count(body, []byte{'\n'}) >= int(2*s.cfg.FramesPerSecond) {
		return nil, refuse(CodeRateLimited, "a request holds more frames than the frame rate allows at once")
	}
	frames := bytes.Split(body, []byte{'\n'})
	for _, f := range frames {
		if int64(len(f)) > s.cfg.MaxFrameBytes {
			return nil, errFrameSize
		}
	}
	return frames, nil
}

// handPost hands a body's frames to the stream's session on this node,
// whose reader handles them in order, once the secret is the stream's.
func (s *Server) handPost(channel, secret string, body []byte) error {
	s.mu.Lock()
	ss := s.byChannel[channel]
	s.mu.Unlock()
	if ss == nil || ss.sse == nil || ss.out.isClosing() {
		return errNoStream
	}
	if subtle.ConstantTimeCompare([]byte(secret), []byte(ss.sse.secret)) != 1 {
		return errWrongSecret
	}
	frames, err := s.splitFrames(body)
	if err != nil {
		return err
	}
	return ss.sse.posts.push(ss, posted{frames, int64(len(body))}, s.cfg.MaxBodyBytes)
}

// sseQueued bounds the posted bodies waiting for a stream's session, and
// MaxBodyBytes their bytes (with the one being handled); a POST beyond
// either gets 429 (a client that waits for each POST's answer before the
// next never meets them).
const sseQueued = 4

// posted is the body of one POST, split into its frames.
type posted struct {
	frames [][]byte
	size   int64
}

// postQueue holds a stream's posted bodies until they are handled, in
// order, by a goroutine started for them that exits when none is left,
// as a WebSocket's frames are handled aside: an idle stream keeps none.
// Bodies are handled only between start and stop, while the session's
// reader runs, so that its reader-owned fields have one user at a time.
type postQueue struct {
	mu       sync.Mutex
	bodies   []posted
	bytes    int64 // of bodies, and of the one being handled
	started  bool
	stopped  bool
	handling bool // a goroutine handles bodies
	handlers sync.WaitGroup
}

// push queues a body for s: errNoStream once stopped, errPostsQueued past
// sseQueued bodies or maxBytes.
func (q *postQueue) push(s *session, p posted, maxBytes int64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.stopped:
		return errNoStream
	case len(q.bodies) >= sseQueued || q.bytes+p.size > maxBytes:
		return errPostsQueued
	}
	q.bodies = append(q.bodies, p)
	q.bytes += p.size
	q.handleLocked(s)
	return nil
}

// start lets bodies be handled from now on.
func (q *postQueue) start(s *session) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.started = true
	q.handleLocked(s)
}

// stop takes no more bodies, drops those waiting and waits for the one
// being handled.
func (q *postQueue) stop() {
	q.mu.Lock()
	q.stopped, q.bodies = true, nil
	q.mu.Unlock()
	q.handlers.Wait()
}

// handleLocked starts a goroutine to handle the bodies when there are some
// to handle and none does. q.mu must be held.
func (q *postQueue) handleLocked(s *session) {
	if !q.started || q.stopped || q.handling || len(q.bodies) == 0 {
		return
	}
	q.handling = true
	q.handlers.Add(1)
	go q.handle(s)
}

// handle handles the bodies, one frame at a time, each as a WebSocket
// frame, until there are none.
func (q *postQueue) handle(s *session) {
	defer q.handlers.Done()
	for {
		q.mu.Lock()
		if q.stopped || len(q.bodies) == 0 {
			q.handling = false
			q.mu.Unlock()
			return
		}
		p := q.bodies[0]
		q.bodies = q.bodies[1:]
		q.mu.Unlock()
		for _, f := range p.frames {
			s.handle(f)
		}
		q.mu.Lock()
		q.bytes -= p.size
		q.mu.Unlock()
	}
}

// forwardPost carries a body to the node of the stream, over NATS, and
// returns that node's refusal, if any.
func (s *Server) forwardPost(ctx context.Context, channel, secret string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, forwardTimeout)
	defer cancel()
	msg := make([]byte, 0, len(secret)+1+len(body))
	msg = append(append(append(msg, secret...), '\n'), body...)
	answer, err := s.broker.Forward(ctx, channel, msg)
	switch {
	case errors.Is(err, broker.ErrNoNode):
		return errNoStream
	case err != nil:
		return err
	case len(answer) == 0:
		return nil
	}
	var refusal postRefusal
	if err := json.Unmarshal(answer, &refusal); err != nil || refusal.Code == "" {
		return refuse(CodeInternal, "the stream's node gave an answer that is not one")
	}
	return refuse(refusal.Code, refusal.Message)
}

// postRefusal is how the node of a stream refuses a forwarded POST; it
// takes it with an empty answer.
type postRefusal struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// takeForward is the broker's HandleForwards function: a POST's body,
// after its secret and a newline, forwarded from the node that got it.
func (s *Server) takeForward(channel string, msg []byte) []byte {
	secret, body, _ := bytes.Cut(msg, []byte{'\n'})
	err := s.handPost(channel, string(secret), body)
	if err == nil {
		return nil
	}
	code, message, _ := classify(err)
	answer, _ := json.Marshal(postRefusal{code, message})
	return answer
}
