// Package client is groupcast's Go client, for backends, command-line
// tools and tests. It speaks the WebSocket protocol of /ws: it joins and
// leaves groups, publishes with send frames and pings, and keeps its
// connection up by itself.
//
//	c, err := client.Dial(ctx, "ws://localhost:8080/ws", nil)
//	if err != nil { ... }
//	defer c.Close()
//	err = c.Join(ctx, "room.lobby", func(m client.Message) { fmt.Println(string(m.Data)) })
//	err = c.Send(ctx, "room.lobby", map[string]string{"text": "hi"})
//
// Requests return once the server answers: nil on its ack, an *Error with
// the server's code on its error frame. When the connection drops, the
// client reconnects with jittered exponential backoff (at once after a
// planned close, 1012 service restart or 1001 going away, and after 4001,
// an expired token; after a random wait up to the close reason's
// reconnect_within_ms when it gives one, so that a server's drain does not
// come back as a reconnect wave), rejoins its groups, and then reports Connected
// again. While it is disconnected, requests wait for the next connection
// or for their context. A close with 4003 (the server API disconnected the
// connection or its user, e.g. at logout) is final: the client does not
// reconnect with the same credentials, it ends Closed, and Err and its
// requests return a *TerminalCloseError with the code and reason. With Options.GetToken it fetches a connection
// token for every connection and refreshes it on the open socket before
// it expires; GroupToken gives a join a per-group token.
//
// In recoverable groups deliveries carry an "offset" and an "epoch"; the
// client rejoins with them as "since", so the server replays what it
// missed while disconnected. In other groups such messages are missed.
//
// Every goroutine the client starts is stopped by Close.
package client

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/groupcast/groupcast/protocol"
)

// State is the client's connection state.
type State int32

// The states a client goes through. It starts Connecting, is Connected
// once it has the server's welcome and has rejoined its groups, goes to
// Reconnecting when the connection drops, and ends Closed.
const (
	Connecting State = iota
	Connected
	Reconnecting
	Closed
)

