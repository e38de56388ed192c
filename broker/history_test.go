package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func historyBroker(t testing.TB, url string, size int, rules ...PolicyRule) *Broker {
	t.Helper()
	b, err := New(Config{URL: url, Logger: testLogger(t), Policies: rules, HistorySize: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	waitFor(t, 5*time.Second, func() bool { return b.Ready() == nil })
	return b
}

// delivery is one message as a member sees it.
type delivery struct {
	Group  string
	Offset uint64
	Epoch  string
	Data   json.RawMessage
}

// deliveries reads n messages from r (frames may hold several).
func (r *inbox) deliveries(t testing.TB, n int) []delivery {
	t.Helper()
	var out []delivery
	for len(out) < n {
		for _, line := range strings.Split(r.next(t), "\n") {
			var d delivery
			if err := json.Unmarshal([]byte(line), &d); err != nil {
				t.Fatalf("frame %q: %v", line, err)
			}
			out = append(out, d)
		}
	}
	return out
}

func publishN(t testing.TB, b *Broker, group string, from, n int) []Receipt {
	t.Helper()
	var rs []Receipt
	for i := from; i < from+n; i++ {
		r, err := b.GroupPublish(group, []byte(fmt.Sprint(i)), "")
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	return rs
}

// TestRecoverableResume: a member that left resumes on another node from
// its last offset and gets every message it missed, once, in order, then
// live ones.
func TestRecoverableResume(t *testing.T) {
	ns := startJetStreamNATS(t)
	a := historyBroker(t, ns.ClientURL(), 100, PolicyRule{"room.*", Recoverable})
	b := historyBroker(t, ns.ClientURL(), 100, PolicyRule{"room.*", Recoverable})
	c, r := open(t, a)
	join(t, a, "room.x", c)
	sent := publishN(t, a, "room.x", 0, 5)
	got := r.deliveries(t, 5)
	for i, d := range got {
		if d.Offset != sent[i].Offset || d.Epoch != sent[i].Epoch || string(d.Data) != fmt.Sprint(i) {
			t.Fatalf("delivery %d: %+v, sent %+v", i, d, sent[i])
		}
	}
	a.CloseChannel(c)
	missed := publishN(t, a, "room.x", 5, 5)

	c2, r2 := open(t, b)
	rec, err := b.GroupJoin(context.Background(), "room.x", c2, &Since{Offset: got[4].Offset, Epoch: got[4].Epoch})
	if err != nil || !rec.Recovered || rec.Replayed != 5 {
		t.Fatalf("resume: %+v, %v", rec, err)
	}
	after := publishN(t, b, "room.x", 10, 2)
	all := r2.deliveries(t, 7)
	want := append(missed, after...)
	for i, d := range all {
		if d.Offset != want[i].Offset {
			t.Fatalf("message %d: offset %d, want %d", i, d.Offset, want[i].Offset)
		}
	}
	r2.none(t, 100*time.Millisecond)
	// Groups outside the policy stay at most once, without offsets.
	c3, r3 := open(t, b)
	join(t, b, "plain", c3)
	b.GroupSend("plain", []byte(`1`))
	if got := r3.next(t); strings.Contains(got, "offset") {
		t.Fatalf("plain group delivery %s", got)
	}
}

// TestRecoveryGaps: past the window, or in another epoch, the join says
// it did not recover, and replays nothing.
func TestRecoveryGaps(t *testing.T) {
	b := historyBroker(t, "", 3, PolicyRule{"*", Recoverable})
	first := publishN(t, b, "g", 0, 1)[0]
	publishN(t, b, "g", 1, 10) // the window holds 3: first is gone
	for name, since := range map[string]Since{
		"window": {Offset: first.Offset, Epoch: first.Epoch},
		"epoch":  {Offset: first.Offset + 9, Epoch: "another"},
	} {
		c, r := open(t, b)
		rec, err := b.GroupJoin(context.Background(), "g", c, &since)
		if err != nil || rec.Recovered || rec.Replayed != 0 {
			t.Fatalf("%s: %+v %v", name, rec, err)
		}
		r.none(t, 50*time.Millisecond)
	}
	// From the oldest message kept (the ninth of eleven): the two after it.
	c, r := open(t, b)
	rec, err := b.GroupJoin(context.Background(), "g", c, &Since{Offset: first.Offset + 8, Epoch: first.Epoch})
	if err != nil || !rec.Recovered || rec.Replayed != 2 {
		t.Fatalf("within: %+v %v", rec, err)
	}
	r.deliveries(t, 2)
}

func TestLatest(t *testing.T) {
	b := historyBroker(t, "", 100, PolicyRule{"price.*", Latest})
	publishN(t, b, "price.eur", 0, 3)
	c, r := open(t, b)
	join(t, b, "price.eur", c)
	if d := r.deliveries(t, 1)[0]; string(d.Data) != "2" {
		t.Fatalf("joiner got %s, want the newest (2)", d.Data)
	}
	r.none(t, 50*time.Millisecond)
	publishN(t, b, "price.eur", 3, 1)
	if d := r.deliveries(t, 1)[0]; string(d.Data) != "3" {
		t.Fatalf("live %s", d.Data)
	}
}

func TestIdempotentPublish(t *testing.T) {
	b := historyBroker(t, "", 100, PolicyRule{"orders", Recoverable})
	c, r := open(t, b)
	join(t, b, "orders", c)
	one, err := b.GroupPublish("orders", []byte(`{"id":1}`), "key-1")
	if err != nil || one.Duplicate {
		t.Fatalf("first: %+v %v", one, err)
	}
	two, err := b.GroupPublish("orders", []byte(`{"id":1}`), "key-1")
	if err != nil || !two.Duplicate || two.Offset != one.Offset {
		t.Fatalf("retry: %+v %v", two, err)
	}
	r.deliveries(t, 1)
	r.none(t, 100*time.Millisecond)
	if _, err := b.GroupPublish("other", []byte(`1`), "k"); !errors.Is(err, ErrIdempotencyUnsupported) {
		t.Fatalf("key on an at-most-once group: %v", err)
	}
}

// TestRecoveryRace: live messages keep coming while a member resumes;
// it sees every offset after its own exactly once, in order.
func TestRecoveryRace(t *testing.T) {
	b := historyBroker(t, "", 10_000, PolicyRule{"*", Recoverable})
	start := publishN(t, b, "hot", 0, 200)
	var mu sync.Mutex
	var sent []uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			rc, err := b.GroupPublish("hot", []byte(fmt.Sprint(i)), "")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			sent = append(sent, rc.Offset)
			mu.Unlock()
		}
	}()
	time.Sleep(20 * time.Millisecond)
	c, r := open(t, b)
	rec, err := b.GroupJoin(context.Background(), "hot", c, &Since{Offset: start[49].Offset, Epoch: start[49].Epoch})
	time.Sleep(50 * time.Millisecond)
	close(stop)
	<-done
	if err != nil || !rec.Recovered {
		t.Fatalf("%+v %v", rec, err)
	}
	mu.Lock()
	want := len(start) - 50 + len(sent)
	last := sent[len(sent)-1]
	mu.Unlock()
	got := r.deliveries(t, want)
	prev := start[49].Offset
	for i, d := range got {
		if d.Offset != prev+1 {
			t.Fatalf("delivery %d: offset %d after %d", i, d.Offset, prev)
		}
		prev = d.Offset
	}
	if prev != last {
		t.Fatalf("ended at %d, last published %d", prev, last)
	}
	r.none(t, 50*time.Millisecond)
}

func TestHistory(t *testing.T) {
	b := historyBroker(t, "", 100, PolicyRule{"log", Recoverable})
	rs := publishN(t, b, "log", 0, 5)
	msgs, epoch, err := b.History(context.Background(), "log", rs[1].Offset, 2)
	if err != nil || epoch != rs[0].Epoch || len(msgs) != 2 || msgs[0].Offset != rs[2].Offset || string(msgs[1].Data) != "3" {
		t.Fatalf("%+v %s %v", msgs, epoch, err)
	}
	if _, _, err := b.History(context.Background(), "nolog", 0, 2); !errors.Is(err, ErrNoHistory) {
		t.Fatalf("no history: %v", err)
	}
}

// BenchmarkRecovery measures a resume that replays 10,000 missed messages.
func BenchmarkRecovery(b *testing.B) {
	br := historyBroker(b, "", 20_000, PolicyRule{"*", Recoverable})
	first := publishN(b, br, "big", 0, 1)[0]
	publishN(b, br, "big", 1, 10_000)
	b.ResetTimer()
	for b.Loop() {
		c, err := br.NewChannel(&discard{})
		if err != nil {
			b.Fatal(err)
		}
		rec, err := br.GroupJoin(context.Background(), "big", c, &Since{Offset: first.Offset, Epoch: first.Epoch})
		if err != nil || rec.Replayed != 10_000 {
			b.Fatalf("%+v %v", rec, err)
		}
		br.CloseChannel(c)
	}
}

// TestHistoryReset: when the history is reset (the stream deleted), the
// broker makes it anew, members are told of the gap with the new epoch,
// and readiness follows the stream.
// gapFrame is a {"type":"gap"} frame.
type gapFrame struct{ Type, Group, Epoch string }

// awaitGap skips r's frames until a gap frame, which the history watch
// sends within a few checks.
func awaitGap(t *testing.T, r *inbox) gapFrame {
	t.Helper()
	var gap gapFrame
	deadline := time.After(3 * historyCheckInterval)
	for gap.Type != "gap" {
		select {
		case f := <-r.frames:
			json.Unmarshal(f, &gap)
		case <-deadline:
			t.Fatal("no gap frame")
		}
	}
	return gap
}

func TestHistoryReset(t *testing.T) {
	b := historyBroker(t, "", 100, PolicyRule{"*", Recoverable})
	c, r := open(t, b)
	join(t, b, "g", c)
	first := publishN(t, b, "g", 0, 1)[0]
	r.deliveries(t, 1)
	if err := b.history.js.DeleteStream(b.history.streams[Recoverable].name); err != nil {
		t.Fatal(err)
	}
	gap := awaitGap(t, r)
	if gap.Group != "g" || gap.Epoch == first.Epoch || gap.Epoch == "" {
		t.Fatalf("gap %+v after epoch %s", gap, first.Epoch)
	}
	if err := b.Ready(); err != nil {
		t.Fatalf("not ready after the reset: %v", err)
	}
	// The member that stayed hears the new history's messages, though
	// their offsets start again.
	next := publishN(t, b, "g", 1, 1)[0]
	if d := r.deliveries(t, 1)[0]; string(d.Data) != "1" || d.Offset != next.Offset || d.Epoch != gap.Epoch {
		t.Fatalf("after the reset: %+v, want offset %d of epoch %s", d, next.Offset, gap.Epoch)
	}
	// A resume from the old epoch is told it did not recover.
	c2, _ := open(t, b)
	if rec, err := b.GroupJoin(context.Background(), "g", c2, &Since{Offset: first.Offset, Epoch: first.Epoch}); err != nil || rec.Recovered {
		t.Fatalf("%+v %v", rec, err)
	}
}

// TestResumeWithNothingMissed: a resume from the newest offset replays
// nothing and does not wait for messages that are not there.
func TestResumeWithNothingMissed(t *testing.T) {
	b := historyBroker(t, "", 100, PolicyRule{"*", Recoverable})
	last := publishN(t, b, "g", 0, 3)[2]
	c, r := open(t, b)
	start := time.Now()
	rec, err := b.GroupJoin(context.Background(), "g", c, &Since{Offset: last.Offset, Epoch: last.Epoch})
	if err != nil || !rec.Recovered || rec.Replayed != 0 {
		t.Fatalf("%+v %v", rec, err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("an empty resume took %v", d)
	}
	publishN(t, b, "g", 3, 1)
	if d := r.deliveries(t, 1)[0]; string(d.Data) != "3" {
		t.Fatalf("live after the resume: %s", d.Data)
	}
}

// TestRecoveryDropsLateLiveCopies: the live consumer may deliver a message
// after the replay has already sent it (it is slower than the direct
// reads); the member gets it once, and the next one live.
func TestRecoveryDropsLateLiveCopies(t *testing.T) {
	r := newInbox()
	m := &member{name: "n.1", recv: r}
	g := &group{name: "g", kept: &stream{}, index: map[*member]int{}}
	rec := &recovery{}
	g.lockMembers()
	g.addLocked(m, rec)
	g.mu.Unlock()
	rec.offer(5, []byte("5"), r) // live during the replay: held
	// The replay sent 5 and 6.
	if last, missing := g.recovered(m, rec, 6, false); last != 6 || missing != 0 {
		t.Fatalf("after the replay: last %d, missing %d", last, missing)
	}
	if over := rec.offer(6, []byte("6"), r); over { // 6 again, late
		t.Fatal("a copy the replay sent ended the recovery")
	}
	if over := rec.offer(7, []byte("7"), r); !over {
		t.Fatal("a newer frame did not end the recovery")
	}
	g.forgetRecovered()
	if g.recovering != nil {
		t.Fatalf("still recovering: %v", g.recovering)
	}
	if f := r.next(t); string(f) != "7" {
		t.Fatalf("got %s, want only 7 (5 and 6 came with the replay)", f)
	}
	r.none(t, 10*time.Millisecond)
}

// TestLostConsumerRenewed: a group whose live consumer is gone (NATS gave
// up recreating it) gets a fresh one at the next check, and its members a
// gap frame; messages then flow again.
func TestLostConsumerRenewed(t *testing.T) {
	b := historyBroker(t, "", 100, PolicyRule{"*", Recoverable})
	c, r := open(t, b)
	join(t, b, "g", c)
	b.mu.RLock()
	sub := b.groups["g"].sub
	b.mu.RUnlock()
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if gap := awaitGap(t, r); gap.Group != "g" {
		t.Fatalf("gap %+v", gap)
	}
	publishN(t, b, "g", 0, 1)
	if d := r.deliveries(t, 1)[0]; string(d.Data) != "0" {
		t.Fatalf("after the renewal: %+v", d)
	}
	if err := b.Ready(); err != nil {
		t.Fatalf("not ready after the renewal: %v", err)
	}
}
