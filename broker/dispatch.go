package broker

import (
	"bytes"
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/groupcast/groupcast/protocol"
)

// dispatchLoop fans out the messages of one shard until Close.
func (b *Broker) dispatchLoop(queue chan *nats.Msg) {
	defer b.workers.Done()
	for {
		select {
		case msg := <-queue:
			b.dispatch(msg)
		case <-b.stop:
			return
		}
	}
}

// dispatch encodes msg's frame once and hands the same bytes to every local
// receiver. Receivers do not block, so neither does this.
func (b *Broker) dispatch(msg *nats.Msg) {
	b.stats.received.Add(1)
	start := time.Now()
	if msg.Sub == b.direct {
		b.dispatchDirect(msg)
		return
	}
	if msg.Sub == b.commands || msg.Sub == b.broadcasts {
		if f := b.onCommand.Load(); f != nil {
			(*f)(msg.Data)
		}
		return
	}
	b.mu.RLock()
	g := b.bySub[msg.Sub]
	b.mu.RUnlock()
	if g == nil {
		return // unsubscribed meanwhile
	}
	pm := protocol.Message{Group: g.name, Region: originRegion(msg)}
	var seq uint64
	if g.kept != nil {
		meta, err := msg.Metadata()
		if err != nil {
			return // not a stream message
		}
		seq = meta.Sequence.Stream
		g.lastSeq.Store(seq) // before the fan-out: see group.add
		pm.Kept, pm.Offset, pm.Epoch = true, seq, g.kept.currentEpoch()
	}
	frame, err := protocol.AppendMessage(nil, pm, msg.Data)
	if err != nil {
		b.stats.invalid.Add(1)
		b.log.Warn("dropped a message that is not JSON", "group", g.name, "bytes", len(msg.Data))
		return
	}
	d := Delivery{frame, KindMessage}
	except := excluded(msg)
	g.mu.RLock()
	over := false
	n := len(g.members)
	switch {
	case except != "":
		n = 0
		for _, m := range g.members {
			if m.name == except {
				continue
			}
			n++
			switch r := g.recovering[m]; {
			case r != nil:
				over = r.offer(seq, frame, m.recv) || over
			case len(g.members) <= immediateMembers:
				deliverNow(m.recv, d)
			default:
				m.recv.Receive(d)
			}
		}
	case g.recovering == nil && len(g.members) <= immediateMembers:
		for _, m := range g.members {
			deliverNow(m.recv, d)
		}
	case g.recovering == nil:
		for _, m := range g.members {
			m.recv.Receive(d)
		}
	default:
		for _, m := range g.members {
			if r := g.recovering[m]; r != nil {
				over = r.offer(seq, frame, m.recv) || over
			} else {
				m.recv.Receive(d)
			}
		}
	}
	g.mu.RUnlock()
	if over {
		g.forgetRecovered()
	}
	b.stats.delivered.Add(uint64(n))
	if b.cfg.OnFanout != nil {
		b.cfg.OnFanout(n, time.Since(start))
	}
}

func (b *Broker) dispatchDirect(msg *nats.Msg) {
	channel := msg.Subject[len(b.cfg.Prefix)+len(".direct."):]
	b.mu.RLock()
	m := b.channels[channel]
	b.mu.RUnlock()
	if m == nil {
		return // closed meanwhile
	}
	frame, err := protocol.AppendMessage(nil, protocol.Message{Channel: channel, Region: originRegion(msg)}, msg.Data)
	if err != nil {
		b.stats.invalid.Add(1)
		b.log.Warn("dropped a message that is not JSON", "channel", channel, "bytes", len(msg.Data))
		return
	}
	deliverNow(m.recv, Delivery{frame, KindMessage})
	b.stats.delivered.Add(1)
}

// excluded returns the channel a message must not reach, if any.
func excluded(msg *nats.Msg) string {
	if msg.Header == nil {
		return ""
	}
	return msg.Header.Get(ExcludeHeader)
}

// originRegion returns the region a message was published in, when it
// carries a valid RegionHeader.
func originRegion(msg *nats.Msg) string {
	if msg.Header == nil {
		return ""
	}
	if r := msg.Header.Get(RegionHeader); validToken(r) {
		return r
	}
	return ""
}

// compactJSON returns data if it is one JSON value with no newline, a
// compacted copy if it is one with newlines, or ErrInvalidData.
func compactJSON(data []byte) ([]byte, error) {
	if !json.Valid(data) {
		return nil, ErrInvalidData
	}
	if bytes.IndexByte(data, '\n') < 0 {
		return data, nil
	}
	var out bytes.Buffer
	out.Grow(len(data))
	if err := json.Compact(&out, data); err != nil {
		return nil, ErrInvalidData
	}
	return out.Bytes(), nil
}

// Stats are the broker's counters since New, for metrics.
type Stats struct {
	Published      uint64 // messages handed to NATS
	Received       uint64 // messages taken from NATS
	Delivered      uint64 // frames handed to receivers
	Invalid        uint64 // received messages dropped for not being JSON
	SlowConsumer   uint64 // times NATS dropped messages for this node
	Subscribes     uint64 // group subscriptions made
	Unsubscribes   uint64 // group subscriptions removed
	Disconnects    uint64 // NATS connection losses
	Reconnects     uint64 // NATS reconnections
	Groups         int    // groups with local members now
	Channels       int    // open channels now
	NATSConnected  bool   // connected to NATS now
	NATSServerName string // the server this node is connected to
}

type counters struct {
	published, received, delivered, invalid, slowConsumer atomic.Uint64
	subscribes, unsubscribes, disconnects, reconnects     atomic.Uint64
}

// Stats returns a snapshot of the broker's counters.
func (b *Broker) Stats() Stats {
	b.mu.RLock()
	groups, channels := len(b.groups), len(b.channels)
	b.mu.RUnlock()
	return Stats{
		Published:      b.stats.published.Load(),
		Received:       b.stats.received.Load(),
		Delivered:      b.stats.delivered.Load(),
		Invalid:        b.stats.invalid.Load(),
		SlowConsumer:   b.stats.slowConsumer.Load(),
		Subscribes:     b.stats.subscribes.Load(),
		Unsubscribes:   b.stats.unsubscribes.Load(),
		Disconnects:    b.stats.disconnects.Load(),
		Reconnects:     b.stats.reconnects.Load(),
		Groups:         groups,
		Channels:       channels,
		NATSConnected:  b.nc.IsConnected(),
		NATSServerName: b.nc.ConnectedServerName(),
	}
}
