package infra

import (
	"fmt"
	"testing"
	"time"
)

// flowPeriod is how often each flow of the fault tests publishes.
const flowPeriod = 5 * time.Millisecond

// maxPause is the longest wait between two messages of a flow that still counts as
// "no pause": a hundred periods, far below any reconnection (a second or more), and
// far above what a loaded test machine adds.
const maxPause = 500 * time.Millisecond

// startFlows starts a flow from every publisher into group, once markers from each
// have reached every receiver.
func startFlows[R receiver](t *testing.T, pubs []publisher, group string, to []R) []*flow {
	t.Helper()
	for _, p := range pubs {
		markUntilDelivered(t, p, group, to)
	}
	flows := make([]*flow, len(pubs))
	for i, p := range pubs {
		flows[i] = startFlow(p, group, flowPeriod)
	}
	waitUntil(t, 5*time.Second, "flows running", func() bool {
		for _, f := range flows {
			if f.published() < 20 {
				return false
			}
		}
		return true
	})
	return flows
}

// stopFlows stops the flows and waits until every receiver has each flow's last
// message that NATS took, so that nothing is still on its way.
func stopFlows[R receiver](t *testing.T, flows []*flow, to []R) map[*flow][]sendRecord {
	t.Helper()
	sent := map[*flow][]sendRecord{}
	for _, f := range flows {
		sent[f] = f.stop()
	}
	for _, f := range flows {
		last := lastOK(sent[f])
		for _, r := range to {
			waitUntil(t, 10*time.Second, fmt.Sprintf("last message of %s at %s", f.pub.name, r), func() bool {
				return r.has(f.group, f.pub.name, last)
			})
		}
	}
	return sent
}

// deliveredSince reports whether r has a message of f published after since, and when
// the first such arrived.
func deliveredSince(r receiver, f *flow, since time.Time) (time.Time, bool) {
	sent := f.records()
	for _, d := range r.deliveries() {
		if d.group == f.group && d.From == f.pub.name && d.Seq > 0 && d.Seq <= len(sent) && sent[d.Seq-1].at.After(since) {
			return d.at, true
		}
	}
	return time.Time{}, false
}

// proxiedTopology plans a loopback supercluster of perRegion servers per region with
// a linkProxy in front of every gateway listener, through which alone every server
// reaches other regions.
func proxiedTopology(t *testing.T, perRegion int) (*Topology, []*linkProxy) {
	t.Helper()
	regions := gatewayOrder(t)
	proxies := listenLinkProxies(t, len(regions)*perRegion, 0)
	topo, err := LoopbackTopology(regions, perRegion)
	if err != nil {
		t.Fatal(err)
	}
	urls := map[string][]string{}
	for i := range topo.Servers {
		s := &topo.Servers[i]
		proxies[i].Start(fmt.Sprintf("127.0.0.1:%d", s.GatewayPort))
		s.GatewayAdvertise = proxies[i].Addr()
		urls[s.Region] = append(urls[s.Region], "nats://"+proxies[i].Addr())
	}
	for i := range topo.Servers {
		for n, r := range topo.Regions {
			topo.Servers[i].Env[EnvGatewayURLs(n+1)] = ConfigList(urls[r])
		}
	}
	return topo, proxies
}

