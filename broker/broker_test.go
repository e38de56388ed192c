package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestGroupSendEmbedded(t *testing.T) {
	b := newBroker(t, "")
	if !b.Embedded() {
		t.Fatal("want an embedded server")
	}
	c1, r1 := open(t, b)
	c2, r2 := open(t, b)
	_, r3 := open(t, b)
	join(t, b, "room.lobby", c1)
	join(t, b, "room.lobby", c2)
	if err := b.GroupSend("room.lobby", []byte(`{"text": "hi",
	  "n": [1, 2]}`)); err != nil {
		t.Fatal(err)
	}
	want := `{"type":"message","group":"room.lobby","data":{"text":"hi","n":[1,2]}}`
	for _, r := range []*inbox{r1, r2} {
		if got := r.next(t); got != want {
			t.Fatalf("got %s\nwant %s", got, want)
		}
	}
	r3.none(t, 100*time.Millisecond)
}

func TestOneSubscriptionPerGroupPerNode(t *testing.T) {
	ns := startNATS(t)
	b := newBroker(t, ns.ClientURL())
	subject := b.GroupSubject("g")
	var chans []string
	for range 20 {
		c, _ := open(t, b)
		join(t, b, "g", c)
		join(t, b, "g", c) // twice is a no-op
		chans = append(chans, c)
	}
	if n := subscriptions(t, ns, subject); n != 1 {
		t.Fatalf("server has %d subscriptions for the group, want 1", n)
	}
	for i, c := range chans {
		if err := b.GroupDiscard("g", c); err != nil {
			t.Fatal(err)
		}
		if i < len(chans)-1 && subscriptions(t, ns, subject) != 1 {
			t.Fatal("unsubscribed before the last member left")
		}
	}
	waitFor(t, 2*time.Second, func() bool { return subscriptions(t, ns, subject) == 0 })
	if s := b.Stats(); s.Groups != 0 {
		t.Fatalf("%d groups left", s.Groups)
	}
}

