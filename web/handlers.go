package web

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/groupcast/groupcast/broker"
)

// dispatch runs a client frame's handler. Each handler answers the frame
// itself (ack, pong, reply) or returns the refusal the caller turns into
// an error frame.
func (s *session) dispatch(f *clientFrame) error {
	ctx := context.Background()
	switch f.Type {
	case "join":
		return s.handleJoin(ctx, f)
	case "leave":
		return s.handleLeave(f)
	case "send":
		return s.handleSend(ctx, f)
	case "presence":
		return s.presence(ctx, f)
	case "ping":
		s.send(appendReply(nil, "pong", f.ID))
		return nil
	case "refresh":
		return s.handleRefresh(f)
	case "":
		return refuse(CodeUnknownType, `"type" is required`)
	default:
		return s.handleCustom(ctx, f)
	}
}

// handleJoin joins a group, resuming after since in a kept group, and
// records presence when asked; joining a group again only adds presence.
func (s *session) handleJoin(ctx context.Context, f *clientFrame) error {
	if f.By != "" && f.By != "user" {
		return refuse(CodeInvalidData, `"by" is "user" or absent`)
	}
	if s.has(f.Group) {
		if f.Presence {
			s.presenceJoin(f.Group, joinEvents(f))
		}
		s.send(appendReply(nil, "ack", f.ID))
		return nil
	}
	if !broker.ValidGroup(f.Group) {
		return broker.ErrInvalidGroup
	}
	if err := s.srv.consumer.Join(ctx, &s.public, &JoinRequest{Group: f.Group, Token: f.Token}); err != nil {
		return err
	}
	var since *broker.Since
	if f.Since != nil {
		since = &broker.Since{Offset: f.Since.Offset, Epoch: f.Since.Epoch}
	}
	rec, err := s.join(ctx, f.Group, since)
	if err != nil {
		return err
	}
	if f.Presence {
		s.presenceJoin(f.Group, joinEvents(f))
	}
	ack := appendReply(nil, "ack", f.ID)
	if since != nil {
		ack = append(ack[:len(ack)-1], `,"recovered":`...)
		ack = append(strconv.AppendBool(ack, rec.Recovered), '}')
	}
	s.send(ack)
	return nil
}

// handleLeave leaves a group; no delivery for it follows the ack.
func (s *session) handleLeave(f *clientFrame) error {
	if err := s.srv.broker.GroupDiscard(f.Group, s.channel); err != nil {
		return err
	}
	s.remove(f.Group)
	s.send(appendReply(nil, "ack", f.ID))
	return nil
}

// handleSend publishes from the client once the Consumer allows it; in a
// kept group the ack carries the offset and whether the key was seen.
func (s *session) handleSend(ctx context.Context, f *clientFrame) error {
	if !broker.ValidGroup(f.Group) {
		return broker.ErrInvalidGroup
	}
	if f.Data == nil {
		return refuse(CodeInvalidData, `"data" is required`)
	}
	r := &SendRequest{Group: f.Group, Data: f.Data}
	if err := s.srv.consumer.Send(ctx, &s.public, r); err != nil {
		return err
	}
	if len(f.IdempotencyKey) > maxIdempotencyKey {
		return refuse(CodeInvalidData, "idempotency_key is too long")
	}
	except := ""
	if f.Echo != nil && !*f.Echo {
		except = s.channel
	}
	receipt, err := s.srv.broker.GroupPublishWith(r.Group, r.Data, broker.PublishOptions{
		Source: broker.FromClient, Key: f.IdempotencyKey, Except: except})
	if err != nil {
		return err
	}
	s.srv.metrics.published.WithLabelValues("client").Inc()
	ack := appendReply(nil, "ack", f.ID)
	if receipt.Offset > 0 {
		ack = append(ack[:len(ack)-1], `,"offset":`...)
		ack = strconv.AppendUint(ack, receipt.Offset, 10)
		ack = append(ack, `,"duplicate":`...)
		ack = append(strconv.AppendBool(ack, receipt.Duplicate), '}')
	}
	s.send(ack)
	return nil
}

// handleRefresh takes a new token for the connection.
func (s *session) handleRefresh(f *clientFrame) error {
	if err := s.refresh(f.Token); err != nil {
		return err
	}
	s.send(appendReply(nil, "ack", f.ID))
	return nil
}

// handleCustom hands a frame of the application's own type to the
// Consumer (or the receive hook) and sends its reply.
func (s *session) handleCustom(ctx context.Context, f *clientFrame) error {
	reply, err := s.srv.consumer.Frame(ctx, &s.public, f.Type, f.raw)
	if err != nil {
		return err
	}
	data, err := json.Marshal(reply)
	if err != nil {
		return fmt.Errorf("consumer reply for %q: %w", f.Type, err)
	}
	frame := appendReply(nil, "reply", f.ID)
	frame = append(append(frame[:len(frame)-1], `,"data":`...), data...)
	s.send(append(frame, '}'))
	return nil
}
