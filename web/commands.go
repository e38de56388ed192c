package web

import (
	"context"
	"encoding/json"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/labstack/echo/v4"

	"github.com/groupcast/groupcast/broker"
)

// CloseDisconnected closes a connection on the server API's request
// (a logout, a ban): the client should not reconnect with the same
// credentials.
const CloseDisconnected websocket.StatusCode = 4003

// command is a server API call carried to the node that must act on it.
type command struct {
	Op      string `json:"op"` // "disconnect", "add" or "discard"
	Channel string `json:"channel,omitempty"`
	User    string `json:"user,omitempty"`
	Group   string `json:"group,omitempty"`
}

// maxCommandsInFlight bounds the commands being carried out at once.
const maxCommandsInFlight = 256

// handleCommand receives a command from the broker. It must not block, so
// the work runs on a goroutine of its own, bounded and awaited by Shutdown.
func (s *Server) handleCommand(raw []byte) {
	var cmd command
	if err := json.Unmarshal(raw, &cmd); err != nil {
		s.log.Warn("ignored a malformed command", "error", err)
		return
	}
	select {
	case s.commandSlots <- struct{}{}:
	default:
		s.log.Warn("too many commands in flight; dropped one", "op", cmd.Op)
		return
	}
	started := s.goroutines.start(func() { // Shutdown waits for the running ones; no new ones
		defer func() { <-s.commandSlots }()
		s.runCommand(cmd)
	})
	if !started {
		<-s.commandSlots
	}
}

func (s *Server) runCommand(cmd command) {
	var targets []*session
	s.mu.Lock()
	switch {
	case cmd.Channel != "":
		if ss := s.byChannel[cmd.Channel]; ss != nil {
			targets = append(targets, ss)
		}
	case cmd.User != "":
		for ss := range s.sessions {
			if ss.uid == cmd.User {
				targets = append(targets, ss)
			}
		}
	}
	s.mu.Unlock()
	for _, ss := range targets {
		var err error
		switch cmd.Op {
		case "disconnect":
			ss.close(CloseDisconnected, "disconnected")
		case "add":
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.JoinTimeout)
			err = ss.serverJoin(ctx, cmd.Group)
			cancel()
		case "discard":
			err = ss.serverLeave(cmd.Group)
		}
		if err != nil {
			ss.logger().Warn("command failed", "op", cmd.Op, "group", cmd.Group, "error", err)
		}
	}
}

// disconnectChannel is POST /api/channels/{channel}/disconnect.
func (s *Server) disconnectChannel(c echo.Context) error {
	channel := c.Param("channel")
	if !broker.ValidChannel(channel) {
		return broker.ErrInvalidChannel
	}
	return s.sendCommand(c, channel, command{Op: "disconnect", Channel: channel})
}

// disconnectUser is POST /api/users/{user}/disconnect: every connection of
// the user, on every instance.
func (s *Server) disconnectUser(c echo.Context) error {
	user := c.Param("user")
	if user == "" || len(user) > 256 || !utf8.ValidString(user) {
		return refuse(CodeInvalidData, "not a user id")
	}
	return s.sendCommand(c, "", command{Op: "disconnect", User: user})
}

// addToGroup is PUT /api/groups/{group}/channels/{channel} (Channels'
// group_add from a backend); removeFromGroup is DELETE on the same path
// (group_discard). The connection is told with a joined or left frame.
func (s *Server) addToGroup(c echo.Context) error      { return s.membership(c, "add") }
func (s *Server) removeFromGroup(c echo.Context) error { return s.membership(c, "discard") }

func (s *Server) membership(c echo.Context, op string) error {
	group, channel := c.Param("group"), c.Param("channel")
	if !broker.ValidGroup(group) {
		return broker.ErrInvalidGroup
	}
	if !broker.ValidChannel(channel) {
		return broker.ErrInvalidChannel
	}
	return s.sendCommand(c, channel, command{Op: op, Channel: channel, Group: group})
}

// sendCommand sends cmd to the node of channel, or to every node when
// channel is empty, and answers 202.
func (s *Server) sendCommand(c echo.Context, channel string, cmd command) error {
	raw, _ := json.Marshal(cmd)
	var err error
	if channel != "" {
		err = s.broker.Command(channel, raw)
	} else {
		err = s.broker.Broadcast(raw)
	}
	if err != nil {
		return err
	}
	return accepted(c)
}
