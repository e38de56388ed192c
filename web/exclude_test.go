package web

import (
	"strings"
	"testing"
	"time"

	"github.com/groupcast/groupcast/internal/natstest"
	"github.com/groupcast/groupcast/internal/wstest"
)

// TestPublishExcludingAChannel: a client send with "echo":false skips the
// sender, and the server API's Groupcast-Exclude header and batch
// "exclude" skip one channel, on either of two instances.
func TestPublishExcludingAChannel(t *testing.T) {
	ns := natstest.Start(t, -1)
	a, b := newEnv(t, ns.ClientURL(), nil), newEnv(t, ns.ClientURL(), nil)
	sender, here, there := a.dial(), a.dial(), b.dial()
	all := []*wstest.Client{sender, here, there}
	for _, c := range all {
		c.Join("room")
	}
	expect := func(data string, skipped *wstest.Client) {
		t.Helper()
		for _, c := range all {
			if c != skipped {
				c.ExpectMessage("room", data)
			}
		}
	}

	if m := sender.Call(map[string]any{"type": "send", "group": "room", "data": 1, "echo": false}); m["type"] != "ack" {
		t.Fatalf("send: %v", m)
	}
	expect(`1`, sender)
	sender.Call(map[string]any{"type": "send", "group": "room", "data": 2, "echo": true})
	expect(`2`, nil)

	if status, body := a.post("/api/groups/room/messages", `3`, "Groupcast-Exclude", there.Channel()); status != 202 {
		t.Fatalf("publish: %d %s", status, body)
	}
	expect(`3`, there)
	if status, body := b.post("/api/messages", `{"messages":[{"group":"room","data":4,"exclude":"`+here.Channel()+`"},{"channel":"`+here.Channel()+`","data":5,"exclude":"x.1"}]}`); status != 200 ||
		strings.TrimSpace(body) != `{"ok":false,"results":[{"ok":true},{"error":{"code":"invalid_data","message":"\"exclude\" is for group messages"}}]}` {
		t.Fatalf("batch: %d %s", status, body)
	}
	expect(`4`, here)
	if status, _ := a.post("/api/groups/room/messages", `6`, "Groupcast-Exclude", "not a channel"); status != 400 {
		t.Fatalf("a bad channel to exclude: %d", status)
	}
	// The skipped ones got nothing more: the next message is the next one.
	a.post("/api/groups/room/messages", `7`)
	expect(`7`, nil)
	for _, c := range all {
		c.Quiet(50 * time.Millisecond)
	}
}
