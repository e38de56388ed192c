package broker

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// A forward reaches the node named in the channel, whichever node sends
// it, and its handler's answer comes back; a node that is not there is
// ErrNoNode, not a wait.
func TestForwardReachesTheChannelsNode(t *testing.T) {
	url := startNATS(t).ClientURL()
	a, b := newBroker(t, url), newBroker(t, url)
	got := make(chan string, 4)
	for _, br := range []*Broker{a, b} {
		node := br.Node()
		if err := br.HandleForwards(func(channel string, msg []byte) []byte {
			got <- node + " " + channel + " " + string(msg)
			return []byte("ok from " + node)
		}); err != nil {
			t.Fatal(err)
		}
	}
	channel, _ := open(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	answer, err := a.Forward(ctx, channel, []byte(`{"type":"ping"}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := "ok from " + b.Node(); string(answer) != want {
		t.Fatalf("answer %q, want %q", answer, want)
	}
	if g, want := <-got, fmt.Sprintf("%s %s {\"type\":\"ping\"}", b.Node(), channel); g != want {
		t.Fatalf("handled %q, want %q", g, want)
	}
	if answer, err := b.Forward(ctx, channel, []byte("x")); err != nil || string(answer) != "ok from "+b.Node() {
		t.Fatalf("to its own node: %q, %v", answer, err)
	}
	<-got

	start := time.Now()
	if _, err := a.Forward(ctx, "nosuchnode.1", []byte("x")); !errors.Is(err, ErrNoNode) {
		t.Fatalf("to a node that is not there: %v, want ErrNoNode", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("ErrNoNode took %v: it must not wait for a timeout", took)
	}
	if _, err := a.Forward(ctx, "not a channel", []byte("x")); !errors.Is(err, ErrInvalidChannel) {
		t.Fatalf("invalid channel: %v", err)
	}
	if _, err := a.Forward(ctx, channel, make([]byte, 2<<20)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over NATS's limit: %v, want ErrTooLarge", err)
	}
	select {
	case g := <-got:
		t.Fatalf("unexpected handling: %s", g)
	default:
	}
}

// A node that does not answer in time is ErrUnavailable, once ctx ends.
func TestForwardTimesOut(t *testing.T) {
	url := startNATS(t).ClientURL()
	a, b := newBroker(t, url), newBroker(t, url)
	release := make(chan struct{})
	defer close(release)
	if err := b.HandleForwards(func(string, []byte) []byte { <-release; return nil }); err != nil {
		t.Fatal(err)
	}
	channel, _ := open(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := a.Forward(ctx, channel, []byte("x")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a node that does not answer: %v, want ErrUnavailable", err)
	}
}
