package broker

import (
	"bytes"
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/groupcast/groupcast/protocol"
)

// Merging: when several messages of a group wait in a dispatch queue, the
// fan-out is behind; they then go out together, each member getting them
// in one write. Nothing waits to be merged: a message alone in the queue
// is fanned out at once, so batches grow with the load by themselves.
const (
	maxMerge      = 64       // messages fanned out together, at most
	maxMergeBytes = 32 << 10 // and their payloads' bytes, at most
)

// dispatcher is one dispatch goroutine's reusable state.
type dispatcher struct {
	queue chan *nats.Msg // its shard's
	next  *nats.Msg      // taken from queue, not merged: dispatched next
	split *splitter
	fan   fanout
	msgs  []*nats.Msg
	ds    []Delivery
	seqs  []uint64
	sent  []int32 // per member of a sweep: frames of f.ds it has
}

// dispatchLoop fans out the messages of one shard until Close, merging the
// messages of a group that queued up (see maxMerge).
func (b *Broker) dispatchLoop(queue chan *nats.Msg, split *splitter) {
	defer b.workers.Done()
	d := &dispatcher{queue: queue, split: split}
	for {
		msg := d.next
		d.next = nil
		if msg == nil {
			select {
			case msg = <-queue:
			case <-b.stop:
				return
			}
		}
		batch := append(d.msgs[:0], msg)
		if b.isGroupMsg(msg) {
			except, size := excluded(msg), len(msg.Data)
		gather:
			for len(batch) < maxMerge && size < maxMergeBytes {
				select {
				case m := <-queue:
					if m.Sub != msg.Sub || excluded(m) != except {
						d.next = m
						break gather
					}
					batch = append(batch, m)
					size += len(m.Data)
				default:
					break gather
				}
			}
		}
		d.msgs = batch
		b.dispatch(d, batch)
		clear(batch) // keep no message alive until the next batch
	}
}

// isGroupMsg reports whether msg came in on a group's subscription.
func (b *Broker) isGroupMsg(msg *nats.Msg) bool {
	return msg.Sub != b.direct && msg.Sub != b.commands && msg.Sub != b.broadcasts
}

// dispatch encodes the frames of batch (messages of one subscription, with
// the same excluded channel) once and hands the same bytes to every local
// receiver. Receivers do not block, so neither does this.
func (b *Broker) dispatch(d *dispatcher, batch []*nats.Msg) {
	b.stats.received.Add(uint64(len(batch)))
	var start time.Time
	if b.cfg.OnFanout != nil {
		start = time.Now()
	}
	msg := batch[0]
	if msg.Sub == b.direct {
		b.dispatchDirect(d, msg)
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
	f := &d.fan
	if f.ds, f.seqs = b.frames(d, g, batch); len(f.ds) == 0 {
		return
	}
	f.except = excluded(msg)
	g.mu.RLock()
	f.recovering = g.recovering
	var n, delivered int
	var over bool
	if d.sweeps(g, f) {
		n, delivered = b.sweep(d, g, f)
		d.ds = f.ds // grown by the sweep: reused
	} else {
		n, over = b.fan(d.split, f, g.members)
		delivered = n * len(f.ds)
	}
	g.mu.RUnlock()
	f.recovering = nil
	if over {
		g.forgetRecovered()
	}
	b.stats.delivered.Add(uint64(delivered))
	if b.cfg.OnFanout != nil {
		b.cfg.OnFanout(n, time.Since(start))
	}
}

// frames encodes the message frames of batch for g, all in one fresh
// buffer, and their offsets in a kept group (whose last offset it
// records). Messages that are not JSON, or not from the group's stream,
// are dropped.
func (b *Broker) frames(d *dispatcher, g *group, batch []*nats.Msg) ([]Delivery, []uint64) {
	var epoch string
	if g.kept != nil {
		epoch = g.kept.currentEpoch()
	}
	var buf []byte
	if len(batch) > 1 {
		size := 0
		for _, msg := range batch {
			size += len(msg.Data) + len(g.name) + len(epoch) + 128 // and the region's
		}
		buf = make([]byte, 0, size)
	}
	ds, seqs := d.ds[:0], d.seqs[:0]
	for _, msg := range batch {
		pm := protocol.Message{Group: g.name, Region: originRegion(msg)}
		var seq uint64
		if g.kept != nil {
			meta, err := msg.Metadata()
			if err != nil {
				continue // not a stream message
			}
			seq = meta.Sequence.Stream
			pm.Kept, pm.Offset, pm.Epoch = true, seq, epoch
		}
		out, err := b.appendFrame(buf, pm, msg.Data)
		if err != nil {
			continue
		}
		frame := out[len(buf):len(out):len(out)]
		if len(batch) > 1 {
			buf = out
		}
		ds, seqs = append(ds, Delivery{frame, KindMessage}), append(seqs, seq)
	}
	if g.kept != nil && len(seqs) > 0 {
		g.lastSeq.Store(seqs[len(seqs)-1]) // before the fan-out: see group.add
	}
	d.ds, d.seqs = ds, seqs
	return ds, seqs
}

// frame encodes msg, a message of g, which keeps no history, in a fresh
// buffer.
func (b *Broker) frame(g *group, msg *nats.Msg) ([]byte, error) {
	return b.appendFrame(nil, protocol.Message{Group: g.name, Region: originRegion(msg)}, msg.Data)
}

// appendFrame appends the frame of a group message, or counts and logs a
// payload that is not JSON.
func (b *Broker) appendFrame(buf []byte, pm protocol.Message, data []byte) ([]byte, error) {
	out, err := protocol.AppendMessage(buf, pm, data)
	if err != nil {
		b.stats.invalid.Add(1)
		b.log.Warn("dropped a message that is not JSON", "group", pm.Group, "bytes", len(data))
	}
	return out, err
}

func (b *Broker) dispatchDirect(d *dispatcher, msg *nats.Msg) {
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
	d.ds = append(d.ds[:0], Delivery{frame, KindMessage})
	deliver(m, d.ds)
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
