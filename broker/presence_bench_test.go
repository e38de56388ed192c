package broker

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/groupcast/groupcast/internal/natstest"

	"github.com/groupcast/groupcast/broker/presence"
)

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchPresenceBroker is a broker with presence for room.* and the
// default heartbeat interval.
func benchPresenceBroker(b *testing.B, url, node string) *Broker {
	br, err := New(Config{URL: url, Node: node, Region: "r1", Logger: testLogger(b), Presence: []string{"room.*"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { br.Close(context.Background()) })
	return br
}

// fill puts n present members into group on b, with users u0..u(n-1).
func fill(b *testing.B, br *Broker, group string, n int, r Receiver) {
	for i := range n {
		ch, err := br.NewChannel(r)
		if err != nil {
			b.Fatal(err)
		}
		join(b, br, group, ch)
		if br.PresenceEnabled(group) {
			if err := br.PresenceAdd(group, ch, fmt.Sprintf("u%d", i), []byte(`{"name":"someone"}`), presence.NoEvents); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkPresenceQuery is a query's latency at 10,000 members, 5,000 on
// each of two nodes, asked on a third node with none: a scatter-gather
// over a real nats-server on loopback.
func BenchmarkPresenceQuery(b *testing.B) {
	ns := startNATS(b)
	n1 := benchPresenceBroker(b, ns.ClientURL(), "n1")
	n2 := benchPresenceBroker(b, ns.ClientURL(), "n2")
	asker := benchPresenceBroker(b, ns.ClientURL(), "n3")
	fill(b, n1, "room.big", 5000, &discard{})
	fill(b, n2, "room.big", 5000, &discard{})
	waitCount(b, asker, "room.big", 10000, 5*time.Second)
	for _, q := range []struct {
		name string
		q    presence.Query
	}{{"count", presence.Query{}}, {"list100", presence.Query{Limit: 100}}, {"list100-by-user", presence.Query{Limit: 100, ByUser: true}}} {
		b.Run(q.name, func(b *testing.B) {
			for b.Loop() {
				p, err := asker.PresenceGet(context.Background(), "room.big", q.q)
				ok := p.Count == 10000
				if q.q.ByUser {
					// Users u0..u4999 on each node: counted once when
					// listed on both, once per node beyond the limit.
					ok = p.Count >= 5000 && p.Count <= 10000 && len(p.Members) == 100
				}
				if err != nil || !ok || p.Partial {
					b.Fatalf("%+v %v", p.Count, err)
				}
			}
		})
	}
}

// BenchmarkPresenceJoinLeave is the CPU (of the whole process: the
// joining node, a second node with 10,000 members of the group listening
// for events on one of them, and the nats-server) per join and leave of
// one connection, in a group of 10,000 with presence and without.
func BenchmarkPresenceJoinLeave(b *testing.B) {
	for _, group := range []string{"plain", "room.big"} {
		b.Run(group, func(b *testing.B) {
			ns := startNATS(b)
			big := benchPresenceBroker(b, ns.ClientURL(), "big")
			br := benchPresenceBroker(b, ns.ClientURL(), "joiner")
			fill(b, big, group, 10000, &discard{})
			if big.PresenceEnabled(group) {
				ch, _ := big.NewChannel(&discard{})
				join(b, big, group, ch)
				big.PresenceAdd(group, ch, "listener", nil, presence.AllEvents)
			}
			keep, _ := br.NewChannel(&discard{}) // keeps the group's subscription
			join(b, br, group, keep)
			ch, _ := br.NewChannel(&discard{})
			ctx := context.Background()
			start := cpuTime(b)
			for b.Loop() {
				if err := br.GroupAdd(ctx, group, ch); err != nil {
					b.Fatal(err)
				}
				if br.PresenceEnabled(group) {
					if err := br.PresenceAdd(group, ch, "someone", []byte(`{"name":"someone"}`), presence.NoEvents); err != nil {
						b.Fatal(err)
					}
				}
				if err := br.GroupDiscard(group, ch); err != nil {
					b.Fatal(err)
				}
			}
			br.nc.Flush()
			big.nc.Flush()
			time.Sleep(50 * time.Millisecond) // the events' handling on the other node
			b.ReportMetric(float64((cpuTime(b)-start).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// BenchmarkKVPresence measures the alternative: each member a key in a
// JetStream key-value bucket whose entries expire (MaxAge), refreshed by
// its node. It reports the puts per second one node sustains and a
// count of the bucket's keys at 10,000 members.
func BenchmarkKVPresence(b *testing.B) {
	ns := natstest.StartWith(b, server.Options{JetStream: true, StoreDir: b.TempDir()})
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "presence", TTL: 5 * time.Second, Storage: jetstream.MemoryStorage})
	if err != nil {
		b.Fatal(err)
	}
	val := []byte(`{"channel":"n1.abc","user":"u1","region":"r1","info":{"name":"someone"}}`)
	b.Run("put", func(b *testing.B) {
		start := cpuTime(b)
		i := 0
		for b.Loop() {
			if _, err := kv.Put(ctx, fmt.Sprintf("room_big.n1_%d", i%10000), val); err != nil {
				b.Fatal(err)
			}
			i++
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
		b.ReportMetric(float64((cpuTime(b)-start).Microseconds())/float64(b.N), "cpu-µs/op")
	})
	for i := range 10000 {
		if _, err := kv.Put(ctx, fmt.Sprintf("room_big.n1_%d", i), val); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("count-keys", func(b *testing.B) {
		for b.Loop() {
			lister, err := kv.ListKeysFiltered(ctx, "room_big.>")
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for range lister.Keys() {
				n++
			}
			if n != 10000 {
				b.Fatalf("%d keys", n)
			}
		}
	})
}
