package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/groupcast/groupcast/internal/natstest"
)

// TestConsumerLostInRestartRenewed: a NATS server restart takes the
// ordered consumer behind a kept group with it, and NATS never recreates
// it (for a channel subscription its flow control check counts as
// activity, so missing heartbeats go unnoticed) while the subscription
// stays valid. The history watch finds no consumer behind the idle group,
// renews it after the last offset it dispatched, and the member gets
// every message accepted after the restart, those published while the
// group was silent included, once and in order.
func TestConsumerLostInRestartRenewed(t *testing.T) {
	dir := t.TempDir()
	ns := natstest.StartJetStreamAt(t, -1, dir)
	port := natstest.Port(ns)
	b, err := New(Config{URL: ns.ClientURL(), Logger: testLogger(t), Policies: []PolicyRule{{"*", Recoverable}},
		HistorySize: 1000, FileStore: true, ReconnectWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	waitFor(t, 5*time.Second, func() bool { return b.Ready() == nil })
	c, r := open(t, b)
	join(t, b, "g", c)
	publishN(t, b, "g", 0, 3)
	r.deliveries(t, 3)

	ns.Shutdown()
	ns.WaitForShutdown()
	natstest.StartJetStreamAt(t, port, dir)
	var want []Receipt
	waitFor(t, 10*time.Second, func() bool {
		rc, err := b.GroupPublish("g", []byte("3"), "")
		if err == nil {
			want = append(want, rc)
		}
		return err == nil
	})
	// Published while the group is silent, before the watch renews it.
	want = append(want, publishN(t, b, "g", 4, 4)...)

	got := keptDeliveries(t, r, len(want), 15*time.Second)
	for i, d := range got {
		if d.Offset != want[i].Offset || string(d.Data) != fmt.Sprint(3+i) {
			t.Fatalf("delivery %d: offset %d data %s, want offset %d data %d", i, d.Offset, d.Data, want[i].Offset, 3+i)
		}
	}
	// Live again: the next one follows, and nothing came twice.
	next := publishN(t, b, "g", 8, 1)[0]
	if d := keptDeliveries(t, r, 1, 5*time.Second)[0]; d.Offset != next.Offset {
		t.Fatalf("after the renewal: offset %d, want %d (a copy of an earlier one?)", d.Offset, next.Offset)
	}
}

// keptDeliveries reads n message deliveries from r within timeout,
// skipping gap frames (an outage may announce one).
func keptDeliveries(t *testing.T, r *inbox, n int, timeout time.Duration) []delivery {
	t.Helper()
	deadline := time.After(timeout)
	var out []delivery
	for len(out) < n {
		select {
		case f := <-r.frames:
			for _, line := range strings.Split(string(f), "\n") {
				var d struct {
					Type string
					delivery
				}
				if err := json.Unmarshal([]byte(line), &d); err != nil {
					t.Fatalf("frame %q: %v", line, err)
				}
				if d.Type == "message" {
					out = append(out, d.delivery)
				}
			}
		case <-deadline:
			t.Fatalf("%d of %d messages delivered in %v: %+v", len(out), n, timeout, out)
		}
	}
	return out
}
