package broker

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestMatchPattern(t *testing.T) {
	for _, c := range []struct {
		pattern, group string
		want           bool
	}{
		{"room.lobby", "room.lobby", true},
		{"room.lobby", "room.lobby2", false},
		{"*", "anything.at.all", true},
		{"room.*", "room.lobby", true},
		{"room.*", "room", false},
		{"room.*", "rooms.a", false},
		{"room*", "room", true},
		{"room*", "rooms.a", true},
		{"room*", "roo", false},
	} {
		if got := MatchPattern(c.pattern, c.group); got != c.want {
			t.Errorf("MatchPattern(%q, %q) = %v", c.pattern, c.group, got)
		}
	}
	for _, p := range []string{"", "**", "a*b", "room.>", ".*", "a..*", "a b", "*.room", strings.Repeat("x", 101)} {
		if ValidPattern(p) {
			t.Errorf("ValidPattern(%q) = true", p)
		}
	}
	for _, p := range []string{"*", "room", "room.*", "room*", "room.a-b_c.*", strings.Repeat("x", 100), strings.Repeat("x", 99) + "*"} {
		if !ValidPattern(p) {
			t.Errorf("ValidPattern(%q) = false", p)
		}
	}
}

// TestPoliciesRefused: rules whose first match streams cannot keep are
// refused at New, with both rules named; overlaps within one policy are not.
func TestPoliciesRefused(t *testing.T) {
	for _, c := range []struct {
		rules []PolicyRule
		want  string // "" for accepted
	}{
		{[]PolicyRule{{"private.*", AtMostOnce}, {"*", Recoverable}}, "*=recoverable overlaps the earlier private.*=at-most-once"},
		{[]PolicyRule{{"room.vip", Latest}, {"room.*", Recoverable}}, "room.*=recoverable overlaps the earlier room.vip=latest"},
		{[]PolicyRule{{"room.*", Recoverable}, {"room.vip", Latest}}, "room.vip=latest overlaps the earlier room.*=recoverable"},
		{[]PolicyRule{{"room*", Recoverable}}, `pattern "room*": want a group name, * or a prefix ending in .*`},
		{[]PolicyRule{{"room.*", Recoverable}, {"room.vip", Recoverable}, {"*", Recoverable}}, ""},
		{[]PolicyRule{{"room.vip", Latest}, {"room.*", AtMostOnce}, {"*", AtMostOnce}}, ""},
		{[]PolicyRule{{"chat.*", Recoverable}, {"price.*", Latest}}, ""},
	} {
		err := CheckPolicies(c.rules)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("CheckPolicies(%v) = %v, want %q", c.rules, err, c.want)
		}
		if c.want == "" {
			continue
		}
		if b, err := New(Config{Logger: testLogger(t), Policies: c.rules}); err == nil || !strings.Contains(err.Error(), c.want) {
			if b != nil {
				b.Close(context.Background())
			}
			t.Errorf("New with %v: %v", c.rules, err)
		}
	}
}

// TestPoliciesFirstMatchWins: on JetStream, accepted rules that overlap
// keep each group as its first matching rule says.
func TestPoliciesFirstMatchWins(t *testing.T) {
	b := historyBroker(t, "", 100,
		PolicyRule{"room.vip", Latest},
		PolicyRule{"room.*", AtMostOnce},
		PolicyRule{"chat.*", Recoverable},
		PolicyRule{"chat.vip", Recoverable}, // covered by chat.*: one filter
		PolicyRule{"*", AtMostOnce},
	)
	ctx := context.Background()
	kept := func(group string) int {
		t.Helper()
		msgs, _, err := b.History(ctx, group, 0, 100)
		if errors.Is(err, ErrNoHistory) {
			return -1
		}
		if err != nil {
			t.Fatalf("history of %s: %v", group, err)
		}
		return len(msgs)
	}
	for _, g := range []string{"room.vip", "room.x", "chat.vip", "chat.a", "other"} {
		publishN(t, b, g, 0, 3)
	}
	for g, want := range map[string]int{"room.vip": 1, "chat.vip": 3, "chat.a": 3, "room.x": -1, "other": -1} {
		if got := kept(g); got != want {
			t.Errorf("%s keeps %d messages, want %d (-1: none)", g, got, want)
		}
	}
	if _, err := b.GroupPublish("room.x", []byte(`1`), "k"); !errors.Is(err, ErrIdempotencyUnsupported) {
		t.Errorf("room.x is kept: %v", err)
	}
}
