package broker

import (
	"errors"
	"log/slog"
	"time"

	"github.com/groupcast/groupcast/protocol"
	"github.com/nats-io/nats.go"
)

// historyCheckInterval is how often the streams are checked.
const historyCheckInterval = 2 * time.Second

// watchHistory runs the history watch until stop is closed, with the
// broker's side of it: renewing its groups' consumers and telling their
// members of gaps.
func (b *Broker) watchHistory(stop <-chan struct{}) {
	defer b.workers.Done()
	alive := make(map[*group]*liveness) // owned by this goroutine
	b.history.watch(stop, b.log, streamListener{
		renew: func(s *stream, reset bool) (bool, bool) { return b.renewConsumers(s, reset, alive) },
		gap:   b.tellGap,
	})
}

// streamListener is what the history watch tells the side that holds the
// groups; the watch knows streams, never groups.
type streamListener struct {
	// renew gives the groups reading s fresh consumers where theirs are
	// gone, all of them when reset (s was made anew). It reports whether
	// any may have missed messages, and whether any is left without a
	// live consumer.
	renew func(s *stream, reset bool) (gapped, stuck bool)
	// gap hears that s may have lost messages: its offsets go on in epoch.
	gap func(s *stream, epoch string)
}

// watch checks the streams every historyCheckInterval until stop is
// closed. A stream that cannot be read makes the broker unready; a stream
// found created anew (a new epoch), back after an outage, or whose readers
// were renewed may have lost messages: l.gap hears of it.
func (h *history) watch(stop <-chan struct{}, log *slog.Logger, l streamListener) {
	tick := time.NewTicker(historyCheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		if !h.nc.IsConnected() {
			continue
		}
		wasDown, down := h.down.Load(), false
		var gaps []*stream // told after readiness is updated, so members told can read
		for _, s := range h.streams {
			before := s.currentEpoch()
			info, err := h.js.StreamInfo(s.name)
			if errors.Is(err, nats.ErrStreamNotFound) {
				err = h.ensure(s) // deleted: make it anew
			} else {
				s.mu.Lock()
				err = h.settle(s, info, err)
				s.mu.Unlock()
			}
			if err != nil {
				if !wasDown {
					log.Warn("history unavailable", "stream", s.name, "error", err)
				}
				down = true
				continue
			}
			after := s.currentEpoch()
			reset := before != "" && after != before
			renewed, stuck := l.renew(s, reset)
			down = down || stuck
			if before != "" && (reset || renewed || wasDown && !stuck) {
				gaps = append(gaps, s)
			}
		}
		h.down.Store(down)
		for _, s := range gaps {
			epoch := s.currentEpoch()
			log.Warn("history may have lost messages; telling members", "stream", s.name, "epoch", epoch)
			l.gap(s, epoch)
		}
	}
}

// consumerMisses is how many checks in a row may find no consumer behind
// an idle kept group's subscription before it is renewed: NATS recreates
// an ordered consumer by itself, but one lost while JetStream was away
// (a server restart, no meta leader) may never be, while its subscription
// stays valid.
const consumerMisses = 2

// renewWait bounds the making of one renewed consumer, during which the
// broker's dispatch waits.
const renewWait = time.Second

// liveness is what the history watch knows of a kept group's consumer.
type liveness struct {
	seen   uint64 // the group's last offset at the previous check
	misses int    // checks in a row that found no consumer behind it
}

// consumerLost reports whether an idle group's subscription has had no
// consumer behind it on consumerMisses checks in a row. A group that
// delivered since the last check is alive without asking; an idle one
// costs one consumer info request per check.
func consumerLost(g *group, sub *nats.Subscription, alive map[*group]*liveness) bool {
	last := g.lastSeq.Load()
	l := alive[g]
	if l == nil || l.seen != last {
		alive[g] = &liveness{seen: last}
		return false
	}
	if _, err := sub.ConsumerInfo(); err != nil {
		l.misses++
	} else {
		l.misses = 0
	}
	return l.misses >= consumerMisses
}

