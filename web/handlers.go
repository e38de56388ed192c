package web

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/protocol"
)

// dispatch runs a client frame's handler. Each handler answers the frame
// itself (ack, pong, reply) or returns the refusal the caller turns into
// an error frame.
func (s *session) dispatch(f *clientFrame) error {
	ctx := context.Background()
	switch f.Type {
	case protocol.TypeJoin:
		return s.handleJoin(ctx, f)
	case protocol.TypeLeave:
		return s.handleLeave(f)
	case protocol.TypeSend:
		return s.handleSend(ctx, f)
	case protocol.TypePresence:
		return s.presence(ctx, f)
	case protocol.TypePing:
		s.send(protocol.AppendReply(nil, protocol.TypePong, f.ID))
		return nil
	case protocol.TypeRefresh:
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
		s.send(protocol.AppendReply(nil, protocol.TypeAck, f.ID))
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
	if since != nil {
		s.send(protocol.AppendJoinAck(nil, f.ID, rec.Recovered))
	} else {
		s.send(protocol.AppendReply(nil, protocol.TypeAck, f.ID))
	}
	return nil
}

// handleLeave leaves a group; no delivery for it follows the ack.
func (s *session) handleLeave(f *clientFrame) error {
	if err := s.srv.broker.GroupDiscard(f.Group, s.channel); err != nil {
		return err
	}
	s.remove(f.Group)
	s.send(protocol.AppendReply(nil, protocol.TypeAck, f.ID))
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
	if receipt.Offset > 0 {
		s.send(protocol.AppendSendAck(nil, f.ID, receipt.Offset, receipt.Duplicate))
	} else {
		s.send(protocol.AppendReply(nil, protocol.TypeAck, f.ID))
	}
	return nil
}

// handleRefresh takes a new token for the connection.
func (s *session) handleRefresh(f *clientFrame) error {
	if err := s.refresh(f.Token); err != nil {
		return err
	}
	s.send(protocol.AppendReply(nil, protocol.TypeAck, f.ID))
	return nil
}

// handleCustom hands a frame of the application's own type to the
// Consumer (or the receive hook) and sends its reply.
func (s *session) handleCustom(ctx context.Context, f *clientFrame) error {
	reply, err := s.srv.consumer.Frame(ctx, &s.public, f.Type, f.Raw)
	if err != nil {
		return err
	}
	data, err := json.Marshal(reply)
	if err != nil {
		return fmt.Errorf("consumer reply for %q: %w", f.Type, err)
	}
	s.send(protocol.AppendDataReply(nil, f.ID, data))
	return nil
}
