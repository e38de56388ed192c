package infra

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/apptest"
	"github.com/groupcast/groupcast/protocol"
)

// node is a groupcast instance in the test process: the broker that the app runs,
// a client of its region's NATS servers like an instance on Cloud Run.
type node struct {
	name, region string
	b            *broker.Broker
}

// startNode starts a node named name in region, connected to natsURL, and waits until
// it is connected. It is closed when the test ends.
func startNode(t *testing.T, name, region, natsURL string) *node {
	t.Helper()
	b, err := broker.New(broker.Config{
		URL:    natsURL,
		Node:   name,
		Region: region,
		Logger: apptest.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Close(ctx)
	})
	waitUntil(t, 10*time.Second, name+" connected", func() bool { return b.Ready() == nil })
	return &node{name: name, region: region, b: b}
}

// payload is the data the tests publish: who published it, and its sequence number.
type payload struct {
	From string `json:"from"`
	Seq  int    `json:"seq"`
}

// publish sends message seq of n into group.
func (n *node) publish(group string, seq int) error {
	data, _ := json.Marshal(payload{From: n.name, Seq: seq})
	return n.b.GroupSend(group, data)
}

// delivery is one message frame a member received.
type delivery struct {
	group, region string
	payload
	at time.Time
}

// inbox records deliveries; member and wsMember fill one.
type inbox struct {
	name string
	mu   sync.Mutex
	got  []delivery
	bad  []string // frames that did not parse
}

// add records one frame of the protocol (a single JSON object) received at at.
func (in *inbox) add(frame []byte, at time.Time) {
	f, err := protocol.Decode(frame)
	var p payload
	if err == nil && f.Data != nil {
		err = json.Unmarshal(f.Data, &p)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if err != nil {
		in.bad = append(in.bad, string(frame))
		return
	}
	if f.Type == protocol.TypeMessage {
		in.got = append(in.got, delivery{group: f.Group, region: f.Region, payload: p, at: at})
	}
}

// deliveries returns a copy of what has been received so far.
func (in *inbox) deliveries() []delivery {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.got)
}

// seqs returns the sequence numbers received from publisher from in group, in
// arrival order.
func (in *inbox) seqs(group, from string) []int {
	var s []int
	for _, d := range in.deliveries() {
		if d.group == group && d.From == from {
			s = append(s, d.Seq)
		}
	}
	return s
}

// checkFrames fails the test, when it ends, if any frame did not parse.
func (in *inbox) checkFrames(t *testing.T) {
	t.Cleanup(func() {
		in.mu.Lock()
		defer in.mu.Unlock()
		for _, f := range in.bad {
			t.Errorf("%s: a frame that is not one JSON object: %q", in.name, f)
		}
	})
}

// has reports whether message seq of publisher from in group has been received.
func (in *inbox) has(group, from string, seq int) bool {
	return slices.Contains(in.seqs(group, from), seq)
}

// receiver is a member of a group whose deliveries the tests read: a member in this
// process, or a WebSocket client.
type receiver interface {
	deliveries() []delivery
	seqs(group, from string) []int
	has(group, from string, seq int) bool
	String() string
}

// member is one channel of a node, joined to groups; it records what it receives.
type member struct {
	inbox
	node    *node
	channel string
}

// Receive implements broker.Receiver.
func (m *member) Receive(d broker.Delivery) { m.add(d.Frame, time.Now()) }

// newMember opens a channel on n that records its deliveries.
func newMember(t *testing.T, n *node) *member {
	t.Helper()
	m := &member{node: n}
	ch, err := n.b.NewChannel(m)
	if err != nil {
		t.Fatal(err)
	}
	m.channel = ch
	m.name = m.String()
	m.checkFrames(t)
	return m
}

// join adds m to group; when it returns the node's NATS server has the interest.
func (m *member) join(t *testing.T, group string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.node.b.GroupAdd(ctx, group, m.channel); err != nil {
		t.Fatalf("%s: join %s: %v", m.node.name, group, err)
	}
}

func (m *member) String() string { return fmt.Sprintf("%s/%s", m.node.name, m.channel) }

// waitUntil polls cond every few milliseconds until it holds, and fails the test with
// what when timeout passes first.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// publisher publishes message seq of the tests' payload, from name, into a group.
type publisher struct {
	name    string
	publish func(group string, seq int) error
}

// pubOf is the publisher of node n.
func pubOf(n *node) publisher { return publisher{name: n.name, publish: n.publish} }

