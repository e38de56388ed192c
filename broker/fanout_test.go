package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
)

// orderly is an ImmediateReceiver that records the order of the messages
// it gets ({"i":n} payloads), whichever path they take: with decline set
// it declines every decline-th immediate delivery, which then comes
// through Receive, and now and then yields, so that goroutines sharing a
// fan-out interleave; with hold set, ReceiveNow says so on entered and
// waits until hold is closed.
type orderly struct {
	decline int
	hold    chan struct{}
	entered chan struct{}

	mu      sync.Mutex
	got     []int
	calls   int
	batches []int // len(ds) of each ReceiveNow taken
}

func (r *orderly) Receive(d Delivery) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.record(d.Frame)
}

func (r *orderly) ReceiveNow(ds []Delivery) bool {
	if r.hold != nil {
		select {
		case r.entered <- struct{}{}:
		default:
		}
		<-r.hold
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.calls++; r.decline > 0 && r.calls%r.decline == 0 {
		return false
	}
	if r.decline > 0 && r.calls%7 == 0 {
		runtime.Gosched()
	}
	r.batches = append(r.batches, len(ds))
	for _, d := range ds {
		r.record(d.Frame)
	}
	return true
}

// record notes the message of frame: its data is {"i":n}, last in the
// frame (read without a JSON decoder: the race detector makes one slow).
func (r *orderly) record(frame []byte) {
	_, data, _ := bytes.Cut(frame, []byte(`"data":{"i":`))
	i, err := strconv.Atoi(string(bytes.TrimSuffix(data, []byte("}}"))))
	if err != nil || !json.Valid(frame) {
		panic(fmt.Sprintf("frame %q", frame))
	}
	r.got = append(r.got, i)
}

// held opens a channel in group whose receiver, an orderly, waits in
// ReceiveNow until release: the dispatcher then holds the first message
// while more queue up behind it.
func held(t *testing.T, b *Broker, group string) (r *orderly, channel string, release func()) {
	t.Helper()
	r = &orderly{hold: make(chan struct{}), entered: make(chan struct{}, 1)}
	var once sync.Once
	release = func() { once.Do(func() { close(r.hold) }) }
	t.Cleanup(release) // before the broker closes, which waits for the dispatcher
	channel, err := b.NewChannel(r)
	if err != nil {
		t.Fatal(err)
	}
	join(t, b, group, channel)
	return r, channel, release
}

// waitEntered waits until r's ReceiveNow holds a delivery.
func (r *orderly) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-r.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery held")
	}
}

func (r *orderly) received() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.got...)
}

