package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrNoNode means no node answers for a channel's node: it is gone, so
// the channel is too.
var ErrNoNode = errors.New("broker: no node answers for the channel")

// ChannelHeader names, on a forwarded message, the channel it is for.
const ChannelHeader = "Groupcast-Channel"

// HandleForwards subscribes this node to what Forward sends to its
// channels: f gets the channel and the message, and its answer goes back
// to the sender. f runs on one goroutine of the subscription's own, one
// message at a time: it must answer quickly (no NATS round trip, no
// blocking). Call it once; the subscription ends with Close.
func (b *Broker) HandleForwards(f func(channel string, msg []byte) (answer []byte)) error {
	_, err := b.nc.Subscribe(b.forwardSubject(b.cfg.Node), func(m *nats.Msg) {
		if m.Reply == "" {
			return // nobody waits for an answer
		}
		channel := m.Header.Get(ChannelHeader)
		if node, _, ok := splitChannel(channel); !ok || node != b.cfg.Node {
			return // not for this node: the sender gets no answer and times out
		}
		if err := m.Respond(f(channel, m.Data)); err != nil {
			b.log.Debug("forward answer failed", "channel", channel, "error", err)
		}
	})
	if err != nil {
		return fmt.Errorf("broker: subscribe to forwards: %w", err)
	}
	// Once the server has the subscription, a Forward to this node made
	// right after finds it rather than "no responders". Best effort: NATS
	// may be away, and the subscription is made again when it is back.
	_ = b.nc.FlushTimeout(time.Second)
	return nil
}

// Forward sends msg to the node that holds channel, for the function it
// gave HandleForwards, and returns that function's answer. It waits until
// ctx ends: ErrUnavailable when NATS cannot carry the message or the node
// does not answer in time, ErrNoNode when no node of that name listens,
// ErrTooLarge for a message over NATS's limit.
func (b *Broker) Forward(ctx context.Context, channel string, msg []byte) ([]byte, error) {
	node, _, ok := splitChannel(channel)
	if !ok {
		return nil, ErrInvalidChannel
	}
	if err := b.Ready(); err != nil {
		return nil, err
	}
	if int64(len(msg)+len(channel)+64) > b.nc.MaxPayload() {
		return nil, ErrTooLarge
	}
	req := &nats.Msg{Subject: b.forwardSubject(node), Data: msg, Header: nats.Header{ChannelHeader: []string{channel}}}
	answer, err := b.nc.RequestMsgWithContext(ctx, req)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, ErrNoNode
	case errors.Is(err, nats.ErrMaxPayload):
		return nil, ErrTooLarge
	case err != nil:
		return nil, fmt.Errorf("%w: forward to %s: %v", ErrUnavailable, node, err)
	}
	return answer.Data, nil
}

func (b *Broker) forwardSubject(node string) string { return b.cfg.Prefix + ".forward." + node }
