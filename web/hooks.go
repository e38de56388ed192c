package web

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/groupcast/groupcast/broker"
)

// HookConfig forwards connect, join and send decisions to a backend in any
// language as HTTP POSTs (each hook independently: an empty URL skips it).
// The backend's JSON answer allows, refuses or rewrites; see README.md.
type HookConfig struct {
	ConnectURL, JoinURL, SendURL string
	// ReceiveURL is asked about client frames of types the protocol does
	// not define (and the Consumer does not answer), as event "receive";
	// its "reply" goes back to the client as a Consumer's Frame reply.
	ReceiveURL string
	// DisconnectURL hears of every closed connection once, as event
	// "disconnect", off the socket's path: see disconnectReports.
	DisconnectURL string
	// DisconnectQueue bounds the disconnect calls waiting to be sent; past
	// it they are dropped, logged and counted. Default 10000.
	DisconnectQueue int
	// Headers name headers of the WebSocket upgrade request (such as
	// Cookie) that are copied, verbatim, onto every hook call of that
	// connection, so that the backend's own session and authentication
	// see the browser's login. Kept per connection, at most
	// maxHookHeaderBytes in all. None in a zero Config; DefaultConfig
	// forwards Cookie.
	Headers []string
	// Secret, when set, is sent as "Authorization: Bearer <Secret>" so the
	// backend can trust the call. The connection's own token, if any, is
	// forwarded as X-Groupcast-Token.
	Secret string
	// Timeout bounds one call. Default 2s.
	Timeout time.Duration
	// MaxConcurrent bounds the calls in flight; past it a decision is
	// refused at once with "unavailable" instead of waiting. Default 64.
	MaxConcurrent int
}

// Enabled reports whether any hook is set.
func (h HookConfig) Enabled() bool {
	return h.ConnectURL != "" || h.JoinURL != "" || h.SendURL != "" || h.ReceiveURL != "" || h.DisconnectURL != ""
}

// maxHookHeaderBytes bounds the forwarded headers kept per connection; an
// upgrade whose forwarded headers are larger is refused with too_large.
const maxHookHeaderBytes = 16 << 10

// reservedHookHeaders are set by the hook client itself (or by HTTP) and
// cannot be forwarded.
var reservedHookHeaders = []string{
	"Authorization", "Connection", "Content-Length", "Content-Type", "Host", "Keep-Alive",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "X-Groupcast-Token",
}

// CheckHookHeaders reports the first name in names that cannot be
// forwarded to hooks: not an HTTP header name, one the hook client sets
// itself, or a WebSocket handshake header.
func CheckHookHeaders(names []string) error {
	for _, n := range names {
		if !isHeaderName(n) {
			return fmt.Errorf("%q is not a header name", n)
		}
		c := textproto.CanonicalMIMEHeaderKey(n)
		if slices.Contains(reservedHookHeaders, c) || strings.HasPrefix(c, "Sec-Websocket-") {
			return fmt.Errorf("%s cannot be forwarded: the hook call sets it", c)
		}
	}
	return nil
}

// isHeaderName reports whether s is an HTTP field name (RFC 9110 token).
func isHeaderName(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return len(s) > 0
}

// forwarded copies the configured headers of an upgrade request, or
// refuses when they are over maxHookHeaderBytes.
func (h *hookConsumer) forwarded(src http.Header) (http.Header, error) {
	var out http.Header
	size := 0
	for _, name := range h.cfg.Headers {
		vs := src.Values(name)
		if len(vs) == 0 {
			continue
		}
		for _, v := range vs {
			size += len(name) + len(v)
		}
		if out == nil {
			out = make(http.Header, len(h.cfg.Headers))
		}
		out[name] = slices.Clone(vs)
	}
	if size > maxHookHeaderBytes {
		return nil, refuse(CodeTooLarge, fmt.Sprintf("the headers forwarded to the application (%s) are over %d bytes", strings.Join(h.cfg.Headers, ", "), maxHookHeaderBytes))
	}
	return out, nil
}

// hookConsumer asks the backend after next has allowed.
type hookConsumer struct {
	next    Consumer
	cfg     HookConfig
	client  *http.Client
	slots   chan struct{}
	node    string
	region  string
	proxies int                // Config.TrustedProxies, for the client IP
	gone    *disconnectReports // nil without DisconnectURL
	log     *slog.Logger
	lastLog atomic.Int64 // unix ns of the last redirect logged
}

