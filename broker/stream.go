package broker

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// stream is one of the (at most two) JetStream streams behind policies.
type stream struct {
	name    string
	policy  Policy
	filters []string

	mu    sync.Mutex
	epoch string // changes when the stream is created anew
	read  string // the stream read from: name, or the local mirror
	ready bool
	// steppedDown is when this node last asked the mirror's leader to step
	// down, restarting a stalled mirror on a new leader.
	steppedDown time.Time
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

// mirrorStepDownInterval spaces one node's restarts of a stalled mirror
// (see stream.steppedDown).
const mirrorStepDownInterval = 30 * time.Second

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
			time.Since(s.steppedDown) > mirrorStepDownInterval {
			// The stream is back but its mirror not yet: nats-server
			// retries a mirror on a backoff of up to two minutes after
			// a long outage, while a new leader starts at once.
			s.steppedDown = time.Now()
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