// String returns the state's name, as the JavaScript client spells it.
func (s State) String() string {
	switch s {
	case Connecting:
		return "connecting"
	case Connected:
		return "connected"
	case Reconnecting:
		return "reconnecting"
	case Closed:
		return "closed"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Close codes after which the client comes back at once rather than after
// its backoff: planned closes, and an expired token (a fresh one is
// fetched for the new connection).
const (
	closeServiceRestart = websocket.StatusCode(protocol.CloseServiceRestart)
	closeGoingAway      = websocket.StatusCode(protocol.CloseGoingAway)
	closeTokenExpired   = websocket.StatusCode(protocol.CloseTokenExpired)
)

// closeDisconnected is the close code after which the client does not
// reconnect: the server disconnected it for good.
const closeDisconnected = websocket.StatusCode(protocol.CloseDisconnected)

// Errors of the client itself. Refusals from the server are *Error.
var (
	// ErrClosed is returned by requests on a closed client.
	ErrClosed = errors.New("client: closed")
	// ErrDisconnected means the connection dropped before the server
	// answered; the request may or may not have taken effect.
	ErrDisconnected = errors.New("client: disconnected before an answer")
)

// TerminalCloseError ends a client that the server closed for good, with
// close code 4003 (the server API disconnected the connection or its user,
// e.g. at logout): the client does not reconnect. Err returns it, OnError
// is told it, and requests return it; errors.Is(err, ErrClosed) holds.
type TerminalCloseError struct {
	Code   int    // the close code: 4003
	Reason string // the server's close reason
}

func (e *TerminalCloseError) Error() string {
	return "client: closed by the server for good (" + strconv.Itoa(e.Code) + " " + strconv.Quote(e.Reason) + ")"
}

// Is reports the client closed: errors.Is(err, ErrClosed).
func (e *TerminalCloseError) Is(target error) bool { return target == ErrClosed }

// Error is a refusal from the server: its error frame's code (a stable
// machine code such as "invalid_group" or "forbidden") and message.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return "groupcast: " + e.Code + ": " + e.Message }

// Welcome is what the server said about a connection when it opened.
type Welcome struct {
	// Channel is the connection's channel name: the server API's
	// /api/channels/{channel}/messages reaches this connection alone.
	// It changes with every reconnection.
	Channel string `json:"channel"`
	// Node is the server instance's id.
	Node string `json:"node"`
	// Region is the instance's region, when it has one.
	Region string `json:"region"`
	// User is the user id of the connection's token (its sub claim), when
	// the server requires tokens.
	User string `json:"user"`
}

// Message is one delivery.
type Message struct {
	// Group is the group it was published to; empty for a message sent
	// to this connection alone.
	Group string
	// Channel is this connection's channel, for a message sent to it
	// alone; empty for group messages.
	Channel string
	// Region is the region the message was published in, when known.
	Region string
	// Data is the published JSON value.
	Data json.RawMessage
	// Raw is the whole delivery object, for fields this package does not
	// know. It is only valid during the handler's call.
	Raw []byte
}

// Handler receives deliveries. Handlers run one at a time, in the order
// messages arrive, on the client's reader goroutine: a handler that
// blocks holds up every delivery and answer, so it must not wait for the
// client's own requests (hand such work to another goroutine).
type Handler func(Message)

// Options configure a Client. A nil *Options means the defaults.
type Options struct {
	// HTTPHeader is sent with every WebSocket handshake.
	HTTPHeader http.Header
	// HTTPClient makes the handshakes. Default http.DefaultClient.
	HTTPClient *http.Client
	// Token, when set, is the connection token (a JWT), passed as the
	// URL's "token" query parameter; servers with JWT_SECRET or JWKS_URL
	// require one. GetToken, when set, takes precedence: it is called for
	// a fresh token before every connection attempt and, when the token
	// carries an exp claim, again before it expires (a minute before, or
	// a quarter of its lifetime for shorter ones) to hand the new one to
	// the server with a refresh frame. A socket whose token runs out
	// anyway is closed by the server with 4001, and the client reconnects
	// at once with a fresh token.
	Token    string
	GetToken func(ctx context.Context) (string, error)

	// MinBackoff and MaxBackoff bound the wait between reconnection
	// attempts: it doubles from MinBackoff up to MaxBackoff, and each
	// wait is between half of that and all of it, at random. Defaults
	// 250ms and 10s.
	MinBackoff, MaxBackoff time.Duration
	// PingInterval is how often the connection is pinged; a ping without
	// a pong within WriteTimeout drops it (and the client reconnects).
	// Default 25s.
	PingInterval time.Duration
	// WriteTimeout bounds one write and the wait for a pong. Default 10s.
	WriteTimeout time.Duration
	// ReadLimit bounds one server frame. Default 16 MiB.
	ReadLimit int64

	// OnState, when set, is told every state change, in order, from the
	// client's own goroutine: it must not block on the client.
	OnState func(State)
	// OnWelcome, when set, is told each connection's welcome.
	OnWelcome func(Welcome)
	// OnDirect, when set, receives messages sent to this connection alone
	// (through its channel). It runs like a Handler.
	OnDirect Handler
	// OnError, when set, is told errors no request returns: a failed
	// connection attempt, a group that could not be rejoined, an error
	// frame answering nothing, and the *TerminalCloseError that ends the
	// client.
	OnError func(error)
	// OnGap, when set, is told that messages of a recoverable group may
	// have been missed: a rejoin the server could not resume from the
	// last offset seen (its ack says "recovered":false: the offset left
	// the window, or the history was reset), or a gap frame. The
	// application reloads that group's state (say from the history API).
	// It is called from the client's own goroutines, maybe two at once,
	// and must not block on the client.
	OnGap func(group string)
}

func (o *Options) withDefaults() Options {
	var d Options
	if o != nil {
		d = *o
	}
	if d.HTTPClient == nil {
		d.HTTPClient = http.DefaultClient
	}
	d.MinBackoff = cmp.Or(max(d.MinBackoff, 0), 250*time.Millisecond)
	d.MaxBackoff = max(cmp.Or(max(d.MaxBackoff, 0), 10*time.Second), d.MinBackoff)
	d.PingInterval = cmp.Or(max(d.PingInterval, 0), 25*time.Second)
	d.WriteTimeout = cmp.Or(max(d.WriteTimeout, 0), 10*time.Second)
	d.ReadLimit = cmp.Or(max(d.ReadLimit, 0), 16<<20)
	return d
}

// Client is one logical connection to a groupcast server, carried by one
// WebSocket at a time. Its methods are safe for concurrent use.
type Client struct {
	url    string
	opts   Options
	cancel context.CancelFunc // ends run
	wg     sync.WaitGroup     // every goroutine the client started
	done   chan struct{}      // closed when run has ended

	mu      sync.Mutex
	state   State
	link    *link         // the connection, while Connected
	ready   chan struct{} // closed while Connected; replaced when it drops
	closed  bool
	err     error // why the client ended: ErrClosed or a *TerminalCloseError
	groups  map[string]*membership
	welcome Welcome
	nextID  int64
}

// membership is one group the client is in: its handler and, for the
// recovery the server may offer, the position of the last message seen.
type membership struct {
	handler Handler
	token   func(ctx context.Context) (string, error) // per-group token; nil: none
	// offset and epoch are copied from deliveries that carry them, and
	// sent back as "since" and "epoch" when the group is rejoined, so that
	// a server that keeps history can resume the group. Servers without
	// history send neither and ignore both.
	offset uint64
	epoch  string
}

// link is one WebSocket connection.
type link struct {
	conn    *websocket.Conn
	token   string // the connection token it was opened with
	welcome Welcome
	early   [][]byte      // objects that came in the welcome's frame, after it
	done    chan struct{} // closed when the reader ends
	status  websocket.StatusCode
	reason  string        // the server's close reason
	within  time.Duration // the close reason's reconnect_within_ms

	mu      sync.Mutex
	pending map[string]chan protocol.Frame // by id
	ended   bool
}

// clientFrame is any object the client sends.
type clientFrame struct {
	Type  string          `json:"type"`
	Group string          `json:"group,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
	Token string          `json:"token,omitempty"`
	Since *since          `json:"since,omitempty"`
	Echo  *bool           `json:"echo,omitempty"`
	ID    int64           `json:"id"`
}

// since is where a rejoin resumes: after the last offset seen, in its epoch.
type since struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch,omitempty"`
}

// Dial connects to a groupcast WebSocket URL (ws:// or wss://, usually
// ending in /ws) and returns once the server has welcomed the client. ctx
// bounds this first connection only; a failed first attempt is returned,
// not retried. From then on the client reconnects by itself until Close.
func Dial(ctx context.Context, rawURL string, opts *Options) (*Client, error) {
	if _, err := url.Parse(rawURL); err != nil {
		return nil, fmt.Errorf("client: url: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	c := &Client{
		url:    rawURL,
		opts:   opts.withDefaults(),
		cancel: cancel,
		done:   make(chan struct{}),
		ready:  make(chan struct{}),
		groups: make(map[string]*membership),
	}
	l, err := c.connect(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	c.mu.Lock()
	ready := c.ready
	c.mu.Unlock()
	c.wg.Add(1)
	go c.run(runCtx, l)
	select {
	case <-ready:
		return c, nil
	case <-ctx.Done():
		c.Close()
		return nil, ctx.Err()
	}
}

// Done is closed when the client has ended: after Close, or when the
// server closed it for good (see Err).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns nil while the client runs; once it has ended, why: ErrClosed
// after Close, a *TerminalCloseError when the server closed it for good.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// State returns the client's state now.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Welcome returns the welcome of the current (or last) connection.
func (c *Client) Welcome() Welcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.welcome
}

// Groups returns the groups the client is in (and rejoins after a
// reconnection), in no particular order.
func (c *Client) Groups() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	gs := make([]string, 0, len(c.groups))
	for g := range c.groups {
		gs = append(gs, g)
	}
	return gs
}

// A JoinOption modifies a Join.
type JoinOption func(*membership)

// GroupToken gives a join a per-group token: a JWT from the backend that
// admits this connection's user to one group its connection token does
// not cover (a private room). get is called for each join and rejoin.
func GroupToken(get func(ctx context.Context) (string, error)) JoinOption {
	return func(m *membership) { m.token = get }
}

// Join joins group and returns once the server acknowledges it: from then
// on every message published to the group reaches handler (nil: ignore
// them), also across reconnections, until Leave. Joining a group again
// replaces its handler. If the connection drops before the answer, Join
// tries again on the next one, until ctx ends.
func (c *Client) Join(ctx context.Context, group string, handler Handler, opts ...JoinOption) error {
	if handler == nil {
		handler = func(Message) {}
	}
	var prev, m *membership
	for {
		l, err := c.waitLink(ctx)
		if err == nil && m == nil {
			// Registered once connected (so that a rejoin in progress does
			// not send it too) and before the join is sent: membership may
			// go live, and a message arrive, before the ack is read.
			c.mu.Lock()
			prev = c.groups[group]
			m = &membership{handler: handler}
			for _, o := range opts {
				o(m)
			}
			if prev != nil {
				m.offset, m.epoch = prev.offset, prev.epoch
			}
			c.groups[group] = m
			c.mu.Unlock()
		}
		f := clientFrame{Type: "join", Group: group}
		if err == nil && m.token != nil {
			f.Token, err = m.token(ctx)
		}
		if err == nil {
			err = l.call(ctx, c, f)
		}
		if errors.Is(err, ErrDisconnected) {
			continue // the next connection rejoins it, or this loop does
		}
		if err != nil && m != nil {
			c.mu.Lock()
			if c.groups[group] == m {
				if prev != nil {
					c.groups[group] = prev
				} else {
					delete(c.groups, group)
				}
			}
			c.mu.Unlock()
		}
		return err
	}
}

// Leave leaves group: no delivery for it reaches its handler after Leave
// is called. It returns once the server acknowledges it, or at once while
// disconnected (the group is simply not rejoined).
func (c *Client) Leave(ctx context.Context, group string) error {
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return err
	}
	delete(c.groups, group)
	l := c.link
	c.mu.Unlock()
	if l == nil {
		return nil
	}
	err := l.call(ctx, c, clientFrame{Type: "leave", Group: group})
	if errors.Is(err, ErrDisconnected) {
		return nil // the next connection does not rejoin it
	}
	return err
}

// A SendOption modifies a Send.
type SendOption func(*clientFrame)

// ExceptSelf delivers a Send to every member of the group but this
// connection, on every instance (Channels' broadcast to the others).
func ExceptSelf() SendOption {
	return func(f *clientFrame) {
		echo := false
		f.Echo = &echo
	}
}

// Send publishes data to group through the server (when the server lets
// clients publish) and returns once it is handed on. data is encoded with
// encoding/json; a json.RawMessage or []byte of JSON is sent as it is.
// Send is not retried: after ErrDisconnected the message may or may not
// have been published.
func (c *Client) Send(ctx context.Context, group string, data any, opts ...SendOption) error {
	var raw json.RawMessage
	switch d := data.(type) {
	case json.RawMessage:
		raw = d
	case []byte:
		raw = d
	default:
		b, err := json.Marshal(data)
		if err != nil {
			return fmt.Errorf("client: send: %w", err)
		}
		raw = b
	}
	if !json.Valid(raw) {
		return errors.New("client: send: data is not valid JSON")
	}
	l, err := c.waitLink(ctx)
	if err != nil {
		return err
	}
	f := clientFrame{Type: "send", Group: group, Data: raw}
	for _, o := range opts {
		o(&f)
	}
	return l.call(ctx, c, f)
}

// Ping sends a protocol ping and waits for the pong: a round trip through
// the server's session, not just its socket.
func (c *Client) Ping(ctx context.Context) error {
	l, err := c.waitLink(ctx)
	if err != nil {
		return err
	}
	return l.call(ctx, c, clientFrame{Type: "ping"})
}

// closeHandshakeTimeout bounds Close's wait for the server's close frame.
const closeHandshakeTimeout = time.Second

// Close closes the connection with 1000 (normal closure), stops
// reconnecting, and waits for every goroutine of the client to end.
// Requests in flight fail (ErrDisconnected, or ErrClosed for those still
// waiting to be sent); later ones return ErrClosed (or the
// *TerminalCloseError that ended the client before). It is safe to call
// more than once.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.cancel() // after a terminal close, run has ended by itself
		c.wg.Wait()
		return nil
	}
	c.closed, c.err = true, ErrClosed
	l := c.link
	c.mu.Unlock()
	if l != nil {
		// The closing handshake needs the reader, which is still running.
		// A server that does not answer within a second is cut off.
		done := make(chan struct{})
		go func() {
			defer close(done)
			l.conn.Close(websocket.StatusNormalClosure, "")
		}()
		t := time.NewTimer(closeHandshakeTimeout)
		select {
		case <-done:
		case <-t.C:
			c.cancel() // the reader's context: ends the connection
			<-done
		}
		t.Stop()
	}
	c.cancel()
	c.wg.Wait()
	return nil
}