// TestGatewayLinkCut runs three regions of two servers whose gateways are reached
// through proxies, a member and a publisher (5 ms apart) in each region, and cuts the
// gateway links between the first two regions for a while, then restores them. While
// cut, fan-out between those two stops (gateways do not relay through the third
// region, and core NATS keeps nothing for later), and every other pair keeps going
// without a loss or a pause. Once restored, the servers reconnect on their own, send
// their interest again, and fan-out between the two resumes with no instance
// restarted.
func TestGatewayLinkCut(t *testing.T) {
	topo, proxies := proxiedTopology(t, 2)
	sc := bootSupercluster(t, topo)
	waitInterestOnly(t, sc)
	nodes := regionNodes(t, sc, 1) // nodes[r][i] on server i of region r
	regions := sc.Topology.Regions
	const group = "cut"
	members := make([]*member, len(regions))
	pubs := make([]publisher, len(regions))
	for r := range regions {
		members[r] = newMember(t, nodes[r][0])
		members[r].join(t, group)
		pubs[r] = pubOf(nodes[r][1])
	}
	flows := startFlows(t, pubs, group, members)

	a, b := regions[0], regions[1]
	link := func(cut bool) {
		for i, spec := range topo.Servers {
			switch spec.Region {
			case a:
				if cut {
					proxies[i].Cut(b)
				} else {
					proxies[i].Restore(b)
				}
			case b:
				if cut {
					proxies[i].Cut(a)
				} else {
					proxies[i].Restore(a)
				}
			}
		}
	}
	cutAt := time.Now()
	link(true)
	// While cut: the third region keeps trading with both, 200 messages each way.
	for _, pair := range [][2]int{{0, 2}, {2, 0}, {1, 2}, {2, 1}} {
		m, f := members[pair[1]], flows[pair[0]]
		waitUntil(t, 10*time.Second, fmt.Sprintf("%s receiving from %s during the cut", m, f.pub.name), func() bool {
			n, sent := 0, f.records()
			for _, s := range m.seqs(group, f.pub.name) {
				if s > 0 && s <= len(sent) && sent[s-1].at.After(cutAt) {
					n++
				}
			}
			return n >= 200
		})
	}
	restoredAt := time.Now()
	link(false)
	var recovery time.Duration
	for _, pair := range [][2]int{{0, 1}, {1, 0}} {
		m, f := members[pair[1]], flows[pair[0]]
		var at time.Time
		waitUntil(t, 10*time.Second, fmt.Sprintf("%s receiving from %s after the restore", m, f.pub.name), func() bool {
			var ok bool
			at, ok = deliveredSince(m, f, restoredAt)
			return ok
		})
		recovery = max(recovery, at.Sub(restoredAt))
	}
	sent := stopFlows(t, flows, members)

	// Messages already on their way when the link went are lost with it.
	const inFlight = 50 * time.Millisecond
	var pause time.Duration // the longest wait on a link the cut did not touch
	for o, f := range flows {
		for r, m := range members {
			l := lossOf(m, f, sent[f], time.Time{})
			cutPair := (o == 0 && r == 1) || (o == 1 && r == 0)
			switch {
			case !cutPair && l.missed > 0:
				t.Errorf("%s missed %d messages from %s (%s to %s), a link the cut did not touch", m, l.missed, f.pub.name, regions[o], regions[r])
			case !cutPair && l.pause > maxPause:
				t.Errorf("%s waited %v for a message from %s, a link the cut did not touch", m, l.pause, f.pub.name)
			case cutPair && l.missed == 0:
				t.Errorf("%s missed nothing from %s although their regions' link was cut", m, f.pub.name)
			case cutPair && (l.first.Before(cutAt.Add(-inFlight)) || l.last.After(restoredAt.Add(recovery))):
				t.Errorf("%s missed messages from %s published from %v to %v after the cut, which lasted %v and recovered %v later",
					m, f.pub.name, l.first.Sub(cutAt), l.last.Sub(cutAt), restoredAt.Sub(cutAt), recovery)
			}
			if !cutPair {
				pause = max(pause, l.pause)
			} else {
				t.Logf("%s -> %s: %d messages lost, from %v after the cut to %v after the restore",
					regions[o], regions[r], l.missed, l.first.Sub(cutAt).Round(time.Millisecond), l.last.Sub(restoredAt).Round(time.Millisecond))
			}
		}
	}
	t.Logf("cut %v; other links: no loss, longest wait between messages %v (published every %v); fan-out between the two regions back %v after the restore",
		restoredAt.Sub(cutAt).Round(time.Millisecond), pause.Round(time.Millisecond), flowPeriod, recovery.Round(time.Millisecond))
	if recovery > 5*time.Second {
		t.Errorf("fan-out came back %v after the link did", recovery)
	}
}

