package presence

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/groupcast/groupcast/internal/natstest"
)

// TestPresenceByUserHonoursLimit: each node's answer folded by user lists
// at most limit entries (none for a count), the first in member order
// with their channel counts, and its counts follow members as they come
// and go; across two nodes the folded answer is exact.
func TestPresenceByUserHonoursLimit(t *testing.T) {
	ns := natstest.Start(t, -1)
	a := newManager(t, ns.ClientURL(), "a")
	b := newManager(t, ns.ClientURL(), "b")
	var chans []string
	for i := range 30 { // users u00..u09, three tabs each, and two anonymous
		c := fmt.Sprintf("a.c%02d", i)
		add(t, a, "room.x", c, fmt.Sprintf("u%02d", i%10))
		chans = append(chans, c)
	}
	for i := range 2 {
		add(t, a, "room.x", fmt.Sprintf("a.anon%d", i), "")
	}
	add(t, b, "room.x", "b.c00", "u00")

	r := a.answer("room.x", presenceRequest{Limit: 0, ByUser: true})
	if r.Count != 12 || len(r.Members) != 0 {
		t.Fatalf("count only: count %d, %d members; want 12 and none", r.Count, len(r.Members))
	}
	r = a.answer("room.x", presenceRequest{Limit: 4, ByUser: true})
	if r.Count != 12 || len(r.Members) != 4 || !r.Truncated {
		t.Fatalf("limit 4: %+v", r)
	}
	if r.Members[0].User != "" || r.Members[1].User != "" || r.Members[2].User != "u00" || r.Members[2].Channels != 3 || r.Members[3].User != "u01" {
		t.Fatalf("limit 4 members: %+v", r.Members)
	}
	for _, c := range chans[:10] { // one tab of each user leaves
		a.Remove(c, "room.x")
	}
	a.Remove(chans[11], "room.x") // and a second one of u01
	r = a.answer("room.x", presenceRequest{Limit: 3, ByUser: true})
	if r.Count != 12 || r.Members[2].Channels != 2 {
		t.Fatalf("after leaves: %+v", r)
	}
	natstest.WaitFor(t, 5*time.Second, func() bool { return get(t, b, "room.x", Query{}).Count == 22 })
	p := get(t, b, "room.x", Query{Limit: 4, ByUser: true})
	if p.Count != 12 || len(p.Members) != 4 || p.Members[2].User != "u00" || p.Members[2].Channels != 3 || p.Members[3].Channels != 1 {
		t.Fatalf("folded across nodes: %+v", p)
	}
}

// TestPresenceReplyFitsPayload: a reply too large for one NATS message
// lists fewer members, says so, and still fits.
func TestPresenceReplyFitsPayload(t *testing.T) {
	r := presenceReply{Node: "a", Count: 100}
	for i := range 100 {
		r.Members = append(r.Members, Member{Channel: fmt.Sprintf("a.%d", i), Info: json.RawMessage(`"` + strings.Repeat("i", 1000) + `"`)})
	}
	data := encodeReply(r, 20_000)
	var got presenceReply
	if err := json.Unmarshal(data, &got); err != nil || len(data) > 20_000 || !got.Truncated || len(got.Members) == 0 || got.Count != 100 {
		t.Fatalf("%d bytes, %d members, truncated %v, err %v", len(data), len(got.Members), got.Truncated, err)
	}
}
