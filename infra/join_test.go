package infra

import (
	"fmt"
	"os"
	"slices"
	"testing"
	"time"
)

// blindWindow returns how long after ack a message of pub could still miss m: the
// latest publish time, past ack, of a message m did not get although it got a later
// one (one publisher's messages keep their order), and how many such messages there
// were.
func blindWindow(m *member, group string, pub *node, sent []sendRecord, ack time.Time) (time.Duration, int) {
	got := m.seqs(group, pub.name)
	if len(got) == 0 {
		return 0, 0
	}
	last := slices.Max(got)
	var window time.Duration
	missed := 0
	for seq := 1; seq < last && seq <= len(sent); seq++ {
		if at := sent[seq-1].at; at.After(ack) && !slices.Contains(got, seq) {
			missed++
			window = max(window, at.Sub(ack))
		}
	}
	return window, missed
}

// joinPropagation joins m to fresh groups while pub publishes into them, trials times,
// and returns the blind window after each join's ack and how many trials missed any
// message published after the ack.
func joinPropagation(t *testing.T, name string, m *member, pub *node, trials int) ([]time.Duration, int) {
	t.Helper()
	var windows []time.Duration
	missedTrials := 0
	for k := range trials {
		group := fmt.Sprintf("join.%s.%d", name, k)
		f := startFlow(pubOf(pub), group, 200*time.Microsecond)
		waitUntil(t, 5*time.Second, "publishing", func() bool { return f.published() >= 3 })
		m.join(t, group)
		ack := time.Now()
		waitUntil(t, 10*time.Second, fmt.Sprintf("%s: deliveries after the join", name), func() bool {
			return len(m.seqs(group, pub.name)) >= 20
		})
		sent := f.stop()
		if slices.ContainsFunc(sent, func(r sendRecord) bool { return !r.ok }) {
			t.Fatalf("%s: a publish failed", pub.name)
		}
		w, missed := blindWindow(m, group, pub, sent, ack)
		windows = append(windows, w)
		if missed > 0 {
			missedTrials++
		}
		if err := m.node.b.GroupDiscard(group, m.channel); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(windows)
	return windows, missedTrials
}

// TestJoinPropagation measures, on loopback, how long after a join's ack a message
// published elsewhere can still miss the new member, for the three places a publisher
// can be: on the joining node's own NATS server, on another server of its region, and
// in another region. Through the same server nothing published after the ack is ever
// missed (the ack follows a round trip to that server). The other servers of the region
// learn of the interest over routes, and the other regions over gateways, a moment
// later: the test bounds that moment.
func TestJoinPropagation(t *testing.T) {
	sc := startSupercluster(t, 2)
	waitInterestOnly(t, sc)
	nodes := regionNodes(t, sc, 1) // nodes[r][i] on server i of region r
	joiner := newMember(t, nodes[0][0])

	const trials = 40
	const bound = 250 * time.Millisecond // far above what loopback shows; see the log
	for _, c := range []struct {
		name string
		pub  *node
	}{
		{"same-server", startNode(t, "0-0-pub", nodes[0][0].region, sc.ServerNATSURL(0))},
		{"same-region", nodes[0][1]},
		{"other-region", nodes[1][0]},
	} {
		windows, missed := joinPropagation(t, c.name, joiner, c.pub, trials)
		p := func(q float64) time.Duration { return windows[int(q*float64(len(windows)-1))] }
		t.Logf("%-12s publisher: %2d of %d joins missed a message published after the ack; blind window p50 %v, p99 %v, max %v",
			c.name, missed, trials, p(0.5), p(0.99), windows[len(windows)-1])
		if c.name == "same-server" && missed > 0 {
			t.Errorf("a publisher on the joining node's own server missed the member after the ack in %d of %d joins", missed, trials)
		}
		if w := windows[len(windows)-1]; w > bound {
			t.Errorf("%s publisher: interest took %v after the ack, more than %v", c.name, w, bound)
		}
	}
}

// TestJoinAckCoversTheRegion states the guarantee the README gives ("after a join's
// ack, a message published through the same NATS cluster reaches the connection") and
// shows that it does not hold when the publisher's server is not the joiner's: the
// flush before the ack reaches the joiner's server only, which passes the interest on
// over its routes asynchronously. The routes of the first region go through proxies
// that delay them by 30 ms (a busy or distant server), which turns the race that
// TestJoinPropagation measures into a certainty. It is a known gap, so the test runs
// only with GROUPCAST_KNOWN_GAPS=1, and then fails.
func TestJoinAckCoversTheRegion(t *testing.T) {
	if os.Getenv("GROUPCAST_KNOWN_GAPS") == "" {
		t.Skip("a known gap in the in-region join guarantee; GROUPCAST_KNOWN_GAPS=1 runs it (and it fails)")
	}
	const perRegion = 2
	proxies := listenLinkProxies(t, perRegion, 30*time.Millisecond)
	topo, err := LoopbackTopology(gatewayOrder(t), perRegion)
	if err != nil {
		t.Fatal(err)
	}
	region := topo.Regions[0]
	var routes []string
	for i := range topo.Servers {
		if s := &topo.Servers[i]; s.Region == region {
			p := proxies[len(routes)]
			p.Start(fmt.Sprintf("127.0.0.1:%d", s.ClusterPort))
			s.ClusterAdvertise = p.Addr()
			routes = append(routes, "nats://"+p.Addr())
		}
	}
	for i := range topo.Servers {
		if s := &topo.Servers[i]; s.Region == region {
			s.Env[EnvClusterRoutes] = ConfigList(routes)
		}
	}
	sc := bootSupercluster(t, topo)
	joiner := newMember(t, startNode(t, "joiner", region, sc.ServerNATSURL(0)))
	pub := startNode(t, "publisher", region, sc.ServerNATSURL(1))

	joiner.join(t, "room")
	if err := pub.publish("room", 1); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "a later message", func() bool {
		_ = pub.publish("room", 2)
		time.Sleep(10 * time.Millisecond)
		return joiner.has("room", pub.name, 2)
	})
	if !joiner.has("room", pub.name, 1) {
		t.Fatal("the message published right after the join's ack, through another server of the region, was lost: " +
			"the ack covers the joining node's own NATS server only")
	}
}
