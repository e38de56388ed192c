package broker

import (
	"encoding/json"
	"testing"
	"time"
)

// TestGapReachesOnlyTheStreamsGroups: the history watch reports that one
// stream lost messages; every local member of that stream's groups hears
// it, the members of other streams' groups and of at-most-once groups not.
func TestGapReachesOnlyTheStreamsGroups(t *testing.T) {
	b := historyBroker(t, "", 100, PolicyRule{"r.*", Recoverable}, PolicyRule{"l.*", Latest})
	inboxes := map[string]*inbox{}
	for _, g := range []string{"r.a", "r.b", "l.a", "n"} {
		c, r := open(t, b)
		join(t, b, g, c)
		inboxes[g] = r
	}
	if err := b.history.js.DeleteStream(b.history.streams[Recoverable].name); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"r.a", "r.b"} {
		if gap := awaitGap(t, inboxes[g]); gap.Group != g || gap.Epoch == "" {
			t.Fatalf("%s heard %+v", g, gap)
		}
	}
	for _, g := range []string{"l.a", "n"} {
		inboxes[g].none(t, 300*time.Millisecond)
	}
}

// TestGapAfterOutage: streams back after a check that could not read them
// may have lost messages (the outage hid what happened meanwhile): their
// groups' members hear of a gap, in the same epoch, and the broker is ready
// again.
func TestGapAfterOutage(t *testing.T) {
	b := historyBroker(t, "", 100, PolicyRule{"*", Recoverable})
	c, r := open(t, b)
	join(t, b, "g", c)
	first := publishN(t, b, "g", 0, 1)[0]
	r.deliveries(t, 1)
	var gap gapFrame
	// The watch's own check may overwrite the mark of the outage with its
	// result: mark it again until a check starts from it.
	for try := 0; gap.Type == "" && try < 3; try++ {
		b.history.down.Store(true)
		deadline := time.After(historyCheckInterval * 3 / 2)
	wait:
		for {
			select {
			case f := <-r.frames:
				if err := json.Unmarshal(f, &gap); err != nil || gap.Type != "gap" {
					t.Fatalf("frame %s before the gap", f)
				}
				break wait
			case <-deadline:
				break wait
			}
		}
	}
	if gap.Group != "g" || gap.Epoch != first.Epoch {
		t.Fatalf("gap %+v, want one of g in epoch %s", gap, first.Epoch)
	}
	if err := b.Ready(); err != nil {
		t.Fatalf("not ready after the outage: %v", err)
	}
}
