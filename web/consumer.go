package web

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"sync"

	"github.com/coder/websocket"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/broker/presence"
	"github.com/groupcast/groupcast/protocol"
)

// A Consumer is an application's own code in the life of a connection, in
// the manner of a Django Channels consumer: it accepts or refuses
// connections, joins and sends, answers frame types of its own, and hears
// of disconnects. Return Refuse(code, message) to refuse; the client gets
// that code. Methods run on the connection's reader, one at a time per
// connection, so a slow method delays only its own connection.
//
// DefaultConsumer is the built-in behaviour; embed it and override what
// you need, calling its methods to keep the built-in checks.
type Consumer interface {
	// Connect runs before the WebSocket upgrade; an error refuses it with
	// the matching HTTP status. It may set the user, the permissions and
	// groups to join once connected.
	Connect(ctx context.Context, r *ConnectRequest) error
	// Join decides a join. The built-in one checks the permissions.
	Join(ctx context.Context, c *Conn, r *JoinRequest) error
	// Send decides a client's send and may rewrite r.Data.
	Send(ctx context.Context, c *Conn, r *SendRequest) error
	// Frame answers a frame type the protocol does not define. The reply,
	// marshalled to JSON, goes back as {"type":"reply","id":..,"data":..}.
	// Return ErrUnknownFrame for types it does not know either.
	Frame(ctx context.Context, c *Conn, typ string, frame json.RawMessage) (reply any, err error)
	// Disconnect runs once the connection has ended.
	Disconnect(c *Conn)
}

// ConnectRequest is a connection about to be accepted.
type ConnectRequest struct {
	// Request is the upgrade request. Read it; do not keep it.
	Request *http.Request
	// Token is the connection token, verified, or "" without tokens.
	Token string
	// User is the token's subject; Connect may set it.
	User string
	// Permissions are the token's; nil (no tokens configured) allows
	// every group. Connect may replace them.
	Permissions *Permissions
	// Groups are joined once the connection is open, as if the client
	// had joined them (without asking Join).
	Groups []string
	// Info is what presence shows of the connection in groups with
	// presence (one JSON value, at most 1 KiB; say a name and an avatar).
	// The token's "info" claim or the connect hook's answer sets it, and
	// Connect may too; clients cannot.
	Info json.RawMessage

	hookHeaders http.Header // the upgrade's headers forwarded to hooks
}

// Permissions are group patterns (see broker.ValidPattern).
type Permissions struct {
	Join, Send []string
}

// JoinRequest is a client's join.
type JoinRequest struct {
	Group string
	Token string // a per-group token, when the client gave one
}

// SendRequest is a client's send; Send may replace Data (one JSON value).
type SendRequest struct {
	Group string
	Data  json.RawMessage
}

// Refuse returns an error that refuses a request with a protocol error
// code (such as "forbidden") and a message for the client.
func Refuse(code, message string) error { return refuse(code, message) }

// ErrUnknownFrame is what Frame returns for types it does not handle.
var ErrUnknownFrame = refuse(CodeUnknownType, "unknown frame type")

// DefaultConsumer is the built-in behaviour: connections as the token
// says, joins and sends within the token's permissions (or a per-group
// token's), client sends only when Config.ClientSend allows, no frame
// types of its own.
type DefaultConsumer struct{}

// Connect accepts every connection the token check let through.
func (DefaultConsumer) Connect(context.Context, *ConnectRequest) error { return nil }

// Join allows groups within the permissions, or with a per-group token.
func (DefaultConsumer) Join(_ context.Context, c *Conn, r *JoinRequest) error {
	s := c.s
	if s.perms == nil || broker.MatchAny(s.perms.Join, r.Group) {
		return nil
	}
	if r.Token != "" && s.srv.auth != nil {
		return s.srv.auth.groupToken(r.Token, s.user(), r.Group)
	}
	return refuse(CodeForbidden, "not allowed to join this group")
}

// Send allows sends when clients may send, within the permissions.
func (DefaultConsumer) Send(_ context.Context, c *Conn, r *SendRequest) error {
	s := c.s
	if !s.srv.cfg.ClientSend {
		return refuse(CodeForbidden, "clients may not send on this server")
	}
	if s.perms != nil && !broker.MatchAny(s.perms.Send, r.Group) {
		return refuse(CodeForbidden, "not allowed to send to this group")
	}
	return nil
}

