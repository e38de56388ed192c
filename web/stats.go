package web

import (
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// liveStats is the body of GET /stats: what the demo page's live panel
// shows. Counters count since the instance started; a reader that polls
// gets rates from the differences between two answers and their times.
type liveStats struct {
	Node        string `json:"node"`
	Region      string `json:"region"`
	Connections int    `json:"connections"` // open WebSockets
	Groups      int    `json:"groups"`      // groups with members here
	Published   uint64 `json:"published"`   // messages handed to NATS
	Received    uint64 `json:"received"`    // messages taken from NATS
	Delivered   uint64 `json:"delivered"`   // frames handed to connections
	NATS        bool   `json:"nats_connected"`
	TimeMillis  int64  `json:"time_ms"` // when the counters were read (Unix ms)
}

// stats answers GET /stats for the live panel. It shows no settings and
// no names of groups or connections: only counts.
func (s *Server) stats(c echo.Context) error {
	st := s.broker.Stats()
	c.Response().Header().Set(echo.HeaderCacheControl, "no-store")
	return c.JSON(http.StatusOK, liveStats{
		Node:        s.broker.Node(),
		Region:      s.cfg.Region,
		Connections: st.Channels,
		Groups:      st.Groups,
		Published:   st.Published,
		Received:    st.Received,
		Delivered:   st.Delivered,
		NATS:        st.NATSConnected,
		TimeMillis:  time.Now().UnixMilli(),
	})
}