// newHookConsumer returns the hooks in front of next. With DisconnectURL
// set it starts the disconnect senders, which drain stops.
func newHookConsumer(next Consumer, cfg HookConfig, node, region string, proxies int, m *Metrics, log *slog.Logger) *hookConsumer {
	d := DefaultConfig().Hooks
	cfg.Timeout = cmp.Or(max(cfg.Timeout, 0), d.Timeout)
	cfg.MaxConcurrent = cmp.Or(max(cfg.MaxConcurrent, 0), d.MaxConcurrent)
	cfg.DisconnectQueue = cmp.Or(max(cfg.DisconnectQueue, 0), d.DisconnectQueue)
	headers := make([]string, 0, len(cfg.Headers))
	for _, n := range cfg.Headers {
		if CheckHookHeaders([]string{n}) == nil {
			headers = append(headers, textproto.CanonicalMIMEHeaderKey(n))
		}
	}
	cfg.Headers = headers
	h := &hookConsumer{
		next: next,
		cfg:  cfg,
		client: &http.Client{Timeout: cfg.Timeout, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a redirect is an answer, refused below
		}},
		log:     log,
		slots:   make(chan struct{}, cfg.MaxConcurrent),
		node:    node,
		region:  region,
		proxies: proxies,
	}
	if cfg.DisconnectURL != "" {
		h.gone = newDisconnectReports(h, cfg.DisconnectQueue, m, log)
	}
	return h
}

// drain sends the disconnect reports still queued, within ctx.
func (h *hookConsumer) drain(ctx context.Context) {
	if h.gone != nil {
		h.gone.drain(ctx)
	}
}

