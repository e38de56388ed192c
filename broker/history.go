package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// Policy is how a group's messages are kept.
type Policy int

const (
	// AtMostOnce groups go over core NATS and keep nothing (the default).
	AtMostOnce Policy = iota
	// Recoverable groups keep a window of history in JetStream; members
	// can resume from the last offset they saw.
	Recoverable
	// Latest groups keep only their newest message, which every joiner
	// gets at once.
	Latest
)

// String names the policy as settings spell it.
func (p Policy) String() string {
	switch p {
	case Recoverable:
		return "recoverable"
	case Latest:
		return "latest"
	}
	return "at-most-once"
}

// ParsePolicy reads "at-most-once", "recoverable" or "latest".
func ParsePolicy(s string) (Policy, bool) {
	for _, p := range []Policy{AtMostOnce, Recoverable, Latest} {
		if p.String() == s {
			return p, true
		}
	}
	return 0, false
}

// PolicyRule gives the groups matching Pattern a policy. Patterns are
// group patterns (see ValidPattern) that a NATS subject filter expresses: a
// group name, "*" or a prefix ending in ".*".
type PolicyRule struct {
	Pattern string
	Policy  Policy
}

// CheckPolicies reports why rules cannot be kept as they read (first match
// wins), or nil: a pattern no subject filter expresses, or a recoverable
// or latest pattern overlapping an earlier one of another policy, since a
// stream cannot keep the groups of one pattern and leave those of another.
// Overlaps between patterns of one policy are fine.
func CheckPolicies(rules []PolicyRule) error {
	for i, r := range rules {
		if _, ok := policyFilter("", r.Pattern); !ok {
			return fmt.Errorf("pattern %q: want a group name, * or a prefix ending in .*", r.Pattern)
		}
		if r.Policy == AtMostOnce {
			continue
		}
		for _, e := range rules[:i] {
			if e.Policy != r.Policy && patternsOverlap(e.Pattern, r.Pattern) {
				return fmt.Errorf("%s=%s overlaps the earlier %s=%s: history streams cannot keep the groups of one and not the other; make the patterns disjoint", r.Pattern, r.Policy, e.Pattern, e.Policy)
			}
		}
	}
	return nil
}

// Errors of history and idempotent publishing.
var (
	// ErrIdempotencyUnsupported means an idempotency key was given for a
	// group that keeps no history (at-most-once).
	ErrIdempotencyUnsupported = errors.New("broker: idempotency keys need a recoverable or latest group")
	// ErrNoHistory means the group keeps no history.
	ErrNoHistory = errors.New("broker: this group keeps no history")
)

// Since is where a member wants to resume: after Offset, in Epoch.
type Since struct {
	Offset uint64
	Epoch  string
}

// Recovery reports what a join with Since replayed.
type Recovery struct {
	// Recovered is true when every message after the offset was still
	// kept (and the epoch matched), so the member has missed nothing.
	Recovered bool
	// Replayed counts the messages sent before live ones.
	Replayed int
}

// Receipt is what a publish to a recoverable or latest group returns.
type Receipt struct {
	Offset    uint64 // the message's offset in its group's history
	Epoch     string
	Duplicate bool // an idempotency key seen within the window: not published again
}

// HistoryMessage is one kept message.
type HistoryMessage struct {
	Offset uint64
	Region string
	Data   []byte
}

// stream is one of the (at most two) JetStream streams behind policies.
type stream struct {
	name    string
	policy  Policy
	filters []string

	mu     sync.Mutex
	epoch  string // changes when the stream is created anew
	read   string // the stream read from: name, or the local mirror
	ready  bool
	kicked time.Time // when this node last moved the mirror's leader
}