// TestRegionalServerRestart runs three regions of three servers, three nodes per region
// given all of their region's servers (as NATS_URL is), a member on every node and a
// publisher in every region (5 ms apart), and restarts the first region's server that
// holds the most nodes. Its nodes move to the region's other servers at once; the
// other regions' servers whose gateway connection to the region went to it reconnect
// after nats-server's gateway reconnect delay (1 s). No member misses any publisher's
// messages for longer than that delay and a margin.
func TestRegionalServerRestart(t *testing.T) {
	sc := startSupercluster(t, 3)
	waitInterestOnly(t, sc)
	regions := sc.Topology.Regions
	const group = "restart"
	var members []*member
	var pubs []publisher
	var all []*node
	regionOf := map[string]string{} // publisher name -> region
	for r, region := range regions {
		for i := range 3 {
			n := startNode(t, fmt.Sprintf("%d-%d", r, i), region, sc.NATSURL(region))
			all = append(all, n)
			m := newMember(t, n)
			m.join(t, group)
			members = append(members, m)
			if i == 0 {
				pubs = append(pubs, pubOf(n))
				regionOf[n.name] = region
			}
		}
	}
	// The victim: the first region's server with the most nodes.
	count := map[int]int{}
	for _, n := range all[:3] {
		count[serverOf(t, sc, n)]++
	}
	victim := -1
	for i, spec := range sc.Topology.Servers {
		if spec.Region == regions[0] && (victim < 0 || count[i] > count[victim]) {
			victim = i
		}
	}
	var moved []*node
	for _, n := range all[:3] {
		if serverOf(t, sc, n) == victim {
			moved = append(moved, n)
		}
	}
	flows := startFlows(t, pubs, group, members)

	stoppedAt := time.Now()
	sc.StopServer(victim)
	victimName := sc.Topology.Servers[victim].Name
	var reconnect time.Duration
	for _, n := range moved {
		waitUntil(t, 10*time.Second, n.name+" on another server", func() bool {
			st := n.b.Stats()
			return st.NATSConnected && st.NATSServerName != victimName
		})
		reconnect = max(reconnect, time.Since(stoppedAt))
	}
	// Down for about as long as a process restart takes, then back.
	waitUntil(t, 5*time.Second, "a restart's worth of downtime", func() bool { return time.Since(stoppedAt) >= 300*time.Millisecond })
	if err := sc.StartServer(victim); err != nil {
		t.Fatal(err)
	}
	startedAt := time.Now()
	waitUntil(t, 10*time.Second, "routes and gateways of the restarted server", func() bool { return sc.Joined() == nil })
	rejoined := time.Since(startedAt)
	// Run on for a second with the server back, so that losses after its return count.
	waitUntil(t, 5*time.Second, "a second of traffic after the restart", func() bool { return time.Since(startedAt) >= time.Second })
	sent := stopFlows(t, flows, members)

	const moment = 2 * time.Second // gateway reconnect delay (1 s + up to 0.1 s) and a margin
	var worstIn, worstAcross time.Duration
	for _, f := range flows {
		for _, m := range members {
			l := lossOf(m, f, sent[f], time.Time{})
			if m.node.region == regionOf[f.pub.name] {
				worstIn = max(worstIn, l.longest)
			} else {
				worstAcross = max(worstAcross, l.longest)
			}
			if l.longest > moment {
				t.Errorf("%s missed %s's messages for %v (%d messages)", m, f.pub.name, l.longest, l.missed)
			}
			if l.missed > 0 {
				t.Logf("%s -> %s: %d lost over %v", f.pub.name, m, l.missed, l.longest.Round(time.Millisecond))
			}
		}
	}
	t.Logf("%s down %v; %d of its nodes reconnected to another server within %v; routes and gateways back %v after its start; longest loss: %v within a region, %v across regions",
		victimName, startedAt.Sub(stoppedAt).Round(time.Millisecond), len(moved), reconnect.Round(time.Millisecond),
		rejoined.Round(time.Millisecond), worstIn.Round(time.Millisecond), worstAcross.Round(time.Millisecond))
}
