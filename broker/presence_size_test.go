package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/groupcast/groupcast/internal/natstest"

	"github.com/groupcast/groupcast/broker/presence"
)

// TestPresenceHeartbeatOverMaxPayload: a node present in more groups
// than one heartbeat can list within NATS' max payload is never taken
// for gone: its member stays counted and no leave event is sent.
func TestPresenceHeartbeatOverMaxPayload(t *testing.T) {
	ns := natstest.StartWith(t, server.Options{MaxPayload: 4096})
	a := newPresenceBroker(t, ns.ClientURL(), "a", "")
	b := newPresenceBroker(t, ns.ClientURL(), "b", "")
	long := "room." + strings.Repeat("x", 80)
	shared := long + "-0"
	ca, _ := open(t, a)
	for i := range 60 { // about 5.5 KB of group names
		present(t, a, fmt.Sprintf("%s-%d", long, i), ca, "ann", presence.NoEvents)
	}
	cb, rb := open(t, b)
	present(t, b, shared, cb, "bob", presence.AllEvents)
	waitCount(t, b, shared, 2, 5*time.Second)
	if got := rb.next(t); !strings.Contains(got, `"event":"join"`) {
		t.Fatalf("event %s", got)
	}
	rb.none(t, 5*presence.MissedBeats*testPresenceInterval) // well past a silent node's expiry
	if p := getPresence(t, b, shared, presence.Query{}); p.Count != 2 || p.Partial {
		t.Fatalf("presence after several heartbeats: %+v", p)
	}
}

// TestPresenceGroupsBounded: a node tracks at most MaxPresenceGroups
// presence groups; one more is refused as unavailable, and taken again
// once one is left.
func TestPresenceGroupsBounded(t *testing.T) {
	b, err := New(Config{Logger: testLogger(t), Presence: []string{"room.*"}, MaxPresenceGroups: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	c, _ := open(t, b)
	for i := range 3 {
		present(t, b, fmt.Sprintf("room.%d", i), c, "u", presence.NoEvents)
	}
	join(t, b, "room.3", c)
	if err := b.PresenceAdd("room.3", c, "u", nil, presence.NoEvents); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a fourth presence group: %v, want unavailable", err)
	}
	if err := b.GroupDiscard("room.0", c); err != nil {
		t.Fatal(err)
	}
	if err := b.PresenceAdd("room.3", c, "u", nil, presence.NoEvents); err != nil {
		t.Fatalf("after leaving one: %v", err)
	}
}
