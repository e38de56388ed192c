package client_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/groupcast/groupcast/client"
	"github.com/groupcast/groupcast/internal/natstest"
)

// TestOnGap: the application hears of every way a recoverable group's
// messages may have been missed: a rejoin the server could not resume
// (the offset left the window while the client was away: the ack says
// "recovered":false) and a gap frame (the history was reset). A rejoin
// that resumes says nothing.
func TestOnGap(t *testing.T) {
	ns := natstest.StartJetStream(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", natstest.Port(ns))
	s := startKeptServer(t, url, 3)
	gaps := make(chan string, 10)
	st := make(states, 100)
	c := dial(t, s.WSURL(), &client.Options{
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		OnState: func(s client.State) { st <- s },
		OnGap:   func(g string) { gaps <- g },
	})
	in := newInbox()
	if err := c.Join(testCtx(t), "room.a", in.handle); err != nil {
		t.Fatal(err)
	}
	s.Publish("room.a", `1`)
	in.expect(t, "room.a", `1`)

	// Away while one message comes: resumed, no gap.
	s.Stop()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := nc.JetStream()
	publish := func(n int) {
		t.Helper()
		for i := range n {
			if _, err := js.Publish("groupcast.group.room.a", fmt.Appendf(nil, "%d", 100+i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(1)
	s.Restart() // stopped: starts it again
	st.await(t, client.Reconnecting)
	st.await(t, client.Connected)
	in.expect(t, "room.a", `100`)
	select {
	case g := <-gaps:
		t.Fatalf("gap in %s after a resume that missed nothing", g)
	case <-time.After(300 * time.Millisecond):
	}

	// Away while more come than the window keeps: the rejoin is a gap.
	s.Stop()
	publish(5)
	s.Restart() // stopped: starts it again
	st.await(t, client.Reconnecting)
	st.await(t, client.Connected)
	expectGap(t, gaps, "room.a")

	// The history is reset under a connected client: a gap frame.
	if err := js.DeleteStream("GROUPCAST_RECOVERABLE"); err != nil {
		t.Fatal(err)
	}
	expectGap(t, gaps, "room.a")
}

func expectGap(t *testing.T, gaps chan string, group string) {
	t.Helper()
	select {
	case g := <-gaps:
		if g != group {
			t.Fatalf("gap in %s, want %s", g, group)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no gap told in %s", group)
	}
}
