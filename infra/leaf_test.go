package infra

import (
	"fmt"
	"net/url"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/groupcast/groupcast/internal/natstest"
)

// Leaf mode, measured: would an instance be better off running an embedded
// nats-server that joins its regional cluster as a leaf node, its broker connected to
// that server in-process, than being a plain client of the cluster? These benchmarks
// compare the two paths a message takes from a publisher on the regional server to a
// subscriber: straight to a client of that server ("direct"), or through a leaf server
// to its in-process client ("leaf"). infra/README.md has the figures and the decision.
//
//	go test -run X -bench Leaf -benchtime 20000x ./infra/

// leafPair starts a hub server (a regional server) that accepts leaf nodes and a leaf
// server joined to it, and returns both once the leaf connection is up.
func leafPair(b *testing.B) (hub, leaf *server.Server) {
	b.Helper()
	ports, err := FreePorts(1)
	if err != nil {
		b.Fatal(err)
	}
	hub = natstest.StartWith(b, server.Options{ServerName: "hub", LeafNode: server.LeafNodeOpts{Host: "127.0.0.1", Port: ports[0]}})
	u, err := url.Parse("nats://127.0.0.1:" + strconv.Itoa(ports[0]))
	if err != nil {
		b.Fatal(err)
	}
	leaf = natstest.StartWith(b, server.Options{ServerName: "leaf", LeafNode: server.LeafNodeOpts{Remotes: []*server.RemoteLeafOpts{{URLs: []*url.URL{u}}}}})
	deadline := time.Now().Add(10 * time.Second)
	for hub.NumLeafNodes() != 1 || leaf.NumLeafNodes() != 1 {
		if time.Now().After(deadline) {
			b.Fatal("leaf connection not up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return hub, leaf
}

// leafClients connects a publisher to the hub and a subscriber either to the hub too
// (direct) or in-process to the leaf server.
func leafClients(b *testing.B, viaLeaf bool) (pub, sub *nats.Conn) {
	b.Helper()
	hub, leaf := leafPair(b)
	var err error
	if pub, err = nats.Connect(hub.ClientURL()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pub.Close)
	if viaLeaf {
		sub, err = nats.Connect("", nats.InProcessServer(leaf))
	} else {
		sub, err = nats.Connect(hub.ClientURL())
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(sub.Close)
	return pub, sub
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLeafHop measures one message's trip, publisher to subscriber, one at a
// time (latency), and a stream of them (CPU per message, every server and client
// being in this process).
func BenchmarkLeafHop(b *testing.B) {
	for _, viaLeaf := range []bool{false, true} {
		name := map[bool]string{false: "direct", true: "leaf"}[viaLeaf]
		b.Run(name+"/latency", func(b *testing.B) {
			pub, sub := leafClients(b, viaLeaf)
			ch := make(chan *nats.Msg, 1)
			if _, err := sub.ChanSubscribe("hop", ch); err != nil {
				b.Fatal(err)
			}
			_ = sub.Flush()
			waitInterest(b, pub, sub, "hop", ch)
			payload := []byte(`{"text":"hello"}`)
			b.ResetTimer()
			for range b.N {
				if err := pub.Publish("hop", payload); err != nil {
					b.Fatal(err)
				}
				select {
				case <-ch:
				case <-time.After(5 * time.Second):
					b.Fatal("lost")
				}
			}
		})
		b.Run(name+"/stream", func(b *testing.B) {
			pub, sub := leafClients(b, viaLeaf)
			done := make(chan struct{})
			n := 0
			if _, err := sub.Subscribe("hop", func(*nats.Msg) {
				if n++; n == b.N {
					close(done)
				}
			}); err != nil {
				b.Fatal(err)
			}
			_ = sub.Flush()
			probe := make(chan *nats.Msg, 16)
			if _, err := sub.ChanSubscribe("hop.probe", probe); err != nil {
				b.Fatal(err)
			}
			waitInterest(b, pub, sub, "hop.probe", probe)
			payload := []byte(`{"text":"hello"}`)
			cpu0 := cpuTime()
			b.ResetTimer()
			for range b.N {
				if err := pub.Publish("hop", payload); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				b.Fatalf("%d of %d delivered", n, b.N)
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/msg")
		})
	}
}

// waitInterest publishes on subject until ch has a message: the publisher's server
// then knows of the subscriber.
func waitInterest(b *testing.B, pub, sub *nats.Conn, subject string, ch chan *nats.Msg) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_ = pub.Publish(subject, []byte("probe"))
		select {
		case <-ch:
			for len(ch) > 0 {
				<-ch
			}
			return
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatal("no interest")
		}
	}
}

// BenchmarkLeafJoinAck measures what the join acknowledgement would be worth in leaf
// mode. The broker acknowledges a join once a flush to its own server returns; here a
// publisher on the regional server publishes the moment that flush returns. Directly
// connected, the regional server has the interest by then and nothing is missed. Through
// a leaf, the flush reaches only the leaf server, which tells the regional server
// asynchronously: the metric is the share of joins that missed that first message.
func BenchmarkLeafJoinAck(b *testing.B) {
	for _, viaLeaf := range []bool{false, true} {
		b.Run(map[bool]string{false: "direct", true: "leaf"}[viaLeaf], func(b *testing.B) {
			pub, sub := leafClients(b, viaLeaf)
			missed := 0
			for i := range b.N {
				subject := fmt.Sprintf("join.%d", i)
				s, err := sub.SubscribeSync(subject)
				if err != nil {
					b.Fatal(err)
				}
				if err := sub.Flush(); err != nil {
					b.Fatal(err)
				}
				if err := pub.Publish(subject, []byte("first")); err != nil {
					b.Fatal(err)
				}
				if err := pub.Flush(); err != nil {
					b.Fatal(err)
				}
				if _, err := s.NextMsg(50 * time.Millisecond); err != nil {
					missed++
				}
				_ = s.Unsubscribe()
			}
			b.ReportMetric(100*float64(missed)/float64(b.N), "%missed")
		})
	}
}