// waitLink returns the connection once the client is connected.
func (c *Client) waitLink(ctx context.Context) (*link, error) {
	for {
		c.mu.Lock()
		closed, l, ready, err := c.closed, c.link, c.ready, c.err
		c.mu.Unlock()
		switch {
		case closed:
			return nil, err
		case l != nil:
			return l, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (c *Client) newID() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID++
	return c.nextID
}

// run owns the connection: it serves each link until it drops, then waits
// and reconnects, until the client is closed or the server closes it for
// good.
func (c *Client) run(ctx context.Context, l *link) {
	defer c.wg.Done()
	defer close(c.done)
	attempt := 0
	for {
		var wait time.Duration
		if l != nil {
			connected := c.serve(ctx, l)
			if connected {
				attempt = 0
			}
			switch l.status {
			case closeDisconnected:
				c.terminate(&TerminalCloseError{Code: int(l.status), Reason: l.reason})
			case closeServiceRestart, closeGoingAway, closeTokenExpired:
				attempt = -1 // come back at once, or within the span asked for
				if l.within > 0 {
					wait = rand.N(l.within)
				}
			}
			l = nil
		}
		if ctx.Err() != nil || c.isClosed() {
			break
		}
		c.notifyState(Reconnecting)
		if attempt >= 0 || wait > 0 {
			if attempt >= 0 {
				wait = c.backoff(attempt)
			}
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			if ctx.Err() != nil {
				break
			}
		}
		attempt++
		var err error
		if l, err = c.connect(ctx); err != nil {
			if ctx.Err() == nil {
				c.report(fmt.Errorf("client: reconnect: %w", err))
			}
			l = nil
		}
	}
	c.notifyState(Closed)
}

// terminate ends the client for good, as the server asked: it is closed,
// with err as the reason, and OnError is told.
func (c *Client) terminate(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed, c.err = true, err
	c.mu.Unlock()
	c.report(err)
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// reconnectWithin reads " reconnect_within_ms=<n>" from a close reason:
// the span over which the server asks clients to spread their
// reconnects; 0 when absent. At most a minute, whatever it says.
func reconnectWithin(reason string) time.Duration {
	return min(protocol.ReconnectWithin(reason), time.Minute)
}

// backoff returns the wait before reconnection attempt n (from 0).
func (c *Client) backoff(n int) time.Duration {
	d := c.opts.MinBackoff
	for i := 0; i < n && d < c.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, c.opts.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

// connect dials once and reads the welcome.
func (c *Client) connect(ctx context.Context) (*link, error) {
	u := c.url
	token := c.opts.Token
	if c.opts.GetToken != nil {
		t, err := c.opts.GetToken(ctx)
		if err != nil {
			return nil, fmt.Errorf("client: token: %w", err)
		}
		token = t
	}
	if token != "" {
		parsed, err := url.Parse(u)
		if err != nil {
			return nil, fmt.Errorf("client: url: %w", err)
		}
		q := parsed.Query()
		q.Set("token", token)
		parsed.RawQuery = q.Encode()
		u = parsed.String()
	}
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		HTTPClient: c.opts.HTTPClient,
		HTTPHeader: c.opts.HTTPHeader,
	})
	if err != nil {
		return nil, err
	}
	conn.SetReadLimit(c.opts.ReadLimit)
	_, p, err := conn.Read(ctx)
	if err != nil {
		conn.CloseNow()
		return nil, fmt.Errorf("client: reading the welcome: %w", err)
	}
	objs := bytes.Split(p, []byte{'\n'})
	w, err := protocol.Decode(objs[0])
	if err != nil || w.Type != protocol.TypeWelcome {
		conn.Close(websocket.StatusProtocolError, "expected a welcome")
		return nil, fmt.Errorf("client: the server's first frame is not a welcome: %.100q", objs[0])
	}
	return &link{
		conn:    conn,
		token:   token,
		welcome: Welcome{Channel: w.Channel, Node: w.Node, Region: w.Region, User: w.User},
		early:   objs[1:],
		done:    make(chan struct{}),
		pending: make(map[string]chan protocol.Frame),
	}, nil
}

// serve runs one link: it starts its reader and maintainer, rejoins the
// client's groups, reports Connected, and returns when the link drops,
// telling whether it got as far as Connected.
func (c *Client) serve(ctx context.Context, l *link) (connected bool) {
	c.wg.Add(2)
	go c.read(ctx, l)
	go c.maintain(ctx, l)
	defer func() {
		<-l.done
		c.mu.Lock()
		if c.link == l {
			c.link = nil
			c.ready = make(chan struct{})
		}
		c.mu.Unlock()
	}()

	c.mu.Lock()
	c.welcome = l.welcome
	c.mu.Unlock()
	if c.opts.OnWelcome != nil {
		c.opts.OnWelcome(l.welcome)
	}
	if !c.rejoin(ctx, l) {
		l.conn.CloseNow()
		return false
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		l.conn.CloseNow()
		return false
	}
	c.link = l
	close(c.ready)
	c.mu.Unlock()
	c.notifyState(Connected)
	return true
}

// rejoin joins every group of the client on a new link, all at once,
// resuming from the last offset seen where there is one. A group the
// server refuses for good is dropped and reported; a temporary failure
// drops the link so that the client tries again.
func (c *Client) rejoin(ctx context.Context, l *link) bool {
	c.mu.Lock()
	frames := make([]clientFrame, 0, len(c.groups))
	joined := make([]*membership, 0, len(c.groups))
	for g, m := range c.groups {
		f := clientFrame{Type: "join", Group: g}
		if m.offset > 0 {
			f.Since = &since{Offset: m.offset, Epoch: m.epoch}
		}
		frames = append(frames, f)
		joined = append(joined, m)
	}
	c.mu.Unlock()
	if len(frames) == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.WriteTimeout)
	defer cancel()
	for i, m := range joined {
		if m.token == nil {
			continue
		}
		t, err := m.token(ctx)
		if err != nil {
			c.report(fmt.Errorf("client: token to rejoin %s: %w", frames[i].Group, err))
			return false
		}
		frames[i].Token = t
	}
	answers := make([]request, len(frames))
	for i, f := range frames {
		r, err := l.start(c, f)
		if err != nil {
			return false
		}
		answers[i] = r
	}
	ok := true
	for i, r := range answers {
		ack, err := l.answer(ctx, r)
		var refusal *Error
		switch {
		case err == nil:
			if frames[i].Since != nil && ack.Recovered != nil && !*ack.Recovered {
				c.gap(frames[i].Group)
			}
		case errors.As(err, &refusal) && refusal.Code != "unavailable":
			c.mu.Lock()
			if c.groups[frames[i].Group] == joined[i] {
				delete(c.groups, frames[i].Group)
			}
			c.mu.Unlock()
			c.report(fmt.Errorf("client: rejoining %s: %w", frames[i].Group, err))
		default:
			if ok && !errors.Is(err, ErrDisconnected) {
				c.report(fmt.Errorf("client: rejoining %s: %w", frames[i].Group, err))
			}
			ok = false
		}
	}
	return ok
}

// read reads a link's frames until it ends, dispatching deliveries and
// answers, then fails the requests still waiting.
func (c *Client) read(ctx context.Context, l *link) {
	defer c.wg.Done()
	defer func() {
		l.mu.Lock()
		l.ended = true
		l.mu.Unlock()
		close(l.done)
	}()
	for _, obj := range l.early {
		c.dispatch(l, obj)
	}
	l.early = nil
	for {
		_, p, err := l.conn.Read(ctx)
		if err != nil {
			l.status = websocket.CloseStatus(err)
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				l.reason, l.within = ce.Reason, reconnectWithin(ce.Reason)
			}
			l.conn.CloseNow()
			return
		}
		for obj := range protocol.Objects(p) {
			c.dispatch(l, obj)
		}
	}
}