// TestFanoutWorkersKeepOrder: a group large enough to be split over the
// fan-out workers gets every message, each member in publish order,
// whether its deliveries were written at once or queued, while messages
// merged when they queue up.
func TestFanoutWorkersKeepOrder(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4)) // three workers, whatever the machine
	b := newBroker(t, "")
	const members, n = 4 * minShare, 200
	rs := make([]*orderly, members)
	for i := range rs {
		rs[i] = &orderly{decline: 3}
		ch, err := b.NewChannel(rs[i])
		if err != nil {
			t.Fatal(err)
		}
		join(t, b, "big", ch)
	}
	for i := range n {
		if err := b.GroupSend("big", fmt.Appendf(nil, `{"i":%d}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	for m, r := range rs {
		waitFor(t, 30*time.Second, func() bool { return len(r.received()) >= n })
		for i, got := range r.received() {
			if got != i {
				t.Fatalf("member %d: message %d is %d: reordered", m, i, got)
			}
		}
	}
	if got := b.Stats().Delivered; got != members*n {
		t.Fatalf("%d deliveries counted, want %d", got, members*n)
	}
}

// TestFanoutMergesQueuedMessages: messages of a group that queue up while
// the fan-out is busy reach each member together, in order, in one
// ReceiveNow; a message alone in the queue goes out alone.
func TestFanoutMergesQueuedMessages(t *testing.T) {
	b := newBroker(t, "")
	r, _, release := held(t, b, "g")
	send := func(i int) {
		t.Helper()
		if err := b.GroupSend("g", fmt.Appendf(nil, `{"i":%d}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	send(0)
	r.waitEntered(t) // the dispatcher holds message 0: the next ones queue behind it
	for i := 1; i <= 10; i++ {
		send(i)
	}
	queue := b.shard("g")
	waitFor(t, 5*time.Second, func() bool { return len(queue) == 10 })
	release()
	waitFor(t, 5*time.Second, func() bool { return len(r.received()) == 11 })
	send(11)
	waitFor(t, 5*time.Second, func() bool { return len(r.received()) == 12 })
	r.mu.Lock()
	batches := fmt.Sprint(r.batches)
	r.mu.Unlock()
	if batches != "[1 10 1]" {
		t.Fatalf("ReceiveNow got batches of %s, want [1 10 1]: alone, the ten that queued, alone", batches)
	}
	if got := fmt.Sprint(r.received()); got != "[0 1 2 3 4 5 6 7 8 9 10 11]" {
		t.Fatalf("received %s", got)
	}
}

// TestFanoutMergeBounds: merging stops at a message of another group in
// the same dispatch queue and at one that leaves out another channel, so
// each such message is fanned out with its own rules.
func TestFanoutMergeBounds(t *testing.T) {
	b := newBroker(t, "")
	r, ch, release := held(t, b, "g")
	other, err := b.NewChannel(&orderly{})
	if err != nil {
		t.Fatal(err)
	}
	join(t, b, "g", other)
	sibling := "h"
	for i := 0; b.shard(sibling) != b.shard("g"); i++ {
		sibling = fmt.Sprint("h", i) // a group whose messages queue with g's
	}
	join(t, b, sibling, ch)
	send := func(group string, i int, except string) {
		t.Helper()
		if _, err := b.GroupPublishWith(group, fmt.Appendf(nil, `{"i":%d}`, i), PublishOptions{Except: except}); err != nil {
			t.Fatal(err)
		}
	}
	send("g", 0, "")
	r.waitEntered(t)
	send("g", 1, "")
	send("g", 2, "")
	send(sibling, 100, "")
	send("g", 3, other)
	send("g", 4, other)
	send("g", 5, ch) // not for r
	send("g", 6, "")
	waitFor(t, 5*time.Second, func() bool { return len(b.shard("g")) == 7 })
	release()
	waitFor(t, 5*time.Second, func() bool { return len(r.received()) == 7 })
	r.mu.Lock()
	defer r.mu.Unlock()
	if got := fmt.Sprint(r.batches, r.got); got != "[1 2 1 2 1] [0 1 2 100 3 4 6]" {
		t.Fatalf("batches and messages %s, want [1 2 1 2 1] [0 1 2 100 3 4 6]", got)
	}
}

// TestFanoutDropsInvalidInBatch: a message that is not JSON, merged with
// valid ones, is dropped alone.
func TestFanoutDropsInvalidInBatch(t *testing.T) {
	b := newBroker(t, "")
	r, _, release := held(t, b, "g")
	subject := b.GroupSubject("g")
	for i, p := range []string{`{"i":0}`, `{"i":1}`, `not json`, `{"i":3}`} {
		if err := b.nc.Publish(subject, []byte(p)); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			r.waitEntered(t)
		}
	}
	waitFor(t, 5*time.Second, func() bool { return len(b.shard("g")) == 3 })
	release()
	waitFor(t, 5*time.Second, func() bool { return len(r.received()) == 3 })
	if got := fmt.Sprint(r.received()); got != "[0 1 3]" {
		t.Fatalf("received %s, want [0 1 3]", got)
	}
	if got := b.Stats().Invalid; got != 1 {
		t.Fatalf("%d invalid, want 1", got)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if fmt.Sprint(r.batches) != "[1 2]" {
		t.Fatalf("batches %v, want [1 2]", r.batches)
	}
}

// TestCloseStopsFanoutWorkers: the fan-out workers are the Broker's, and
// Close ends them.
func TestCloseStopsFanoutWorkers(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	before := goleak.IgnoreCurrent()
	b, err := New(Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	workers := 0
	buf := make([]byte, 1<<20)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "broker.(*Broker).fanWorker") {
			workers++
		}
	}
	if workers != 3 {
		t.Errorf("%d fan-out workers at GOMAXPROCS 4, want 3", workers)
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, before)
}

// trigger is an orderly whose first ReceiveNow calls fire: the fan-out is
// then under way when fire returns.
type trigger struct {
	orderly
	fire func()
}

func (r *trigger) ReceiveNow(ds []Delivery) bool {
	if f := r.fire; f != nil {
		r.fire = nil
		f()
	}
	return r.orderly.ReceiveNow(ds)
}

// TestSweepTakesMessagesArrivingMidFanout: on one core, messages of a
// large group that come in while its fan-out is under way join it: the
// members not reached yet get them merged with the first, in one write;
// the members before get them in one more pass; every member in order.
func TestSweepTakesMessagesArrivingMidFanout(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // no fan-out workers
	b := newBroker(t, "")
	const members = sweepMembers + yieldEvery/2
	send := func(i int) {
		t.Helper()
		if err := b.GroupSend("big", fmt.Appendf(nil, `{"i":%d}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	rs := make([]*trigger, members)
	for i := range rs {
		rs[i] = &trigger{}
		ch, err := b.NewChannel(rs[i])
		if err != nil {
			t.Fatal(err)
		}
		join(t, b, "big", ch)
	}
	queue := b.shard("big")
	rs[0].fire = func() { // on the dispatcher: message 0 is being fanned out
		send(1)
		send(2)
		waitFor(t, 5*time.Second, func() bool { return len(queue) == 2 })
	}
	send(0)
	for m, r := range rs {
		waitFor(t, 10*time.Second, func() bool { return len(r.received()) >= 3 })
		r.mu.Lock()
		batches, got := fmt.Sprint(r.batches), fmt.Sprint(r.got)
		r.mu.Unlock()
		want := "[3]" // reached after 1 and 2 came in: all three in one write
		if m < yieldEvery-1 {
			want = "[1 2]" // reached before: 0 alone, then 1 and 2 in the next pass
		}
		if batches != want || got != "[0 1 2]" {
			t.Fatalf("member %d: batches %s, messages %s; want batches %s, messages [0 1 2]", m, batches, got, want)
		}
	}
	waitFor(t, 5*time.Second, func() bool { return b.Stats().Delivered == members*3 })
}

// relay is an orderly whose every ReceiveNow, while next is set, calls
// next: a member that brings the group's next message during each pass.
type relay struct {
	orderly
	next func() bool // false: no more
}

func (r *relay) ReceiveNow(ds []Delivery) bool {
	if r.next != nil && !r.next() {
		r.next = nil
	}
	return r.orderly.ReceiveNow(ds)
}

// relayed publishes message i of the group "big" as a relay does, on the
// dispatcher, which holds the group's lock: straight on the Broker's NATS
// connection, as no Receiver would call the Broker there (GroupSend takes
// the Broker's lock, which a join holds while it waits for the group's).
func relayed(b *Broker, i int) error {
	return b.nc.Publish(b.groupPrefix+"big", fmt.Appendf(nil, `{"i":%d}`, i))
}

// queued waits until queue holds at least n messages, on the dispatcher:
// it reports an error rather than fail the test there (which would end the
// dispatcher with its group's lock held) and returns false after 5 s.
func queued(t *testing.T, queue chan *nats.Msg, n int) bool {
	for deadline := time.Now().Add(5 * time.Second); len(queue) < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("%d messages queued after 5 s, want %d", len(queue), n)
			return false
		}
	}
	return true
}

// sweepGroup starts a Broker on one core with a group of sweepMembers+8
// members, the first a relay that calls next; it returns the broker, the
// members and a count of the fan-outs.
func sweepGroup(t *testing.T, next func(b *Broker) bool) (*Broker, []*orderly, *atomic.Int32) {
	t.Helper()
	prev := runtime.GOMAXPROCS(1) // no fan-out workers
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	fanouts := &atomic.Int32{}
	b, err := New(Config{Logger: testLogger(t), OnFanout: func(int, time.Duration) { fanouts.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	first := &relay{}
	first.next = func() bool { return next(b) }
	rs := []*orderly{&first.orderly}
	for range sweepMembers + 7 {
		rs = append(rs, &orderly{})
	}
	for i, r := range rs {
		var recv Receiver = r
		if i == 0 {
			recv = first
		}
		ch, err := b.NewChannel(recv)
		if err != nil {
			t.Fatal(err)
		}
		join(t, b, "big", ch)
	}
	return b, rs, fanouts
}

// TestSweepGoesOnWhileMessagesCome: a sweep takes the group's messages for
// as long as they keep coming, past maxMerge (it forgets what every member
// has after each pass), rather than ending and making the messages that
// come meanwhile wait for its last pass; every member gets every message,
// in order.
func TestSweepGoesOnWhileMessagesCome(t *testing.T) {
	const total = 2*maxMerge + 10
	sent := 0
	b, rs, fanouts := sweepGroup(t, func(b *Broker) bool {
		// On the dispatcher, once a pass: the next message, queued
		// before the pass's look at the queue.
		if sent == total {
			return false
		}
		if err := relayed(b, sent); err != nil {
			t.Error(err)
		}
		sent++
		return queued(t, b.shard("big"), 1)
	})
	if err := b.GroupSend("big", []byte(`{"i":-1}`)); err != nil {
		t.Fatal(err)
	}
	want := make([]int, 0, total+1)
	want = append(want, -1)
	for i := range total {
		want = append(want, i)
	}
	for m, r := range rs {
		waitFor(t, 10*time.Second, func() bool { return len(r.received()) >= total+1 })
		if got := r.received(); !slices.Equal(got, want) {
			t.Fatalf("member %d got %v, want -1 then 0..%d in order", m, got, total-1)
		}
	}
	waitFor(t, 5*time.Second, func() bool { return fanouts.Load() > 0 }) // counted once the sweep returns
	if n := fanouts.Load(); n != 1 {
		t.Fatalf("%d fan-outs for %d messages that kept coming during it; want one sweep", n, total+1)
	}
}

// TestJoinEndsSweep: a join into a group whose sweep would go on for as
// long as its messages come gets in at once, and gets the messages
// published after it.
func TestJoinEndsSweep(t *testing.T) {
	var stop atomic.Bool
	i := 0
	b, rs, _ := sweepGroup(t, func(b *Broker) bool {
		if stop.Load() {
			return false
		}
		if err := relayed(b, i); err != nil {
			t.Error(err)
		}
		i++
		return queued(t, b.shard("big"), 1)
	})
	defer stop.Store(true)
	if err := b.GroupSend("big", []byte(`{"i":-1}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return len(rs[len(rs)-1].received()) > 20 }) // the sweep is under way
	late := newInbox()
	ch, err := b.NewChannel(late)
	if err != nil {
		t.Fatal(err)
	}
	joined := make(chan error, 1)
	go func() { joined <- b.GroupAdd(context.Background(), "big", ch) }()
	select {
	case err := <-joined:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		stop.Store(true) // let the sweep end, and the join with it
		<-joined
		t.Fatal("a join waited for a sweep that went on for as long as messages came")
	}
	stop.Store(true)
	if err := b.GroupSend("big", []byte(`{"i":-2}`)); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(5 * time.Second)
	for {
		select {
		case f := <-late.frames:
			if bytes.Contains(f, []byte(`{"i":-2}`)) {
				return
			}
		case <-deadline:
			t.Fatal("the member that joined during the sweep did not get a message published after its join")
		}
	}
}

// TestJoinWaitingForFanoutHoldsUpNoOne: a join into a group whose fan-out
// is under way waits for it, but a publish, a join into another group and
// Stats go on meanwhile: the join does not wait holding the Broker's lock.
func TestJoinWaitingForFanoutHoldsUpNoOne(t *testing.T) {
	b := newBroker(t, "")
	r, _, release := held(t, b, "busy")
	if err := b.GroupSend("busy", []byte(`{"i":0}`)); err != nil {
		t.Fatal(err)
	}
	r.waitEntered(t) // the fan-out holds the group's lock until release
	late, err := b.NewChannel(newInbox())
	if err != nil {
		t.Fatal(err)
	}
	other, err := b.NewChannel(newInbox())
	if err != nil {
		t.Fatal(err)
	}
	b.mu.RLock()
	g := b.groups["busy"]
	b.mu.RUnlock()
	joined := make(chan error, 1)
	go func() { joined <- b.GroupAdd(context.Background(), "busy", late) }()
	waitFor(t, 5*time.Second, func() bool { return g.waiting.Load() == 1 }) // the join waits for the lock
	done := make(chan error, 1)
	go func() {
		if err := b.GroupSend("elsewhere", []byte(`{"i":1}`)); err != nil {
			done <- err
			return
		}
		_ = b.Stats()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- b.GroupAdd(ctx, "quiet", other)
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		release()
		<-done
		t.Fatal("a publish, Stats and another group's join waited for a join that waits for a fan-out")
	}
	select {
	case err := <-joined:
		t.Fatalf("the join into the busy group ended (%v) before its fan-out did", err)
	default:
	}
	release()
	if err := <-joined; err != nil {
		t.Fatal(err)
	}
}

// TestCloseDuringJoinLeavesNoMember: a channel closed while its join is
// under way is not left a member of the group, whichever comes first.
func TestCloseDuringJoinLeavesNoMember(t *testing.T) {
	b := newBroker(t, "")
	stay, err := b.NewChannel(newInbox())
	if err != nil {
		t.Fatal(err)
	}
	join(t, b, "g", stay) // keeps the group and its subscription
	var wg sync.WaitGroup
	for range 300 {
		ch, err := b.NewChannel(newInbox())
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(2)
		go func() { defer wg.Done(); _ = b.GroupAdd(context.Background(), "g", ch) }()
		go func() { defer wg.Done(); runtime.Gosched(); b.CloseChannel(ch) }()
	}
	wg.Wait()
	b.mu.RLock()
	g := b.groups["g"]
	b.mu.RUnlock()
	g.mu.RLock()
	defer g.mu.RUnlock()
	if len(g.members) != 1 || g.members[0].name != stay || len(g.index) != 1 {
		names := make([]string, 0, len(g.members))
		for _, m := range g.members {
			names = append(names, m.name)
		}
		t.Fatalf("members after 300 joins racing their channel's close: %v (index %d); want only %s", names, len(g.index), stay)
	}
}
