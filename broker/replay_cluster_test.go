package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/groupcast/groupcast/internal/natstest"
)

// TestFirstJoinNotCutShortByCopyBehind: on a three-server cluster keeping
// the history in three copies, an instance whose history reads go to a
// server cut off the others (its copy behind, the stream's leader out of
// reach) takes its first join of a group, a resume, while its own
// connection, on a server in the majority, makes the group's live
// consumer. The resume must not end at the newest offset of the copy
// behind: it waits for the copy, is refused as unavailable, and once the
// server is back gets every message acknowledged meanwhile, once, in
// order. Before, it said recovered:true and skipped them.
func TestFirstJoinNotCutShortByCopyBehind(t *testing.T) {
	cl := natstest.StartCluster(t, 3)
	url := func(i int) string { return cl.Servers[i].ClientURL() }
	newClusterBroker := func(u string) *Broker {
		b, err := New(Config{URL: u, Logger: testLogger(t), Policies: []PolicyRule{{"*", Recoverable}},
			HistorySize: 100, Replicas: 3, ReconnectWait: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close(context.Background()) })
		waitFor(t, 20*time.Second, func() bool { return b.Ready() == nil })
		return b
	}
	pub := newClusterBroker(url(0))
	sent := publishN(t, pub, "g", 0, 3)

	// behind: a server that is neither the stream's leader, nor the meta
	// leader, nor the publisher's.
	stream := pub.history.streams[Recoverable].name
	behind := -1
	waitFor(t, 20*time.Second, func() bool {
		info, err := pub.history.js.StreamInfo(stream)
		if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
			return false
		}
		for i := 1; i < 3; i++ {
			if fmt.Sprintf("n%d", i) != info.Cluster.Leader && i != cl.MetaLeader() {
				behind = i
				return true
			}
		}
		// Move the stream's leader, and look again.
		_, _ = pub.history.nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, nil, time.Second)
		return false
	})
	ahead := 3 - behind // the other one that is not the publisher's
	// The instance's first connection, its own, goes to ahead; the next,
	// for history reads, to behind.
	proxy := natstest.StartProxy(t, cl.Servers[ahead].Addr().String(), cl.Servers[behind].Addr().String())
	b := newClusterBroker("nats://" + proxy.Addr())

	cl.Isolate(behind)
	missed := publishN(t, pub, "g", 3, 20) // acknowledged by the majority

	c, r := open(t, b)
	since := &Since{Offset: sent[0].Offset, Epoch: sent[0].Epoch}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rec, err := b.GroupJoin(ctx, "g", c, since)
	if err == nil {
		t.Fatalf("first join while the copy read is behind: %+v; want unavailable until it catches up", rec)
	}
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("first join while the copy read is behind: %v; want unavailable", err)
	}
	r.none(t, 50*time.Millisecond)

	cl.Rejoin(behind)
	waitFor(t, 30*time.Second, func() bool {
		rec, err = b.GroupJoin(ctx, "g", c, since)
		return err == nil
	})
	if !rec.Recovered {
		t.Fatalf("resume once the copy is back: %+v", rec)
	}
	want := []uint64{sent[1].Offset, sent[2].Offset}
	for _, m := range missed {
		want = append(want, m.Offset)
	}
	var got []uint64
	for _, d := range r.deliveries(t, len(want)) {
		got = append(got, d.Offset)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("resumed with offsets %v, want %v", got, want)
	}
}