func (c *Client) dispatch(l *link, obj []byte) {
	if len(bytes.TrimSpace(obj)) == 0 {
		return
	}
	f, err := protocol.Decode(obj)
	if err != nil {
		c.report(fmt.Errorf("client: %w", err))
		return
	}
	switch f.Type {
	case protocol.TypeMessage:
		msg := Message{Group: f.Group, Channel: f.Channel, Region: f.Region, Data: f.Data, Raw: obj}
		var h Handler
		c.mu.Lock()
		if f.Group != "" {
			if m := c.groups[f.Group]; m != nil {
				h = m.handler
				if f.Offset > 0 {
					m.offset, m.epoch = f.Offset, f.Epoch
				}
			}
		} else {
			h = c.opts.OnDirect
		}
		c.mu.Unlock()
		if h != nil {
			h(msg)
		}
	case protocol.TypeGap:
		c.mu.Lock()
		joined := c.groups[f.Group] != nil
		c.mu.Unlock()
		if joined {
			c.gap(f.Group)
		}
	case protocol.TypeAck, protocol.TypePong, protocol.TypeError:
		l.mu.Lock()
		ch := l.pending[string(f.ID)]
		delete(l.pending, string(f.ID))
		l.mu.Unlock()
		switch {
		case ch != nil:
			ch <- f
		case f.Type == protocol.TypeError:
			c.report(&Error{Code: f.Code, Message: f.Message})
		}
	}
}