// history is the broker's JetStream side, nil without policies.
type history struct {
	down atomic.Bool // the streams could not be read at the last check

	nc *nats.Conn
	js nats.JetStreamContext
	// reads is a connection of its own for reading history, so that
	// replays, however large, never queue ahead of live messages on nc,
	// nor get nc cut as a slow consumer; rjs is its JetStream context.
	reads       *nats.Conn
	rjs         nats.JetStreamContext
	readsClosed chan struct{}
	turns       chan struct{} // one per history read running: Config.MaxReplays

	rules   []PolicyRule
	streams map[Policy]*stream
	size    int
	ttl     time.Duration
	dedup   time.Duration
	memory  bool
	reps    int
	region  string // HistoryRegion
}

func (c *Config) needsJetStream() bool {
	for _, r := range c.Policies {
		if r.Policy != AtMostOnce {
			return true
		}
	}
	return false
}

// newHistory fills in h, made before the connection so that its handlers
// can mark it down from the start.
func newHistory(b *Broker, h *history) error {
	cfg := &b.cfg
	js, err := b.nc.JetStream()
	if err != nil {
		return fmt.Errorf("broker: JetStream: %w", err)
	}
	h.readsClosed = make(chan struct{})
	h.reads, err = dial(cfg, b.ns, "history", []nats.Option{
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				b.log.Warn("NATS history reads disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { b.log.Info("NATS history reads reconnected") }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			b.log.Error("NATS history reads error", "error", err)
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(h.readsClosed) }),
	})
	if err != nil {
		return err
	}
	if h.rjs, err = h.reads.JetStream(); err != nil {
		return fmt.Errorf("broker: JetStream: %w", err)
	}
	h.turns = make(chan struct{}, cfg.MaxReplays)
	h.nc, h.js, h.rules, h.streams = b.nc, js, cfg.Policies, make(map[Policy]*stream)
	h.size, h.ttl, h.dedup, h.memory, h.reps = cfg.HistorySize, cfg.HistoryTTL, cfg.DedupWindow, !cfg.FileStore, cfg.Replicas
	h.region = cfg.HistoryRegion
	base := strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(cfg.Prefix))
	patterns := make(map[Policy][]string)
	for _, r := range cfg.Policies {
		if r.Policy == AtMostOnce {
			continue
		}
		s := h.streams[r.Policy]
		if s == nil {
			s = &stream{name: base + "_" + strings.ToUpper(r.Policy.String()), policy: r.Policy}
			h.streams[r.Policy] = s
		}
		patterns[r.Policy] = addPattern(patterns[r.Policy], r.Pattern)
	}
	for p, s := range h.streams {
		for _, pat := range patterns[p] {
			f, _ := policyFilter(b.groupPrefix, pat)
			s.filters = append(s.filters, f)
		}
	}
	if b.nc.IsConnected() {
		for _, s := range h.streams {
			err := h.ensure(s)
			if errors.Is(err, nats.ErrJetStreamNotEnabled) || errors.Is(err, nats.ErrJetStreamNotEnabledForAccount) {
				return err
			}
			if err != nil {
				// JetStream may still be electing its leaders: unready
				// until watchHistory reads the stream.
				b.log.Warn("history unavailable", "stream", s.name, "error", err)
				h.down.Store(true)
			}
		}
	}
	return nil
}

// close closes the reads connection, once New made it.
func (h *history) close() {
	if h == nil || h.reads == nil {
		return
	}
	h.reads.Close()
	<-h.readsClosed
}

// replayWait bounds how long a history read waits for a turn.
const replayWait = time.Second

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

// policyFilter maps a policy pattern onto the subject filter of its
// groups; ok is false for a pattern no filter expresses (such as "room*").
func policyFilter(groupPrefix, pattern string) (filter string, ok bool) {
	prefix, wild := strings.CutSuffix(pattern, "*")
	switch {
	case !wild:
		return groupPrefix + pattern, ValidGroup(pattern)
	case prefix == "":
		return groupPrefix + ">", true
	case strings.HasSuffix(prefix, ".") && ValidPattern(pattern):
		return groupPrefix + prefix + ">", true
	}
	return "", false
}

