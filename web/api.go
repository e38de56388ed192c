package web

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/groupcast/groupcast/broker"
)

// publishGroup is POST /api/groups/{group}/messages: the body, one JSON
// value, goes to every member of the group (Channels' group_send).
func (s *Server) publishGroup(c echo.Context) error {
	group := c.Param("group")
	if !broker.ValidGroup(group) {
		return broker.ErrInvalidGroup
	}
	return s.publish(c, "api", func(body []byte) error { return s.broker.GroupSend(group, body) })
}

// publishChannel is POST /api/channels/{channel}/messages: the body goes to
// one connection, wherever it is (Channels' send).
func (s *Server) publishChannel(c echo.Context) error {
	channel := c.Param("channel")
	if !broker.ValidChannel(channel) {
		return broker.ErrInvalidChannel
	}
	return s.publish(c, "api", func(body []byte) error { return s.broker.Send(channel, body) })
}

func (s *Server) publish(c echo.Context, source string, send func([]byte) error) error {
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), c.Request().Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return broker.ErrTooLarge
		}
		return refuse(CodeInvalidJSON, "could not read the body")
	}
	if !json.Valid(body) {
		return refuse(CodeInvalidJSON, "the body must be one JSON value")
	}
	if err := send(body); err != nil {
		return err
	}
	s.metrics.published.WithLabelValues(source).Inc()
	return c.JSON(http.StatusAccepted, map[string]bool{"ok": true})
}

// appendJSONString appends s as a JSON string.
func appendJSONString(buf []byte, s string) []byte {
	b, _ := json.Marshal(s)
	return append(buf, b...)
}
