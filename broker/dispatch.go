package broker

import (
	"bytes"
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
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
	var ext []byte
	var seq uint64
	if g.kept != nil {
		meta, err := msg.Metadata()
		if err != nil {
			return // not a stream message
		}
		seq = meta.Sequence.Stream
		g.lastSeq.Store(seq) // before the fan-out: see group.add
		ext = messageExt(seq, g.kept.currentEpoch())
	}
	frame, err := appendFrameExt(nil, `{"type":"message","group":"`, g.name, originRegion(msg), ext, msg.Data)
	if err != nil {
		b.stats.invalid.Add(1)
		b.log.Warn("dropped a message that is not JSON", "group", g.name, "bytes", len(msg.Data))
		return
	}
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
				deliverNow(m.recv, frame)
			default:
				m.recv.Receive(frame)
			}
		}
	case g.recovering == nil && len(g.members) <= immediateMembers:
		for _, m := range g.members {
			deliverNow(m.recv, frame)
		}
	case g.recovering == nil:
		for _, m := range g.members {
			m.recv.Receive(frame)
		}
	default:
		for _, m := range g.members {
			if r := g.recovering[m]; r != nil {
				over = r.offer(seq, frame, m.recv) || over
			} else {
				m.recv.Receive(frame)
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
	frame, err := appendFrame(nil, `{"type":"message","channel":"`, channel, originRegion(msg), msg.Data)
	if err != nil {
		b.stats.invalid.Add(1)
		b.log.Warn("dropped a message that is not JSON", "channel", channel, "bytes", len(msg.Data))
		return
	}
	deliverNow(m.recv, frame)
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

// appendFrame appends head, name, the origin region when known, the data
// field and the closing brace. Names and regions need no escaping: they
// are validated to be plain ASCII. The data is checked to be one JSON
// value and compacted if it holds newlines, which separate objects in a
// server frame.
func appendFrame(buf []byte, head, name, region string, data []byte) ([]byte, error) {
	return appendFrameExt(buf, head, name, region, nil, data)
}

// appendFrameExt is appendFrame with more fields, pre-encoded (each
// starting with a comma), between the region and the data.
func appendFrameExt(buf []byte, head, name, region string, ext, data []byte) ([]byte, error) {
	const mid = `,"data":`
	if buf == nil {
		buf = make([]byte, 0, len(head)+len(name)+len(region)+len(ext)+len(mid)+len(data)+16)
	}
	buf = append(buf, head...)
	buf = append(buf, name...)
	if region != "" {
		buf = append(buf, `","region":"`...)
		buf = append(buf, region...)
	}
	buf = append(buf, '"')
	buf = append(buf, ext...)
	buf = append(buf, mid...)
	if !json.Valid(data) {
		return nil, ErrInvalidData
	}
	if bytes.IndexByte(data, '\n') < 0 {
		buf = append(buf, data...)
	} else {
		out := bytes.NewBuffer(buf)
		if err := json.Compact(out, data); err != nil {
			return nil, ErrInvalidData
		}
		buf = out.Bytes()
	}
	return append(buf, '}'), nil
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