// addPattern adds p to the patterns of one stream unless one of them
// covers it, and drops those it covers: NATS refuses a stream whose
// subjects overlap.
func addPattern(patterns []string, p string) []string {
	for _, q := range patterns {
		if MatchPattern(q, p) {
			return patterns
		}
	}
	kept := patterns[:0]
	for _, q := range patterns {
		if !MatchPattern(p, q) {
			kept = append(kept, q)
		}
	}
	return append(kept, p)
}

// policy returns the policy of a group: the first rule that matches.
func (h *history) policy(group string) Policy {
	if h == nil {
		return AtMostOnce
	}
	for _, r := range h.rules {
		if MatchPattern(r.Pattern, group) {
			return r.Policy
		}
	}
	return AtMostOnce
}

// streamOf returns the stream behind a group, ensured, or nil for an
// at-most-once group.
func (h *history) streamOf(group string) (*stream, error) {
	p := h.policy(group)
	if p == AtMostOnce {
		return nil, nil
	}
	s := h.streams[p]
	s.mu.Lock()
	ready := s.ready
	s.mu.Unlock()
	if !ready {
		if err := h.ensure(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// epochMetadata is the mirror metadata key holding its stream's epoch.
const epochMetadata = "groupcast_epoch"

// mirrorStall is how long a mirror may go without hearing from its stream
// (which sends a heartbeat every second) before it is restarted.
const mirrorStall = 5 * time.Second

// mirrorKickInterval spaces one node's restarts of a stalled mirror.
const mirrorKickInterval = 30 * time.Second

func epochOf(created time.Time) string { return strconv.FormatInt(created.UnixNano(), 36) }

// config is the stream's JetStream configuration.
func (h *history) config(s *stream) *nats.StreamConfig {
	cfg := &nats.StreamConfig{
		Name:              s.name,
		Subjects:          s.filters,
		Storage:           nats.FileStorage,
		MaxAge:            h.ttl,
		MaxMsgsPerSubject: int64(h.size),
		Duplicates:        h.dedup,
		Replicas:          h.reps,
		Discard:           nats.DiscardOld,
		AllowDirect:       true,
	}
	if s.policy == Latest {
		cfg.MaxMsgsPerSubject = 1
	}
	if h.memory {
		cfg.Storage = nats.MemoryStorage
	}
	if h.region != "" {
		cfg.Placement = &nats.Placement{Cluster: h.region}
	}
	return cfg
}

// mirrorName returns the name of s's mirror in cluster, or "" when the
// node reads s itself: no HistoryRegion, or connected to that region.
func (h *history) mirrorName(s *stream, cluster string) string {
	if h.region == "" || cluster == h.region {
		return ""
	}
	return s.name + "_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(cluster))
}

// ensure creates or updates a stream (and, in another region than the
// history's, its local mirror) and reads its epoch.
func (h *history) ensure(s *stream) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	info, err := h.js.AddStream(h.config(s))
	if errors.Is(err, nats.ErrStreamNameAlreadyInUse) {
		info, err = h.js.UpdateStream(h.config(s))
	}
	return h.settle(s, info, err)
}

// settle records what a read of the stream found (info, or the error of
// reading it) and, when the node reads a mirror, checks the mirror: made
// when missing, made anew when the stream was, and read on its own when
// the stream cannot be reached.
func (h *history) settle(s *stream, info *nats.StreamInfo, err error) error {
	mirror := h.mirrorName(s, h.nc.ConnectedClusterName())
	if mirror == "" {
		if err != nil {
			return fmt.Errorf("%w: stream %s: %w", ErrUnavailable, s.name, err)
		}
		s.epoch, s.read, s.ready = epochOf(info.Created), s.name, true
		return nil
	}
	m, merr := h.js.StreamInfo(mirror)
	var epoch string
	switch {
	case merr == nil && (err != nil || m.Config.Metadata[epochMetadata] == epochOf(info.Created)):
		// Current, or all there is while the history's region is away.
		epoch = m.Config.Metadata[epochMetadata]
		if err == nil && h.reps > 1 && m.Mirror != nil && (m.Mirror.Active < 0 || m.Mirror.Active > mirrorStall) &&
			time.Since(s.kicked) > mirrorKickInterval {
			// The stream is back but its mirror not yet: nats-server
			// retries a mirror on a backoff of up to two minutes after
			// a long outage, while a new leader starts at once.
			s.kicked = time.Now()
			_, _ = h.nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+mirror, nil, time.Second)
		}
	case err != nil:
		return fmt.Errorf("%w: stream %s: %w", ErrUnavailable, s.name, err)
	case merr != nil && !errors.Is(merr, nats.ErrStreamNotFound):
		return fmt.Errorf("%w: stream %s: %w", ErrUnavailable, mirror, merr)
	default:
		if merr == nil { // the stream was made anew, so is its mirror
			if err := h.js.DeleteStream(mirror); err != nil && !errors.Is(err, nats.ErrStreamNotFound) {
				return fmt.Errorf("%w: stream %s: %w", ErrUnavailable, mirror, err)
			}
		}
		epoch = epochOf(info.Created)
		cfg := h.config(s)
		cfg.Name, cfg.Subjects, cfg.Duplicates = mirror, nil, 0
		cfg.Mirror = &nats.StreamSource{Name: s.name}
		cfg.Placement = &nats.Placement{Cluster: h.nc.ConnectedClusterName()}
		cfg.Metadata = map[string]string{epochMetadata: epoch}
		if _, err := h.js.AddStream(cfg); err != nil && !errors.Is(err, nats.ErrStreamNameAlreadyInUse) {
			return fmt.Errorf("%w: stream %s: %w", ErrUnavailable, mirror, err)
		}
	}
	s.epoch, s.read, s.ready = epoch, mirror, true
	return nil
}

func (s *stream) currentEpoch() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch
}

