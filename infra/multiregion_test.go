package infra

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// bootSupercluster starts topo from infra/nats and waits for every route and gateway.
// It is shut down when the test ends.
func bootSupercluster(t *testing.T, topo *Topology) *Supercluster {
	t.Helper()
	sc, err := StartSupercluster(natsConf, topo, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sc.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := sc.WaitJoined(ctx); err != nil {
		t.Fatal(err)
	}
	return sc
}

// regionNodes starts perServer nodes for every server of sc, each connected to that
// server alone, and returns them by region index, in server order. A node's name is
// "<region index>-<server index>-<n>".
func regionNodes(t *testing.T, sc *Supercluster, perServer int) [][]*node {
	t.Helper()
	nodes := make([][]*node, len(sc.Topology.Regions))
	perRegion := map[string]int{}
	for i, spec := range sc.Topology.Servers {
		r := slices.Index(sc.Topology.Regions, spec.Region)
		for n := range perServer {
			name := fmt.Sprintf("%d-%d-%d", r, perRegion[spec.Region], n)
			nodes[r] = append(nodes[r], startNode(t, name, spec.Region, sc.ServerNATSURL(i)))
		}
		perRegion[spec.Region]++
	}
	return nodes
}

// serverOf returns the index in sc of the server node n is connected to.
func serverOf(t *testing.T, sc *Supercluster, n *node) int {
	t.Helper()
	name := n.b.Stats().NATSServerName
	for i, spec := range sc.Topology.Servers {
		if spec.Name == name {
			return i
		}
	}
	t.Fatalf("%s: connected to unknown server %q", n.name, name)
	return -1
}

// gatewaySnapshot reads every server's gateway counters.
func gatewaySnapshot(t *testing.T, sc *Supercluster) []GatewayStats {
	t.Helper()
	snap := make([]GatewayStats, len(sc.Servers))
	for i, s := range sc.Servers {
		st, err := ReadGatewayStats(s, AppAccount, SysAccount)
		if err != nil {
			t.Fatal(err)
		}
		snap[i] = st
	}
	return snap
}

// waitInterestOnly waits until every server sends account AppAccount to every other
// region in interest-only mode.
func waitInterestOnly(t *testing.T, sc *Supercluster) {
	t.Helper()
	waitUntil(t, 10*time.Second, "interest-only mode on every gateway", func() bool {
		for i, s := range sc.Servers {
			modes, err := GatewayModes(s, AppAccount)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range sc.Topology.Regions {
				if r != sc.Topology.Servers[i].Region && modes[r] != server.InterestOnly.String() {
					return false
				}
			}
		}
		return true
	})
}

// TestGatewaysCarryOneCopyPerRegion runs three regions of three nats-servers, booted
// from infra/nats, with one node on every server, and members in two regions: on two
// nodes of the first region, and on two nodes (one with two members) of the second.
// Each region in turn publishes from a node without members. nats-server's own
// counters must show that every message crossed into each other region that has
// members exactly once, into the region without members never (not even the first
// message on a subject: every gateway is in interest-only mode from the start), and
// that no server but the publisher's sent it to a gateway. Every member receives every
// message once, in order, with the origin region.
func TestGatewaysCarryOneCopyPerRegion(t *testing.T) {
	sc := startSupercluster(t, 3)
	regions := sc.Topology.Regions
	waitInterestOnly(t, sc)
	nodes := regionNodes(t, sc, 1)

	// Before anyone joins, a message on a subject without subscribers goes nowhere,
	// the first one included. (Published with plain NATS clients, whose flush
	// returns once the server has processed the message.)
	before := gatewaySnapshot(t, sc)
	for i := range sc.Servers {
		nc, err := nats.Connect(sc.ServerNATSURL(i))
		if err != nil {
			t.Fatal(err)
		}
		err = nc.Publish("groupcast.group.nobody", []byte(`"first"`))
		if err == nil {
			err = nc.Flush()
		}
		nc.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	after := gatewaySnapshot(t, sc)
	for i := range sc.Servers {
		if sent := after[i].Sent[AppAccount] - before[i].Sent[AppAccount]; sent != 0 {
			t.Errorf("%s sent %d messages without subscribers to other regions, want none", sc.Topology.Servers[i].Name, sent)
		}
	}

	const group = "fanout"
	members := [][]*member{
		{newMember(t, nodes[0][0]), newMember(t, nodes[0][1])},
		{newMember(t, nodes[1][0]), newMember(t, nodes[1][0]), newMember(t, nodes[1][2])},
		nil,
	}
	var all []*member
	for _, ms := range members {
		for _, m := range ms {
			m.join(t, group)
			all = append(all, m)
		}
	}
	hasMembers := func(r int) bool { return len(members[r]) > 0 }
	publishers := []*node{nodes[0][2], nodes[1][1], nodes[2][0]}

	const n = 100
	for _, pub := range publishers {
		o := slices.Index(regions, pub.region)
		origin := serverOf(t, sc, pub)
		markUntilDelivered(t, pubOf(pub), group, all)
		for r := range regions {
			if r == o {
				continue
			}
			ok, err := GatewayInterest(sc.Servers[origin], regions[r], AppAccount, "groupcast.group."+group)
			if err != nil {
				t.Fatal(err)
			}
			if ok != hasMembers(r) {
				t.Errorf("%s's gateway to %s: interest in %s is %v, want %v", pub.name, regions[r], group, ok, hasMembers(r))
			}
		}

		before := gatewaySnapshot(t, sc)
		received := map[*node]uint64{}
		for _, ns := range nodes {
			for _, nd := range ns {
				received[nd] = nd.b.Stats().Received
			}
		}
		for seq := 1; seq <= n; seq++ {
			if err := pub.publish(group, seq); err != nil {
				t.Fatal(err)
			}
		}
		for _, m := range all {
			waitUntil(t, 10*time.Second, fmt.Sprintf("%d messages from %s at %s", n, pub.name, m), func() bool {
				return m.has(group, pub.name, n)
			})
		}
		after := gatewaySnapshot(t, sc)

		// Every member: each message once, in order, from the origin region.
		for _, m := range all {
			var got []int
			for _, d := range m.deliveries() {
				if d.From == pub.name && d.Seq > 0 {
					got = append(got, d.Seq)
					if d.region != pub.region {
						t.Errorf("%s: delivery from %s says region %q, want %q", m, pub.name, d.region, pub.region)
					}
				}
			}
			if len(got) != n || !slices.IsSorted(got) || got[0] != 1 || got[n-1] != n {
				t.Errorf("%s: got %v from %s, want 1..%d once each, in order", m, got, pub.name, n)
			}
		}
		// Every node with members took each message from NATS once; the others, never.
		for r, ns := range nodes {
			for _, nd := range ns {
				want := uint64(0)
				if slices.ContainsFunc(members[r], func(m *member) bool { return m.node == nd }) {
					want = n
				}
				if got := nd.b.Stats().Received - received[nd]; got != want {
					t.Errorf("%s took %d messages from NATS, want %d", nd.name, got, want)
				}
			}
		}

		// The gateways, counted by nats-server: every message crossed into each other
		// region with members once, into the region without members never, and only
		// the publisher's server sent anything.
		recvIn := make([]int64, len(regions))
		for i, spec := range sc.Topology.Servers {
			recvIn[slices.Index(regions, spec.Region)] += after[i].Received[AppAccount] - before[i].Received[AppAccount]
			sent := after[i].Sent[AppAccount] - before[i].Sent[AppAccount]
			want := int64(0)
			if i == origin {
				for r := range regions {
					if r != o && hasMembers(r) {
						want += n
					}
				}
			}
			if sent != want {
				t.Errorf("%s sent %d messages to gateways, want %d", spec.Name, sent, want)
			}
		}
		for r := range regions {
			if r == o {
				continue
			}
			want := int64(0)
			if hasMembers(r) {
				want = n
			}
			if recvIn[r] != want {
				t.Errorf("%s received %d messages from %s over gateways, want %d", regions[r], recvIn[r], pub.region, want)
			}
			// The gateway connection itself carries the account's messages and, besides,
			// nats-server's own events (system account) sent meanwhile.
			out := after[origin].OutMsgs[regions[r]] - before[origin].OutMsgs[regions[r]]
			sys := after[origin].Sent[SysAccount] - before[origin].Sent[SysAccount]
			if out < want || out > want+sys {
				t.Errorf("%s's gateway connection to %s carried %d messages, want %d (+ up to %d system events)", pub.name, regions[r], out, want, sys)
			}
		}
		t.Logf("%d messages from %s: received over gateways by region %v", n, pub.region, recvIn)
	}
}
