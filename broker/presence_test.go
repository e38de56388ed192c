package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/groupcast/groupcast/internal/natstest"

	"github.com/groupcast/groupcast/broker/presence"
)

// testPresenceInterval is the heartbeat interval of the presence tests:
// a node is dropped after three, 300 ms.
const testPresenceInterval = 100 * time.Millisecond

// newPresenceBroker returns a broker on url with presence for "room.*".
func newPresenceBroker(t testing.TB, url, node, region string) *Broker {
	t.Helper()
	b, err := New(Config{URL: url, Node: node, Region: region, Logger: testLogger(t), ReconnectWait: 50 * time.Millisecond,
		Presence: []string{"room.*"}, PresenceInterval: testPresenceInterval})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	waitFor(t, 5*time.Second, func() bool { return b.Ready() == nil })
	return b
}

// present joins channel to group and makes it present.
func present(t testing.TB, b *Broker, group, channel, user string, events presence.Events) {
	t.Helper()
	join(t, b, group, channel)
	if err := b.PresenceAdd(group, channel, user, json.RawMessage(`{"name":"`+user+`"}`), events); err != nil {
		t.Fatal(err)
	}
}

func getPresence(t testing.TB, b *Broker, group string, q presence.Query) presence.Result {
	t.Helper()
	p, err := b.PresenceGet(context.Background(), group, q)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitCount waits until b counts n members of group.
func waitCount(t testing.TB, b *Broker, group string, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		p := getPresence(t, b, group, presence.Query{})
		if p.Count == n && !p.Partial {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s counts %d members of %s (partial %v), want %d", b.Node(), p.Count, group, p.Partial, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type presenceFrame struct {
	Type, Group, Event string
	Member             presence.Member
}

// nextEvent returns the next presence event in r, skipping other frames.
func nextEvent(t testing.TB, r *inbox) presenceFrame {
	t.Helper()
	for {
		var f presenceFrame
		raw := r.next(t)
		if err := json.Unmarshal([]byte(raw), &f); err != nil {
			t.Fatalf("frame %s: %v", raw, err)
		}
		if f.Type == "presence" {
			return f
		}
	}
}

func expectEvent(t testing.TB, r *inbox, event, channel string) presenceFrame {
	t.Helper()
	f := nextEvent(t, r)
	if f.Event != event || f.Member.Channel != channel {
		t.Fatalf("got %s of %s, want %s of %s", f.Event, f.Member.Channel, event, channel)
	}
	return f
}

// TestPresenceThreeNodes: joins and leaves on three nodes are seen by a
// query on any node, and as events by the members that asked for them;
// tabs of one user fold into one entry.
func TestPresenceThreeNodes(t *testing.T) {
	ns := startNATS(t)
	url := ns.ClientURL()
	a := newPresenceBroker(t, url, "na", "r1")
	b := newPresenceBroker(t, url, "nb", "r1")
	c := newPresenceBroker(t, url, "nc", "r2")
	const room = "room.1"

	la, ra := open(t, a)
	present(t, a, room, la, "alice", presence.AllEvents)
	lb, _ := open(t, b)
	present(t, b, room, lb, "bob", presence.NoEvents)
	expectEvent(t, ra, "join", lb)
	lc1, _ := open(t, c)
	present(t, c, room, lc1, "carol", presence.NoEvents)
	f := expectEvent(t, ra, "join", lc1)
	if f.Group != room || f.Member.User != "carol" || f.Member.Region != "r2" || string(f.Member.Info) != `{"name":"carol"}` {
		t.Fatalf("join event %+v", f)
	}
	lc2, _ := open(t, c)
	present(t, c, room, lc2, "carol", presence.NoEvents) // a second tab
	expectEvent(t, ra, "join", lc2)

	for _, n := range []*Broker{a, b, c} {
		waitCount(t, n, room, 4, 3*time.Second)
		p := getPresence(t, n, room, presence.Query{Limit: 10})
		if len(p.Members) != 4 || p.Members[0].User != "alice" {
			t.Fatalf("%s: %+v", n.Node(), p)
		}
		p = getPresence(t, n, room, presence.Query{Limit: 10, ByUser: true})
		if p.Count != 3 || len(p.Members) != 3 || p.Members[2].User != "carol" || p.Members[2].Channels != 2 {
			t.Fatalf("%s by user: %+v", n.Node(), p)
		}
		if p := getPresence(t, n, room, presence.Query{Limit: 2}); p.Count != 4 || len(p.Members) != 2 {
			t.Fatalf("%s limit 2: %+v", n.Node(), p)
		}
	}

	// A listener folding by user hears of carol's first join and last
	// leave only.
	lu, ru := open(t, b)
	present(t, b, room, lu, "ursula", presence.UserEvents)
	expectEvent(t, ra, "join", lu)
	lc3, _ := open(t, c)
	present(t, c, room, lc3, "carol", presence.NoEvents) // a third tab
	expectEvent(t, ra, "join", lc3)

	if err := b.GroupDiscard(room, lb); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, ra, "leave", lb)
	expectEvent(t, ru, "leave", lb)
	c.CloseChannel(lc2)
	expectEvent(t, ra, "leave", lc2)
	c.CloseChannel(lc3)
	expectEvent(t, ra, "leave", lc3)
	c.CloseChannel(lc1)
	expectEvent(t, ra, "leave", lc1)
	expectEvent(t, ru, "leave", lc1) // carol's last
	ru.none(t, 50*time.Millisecond)
	waitCount(t, b, room, 2, 3*time.Second)

	// Groups outside the patterns cost nothing and answer ErrPresenceOff.
	join(t, a, "plain", la)
	if err := a.PresenceAdd("plain", la, "alice", nil, presence.AllEvents); err != ErrPresenceOff {
		t.Fatalf("PresenceAdd on a plain group: %v", err)
	}
	if _, err := a.PresenceGet(context.Background(), "plain", presence.Query{}); err != ErrPresenceOff {
		t.Fatalf("PresenceGet on a plain group: %v", err)
	}
	if n := subscriptions(t, ns, "groupcast.presence.events.plain"); n != 0 {
		t.Fatalf("%d presence subscriptions for a plain group", n)
	}
	if _, err := a.PresenceGet(context.Background(), room, presence.Query{Limit: presence.MaxLimit + 1}); err == nil {
		t.Fatal("a limit over the maximum was taken")
	}
	if err := a.PresenceAdd(room, la, "alice", json.RawMessage(`{"x":`), presence.AllEvents); err == nil {
		t.Fatal("invalid info was taken")
	}
}

// TestPresenceNodeVanishes: a node that stops without a word (its NATS
// connection gone) has its members dropped within three heartbeats, with
// leave events.
func TestPresenceNodeVanishes(t *testing.T) {
	ns := startNATS(t)
	a := newPresenceBroker(t, ns.ClientURL(), "na", "r1")
	b := newPresenceBroker(t, ns.ClientURL(), "nb", "r1")
	la, ra := open(t, a)
	present(t, a, "room.x", la, "alice", presence.AllEvents)
	lb, _ := open(t, b)
	present(t, b, "room.x", lb, "bob", presence.NoEvents)
	expectEvent(t, ra, "join", lb)
	waitCount(t, a, "room.x", 2, 3*time.Second)

	// b vanishes: its NATS connection closes, with no leave events sent.
	start := time.Now()
	b.nc.Close()
	expectEvent(t, ra, "leave", lb)
	if took := time.Since(start); took > presence.MissedBeats*testPresenceInterval+time.Second {
		t.Fatalf("leave after %v", took)
	}
	waitCount(t, a, "room.x", 1, time.Second)
}

// freePorts returns n free TCP ports on loopback.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// region is one nats-server of a two-region supercluster.
type region struct {
	name, other      string
	port, gw, peerGW int
	ns               *server.Server
}

func (r *region) start(t testing.TB) {
	t.Helper()
	peer, _ := url.Parse(fmt.Sprintf("nats://127.0.0.1:%d", r.peerGW))
	r.ns = natstest.StartWith(t, server.Options{
		ServerName: r.name, Port: r.port,
		Gateway: server.GatewayOpts{Name: r.name, Host: "127.0.0.1", Port: r.gw,
			Gateways: []*server.RemoteGatewayOpts{{Name: r.other, URLs: []*url.URL{peer}}}},
	})
}

func (r *region) stop() { r.ns.Shutdown(); r.ns.WaitForShutdown() }

// TestPresenceRegionCut: two regions joined by a gateway; region B's
// server goes down (its instances are cut off) and comes back on the same
// ports. A drops B's members within the bound, with leave events, and gets
// them back, with join events, once the gateway is up again.
func TestPresenceRegionCut(t *testing.T) {
	server.SetGatewaysSolicitDelay(10 * time.Millisecond)
	defer server.ResetGatewaysSolicitDelay()
	ports := freePorts(t, 4)
	ra := &region{name: "A", other: "B", port: ports[0], gw: ports[1], peerGW: ports[3]}
	rb := &region{name: "B", other: "A", port: ports[2], gw: ports[3], peerGW: ports[1]}
	ra.start(t)
	rb.start(t)
	defer func() { ra.stop(); rb.stop() }()
	natstest.WaitFor(t, 5*time.Second, func() bool {
		return ra.ns.NumOutboundGateways() == 1 && rb.ns.NumOutboundGateways() == 1
	})

	a := newPresenceBroker(t, ra.ns.ClientURL(), "na", "A")
	b := newPresenceBroker(t, rb.ns.ClientURL(), "nb", "B")
	la, inA := open(t, a)
	present(t, a, "room.g", la, "alice", presence.AllEvents)
	lb, inB := open(t, b)
	present(t, b, "room.g", lb, "bob", presence.AllEvents)
	expectEvent(t, inA, "join", lb)
	waitCount(t, a, "room.g", 2, 5*time.Second)
	waitCount(t, b, "room.g", 2, 5*time.Second)

	cut := time.Now()
	rb.stop()
	expectEvent(t, inA, "leave", lb)
	t.Logf("leave after %v", time.Since(cut))
	if took := time.Since(cut); took > presence.MissedBeats*testPresenceInterval+1500*time.Millisecond {
		t.Fatalf("leave after %v", took)
	}
	if p := getPresence(t, a, "room.g", presence.Query{Limit: 10}); p.Count != 1 || p.Partial {
		t.Fatalf("during the cut: %+v", p)
	}

	rb.start(t)
	expectEvent(t, inA, "join", lb) // resynchronised
	expectEvent(t, inB, "join", la)
	waitCount(t, a, "room.g", 2, 5*time.Second)
	waitCount(t, b, "room.g", 2, 5*time.Second)
}

// TestPresenceLargeGroup: 10,000 members on one node and a few on
// another: the count stays cheap, and lists are capped.
func TestPresenceLargeGroup(t *testing.T) {
	ns := startNATS(t)
	a := newPresenceBroker(t, ns.ClientURL(), "na", "r1")
	b := newPresenceBroker(t, ns.ClientURL(), "nb", "r1")
	const n = 10000
	r := &discard{}
	for i := range n {
		ch, err := a.NewChannel(r)
		if err != nil {
			t.Fatal(err)
		}
		present(t, a, "room.big", ch, fmt.Sprintf("u%d", i%5000), presence.NoEvents)
	}
	lb, _ := open(t, b)
	present(t, b, "room.big", lb, "bob", presence.NoEvents)
	waitCount(t, b, "room.big", n+1, 15*time.Second) // 10,000 joins: slow on a busy machine

	// The median query: a pause of the process (a busy machine, the
	// garbage collector) in one of them says nothing of their cost.
	const rounds = 51
	took := make([]time.Duration, rounds)
	for i := range took {
		start := time.Now()
		getPresence(t, b, "room.big", presence.Query{})
		took[i] = time.Since(start)
	}
	slices.Sort(took)
	perCount := took[rounds/2]
	p := getPresence(t, b, "room.big", presence.Query{Limit: presence.MaxLimit})
	if p.Count != n+1 || len(p.Members) != presence.MaxLimit {
		t.Fatalf("count %d, %d listed", p.Count, len(p.Members))
	}
	p = getPresence(t, a, "room.big", presence.Query{Limit: 100, ByUser: true})
	if p.Count != 5001 || len(p.Members) != 100 || p.Members[0].User != "bob" || p.Members[1].Channels != 2 {
		t.Fatalf("by user: count %d, %d listed, %+v", p.Count, len(p.Members), p.Members[0])
	}
	t.Logf("median count-only query across two nodes at %d members: %v", n+1, perCount)
	if perCount > 20*time.Millisecond {
		t.Fatalf("a count-only query took %v", perCount)
	}
}
