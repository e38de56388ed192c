package broker

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestResumeWhileHistoryUnreadable: a resume whose history cannot be read
// for the moment (the connection that reads it is reconnecting, while the
// instance's own stays up and ready) is refused as unavailable, to be
// tried again, rather than answered as if the offset had left the window:
// that answer skipped every message the member missed. Once the history
// can be read, the same resume gets them all.
func TestResumeWhileHistoryUnreadable(t *testing.T) {
	ns := startJetStreamNATS(t)
	b, err := New(Config{URL: ns.ClientURL(), Logger: testLogger(t), Policies: []PolicyRule{{"*", Recoverable}},
		HistorySize: 100, ReconnectWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	waitFor(t, 5*time.Second, func() bool { return b.Ready() == nil })
	c1, r1 := open(t, b)
	join(t, b, "g", c1)
	sent := publishN(t, b, "g", 0, 5)
	r1.deliveries(t, 5)

	reads := b.history.reads
	id, err := reads.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.DisconnectClientByID(id); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return !reads.IsConnected() })
	since := &Since{Offset: sent[1].Offset, Epoch: sent[1].Epoch}
	c2, r2 := open(t, b)
	rec, err := b.GroupJoin(context.Background(), "g", c2, since)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("resume while the history cannot be read: %+v, %v; want unavailable", rec, err)
	}
	r2.none(t, 50*time.Millisecond)

	waitFor(t, 5*time.Second, reads.IsConnected)
	rec, err = b.GroupJoin(context.Background(), "g", c2, since)
	if err != nil || !rec.Recovered || rec.Replayed != 3 {
		t.Fatalf("resume once the history can be read: %+v, %v", rec, err)
	}
	for i, d := range r2.deliveries(t, 3) {
		if d.Offset != sent[2+i].Offset {
			t.Fatalf("replayed offset %d, want %d", d.Offset, sent[2+i].Offset)
		}
	}
}

// TestFailedResumeSendsNoLiveFrames: a resume that fails (here: no replay
// turn came in time) sends the member none of the live messages held for
// it meanwhile. They came after the messages it missed, which it was not
// sent: a client that got them would resume after them on its next try,
// and skip the rest.
func TestFailedResumeSendsNoLiveFrames(t *testing.T) {
	b := historyBroker(t, "", 100, PolicyRule{"*", Recoverable})
	c1, r1 := open(t, b)
	join(t, b, "g", c1)
	sent := publishN(t, b, "g", 0, 3)
	r1.deliveries(t, 3)

	// Every replay turn is taken, as by as many long replays.
	turns := b.history.turns
	for range cap(turns) {
		turns <- struct{}{}
	}
	defer func() {
		for range cap(turns) {
			<-turns
		}
	}()
	c2, r2 := open(t, b)
	done := make(chan error, 1)
	go func() {
		_, err := b.GroupJoin(context.Background(), "g", c2, &Since{Offset: sent[0].Offset, Epoch: sent[0].Epoch})
		done <- err
	}()
	var err error
	for i := 3; ; i++ {
		publishN(t, b, "g", i, 1) // live while the resume waits
		select {
		case err = <-done:
		case <-time.After(20 * time.Millisecond):
			continue
		}
		break
	}
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("resume without a turn: %v, want unavailable", err)
	}
	r2.none(t, 100*time.Millisecond)
}