// Frame knows no frame types.
func (DefaultConsumer) Frame(context.Context, *Conn, string, json.RawMessage) (any, error) {
	return nil, ErrUnknownFrame
}

// Disconnect does nothing.
func (DefaultConsumer) Disconnect(*Conn) {}

// Conn is one WebSocket connection as a Consumer sees it. Its methods are
// safe for concurrent use, also after the connection has ended.
type Conn struct{ s *session }

// Channel is the connection's channel name.
func (c *Conn) Channel() string { return c.s.channel }

// User is the connection's user id ("" when anonymous).
func (c *Conn) User() string { return c.s.user() }

// Groups lists the groups the connection is in.
func (c *Conn) Groups() []string {
	c.s.gmu.Lock()
	defer c.s.gmu.Unlock()
	out := make([]string, 0, len(c.s.groups))
	for g := range c.s.groups {
		out = append(out, g)
	}
	slices.Sort(out)
	return out
}

// Send delivers data (marshalled to JSON) to this connection alone, as a
// direct message: {"type":"message","channel":..,"data":..}.
func (c *Conn) Send(data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	frame, err := protocol.AppendMessage(nil, protocol.Message{Channel: c.s.channel}, b)
	if err != nil {
		return err
	}
	c.s.Receive(broker.Delivery{Frame: frame, Kind: broker.KindMessage})
	return nil
}

// Join adds the connection to a group on the server's initiative; the
// client is told with {"type":"joined","group":..}.
func (c *Conn) Join(ctx context.Context, group string) error { return c.s.serverJoin(ctx, group) }

// Leave removes the connection from a group; the client is told with
// {"type":"left","group":..}.
func (c *Conn) Leave(group string) error { return c.s.serverLeave(group) }

// Close closes the connection with a close code and reason.
func (c *Conn) Close(code websocket.StatusCode, reason string) { c.s.close(code, reason) }

// groupSet is a session's groups, shared by its reader and server-side
// joins and leaves.
type groupSet struct {
	gmu    sync.Mutex
	groups map[string]struct{}
}

func (g *groupSet) has(group string) bool {
	g.gmu.Lock()
	defer g.gmu.Unlock()
	_, ok := g.groups[group]
	return ok
}

func (g *groupSet) count() int {
	g.gmu.Lock()
	defer g.gmu.Unlock()
	return len(g.groups)
}

func (g *groupSet) add(group string) {
	g.gmu.Lock()
	defer g.gmu.Unlock()
	if g.groups == nil {
		g.groups = make(map[string]struct{})
	}
	g.groups[group] = struct{}{}
}

func (g *groupSet) remove(group string) bool {
	g.gmu.Lock()
	defer g.gmu.Unlock()
	_, ok := g.groups[group]
	delete(g.groups, group)
	return ok
}

// join adds the session to a group in the broker and the set.
// join adds the session to a group in the broker and the set, resuming a
// recoverable group after since when it is set.
func (s *session) join(ctx context.Context, group string, since *broker.Since) (broker.Recovery, error) {
	if s.has(group) {
		return broker.Recovery{}, nil
	}
	if !broker.ValidGroup(group) {
		return broker.Recovery{}, broker.ErrInvalidGroup
	}
	if s.count() >= s.srv.cfg.MaxGroups {
		return broker.Recovery{}, refuse(CodeTooManyGroups, "this connection is in as many groups as allowed")
	}
	ctx, cancel := context.WithTimeout(ctx, s.srv.cfg.JoinTimeout)
	defer cancel()
	rec, err := s.srv.broker.GroupJoin(ctx, group, s.channel, since)
	if err != nil {
		return rec, err
	}
	s.presenceJoin(group, presence.NoEvents)
	s.add(group)
	s.srv.metrics.joins.Inc()
	return rec, nil
}

func (s *session) serverJoin(ctx context.Context, group string) error {
	if s.has(group) {
		return nil
	}
	if _, err := s.join(ctx, group, nil); err != nil {
		return err
	}
	s.send(protocol.AppendGroupEvent(nil, protocol.TypeJoined, group))
	return nil
}

func (s *session) serverLeave(group string) error {
	if err := s.srv.broker.GroupDiscard(group, s.channel); err != nil {
		return err
	}
	if s.remove(group) {
		s.send(protocol.AppendGroupEvent(nil, protocol.TypeLeft, group))
	}
	return nil
}