// hookCall is the body of a hook POST.
type hookCall struct {
	Event    string          `json:"event"` // "connect", "join", "send" or "receive"
	Channel  string          `json:"channel,omitempty"`
	User     string          `json:"user,omitempty"`
	Node     string          `json:"node"`
	Region   string          `json:"region,omitempty"`
	RemoteIP string          `json:"remote_ip,omitempty"`
	Group    string          `json:"group,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
}

// hookAnswer is the backend's answer. Every field is optional: {} allows.
type hookAnswer struct {
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	// connect: who the connection is, what it may do, what it joins.
	User   *string         `json:"user"`
	Join   []string        `json:"join"`
	Send   []string        `json:"send"`
	Groups []string        `json:"groups"`
	Info   json.RawMessage `json:"info"`
	// send: the data to publish instead.
	Data json.RawMessage `json:"data"`
	// receive: the reply to the client's frame.
	Reply json.RawMessage `json:"reply"`
}

// hookRequest is what one hook POST carries besides its body.
type hookRequest struct {
	url     string
	token   string      // the connection's token, forwarded on connect
	headers http.Header // the upgrade request's forwarded headers
	retry   bool        // one more try after a transient failure
}

func (h *hookConsumer) Connect(ctx context.Context, r *ConnectRequest) error {
	if err := h.next.Connect(ctx, r); err != nil || h.cfg.ConnectURL == "" {
		return err
	}
	a, err := h.call(ctx, hookRequest{url: h.cfg.ConnectURL, token: r.Token, headers: r.hookHeaders, retry: true}, &hookCall{
		Event: "connect", User: r.User, RemoteIP: clientIP(r.Request, h.proxies),
	})
	if err != nil {
		return err
	}
	if a.User != nil {
		r.User = *a.User
	}
	if a.Join != nil || a.Send != nil {
		for _, p := range append(a.Join, a.Send...) {
			if !broker.ValidPattern(p) {
				return fmt.Errorf("connect hook answered a bad group pattern %q", p)
			}
		}
		r.Permissions = &Permissions{Join: a.Join, Send: a.Send}
	}
	r.Groups = append(r.Groups, a.Groups...)
	if a.Info != nil {
		r.Info = a.Info
	}
	return nil
}

func (h *hookConsumer) Join(ctx context.Context, c *Conn, r *JoinRequest) error {
	if err := h.next.Join(ctx, c, r); err != nil || h.cfg.JoinURL == "" {
		return err
	}
	_, err := h.call(ctx, hookRequest{url: h.cfg.JoinURL, headers: c.s.hookHeaders, retry: true},
		&hookCall{Event: "join", Channel: c.Channel(), User: c.User(), Group: r.Group})
	return err
}

func (h *hookConsumer) Send(ctx context.Context, c *Conn, r *SendRequest) error {
	if err := h.next.Send(ctx, c, r); err != nil || h.cfg.SendURL == "" {
		return err
	}
	// Not retried: the backend may act on a send, not only judge it.
	a, err := h.call(ctx, hookRequest{url: h.cfg.SendURL, headers: c.s.hookHeaders},
		&hookCall{Event: "send", Channel: c.Channel(), User: c.User(), Group: r.Group, Data: r.Data})
	if err != nil {
		return err
	}
	if a.Data != nil {
		if !json.Valid(a.Data) {
			return errors.New("send hook answered data that is not JSON")
		}
		r.Data = a.Data
	}
	return nil
}

// Frame asks the receive hook about the frame types next does not know.
// Not retried: the backend may act on a frame, not only answer it.
func (h *hookConsumer) Frame(ctx context.Context, c *Conn, typ string, frame json.RawMessage) (any, error) {
	reply, err := h.next.Frame(ctx, c, typ, frame)
	if !errors.Is(err, ErrUnknownFrame) || h.cfg.ReceiveURL == "" {
		return reply, err
	}
	if !validFrameType(typ) {
		return nil, refuse(CodeInvalidType, "frame types are 1-64 letters, digits, '.', '_' or '-'")
	}
	a, err := h.call(ctx, hookRequest{url: h.cfg.ReceiveURL, headers: c.s.hookHeaders},
		&hookCall{Event: "receive", Channel: c.Channel(), User: c.User(), Data: frame})
	if err != nil {
		return nil, err
	}
	if len(a.Reply) > maxHookReplyBytes {
		return nil, fmt.Errorf("receive hook answered a %q reply of %d bytes, over %d", typ, len(a.Reply), maxHookReplyBytes)
	}
	return a.Reply, nil // nil: "data":null
}

// maxHookReplyBytes bounds a receive hook's reply, which is queued for
// the client like any frame.
const maxHookReplyBytes = 64 << 10

// validFrameType reports whether a frame type may be passed to the
// backend: 1-64 ASCII letters, digits, '.', '_' or '-'.
func validFrameType(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return len(s) > 0 && len(s) <= 64
}

// Disconnect queues the disconnect hook's call; it never blocks.
func (h *hookConsumer) Disconnect(c *Conn) {
	h.next.Disconnect(c)
	if h.gone != nil {
		h.gone.report(c)
	}
}

// errHookDown refuses a decision while the backend cannot be asked.
var errHookDown = refuse(CodeUnavailable, "the application backend is unavailable; retry later")

// call POSTs body and decodes the answer. A refusal in the answer or a
// 4xx status refuses; a timeout, a network error, a 5xx or an answer that
// is not a JSON object is "unavailable" (retryable), after one more try
// when req.retry is set.
func (h *hookConsumer) call(ctx context.Context, req hookRequest, body *hookCall) (*hookAnswer, error) {
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	default:
		return nil, errHookDown
	}
	body.Node, body.Region = h.node, h.region
	payload, _ := json.Marshal(body)
	for attempt := 0; ; attempt++ {
		a, transient, err := h.post(ctx, req, payload)
		if err == nil || !transient || !req.retry || attempt > 0 {
			return a, err
		}
	}
}

func (h *hookConsumer) post(ctx context.Context, r hookRequest, payload []byte) (a *hookAnswer, transient bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(payload))
	if err != nil {
		return nil, false, err
	}
	for name, vs := range r.headers {
		req.Header[name] = vs
	}
	req.Header.Set("Content-Type", "application/json")
	if h.cfg.Secret != "" {
		req.Header.Set("Authorization", "Bearer "+h.cfg.Secret)
	}
	if r.token != "" {
		req.Header.Set("X-Groupcast-Token", r.token)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, true, errHookDown
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, true, errHookDown
	}
	switch {
	case resp.StatusCode >= 500:
		return nil, true, errHookDown
	case resp.StatusCode >= 400:
		var ans hookAnswer
		if json.Unmarshal(raw, &ans) == nil && ans.Error != nil {
			return nil, false, hookRefusal(ans.Error.Code, ans.Error.Message)
		}
		return nil, false, refuse(CodeForbidden, "refused by the application")
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		// Redirects are not followed: the connection's token and headers
		// would go where the backend says.
		if everySecond(&h.lastLog) {
			h.log.Warn("a hook answered with a redirect, which is not followed: set the hook URL to where it points",
				"url", redactedURL(r.url), "status", resp.StatusCode)
		}
		return nil, false, errHookDown
	}
	var ans hookAnswer
	if t := bytes.TrimSpace(raw); len(t) > 0 {
		// One JSON object; null, a list or an error page is not an answer.
		if t[0] != '{' || json.Unmarshal(t, &ans) != nil {
			return nil, false, errHookDown
		}
	}
	if ans.Error != nil {
		return nil, false, hookRefusal(ans.Error.Code, ans.Error.Message)
	}
	return &ans, false, nil
}

// redactedURL is a URL without its user information or query, for logs.
func redactedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	u.User, u.RawQuery = nil, ""
	return u.String()
}

// hookRefusal keeps a backend's code when it is a plain token, else
// "forbidden", so that what reaches clients stays well-formed.
func hookRefusal(code, message string) error {
	if !isCode(code) {
		code = CodeForbidden
	}
	if message == "" {
		message = "refused by the application"
	}
	return refuse(code, message)
}

// isCode reports whether s looks like an error code: 1–64 of a-z, 0-9, _.
func isCode(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return len(s) > 0 && len(s) <= 64
}
