package main

import (
	"slices"
	"strings"
	"testing"
)

// TestPresenceGroupsSetting: PRESENCE_GROUPS is a list of group names and
// prefixes ending in '*'; anything else stops the process, naming it.
func TestPresenceGroupsSetting(t *testing.T) {
	env := func(v string) func(string) string { return oneVar("PRESENCE_GROUPS", v) }
	s, err := loadSettings(env(" room.* , lobby,*"))
	if err != nil || !slices.Equal(s.Broker.Presence, []string{"room.*", "lobby", "*"}) {
		t.Fatalf("%v %v", s, err)
	}
	if s, err := loadSettings(env("")); err != nil || s.Broker.Presence != nil {
		t.Fatalf("default: %v %v", s.Broker.Presence, err)
	}
	for _, bad := range []string{"room..*", "bad group", "*room", ".x"} {
		if _, err := loadSettings(env(bad)); err == nil || !strings.Contains(err.Error(), "PRESENCE_GROUPS") {
			t.Fatalf("%q: %v", bad, err)
		}
	}
}
