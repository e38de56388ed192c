package web

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/groupcast/groupcast/broker"
)

// HookConfig forwards connect, join and send decisions to a backend in any
// language as HTTP POSTs (each hook independently: an empty URL skips it).
// The backend's JSON answer allows, refuses or rewrites; see README.md.
type HookConfig struct {
	ConnectURL, JoinURL, SendURL string
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
func (h HookConfig) Enabled() bool { return h.ConnectURL != "" || h.JoinURL != "" || h.SendURL != "" }

// hookConsumer asks the backend after next has allowed.
type hookConsumer struct {
	next    Consumer
	cfg     HookConfig
	client  *http.Client
	slots   chan struct{}
	node    string
	region  string
	proxies int // Config.TrustedProxies, for the client IP
}

func newHookConsumer(next Consumer, cfg HookConfig, node, region string, proxies int) *hookConsumer {
	d := DefaultConfig().Hooks
	cfg.Timeout = cmp.Or(max(cfg.Timeout, 0), d.Timeout)
	cfg.MaxConcurrent = cmp.Or(max(cfg.MaxConcurrent, 0), d.MaxConcurrent)
	return &hookConsumer{
		next:    next,
		cfg:     cfg,
		client:  &http.Client{Timeout: cfg.Timeout},
		slots:   make(chan struct{}, cfg.MaxConcurrent),
		node:    node,
		region:  region,
		proxies: proxies,
	}
}

// hookCall is the body of a hook POST.
type hookCall struct {
	Event    string          `json:"event"` // "connect", "join" or "send"
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
}

func (h *hookConsumer) Connect(ctx context.Context, r *ConnectRequest) error {
	if err := h.next.Connect(ctx, r); err != nil || h.cfg.ConnectURL == "" {
		return err
	}
	a, err := h.call(ctx, h.cfg.ConnectURL, r.Token, true, &hookCall{
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
	_, err := h.call(ctx, h.cfg.JoinURL, "", true, &hookCall{Event: "join", Channel: c.Channel(), User: c.User(), Group: r.Group})
	return err
}

func (h *hookConsumer) Send(ctx context.Context, c *Conn, r *SendRequest) error {
	if err := h.next.Send(ctx, c, r); err != nil || h.cfg.SendURL == "" {
		return err
	}
	// Not retried: the backend may act on a send, not only judge it.
	a, err := h.call(ctx, h.cfg.SendURL, "", false, &hookCall{Event: "send", Channel: c.Channel(), User: c.User(), Group: r.Group, Data: r.Data})
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

func (h *hookConsumer) Frame(ctx context.Context, c *Conn, typ string, frame json.RawMessage) (any, error) {
	return h.next.Frame(ctx, c, typ, frame)
}

func (h *hookConsumer) Disconnect(c *Conn) { h.next.Disconnect(c) }

// errHookDown refuses a decision while the backend cannot be asked.
var errHookDown = refuse(CodeUnavailable, "the application backend is unavailable; retry later")

// call POSTs body to url and decodes the answer. A refusal in the answer
// or a 4xx status refuses; a timeout, a network error or a 5xx is
// "unavailable" (retryable), after one more try when retry is set.
func (h *hookConsumer) call(ctx context.Context, url, token string, retry bool, body *hookCall) (*hookAnswer, error) {
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	default:
		return nil, errHookDown
	}
	body.Node, body.Region = h.node, h.region
	payload, _ := json.Marshal(body)
	for attempt := 0; ; attempt++ {
		a, transient, err := h.post(ctx, url, token, payload)
		if err == nil || !transient || !retry || attempt > 0 {
			return a, err
		}
	}
}

func (h *hookConsumer) post(ctx context.Context, url, token string, payload []byte) (a *hookAnswer, transient bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(payload))
	if err != nil {
		return nil, false, err
	}
	req.Header.Set("Content-Type", "application/json")
	if h.cfg.Secret != "" {
		req.Header.Set("Authorization", "Bearer "+h.cfg.Secret)
	}
	if token != "" {
		req.Header.Set("X-Groupcast-Token", token)
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
		return nil, false, errHookDown
	}
	var ans hookAnswer
	if len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, &ans); err != nil {
			return nil, false, errHookDown
		}
	}
	if ans.Error != nil {
		return nil, false, hookRefusal(ans.Error.Code, ans.Error.Message)
	}
	return &ans, false, nil
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
