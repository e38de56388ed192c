package broker

import (
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
