package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/groupcast/groupcast/protocol"
	"github.com/nats-io/nats.go"
)

// replayWait bounds how long a history read waits for a turn.
const replayWait = time.Second

// copyBehindWait bounds the wait for a copy of the history that is behind
// the offset a member resumes after.
const copyBehindWait = time.Second

// replayBatchBytes bounds the bytes one batched direct get asks for (the
// server sends at least one message, whatever its size).
const replayBatchBytes = 512 << 10

// turn waits, at most replayWait or until ctx ends, for one of the
// Config.MaxReplays turns to read history, and returns its release.
func (h *history) turn(ctx context.Context) (release func(), err error) {
	t := time.NewTimer(replayWait)
	defer t.Stop()
	select {
	case h.turns <- struct{}{}:
		return func() { <-h.turns }, nil
	case <-t.C:
		return nil, fmt.Errorf("%w: too many history reads at once", ErrUnavailable)
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	}
}

// noteStart records, as g's last offset when g has dispatched nothing
// yet, the offset before the first that sub's new consumer delivers: a
// member's replay reads up to it at least (see group.add). Otherwise the
// first join of a group, with the stream's leader away, would end its
// replay at the newest offset of a copy behind the consumer's and skip
// what lies between.
func noteStart(g *group, sub *nats.Subscription) error {
	info, err := sub.ConsumerInfo()
	if err != nil {
		return err
	}
	g.lastSeq.CompareAndSwap(0, info.Delivered.Stream)
	return nil
}