// maintain keeps a link up: it pings it every PingInterval, dropping it
// when a pong does not come back in time, and refreshes its token before
// it expires (when GetToken is set and the token says when).
func (c *Client) maintain(ctx context.Context, l *link) {
	defer c.wg.Done()
	ping := time.NewTicker(c.opts.PingInterval)
	defer ping.Stop()
	var refresh <-chan time.Time
	token := l.token
	arm := func() {
		if at, ok := refreshTime(token, time.Now()); ok && c.opts.GetToken != nil {
			t := time.NewTimer(time.Until(at))
			refresh = t.C
		} else {
			refresh = nil
		}
	}
	arm()
	for {
		select {
		case <-l.done:
			return
		case <-ping.C:
			ctx, cancel := context.WithTimeout(context.Background(), c.opts.WriteTimeout)
			err := l.conn.Ping(ctx)
			cancel()
			if err != nil {
				l.conn.CloseNow()
				return
			}
		case <-refresh:
			refresh = nil
			// Bounded by WriteTimeout and by Close (ctx is the client's).
			ctx, cancel := context.WithTimeout(ctx, c.opts.WriteTimeout)
			t, err := c.opts.GetToken(ctx)
			if err == nil {
				err = l.call(ctx, c, clientFrame{Type: "refresh", Token: t})
			}
			cancel()
			if err != nil {
				// The server closes the socket with 4001 when the token
				// runs out; the client then reconnects with a fresh one.
				c.report(fmt.Errorf("client: refreshing the token: %w", err))
				continue
			}
			token = t
			arm()
		}
	}
}