// renewConsumers gives the stream's groups fresh ordered consumers: all of
// them when the stream was made anew (its offsets start again, and an old
// consumer would wait for the old ones), otherwise those whose consumer is
// gone (NATS gave up recreating it, a renewal failed, or no consumer was
// found behind it on consumerMisses checks, see consumerLost). A group
// renewed in the same stream resumes after the last offset it dispatched,
// so its members miss nothing; one made anew, or that had dispatched
// nothing yet, takes new messages only. It reports whether any group was
// renewed that way (its members may have missed messages), and whether any
// is left without a live consumer: then the broker is unready until a
// later check renews it.
func (b *Broker) renewConsumers(s *stream, all bool, alive map[*group]*liveness) (gapped, stuck bool) {
	b.mu.RLock()
	subs := make(map[*group]*nats.Subscription)
	for _, g := range b.groups {
		if g.kept == s && g.sub != nil {
			subs[g] = g.sub
		}
	}
	b.mu.RUnlock()
	for g := range alive {
		if g.kept == s && subs[g] == nil {
			delete(alive, g) // left
		}
	}
	var stale []*group
	for g, sub := range subs {
		if all || !sub.IsValid() || consumerLost(g, sub, alive) {
			stale = append(stale, g)
		}
	}
	if len(stale) == 0 {
		return false, false
	}
	js, err := b.nc.JetStream(nats.MaxWait(renewWait))
	if err != nil {
		b.log.Warn("group consumers not renewed", "error", err)
		return false, true
	}
	for _, g := range stale {
		read, _ := s.reading()
		b.mu.Lock()
		old := g.sub
		if b.groups[g.name] != g || old == nil { // left meanwhile
			b.mu.Unlock()
			continue
		}
		delete(b.bySub, old) // nothing more of old reaches the members
		from := g.lastSeq.Load()
		if all {
			from = 0
			g.lastSeq.Store(0)
		}
		deliver := nats.DeliverNew()
		if from > 0 {
			deliver = nats.StartSequence(from + 1)
		}
		// b.mu is held until the new subscription is in b.bySub: the
		// consumer sends what follows from at once, and the dispatcher
		// would drop what it cannot map to the group yet.
		sub, err := js.ChanSubscribe(b.groupPrefix+g.name, b.shard(g.name),
			nats.OrderedConsumer(), deliver, nats.BindStream(read))
		if err == nil {
			g.sub, b.bySub[sub] = sub, g
		}
		b.mu.Unlock()
		if old.IsValid() {
			b.unsubscribe(old)
		}
		if err != nil {
			// old, unsubscribed, stays g.sub: tried again from the same
			// offset at the next check.
			b.log.Warn("group consumer not renewed", "group", g.name, "error", err)
			stuck = true
			continue
		}
		if err := noteStart(g, sub); err != nil {
			b.log.Warn("group consumer's start not read", "group", g.name, "error", err)
		}
		delete(alive, g)
		b.log.Info("group consumer renewed", "group", g.name, "after", from)
		gapped = gapped || from == 0
	}
	return gapped, stuck
}

// tellGap sends {"type":"gap","group":G,"epoch":E} to every local member
// of the stream's groups, which resume from there, reloading state.
func (b *Broker) tellGap(s *stream, epoch string) {
	b.mu.RLock()
	groups := make([]*group, 0, len(b.groups))
	for _, g := range b.groups {
		if g.kept == s {
			groups = append(groups, g)
		}
	}
	b.mu.RUnlock()
	for _, g := range groups {
		d := Delivery{protocol.AppendGap(nil, g.name, epoch), KindControl}
		g.mu.RLock()
		for _, m := range g.members {
			m.recv.Receive(d)
		}
		g.mu.RUnlock()
	}
}