// TestTwoNodesExactlyOnceInOrder: members on two nodes of one cluster each
// get every message once, in publish order, whichever node publishes.
func TestTwoNodesExactlyOnceInOrder(t *testing.T) {
	ns := startNATS(t)
	a := newBroker(t, ns.ClientURL())
	b := newBroker(t, ns.ClientURL())
	var inboxes []*inbox
	for _, n := range []*Broker{a, a, b, b} {
		c, r := open(t, n)
		join(t, n, "g", c)
		inboxes = append(inboxes, r)
	}
	const count = 200
	for i := range count {
		if err := a.GroupSend("g", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range inboxes {
		for i := range count {
			want := fmt.Sprintf(`{"type":"message","group":"g","data":%d}`, i)
			if got := r.next(t); got != want {
				t.Fatalf("message %d: got %s want %s", i, got, want)
			}
		}
		r.none(t, 50*time.Millisecond)
	}
}

// TestJoinAckMeansLive: a publish right after GroupAdd returns, from
// another node, always arrives.
func TestJoinAckMeansLive(t *testing.T) {
	ns := startNATS(t)
	a := newBroker(t, ns.ClientURL())
	b := newBroker(t, ns.ClientURL())
	for i := range 100 {
		group := fmt.Sprintf("fresh.%d", i)
		c, r := open(t, a)
		join(t, a, group, c)
		if err := b.GroupSend(group, []byte(`1`)); err != nil {
			t.Fatal(err)
		}
		r.next(t)
		a.CloseChannel(c)
	}
}

func TestDirectSend(t *testing.T) {
	ns := startNATS(t)
	a := newBroker(t, ns.ClientURL())
	b := newBroker(t, ns.ClientURL())
	ca, ra := open(t, a)
	_, ra2 := open(t, a)
	_, rb := open(t, b)
	if !strings.HasPrefix(ca, a.Node()+".") || !ValidChannel(ca) {
		t.Fatalf("channel name %q does not embed node %q", ca, a.Node())
	}
	if err := b.Send(ca, []byte(`{"x":true}`)); err != nil {
		t.Fatal(err)
	}
	want := `{"type":"message","channel":"` + ca + `","data":{"x":true}}`
	if got := ra.next(t); got != want {
		t.Fatalf("got %s want %s", got, want)
	}
	ra2.none(t, 50*time.Millisecond)
	rb.none(t, 0)
	if n := subscriptions(t, ns, a.directPrefix+"anything"); n != 1 {
		t.Fatalf("%d direct subscriptions for one node, want 1", n)
	}
	// A closed channel gets nothing; sending to it is not an error.
	a.CloseChannel(ca)
	if err := b.Send(ca, []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	ra.none(t, 50*time.Millisecond)
}

func TestDiscardStopsDelivery(t *testing.T) {
	b := newBroker(t, "")
	c, r := open(t, b)
	join(t, b, "g", c)
	other, ro := open(t, b)
	join(t, b, "g", other)
	if err := b.GroupDiscard("g", c); err != nil {
		t.Fatal(err)
	}
	if err := b.GroupDiscard("g", c); err != nil { // idempotent
		t.Fatal(err)
	}
	b.GroupSend("g", []byte(`1`))
	ro.next(t) // the message went out
	r.none(t, 50*time.Millisecond)
}

func TestInvalidInputNeverReachesNATS(t *testing.T) {
	ns := startNATS(t)
	b := newBroker(t, ns.ClientURL())
	c, _ := open(t, b)
	before := ns.NumSubscriptions()
	for _, g := range []string{"", "a..b", ".a", "a.", "a b", "a.*", "a.>", ">", "*", "ü", strings.Repeat("a", 101), "a\x00"} {
		if err := b.GroupAdd(context.Background(), g, c); !errors.Is(err, ErrInvalidGroup) {
			t.Errorf("GroupAdd(%q) = %v, want ErrInvalidGroup", g, err)
		}
		if err := b.GroupSend(g, []byte(`1`)); !errors.Is(err, ErrInvalidGroup) {
			t.Errorf("GroupSend(%q) = %v, want ErrInvalidGroup", g, err)
		}
	}
	for _, ch := range []string{"", "a", "a.b.c", "a.*", "*.>", "a.", ".a"} {
		if err := b.Send(ch, []byte(`1`)); !errors.Is(err, ErrInvalidChannel) {
			t.Errorf("Send(%q) = %v, want ErrInvalidChannel", ch, err)
		}
	}
	for _, data := range []string{"", "{", "1 2", `{"a":1}}`, "nul"} {
		if err := b.GroupSend("g", []byte(data)); !errors.Is(err, ErrInvalidData) {
			t.Errorf("GroupSend(data %q) = %v, want ErrInvalidData", data, err)
		}
	}
	if err := b.GroupAdd(context.Background(), "g", "nosuch.channel"); !errors.Is(err, ErrUnknownChannel) {
		t.Errorf("GroupAdd(unknown channel) = %v", err)
	}
	if got := ns.NumSubscriptions(); got != before {
		t.Fatalf("subscriptions went from %d to %d", before, got)
	}
	if s := b.Stats(); s.Published != 0 {
		t.Fatalf("%d messages published", s.Published)
	}
}

// TestForeignPublisher: any NATS client may publish on the documented
// subjects; non-JSON payloads are dropped, multi-line JSON is compacted.
func TestForeignPublisher(t *testing.T) {
	ns := startNATS(t)
	b := newBroker(t, ns.ClientURL())
	c, r := open(t, b)
	join(t, b, "orders.eu", c)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Publish("groupcast.group.orders.eu", []byte("not json"))
	nc.Publish("groupcast.group.orders.eu", []byte("{\n  \"id\": 7\n}"))
	nc.Publish("groupcast.direct."+c, []byte(`"direct"`))
	nc.Flush()
	// Group and direct messages are fanned out by different goroutines:
	// no order between them is promised.
	got := map[string]bool{r.next(t): true, r.next(t): true}
	for _, want := range []string{`{"type":"message","group":"orders.eu","data":{"id":7}}`, `{"type":"message","channel":"` + c + `","data":"direct"}`} {
		if !got[want] {
			t.Fatalf("got %v, want %s", got, want)
		}
	}
	waitFor(t, time.Second, func() bool { return b.Stats().Invalid == 1 })
}

// TestJoinLeaveHammer: simultaneous first joins and last leaves of one
// group, from many goroutines, never leak nor lose the subscription.
func TestJoinLeaveHammer(t *testing.T) {
	ns := startNATS(t)
	b := newBroker(t, ns.ClientURL())
	subject := b.GroupSubject("hot")
	const workers, rounds = 16, 200
	var wg sync.WaitGroup
	stay := make([]string, workers) // every odd worker ends as a member
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := newInbox()
			c, err := b.NewChannel(r)
			if err != nil {
				t.Error(err)
				return
			}
			for i := range rounds {
				if err := b.GroupAdd(context.Background(), "hot", c); err != nil {
					t.Error(err)
					return
				}
				if i%3 == 0 {
					b.CloseChannel(c)
					if c, err = b.NewChannel(r); err != nil {
						t.Error(err)
						return
					}
					continue
				}
				b.GroupDiscard("hot", c)
			}
			if w%2 == 1 {
				join(t, b, "hot", c)
				stay[w] = c
			}
		}()
	}
	wg.Wait()
	// Exactly one live subscription, and it delivers to every member.
	if n := subscriptions(t, ns, subject); n != 1 {
		t.Fatalf("server has %d subscriptions, want 1", n)
	}
	if s := b.Stats(); s.Subscribes-s.Unsubscribes != 1 {
		t.Fatalf("subscribes %d, unsubscribes %d", s.Subscribes, s.Unsubscribes)
	}
	probe, r := open(t, b)
	join(t, b, "hot", probe)
	b.GroupSend("hot", []byte(`"after"`))
	if got := r.next(t); !strings.Contains(got, `"after"`) {
		t.Fatalf("got %s", got)
	}
	for _, c := range append(stay, probe) {
		if c != "" {
			b.CloseChannel(c)
		}
	}
	waitFor(t, 2*time.Second, func() bool { return subscriptions(t, ns, subject) == 0 })
	b.mu.RLock()
	defer b.mu.RUnlock()
	if len(b.groups) != 0 || len(b.bySub) != 0 {
		t.Fatalf("leaked state: %d groups, %d subscriptions", len(b.groups), len(b.bySub))
	}
}

// TestReconnect: an external server restarts; the broker reconnects by
// itself, its group subscriptions come back, and Ready follows along.
func TestReconnect(t *testing.T) {
	ns := startNATS(t)
	b := newBroker(t, ns.ClientURL())
	c, r := open(t, b)
	join(t, b, "g", c)

	port := ns.Addr().(*net.TCPAddr).Port
	ns.Shutdown()
	ns.WaitForShutdown()
	waitFor(t, 5*time.Second, func() bool { return b.Ready() != nil })
	if err := b.GroupSend("g", []byte(`1`)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("GroupSend while disconnected = %v, want ErrUnavailable", err)
	}
	ns2 := startNATSOn(t, port)
	waitFor(t, 10*time.Second, func() bool { return b.Ready() == nil })
	waitFor(t, 5*time.Second, func() bool { return subscriptions(t, ns2, b.GroupSubject("g")) == 1 })
	if err := b.GroupSend("g", []byte(`2`)); err != nil {
		t.Fatal(err)
	}
	if got := r.next(t); !strings.HasSuffix(got, `"data":2}`) {
		t.Fatalf("got %s", got)
	}
	if b.Stats().Reconnects == 0 {
		t.Fatal("no reconnect counted")
	}
}

func TestCloseIsIdempotentAndRefuses(t *testing.T) {
	b, err := New(Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := open(t, b)
	join(t, b, "g", c)
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.Ready(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ready after Close = %v", err)
	}
	if _, err := b.NewChannel(newInbox()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("NewChannel after Close = %v", err)
	}
	if err := b.GroupSend("g", []byte(`1`)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("GroupSend after Close = %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []Config{
		{Logger: testLogger(t), Node: "a.b"},
		{Logger: testLogger(t), Prefix: "a..b"},
		{Logger: testLogger(t), Prefix: "a.*"},
		{},
	} {
		if b, err := New(cfg); err == nil {
			b.Close(context.Background())
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

func TestEmbeddedListener(t *testing.T) {
	b, err := New(Config{Logger: testLogger(t), ListenAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	c, r := open(t, b)
	join(t, b, "tools", c)
	nc, err := nats.Connect(b.ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Publish("groupcast.group.tools", []byte(`{"from":"cli"}`))
	if got := r.next(t); !strings.Contains(got, `"from":"cli"`) {
		t.Fatalf("got %s", got)
	}
}

// TestOriginRegion: deliveries name the region they were published in,
// whoever publishes with the header; a bad header value is left out.
func TestOriginRegion(t *testing.T) {
	ns := startNATS(t)
	eu, err := New(Config{URL: ns.ClientURL(), Region: "europe-west1", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer eu.Close(context.Background())
	us := newBroker(t, ns.ClientURL())
	c, r := open(t, us)
	join(t, us, "g", c)
	waitFor(t, 5*time.Second, func() bool { return eu.Ready() == nil })
	eu.GroupSend("g", []byte(`1`))
	if got, want := r.next(t), `{"type":"message","group":"g","region":"europe-west1","data":1}`; got != want {
		t.Fatalf("got %s want %s", got, want)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.PublishMsg(&nats.Msg{Subject: "groupcast.group.g", Data: []byte(`2`), Header: nats.Header{RegionHeader: {`x","evil":"1`}}})
	if got, want := r.next(t), `{"type":"message","group":"g","data":2}`; got != want {
		t.Fatalf("got %s want %s", got, want)
	}
	if _, err := New(Config{Region: "not a region", Logger: testLogger(t)}); err == nil {
		t.Fatal("a region with spaces was accepted")
	}
}

// TestFlushCoalescing: first joins of many groups at once all get live
// memberships, with fewer round trips to the server than joins.
func TestFlushCoalescing(t *testing.T) {
	ns := startNATS(t)
	a := newBroker(t, ns.ClientURL())
	b := newBroker(t, ns.ClientURL())
	const n = 200
	chans := make([]string, n)
	inboxes := make([]*inbox, n)
	for i := range chans {
		chans[i], inboxes[i] = open(t, a)
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			join(t, a, fmt.Sprintf("room.%d", i), chans[i])
		}()
	}
	wg.Wait()
	for i := range n {
		if err := b.GroupSend(fmt.Sprintf("room.%d", i), []byte(`1`)); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range inboxes {
		r.next(t)
	}
	a.flusher.mu.Lock()
	rounds := a.flusher.rounds
	a.flusher.mu.Unlock()
	t.Logf("%d first joins took %d flushes", n, rounds)
	if rounds >= n {
		t.Fatalf("%d flushes for %d first joins: none coalesced", rounds, n)
	}
}

// TestCommands: a command reaches the node that owns a channel, a
// broadcast reaches every node.
func TestCommands(t *testing.T) {
	ns := startNATS(t)
	a := newBroker(t, ns.ClientURL())
	b := newBroker(t, ns.ClientURL())
	got := map[*Broker]chan string{a: make(chan string, 4), b: make(chan string, 4)}
	for n, ch := range got {
		a := ch
		n.HandleCommands(func(cmd []byte) { a <- string(cmd) })
	}
	c, _ := open(t, a)
	if err := b.Command(c, []byte("to-a")); err != nil {
		t.Fatal(err)
	}
	if err := a.Broadcast([]byte("to-all")); err != nil {
		t.Fatal(err)
	}
	expect := func(ch chan string, want string) {
		t.Helper()
		select {
		case cmd := <-ch:
			if cmd != want {
				t.Fatalf("got %q want %q", cmd, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no %q", want)
		}
	}
	// Two publishers: no order between their commands.
	first, second := <-got[a], <-got[a]
	if !(first == "to-a" && second == "to-all" || first == "to-all" && second == "to-a") {
		t.Fatalf("node a got %q, %q", first, second)
	}
	expect(got[b], "to-all")
	if err := a.Command("not-a-channel", nil); !errors.Is(err, ErrInvalidChannel) {
		t.Fatalf("bad channel: %v", err)
	}
}