// refreshTime returns when to refresh a JWT that expires: a minute before
// its exp, or a quarter of its remaining life before for a shorter one.
// ok is false for a token without exp (or no JWT at all).
func refreshTime(token string, now time.Time) (at time.Time, ok bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *float64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	exp := time.Unix(0, int64(*claims.Exp*1e9))
	lead := min(time.Minute, exp.Sub(now)/4)
	return exp.Add(-lead), true
}

// call sends a request on the link and waits for its answer.
func (l *link) call(ctx context.Context, c *Client, f clientFrame) error {
	r, err := l.start(c, f)
	if err != nil {
		return err
	}
	return l.wait(ctx, r)
}

// request is a request in flight: its id and where its answer will come.
type request struct {
	key    string
	answer chan protocol.Frame
}

// start sends a request.
func (l *link) start(c *Client, f clientFrame) (request, error) {
	f.ID = c.newID()
	r := request{key: strconv.FormatInt(f.ID, 10), answer: make(chan protocol.Frame, 1)}
	b, err := json.Marshal(f)
	if err != nil {
		return r, err
	}
	l.mu.Lock()
	if l.ended {
		l.mu.Unlock()
		return r, ErrDisconnected
	}
	l.pending[r.key] = r.answer
	l.mu.Unlock()
	// Not the caller's context: one that ends mid-write would close the
	// connection.
	wctx, cancel := context.WithTimeout(context.Background(), c.opts.WriteTimeout)
	err = l.conn.Write(wctx, websocket.MessageText, b)
	cancel()
	if err != nil {
		l.forget(r)
		l.conn.CloseNow()
		return r, ErrDisconnected
	}
	return r, nil
}

