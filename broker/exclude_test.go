package broker

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestPublishExcept: a group message published except one channel
// reaches every other member, on both nodes, and never that channel,
// in at-most-once and recoverable groups alike.
func TestPublishExcept(t *testing.T) {
	ns := startJetStreamNATS(t)
	a := historyBroker(t, ns.ClientURL(), 100, PolicyRule{"room.*", Recoverable})
	b := historyBroker(t, ns.ClientURL(), 100, PolicyRule{"room.*", Recoverable})
	for _, group := range []string{"plain", "room.kept"} {
		var names []string
		var inboxes []*inbox
		for _, n := range []*Broker{a, a, b, b} {
			c, r := open(t, n)
			join(t, n, group, c)
			names, inboxes = append(names, c), append(inboxes, r)
		}
		// From a, except a member on b; from b, except a member on a.
		for i, except := range []int{2, 1} {
			pub := []*Broker{a, b}[i]
			if _, err := pub.GroupPublishWith(group, []byte(fmt.Sprint(i)), PublishOptions{Except: names[except]}); err != nil {
				t.Fatal(err)
			}
			for j, r := range inboxes {
				if j == except {
					continue
				}
				if got := r.next(t); !containsData(got, fmt.Sprint(i)) {
					t.Fatalf("%s: member %d got %s, want data %d", group, j, got, i)
				}
			}
		}
		inboxes[1].none(t, 50*time.Millisecond) // got 0, not 1
		inboxes[2].none(t, 50*time.Millisecond) // got 1, not 0
	}
	if _, err := a.GroupPublishWith("plain", []byte(`1`), PublishOptions{Except: "not a channel"}); !errors.Is(err, ErrInvalidChannel) {
		t.Fatalf("bad channel: %v", err)
	}
}

// containsData reports whether a delivery frame ends with data d.
func containsData(frame, d string) bool {
	return strings.HasSuffix(frame, `"data":`+d+`}`)
}