// reading returns the name of the stream to read s from and its epoch.
func (s *stream) reading() (name, epoch string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.read, s.epoch
}

// messageExt encodes the offset and epoch fields of a kept message.
func messageExt(seq uint64, epoch string) []byte {
	ext := append([]byte(`,"offset":`), strconv.FormatUint(seq, 10)...)
	ext = append(ext, `,"epoch":"`...)
	ext = append(ext, epoch...)
	return append(ext, '"')
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
		return Recovery{}, 0, nil // history was reset: the client reloads
	}
	release, err := h.turn(ctx)
	if err != nil {
		return Recovery{}, 0, err
	}
	defer release()
	switch {
	case s.policy == Latest:
	case since.Offset == 0:
		start = 1 // what is kept; not known to be all
	default:
		kept, err := h.rjs.GetMsg(read, since.Offset, nats.DirectGet())
		if err != nil || kept.Subject != subject {
			// The window no longer holds the offset: something after it
			// may be gone too.
			return Recovery{}, 0, nil
		}
		start, rec.Recovered = since.Offset+1, true
	}
	newest, err := h.newest(read, subject)
	if err != nil {
		return Recovery{}, 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	until := max(newest, after)
	if until < start {
		return rec, start - 1, nil
	}
	if s.policy == Latest {
		start = until
	}
	var chunk []byte
	stopped := false
	flush := func() bool {
		if len(chunk) > 0 {
			if gone() {
				stopped = true
				return false
			}
			r.Receive(chunk)
			chunk = nil
		}
		return true
	}
	last := start - 1
	err = h.readKept(ctx, read, subject, start, until, func(seq uint64, msg *nats.Msg) bool {
		frame, err := appendFrameExt(nil, `{"type":"message","group":"`, g.name, originRegion(msg), messageExt(seq, epoch), msg.Data)
		if err == nil {
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
// answer, as while JetStream has no meta leader.
func (h *history) newest(stream, subject string) (uint64, error) {
	m, err := h.rjs.GetLastMsg(stream, subject)
	if err != nil && !errors.Is(err, nats.ErrMsgNotFound) {
		m, err = h.rjs.GetLastMsg(stream, subject, nats.DirectGet())
	}
	if errors.Is(err, nats.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return m.Sequence, nil
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
			// Answered from a copy that has not caught up yet.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return nil
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
	newest, err := b.history.newest(read, b.groupPrefix+group)
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

// PolicyOf returns a group's policy.
func (b *Broker) PolicyOf(group string) Policy { return b.history.policy(group) }

// historyCheckInterval is how often the streams are checked.
const historyCheckInterval = 2 * time.Second

// watch checks the streams until stop is closed. A stream that cannot be
// read makes the broker unready; a stream found created anew (a new epoch)
// or back after an outage may have lost messages, so the members of its
// groups are told with {"type":"gap","group":G,"epoch":E} and resume
// from there, reloading state.
func (b *Broker) watchHistory(stop <-chan struct{}) {
	defer b.workers.Done()
	tick := time.NewTicker(historyCheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		if !b.nc.IsConnected() {
			continue
		}
		wasDown, down := b.history.down.Load(), false
		for _, s := range b.history.streams {
			before := s.currentEpoch()
			info, err := b.history.js.StreamInfo(s.name)
			if errors.Is(err, nats.ErrStreamNotFound) {
				err = b.history.ensure(s) // deleted: make it anew
			} else {
				s.mu.Lock()
				err = b.history.settle(s, info, err)
				s.mu.Unlock()
			}
			if err != nil {
				if !wasDown {
					b.log.Warn("history unavailable", "stream", s.name, "error", err)
				}
				down = true
				continue
			}
			after := s.currentEpoch()
			reset := before != "" && after != before
			renewed, stuck := b.renewConsumers(s, reset)
			down = down || stuck
			if before != "" && (reset || renewed || wasDown && !stuck) {
				b.log.Warn("history may have lost messages; telling members", "stream", s.name, "epoch", after)
				b.tellGap(s, after)
			}
		}
		b.history.down.Store(down)
	}
}

// renewConsumers gives the stream's groups fresh ordered consumers, which
// take the stream's new messages: all of them when the stream was made
// anew (its offsets start again, and an old consumer would wait for the
// old ones), otherwise those whose consumer is gone (NATS gave up
// recreating it, or a renewal failed). It reports whether any group was
// renewed, and whether any is left without a live consumer: then the
// broker is unready until a later check renews it.
func (b *Broker) renewConsumers(s *stream, all bool) (renewed, stuck bool) {
	b.mu.RLock()
	var stale []*group
	for _, g := range b.groups {
		if g.kept == s && g.sub != nil && (all || !g.sub.IsValid()) {
			stale = append(stale, g)
		}
	}
	b.mu.RUnlock()
	for _, g := range stale {
		read, _ := s.reading()
		sub, err := b.history.js.ChanSubscribe(b.groupPrefix+g.name, b.shard(g.name),
			nats.OrderedConsumer(), nats.DeliverNew(), nats.BindStream(read))
		b.mu.Lock()
		old := g.sub
		if b.groups[g.name] != g || old == nil { // left meanwhile
			b.mu.Unlock()
			if err == nil {
				b.unsubscribe(sub)
			}
			continue
		}
		if err != nil {
			b.mu.Unlock()
			b.log.Warn("group consumer not renewed", "group", g.name, "error", err)
			if old.IsValid() {
				b.unsubscribe(old) // waits for the old offsets: marked gone, tried again
			}
			stuck = true
			continue
		}
		delete(b.bySub, old)
		g.sub, b.bySub[sub] = sub, g
		b.mu.Unlock()
		b.unsubscribe(old)
		renewed = true
	}
	return renewed, stuck
}

// tellGap sends a gap frame to every local member of the stream's groups.
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
		frame := []byte(`{"type":"gap","group":"` + g.name + `","epoch":"` + epoch + `"}`)
		g.mu.RLock()
		for _, m := range g.members {
			m.recv.Receive(frame)
		}
		g.mu.RUnlock()
	}
}