// wait waits for an answer: nil for ack or pong, *Error for an error.
func (l *link) wait(ctx context.Context, r request) error {
	_, err := l.answer(ctx, r)
	return err
}

// answer is wait that also returns the ack or pong.
func (l *link) answer(ctx context.Context, r request) (protocol.Frame, error) {
	var f protocol.Frame
	select {
	case f = <-r.answer:
	case <-l.done:
		select {
		case f = <-r.answer: // answered just before the end
		default:
			return f, ErrDisconnected
		}
	case <-ctx.Done():
		l.forget(r)
		return f, ctx.Err()
	}
	if f.Type == protocol.TypeError {
		return f, &Error{Code: f.Code, Message: f.Message}
	}
	return f, nil
}

func (l *link) forget(r request) {
	l.mu.Lock()
	delete(l.pending, r.key)
	l.mu.Unlock()
}

func (c *Client) notifyState(s State) {
	c.mu.Lock()
	changed := c.state != s
	c.state = s
	c.mu.Unlock()
	if changed && c.opts.OnState != nil {
		c.opts.OnState(s)
	}
}

// gap tells OnGap that group may have missed messages.
func (c *Client) gap(group string) {
	if c.opts.OnGap != nil {
		c.opts.OnGap(group)
	}
}

func (c *Client) report(err error) {
	if c.opts.OnError != nil {
		c.opts.OnError(err)
	}
}
