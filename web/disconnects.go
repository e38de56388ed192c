package web

import (
	"context"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// disconnectCall is the body of a disconnect hook POST.
type disconnectCall struct {
	hookCall
	Groups  []string `json:"groups"`  // the groups it was in, sorted
	Code    int      `json:"code"`    // the close code
	Reason  string   `json:"reason"`  // the close reason
	Seconds float64  `json:"seconds"` // how long it was open
}

// disconnectReports send the disconnect hook's calls off the sockets'
// path: from a bounded queue (a full one drops and counts), by a few
// senders, each call tried up to disconnectAttempts times with backoff.
// Shutdown drains it within its budget.
type disconnectReports struct {
	h     *hookConsumer
	log   *slog.Logger
	queue chan disconnectReport

	mu     sync.Mutex // guards closed and the sends on queue
	closed bool

	ctx     context.Context // ends when the drain budget is spent
	cancel  context.CancelFunc
	senders sync.WaitGroup
	drained sync.Once

	outcomes          *prometheus.CounterVec
	dropLog, failLog  atomic.Int64 // unix ns of the last log line, to log at most once a second
	dropped, failures atomic.Int64
}

// disconnectReport is one queued call.
type disconnectReport struct {
	payload []byte
	req     hookRequest
}

const (
	// disconnectSenders is how many disconnect calls are in flight at most.
	disconnectSenders = 4
	// disconnectAttempts bounds the tries of one disconnect call.
	disconnectAttempts = 3
	// disconnectBackoff is the wait before the first retry; it doubles.
	disconnectBackoff = 200 * time.Millisecond
)

func newDisconnectReports(h *hookConsumer, size int, m *Metrics, log *slog.Logger) *disconnectReports {
	ctx, cancel := context.WithCancel(context.Background())
	d := &disconnectReports{
		h: h, log: log, queue: make(chan disconnectReport, size), ctx: ctx, cancel: cancel,
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupcast_hook_disconnects_total",
			Help: "Disconnect hook calls, by outcome: sent, failed (refused or unreachable after retries), dropped (queue full, or unsent at shutdown).",
		}, []string{"outcome"}),
	}
	for _, o := range []string{"sent", "failed", "dropped"} {
		d.outcomes.WithLabelValues(o)
	}
	m.registry.MustRegister(d.outcomes)
	d.senders.Add(disconnectSenders)
	for range disconnectSenders {
		go d.send()
	}
	return d
}

// report queues the disconnect of c without blocking.
func (d *disconnectReports) report(c *Conn) {
	s := c.s
	code, reason := s.closeStatus()
	call := &disconnectCall{
		hookCall: hookCall{Event: "disconnect", Channel: s.channel, User: s.user(), Node: d.h.node, Region: d.h.region},
		Groups:   c.Groups(),
		Code:     int(code),
		Reason:   reason,
		Seconds:  time.Since(s.opened).Round(time.Millisecond).Seconds(),
	}
	payload, _ := json.Marshal(call)
	r := disconnectReport{payload: payload, req: hookRequest{url: d.h.cfg.DisconnectURL, headers: s.hookHeaders}}
	d.mu.Lock()
	queued := false
	if !d.closed {
		select {
		case d.queue <- r:
			queued = true
		default:
		}
	}
	d.mu.Unlock()
	if !queued {
		d.drop("the disconnect hook's queue is full (HOOK_DISCONNECT_QUEUE); dropped a disconnect report")
	}
}

func (d *disconnectReports) drop(msg string) {
	d.outcomes.WithLabelValues("dropped").Inc()
	n := d.dropped.Add(1)
	if everySecond(&d.dropLog) {
		d.log.Warn(msg, "dropped_so_far", n)
	}
}

// send is a sender goroutine: it posts queued reports until the queue is
// closed and empty.
func (d *disconnectReports) send() {
	defer d.senders.Done()
	for r := range d.queue {
		if d.ctx.Err() != nil {
			d.drop("the shutdown budget ran out before a disconnect report was sent; dropped it")
			continue
		}
		d.post(r)
	}
}

// post tries a report up to disconnectAttempts times, waiting between
// transient failures with a doubling, jittered backoff.
func (d *disconnectReports) post(r disconnectReport) {
	wait := disconnectBackoff
	for attempt := 1; ; attempt++ {
		_, transient, err := d.h.post(d.ctx, r.req, r.payload)
		if err == nil {
			d.outcomes.WithLabelValues("sent").Inc()
			return
		}
		if !transient || attempt == disconnectAttempts || d.ctx.Err() != nil {
			d.outcomes.WithLabelValues("failed").Inc()
			n := d.failures.Add(1)
			if everySecond(&d.failLog) {
				d.log.Warn("the disconnect hook failed; a disconnect went unreported", "error", err, "attempts", attempt, "failed_so_far", n)
			}
			return
		}
		t := time.NewTimer(wait/2 + rand.N(wait))
		select {
		case <-t.C:
		case <-d.ctx.Done():
			t.Stop()
		}
		wait *= 2
	}
}

// drain stops taking reports and waits until the queued ones are sent,
// or until ctx ends, when the calls in flight are cut and the rest are
// dropped. Only the first call counts.
func (d *disconnectReports) drain(ctx context.Context) {
	d.drained.Do(func() {
		d.mu.Lock()
		d.closed = true
		close(d.queue)
		d.mu.Unlock()
		done := make(chan struct{})
		go func() {
			d.senders.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			d.cancel()
			<-done
		}
		d.cancel()
	})
}

// everySecond reports whether a second has passed since *last, and if so
// sets it to now: a bound on repeated log lines.
func everySecond(last *atomic.Int64) bool {
	now := time.Now().UnixNano()
	prev := last.Load()
	return now-prev >= int64(time.Second) && last.CompareAndSwap(prev, now)
}
