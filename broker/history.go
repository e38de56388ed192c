package broker

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

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
