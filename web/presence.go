package web

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/broker/presence"
)

// PresenceBroker is what presence needs from the channel layer;
// *broker.Broker implements it. With a Broker that does not, presence is
// off for every group.
type PresenceBroker interface {
	PresenceEnabled(group string) bool
	PresenceAdd(group, channel, user string, info json.RawMessage, events presence.Events) error
	PresenceGet(ctx context.Context, group string, q presence.Query) (presence.Result, error)
}

// defaultPresenceLimit is how many members a query lists when it does not
// say.
const defaultPresenceLimit = 100

// presenceFor returns the broker's presence when it is on for group.
func (s *Server) presenceFor(group string) PresenceBroker {
	p, ok := s.broker.(PresenceBroker)
	if !ok || !p.PresenceEnabled(group) {
		return nil
	}
	return p
}

// presenceInfo checks the info a Consumer's Connect gave: one JSON value
// of at most presence.MaxInfo bytes. Anything else is dropped.
func (s *Server) presenceInfo(info json.RawMessage) json.RawMessage {
	if len(info) == 0 {
		return nil
	}
	if len(info) > presence.MaxInfo || !json.Valid(info) {
		s.log.Warn("presence info dropped: want one JSON value of at most 1 KiB", "bytes", len(info))
		return nil
	}
	return info
}

// presenceJoin makes the session present in a group it has just joined,
// when presence is on for the group, receiving the events asked for. A
// failure leaves the membership as it is, logged: the connection is in
// the group, only not listed.
func (s *session) presenceJoin(group string, events presence.Events) {
	p := s.srv.presenceFor(group)
	if p == nil {
		return
	}
	if err := p.PresenceAdd(group, s.channel, s.uid, s.info, events); err != nil {
		s.logger().Warn("presence join failed", "group", group, "error", err)
	}
}

// joinEvents is the presence events a join frame asks for: with
// "presence":true, every join and leave, or with "by":"user" too, only a
// user's first join and last leave.
func joinEvents(f *clientFrame) presence.Events {
	switch {
	case !f.Presence:
		return presence.NoEvents
	case f.By == "user":
		return presence.UserEvents
	}
	return presence.AllEvents
}

// presenceQuery is a validated query from a frame or the server API.
func presenceQuery(limit *int, countOnly bool, by string) (presence.Query, error) {
	q := presence.Query{Limit: defaultPresenceLimit}
	if limit != nil {
		if *limit < 0 || *limit > presence.MaxLimit {
			return q, refuse(CodeInvalidData, "limit must be 0 to "+strconv.Itoa(presence.MaxLimit))
		}
		q.Limit = *limit
	}
	if countOnly {
		q.Limit = 0
	}
	switch by {
	case "":
	case "user":
		q.ByUser = true
	default:
		return q, refuse(CodeInvalidData, `"by" must be "user" or absent`)
	}
	return q, nil
}

// presenceAnswer is the answer to a presence frame.
type presenceAnswer struct {
	Type  string          `json:"type"`
	ID    json.RawMessage `json:"id,omitempty"`
	Group string          `json:"group"`
	presence.Result
}

// presence answers a client's {"type":"presence","group":G} frame, for
// members of the group only.
func (s *session) presence(ctx context.Context, f *clientFrame) error {
	if !broker.ValidGroup(f.Group) {
		return broker.ErrInvalidGroup
	}
	p := s.srv.presenceFor(f.Group)
	if p == nil {
		return refuse(CodeNotFound, "presence is not enabled for this group")
	}
	if !s.has(f.Group) {
		return refuse(CodeForbidden, "only members of a group may ask who is in it")
	}
	q, err := presenceQuery(f.Limit, f.CountOnly, f.By)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.srv.cfg.JoinTimeout)
	defer cancel()
	res, err := p.PresenceGet(ctx, f.Group, q)
	if err != nil {
		return err
	}
	frame, err := json.Marshal(presenceAnswer{Type: "presence", ID: f.ID, Group: f.Group, Result: res})
	if err != nil {
		return err
	}
	s.send(frame)
	return nil
}

// getPresence is GET /api/groups/{group}/presence[?limit=N][&count_only=1][&by=user].
func (s *Server) getPresence(c echo.Context) error {
	group := c.Param("group")
	if !broker.ValidGroup(group) {
		return broker.ErrInvalidGroup
	}
	p := s.presenceFor(group)
	if p == nil {
		return refuse(CodeNotFound, "presence is not enabled for this group")
	}
	var limit *int
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return refuse(CodeInvalidData, "limit must be a whole number")
		}
		limit = &n
	}
	countOnly := false
	if v := c.QueryParam("count_only"); v != "" {
		var err error
		if countOnly, err = strconv.ParseBool(v); err != nil {
			return refuse(CodeInvalidData, "count_only must be 1, 0, true or false")
		}
	}
	q, err := presenceQuery(limit, countOnly, c.QueryParam("by"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), s.cfg.JoinTimeout)
	defer cancel()
	res, err := p.PresenceGet(ctx, group, q)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, res)
}