// replay sends a member the kept messages of g after since (or, for a
// latest group, the newest one) in chunks of whole frames, and reports
// the last offset sent. It reads at least up to after, the group's last
// live offset before the member joined (later ones are held for it). It
// waits for a turn to read (see history.turn), and stops, with
// ErrUnavailable, once gone reports that the member left or takes no more
// frames.
func (b *Broker) replay(ctx context.Context, s *stream, g *group, r Receiver, since *Since, after uint64, gone func() bool) (Recovery, uint64, error) {
	h := b.history
	subject := b.groupPrefix + g.name
	read, epoch := s.reading()
	var rec Recovery
	var start uint64
	switch {
	case s.policy == Latest:
		start = 1
		rec.Recovered = true
	case since == nil:
		return Recovery{}, 0, nil
	case since.Epoch != epoch:
		b.log.Debug("resume from another epoch", "group", g.name, "since", since.Offset, "since_epoch", since.Epoch, "epoch", epoch)
		return Recovery{}, 0, nil // history was reset: the client reloads
	}
	release, err := h.turn(ctx)
	if err != nil {
		return Recovery{}, 0, err
	}
	defer release()
	// probe is the offset resumed after: read first, with the rest, to
	// see that the window still holds it. A copy that is behind (a
	// server catching up after a restart answers for its local clients)
	// is asked again, and a read that fails makes the join unavailable:
	// neither may pass for an offset that left the window, which would
	// skip what the member missed.
	var probe uint64
	switch {
	case s.policy == Latest:
	case since.Offset == 0:
		start = 1 // what is kept; not known to be all
	default:
		start, probe = since.Offset+1, since.Offset
	}
	newest, current, err := h.newest(read, subject)
	if err != nil {
		return Recovery{}, 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	until := newest
	if !current {
		// A copy answered, which may be behind: read at least up to where
		// the group's live consumer took over (see noteStart).
		until = max(newest, after)
	}
	if probe > until && current {
		// Past the group's newest message: not an offset of its.
		b.log.Debug("resume offset past the newest", "group", g.name, "since", since.Offset, "newest", newest)
		return Recovery{}, 0, nil
	}
	until = max(until, probe)
	readCtx := ctx
	if until > newest {
		// The copy that answered is behind the member's offset or the
		// group's live consumer: wait a moment for it, as it catches up
		// after a restart, then the join is unavailable. One that stays
		// behind (a mirror whose stream's region is lost) may never hold
		// the offset.
		var cancel context.CancelFunc
		readCtx, cancel = context.WithTimeout(ctx, copyBehindWait)
		defer cancel()
	}
	from := start
	if probe > 0 {
		from = probe
	}
	if until < from {
		return rec, start - 1, nil
	}
	if s.policy == Latest {
		start = max(newest, 1) // and any newer one up to until
		from = start
	}
	var chunk []byte
	stopped := false
	flush := func() bool {
		if len(chunk) > 0 {
			if gone() {
				stopped = true
				return false
			}
			r.Receive(Delivery{chunk, KindMessage})
			chunk = nil
		}
		return true
	}
	last := start - 1
	var frame []byte // reused: each frame is copied into the chunk
	moved := false   // the window no longer holds probe
	err = h.readKept(readCtx, read, subject, from, until, func(seq uint64, msg *nats.Msg) bool {
		if probe > 0 {
			// The first message from probe on is probe itself, or a
			// later one when probe is gone (or not of this group).
			moved = seq != probe
			probe, rec.Recovered = 0, !moved
			return !moved
		}
		var ferr error
		frame, ferr = protocol.AppendMessage(frame[:0], protocol.Message{
			Group: g.name, Region: originRegion(msg), Kept: true, Offset: seq, Epoch: epoch}, msg.Data)
		if ferr == nil {
			if len(chunk)+1+len(frame) > 64<<10 && !flush() {
				return false
			}
			if len(chunk) > 0 {
				chunk = append(chunk, '\n')
			}
			chunk = append(chunk, frame...)
			rec.Replayed++
		}
		last = seq
		return rec.Replayed < h.size
	})
	if probe > 0 && (err == nil || readCtx != ctx && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded)) {
		// Nothing from probe on up to until: gone with its window, or
		// never reached by the copy behind.
		moved = true
	}
	if moved {
		b.log.Debug("resume offset not kept", "group", g.name, "since", since.Offset)
		return Recovery{}, 0, nil
	}
	if err == nil && !stopped {
		flush()
	}
	if stopped {
		return rec, last, fmt.Errorf("%w: the member takes no more frames", ErrUnavailable)
	}
	if err != nil {
		return rec, last, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return rec, last, nil
}

// newest returns the offset of the newest kept message of subject (0:
// none). It asks the stream's leader, and any copy when the leader cannot
// answer, as while JetStream has no meta leader; current says the leader
// answered (a copy may be behind).
func (h *history) newest(stream, subject string) (seq uint64, current bool, err error) {
	m, err := h.rjs.GetLastMsg(stream, subject)
	current = err == nil || errors.Is(err, nats.ErrMsgNotFound)
	if !current {
		m, err = h.rjs.GetLastMsg(stream, subject, nats.DirectGet())
	}
	if errors.Is(err, nats.ErrMsgNotFound) {
		return 0, current, nil
	}
	if err != nil {
		return 0, false, err
	}
	return m.Sequence, current, nil
}

// directBatch is the most messages one batched direct get asks for.
const directBatch = 1024

// readKept calls fn with the kept messages of subject in stream from
// offset start up to offset until, oldest first, while fn returns true.
// It reads with batched direct gets, which any server holding the stream
// answers without a consumer: reads need neither JetStream's meta leader
// (gone with its region, until another is elected) nor a consumer's
// creation and removal. Each batch asks for at most replayBatchBytes, and
// the next is asked for once it is in, so that a read never has more in
// flight. A server that answers from a copy that is behind is asked
// again, until until is reached or ctx (2 s without a deadline) runs out.
func (h *history) readKept(ctx context.Context, stream, subject string, start, until uint64, fn func(seq uint64, msg *nats.Msg) bool) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
	}
	inbox := h.reads.NewInbox()
	sub, err := h.reads.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	caughtUp := false // the copy holds until or a later offset
	for start <= until {
		req := fmt.Appendf(nil, `{"seq":%d,"next_by_subj":%q,"batch":%d,"max_bytes":%d}`, start, subject, directBatch, replayBatchBytes)
		if err := h.reads.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, req); err != nil {
			return err
		}
		var pending uint64 // messages left after the batch, as its end says
	batch:
		for {
			msg, err := sub.NextMsgWithContext(ctx)
			if err != nil {
				return err
			}
			switch status := msg.Header.Get("Status"); status {
			case "":
				seq, err := strconv.ParseUint(msg.Header.Get(nats.JSSequence), 10, 64)
				if err != nil || seq < start {
					return fmt.Errorf("direct get from %s: a message without a valid sequence", stream)
				}
				start = seq + 1
				if seq > until {
					return nil
				}
				if !fn(seq, msg) {
					return nil
				}
			case "204", "404": // the end of the batch, or nothing from start on
				pending, _ = strconv.ParseUint(msg.Header.Get("Nats-Num-Pending"), 10, 64)
				break batch
			default:
				return fmt.Errorf("direct get from %s: %s %s", stream, status, msg.Header.Get("Description"))
			}
		}
		if start <= until && pending == 0 {
			// Nothing more of subject here: the copy has passed until
			// (which may be no offset of subject's), or has not caught
			// up yet.
			if caughtUp {
				return nil
			}
			if caughtUp, err = h.holdsFrom(ctx, sub, stream, inbox, until); err != nil {
				return err
			}
			if caughtUp {
				continue // read once more: it may have caught up since
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return nil
}

// holdsFrom reports whether the copy of stream that answers holds a
// message at offset seq or later, of any subject: then it has caught up
// to seq. The answer comes on sub, inbox's subscription.
func (h *history) holdsFrom(ctx context.Context, sub *nats.Subscription, stream, inbox string, seq uint64) (bool, error) {
	req := fmt.Appendf(nil, `{"seq":%d,"next_by_subj":">"}`, seq)
	if err := h.reads.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, req); err != nil {
		return false, err
	}
	msg, err := sub.NextMsgWithContext(ctx)
	if err != nil {
		return false, err
	}
	switch status := msg.Header.Get("Status"); status {
	case "":
		return true, nil
	case "404":
		return false, nil
	default:
		return false, fmt.Errorf("direct get from %s: %s %s", stream, status, msg.Header.Get("Description"))
	}
}

// History returns up to limit kept messages of a group after since.
func (b *Broker) History(ctx context.Context, group string, since uint64, limit int) ([]HistoryMessage, string, error) {
	if !ValidGroup(group) {
		return nil, "", ErrInvalidGroup
	}
	if err := b.Ready(); err != nil {
		return nil, "", err
	}
	s, err := b.history.streamOf(group)
	if err != nil {
		return nil, "", err
	}
	if s == nil {
		return nil, "", ErrNoHistory
	}
	release, err := b.history.turn(ctx)
	if err != nil {
		return nil, "", err
	}
	defer release()
	read, epoch := s.reading()
	newest, _, err := b.history.newest(read, b.groupPrefix+group)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if newest <= since || limit == 0 {
		return nil, epoch, nil
	}
	var out []HistoryMessage
	err = b.history.readKept(ctx, read, b.groupPrefix+group, since+1, newest, func(seq uint64, msg *nats.Msg) bool {
		out = append(out, HistoryMessage{Offset: seq, Region: originRegion(msg), Data: msg.Data})
		return len(out) < limit
	})
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return out, epoch, nil
}
