package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/groupcast/groupcast/broker/presence"
)

// ErrPresenceOff means presence is not enabled for the group.
var ErrPresenceOff = errors.New("broker: presence is not enabled for this group")

// newPresence starts the node's presence manager over its connection.
func newPresence(b *Broker) (*presence.Manager, error) {
	return presence.New(presence.Config{
		Bus:          b.nc,
		Ready:        b.Ready,
		Prefix:       b.cfg.Prefix,
		Node:         b.cfg.Node,
		Region:       b.cfg.Region,
		Interval:     b.cfg.PresenceInterval,
		Timeout:      b.cfg.PresenceTimeout,
		MaxGroups:    b.cfg.MaxPresenceGroups,
		ValidNode:    validToken,
		ValidChannel: ValidChannel,
		Logger:       b.log,
	})
}

// PresenceEnabled reports whether the group's members are tracked.
func (b *Broker) PresenceEnabled(group string) bool {
	return b.presence != nil && MatchAny(b.cfg.Presence, group)
}

// PresenceAdd makes a channel of this node, already in the group (see
// GroupAdd), present in it with the given user and info (one JSON value
// of at most presence.MaxInfo bytes, or nil); a join event goes to the
// group's members that asked for events. With events other than
// presence.NoEvents, the channel receives the group's join and leave
// events (of others) as {"type":"presence",...} frames. Adding a present
// channel again only sets events. The channel stops being present when
// it leaves the group or closes.
func (b *Broker) PresenceAdd(group, channel, user string, info json.RawMessage, events presence.Events) error {
	if !ValidGroup(group) {
		return ErrInvalidGroup
	}
	if !b.PresenceEnabled(group) {
		return ErrPresenceOff
	}
	if len(user) > presence.MaxUserLen || len(info) > presence.MaxInfo || (info != nil && !json.Valid(info)) {
		return ErrInvalidData
	}
	if info != nil {
		var err error
		if info, err = compactJSON(info); err != nil {
			return err
		}
	}
	b.mu.RLock()
	defer b.mu.RUnlock() // held so that a concurrent discard sees the entry
	m := b.channels[channel]
	if m == nil {
		return ErrUnknownChannel
	}
	if m.groups[group] == nil {
		return fmt.Errorf("%w: not in group %s", ErrUnknownChannel, group)
	}
	if err := b.presence.Add(group, presence.Member{Channel: channel, User: user, Info: info}, controlReceiver{m.recv}, events); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}

// PresenceGet answers who is in a presence group, across every node: this
// node answers for itself, and the nodes whose heartbeats list the group
// answer within Config.PresenceTimeout (or ctx's deadline, if sooner).
func (b *Broker) PresenceGet(ctx context.Context, group string, q presence.Query) (presence.Result, error) {
	if !ValidGroup(group) {
		return presence.Result{}, ErrInvalidGroup
	}
	if !b.PresenceEnabled(group) {
		return presence.Result{}, ErrPresenceOff
	}
	if q.Limit < 0 || q.Limit > presence.MaxLimit {
		return presence.Result{}, fmt.Errorf("%w: limit must be 0 to %d", ErrInvalidData, presence.MaxLimit)
	}
	res, err := b.presence.Get(ctx, group, q)
	if err != nil {
		return presence.Result{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return res, nil
}

// controlReceiver hands presence's event frames to a member's Receiver as
// control deliveries, written at once.
type controlReceiver struct{ r Receiver }

func (c controlReceiver) Receive(frame []byte) { c.r.Receive(Delivery{frame, KindControl}) }