// markUntilDelivered publishes markers (sequence numbers below zero) from pub to group
// until every receiver in to has one, so that interest has reached pub's server from
// every receiver's node, through routes and gateways. It then publishes a last marker
// and waits until every receiver has it: no earlier marker is still on its way.
func markUntilDelivered[R receiver](t *testing.T, pub publisher, group string, to []R) {
	t.Helper()
	gotMarker := func(r R, want func(int) bool) bool {
		return slices.ContainsFunc(r.seqs(group, pub.name), want)
	}
	deadline := time.Now().Add(10 * time.Second)
	seq := 0
	for {
		seq--
		if err := pub.publish(group, seq); err != nil {
			t.Fatalf("%s: %v", pub.name, err)
		}
		time.Sleep(5 * time.Millisecond)
		all := true
		for _, r := range to {
			all = all && gotMarker(r, func(s int) bool { return s < 0 })
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("markers from %s to %s did not reach every member", pub.name, group)
		}
	}
	seq--
	if err := pub.publish(group, seq); err != nil {
		t.Fatalf("%s: %v", pub.name, err)
	}
	for _, r := range to {
		waitUntil(t, 5*time.Second, fmt.Sprintf("last marker from %s at %s", pub.name, r), func() bool {
			return gotMarker(r, func(s int) bool { return s == seq })
		})
	}
}

// sendRecord is one message a flow published: when, and whether NATS took it.
type sendRecord struct {
	at time.Time
	ok bool
}

// flow publishes messages 1, 2, ... from one publisher into a group, one every
// period, recording each, until stopped.
type flow struct {
	pub   publisher
	group string
	stopc chan struct{}
	done  chan struct{}

	mu   sync.Mutex
	sent []sendRecord // entry seq-1 is message seq
}

// startFlow starts publishing from pub into group.
func startFlow(pub publisher, group string, period time.Duration) *flow {
	f := &flow{pub: pub, group: group, stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		for seq := 1; ; seq++ {
			select {
			case <-f.stopc:
				return
			default:
			}
			at := time.Now()
			err := pub.publish(group, seq)
			f.mu.Lock()
			f.sent = append(f.sent, sendRecord{at: at, ok: err == nil})
			f.mu.Unlock()
			time.Sleep(period)
		}
	}()
	return f
}

// published returns how many messages the flow has published so far.
func (f *flow) published() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sent)
}

// records returns what the flow has published so far.
func (f *flow) records() []sendRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sent)
}

// stop ends the flow and returns what it published.
func (f *flow) stop() []sendRecord {
	close(f.stopc)
	<-f.done
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sent)
}

// lastOK returns the last message of sent that NATS took, or 0.
func lastOK(sent []sendRecord) int {
	for i := len(sent) - 1; i >= 0; i-- {
		if sent[i].ok {
			return i + 1
		}
	}
	return 0
}

// loss is what a member missed of one flow's messages.
type loss struct {
	missed  int           // messages NATS took that never arrived
	longest time.Duration // the longest run of them: from the first's publish to the next delivered message's
	first   time.Time     // publish time of the first missed message
	last    time.Time     // publish time of the last missed message
	pause   time.Duration // the longest wait between two of the flow's messages arriving
}

// lossOf compares what r received from flow f with what f sent (sent, once stopped),
// over the messages published from `from` on (zero: all).
func lossOf(r receiver, f *flow, sent []sendRecord, from time.Time) loss {
	got := map[int]time.Time{}
	for _, d := range r.deliveries() {
		if d.group == f.group && d.From == f.pub.name && d.Seq > 0 {
			got[d.Seq] = d.at
		}
	}
	var l loss
	var runStart time.Time
	var prevArrival time.Time
	for seq := 1; seq <= len(sent); seq++ {
		s := sent[seq-1]
		if s.at.Before(from) {
			continue
		}
		if at, ok := got[seq]; ok {
			if !runStart.IsZero() {
				l.longest = max(l.longest, s.at.Sub(runStart))
				runStart = time.Time{}
			}
			if !prevArrival.IsZero() {
				l.pause = max(l.pause, at.Sub(prevArrival))
			}
			prevArrival = at
			continue
		}
		if !s.ok {
			continue
		}
		l.missed++
		if l.first.IsZero() {
			l.first = s.at
		}
		l.last = s.at
		if runStart.IsZero() {
			runStart = s.at
		}
	}
	if !runStart.IsZero() {
		l.longest = max(l.longest, time.Since(runStart))
	}
	return l
}
