package broker

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// FuzzValidGroup: whatever the input, a name ValidGroup accepts is a
// literal NATS subject suffix (no wildcard, no empty token, no whitespace)
// and needs no JSON escaping.
func FuzzValidGroup(f *testing.F) {
	for _, s := range []string{"room.lobby", "a", "a..b", ".a", "a.", "a.*", ">", "a b", "ü", strings.Repeat("x", 101)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if !ValidGroup(name) {
			return
		}
		if len(name) > MaxGroupLen {
			t.Fatalf("%q: too long", name)
		}
		for _, tok := range strings.Split(name, ".") {
			if tok == "" || tok == "*" || tok == ">" {
				t.Fatalf("%q: bad subject token %q", name, tok)
			}
		}
		q, _ := json.Marshal(name)
		if string(q) != `"`+name+`"` {
			t.Fatalf("%q needs escaping", name)
		}
		for _, c := range []byte(name) {
			if c <= ' ' || c >= 0x7f || c == '*' || c == '>' {
				t.Fatalf("%q holds %q", name, c)
			}
		}
	})
}

// FuzzValidChannel: an accepted channel name is exactly two literal tokens.
func FuzzValidChannel(f *testing.F) {
	for _, s := range []string{"node.1", "a.b.c", "a", "*.>", "a.", "n-1_x.zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		node, conn, ok := splitChannel(name)
		if ok != ValidChannel(name) {
			t.Fatal("splitChannel and ValidChannel disagree")
		}
		if !ok {
			return
		}
		if !validToken(node) || !validToken(conn) || node+"."+conn != name {
			t.Fatalf("%q split into %q and %q", name, node, conn)
		}
	})
}

// FuzzPattern: a valid pattern matches only its group or the names that
// start with its prefix, holds no NATS wildcard but its final '*', and
// covers every group it overlaps with another pattern; a policy pattern's
// subject filter holds exactly the groups the pattern matches.
func FuzzPattern(f *testing.F) {
	for _, s := range [][3]string{
		{"room.*", "room.lobby", "room.vip"}, {"*", "x", "private.*"}, {"room.>", "room.a", "room*"},
		{"a", "a", "a.*"}, {"a*", "b", "ab*"}, {"..*", "a", "*"}, {"room*", "room", "room.*"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, pattern, group, other string) {
		if !ValidPattern(pattern) {
			return
		}
		prefix, wild := strings.CutSuffix(pattern, "*")
		if strings.ContainsAny(prefix, "*> \t\r\n") || len(pattern) > MaxGroupLen+1 {
			t.Fatalf("valid pattern %q holds a wildcard, space or too much", pattern)
		}
		if !wild && !MatchPattern(pattern, pattern) {
			t.Fatalf("%q does not match itself", pattern)
		}
		if !ValidGroup(group) {
			return
		}
		matched := MatchPattern(pattern, group)
		if matched != MatchAny([]string{"\x00", pattern}, group) {
			t.Fatalf("MatchAny disagrees with MatchPattern on %q, %q", pattern, group)
		}
		if matched && !wild && pattern != group || matched && wild && !strings.HasPrefix(group, prefix) {
			t.Fatalf("%q matched %q", pattern, group)
		}
		if ValidPattern(other) && matched && MatchPattern(other, group) && !patternsOverlap(pattern, other) {
			t.Fatalf("%q and %q both match %q but do not overlap", pattern, other, group)
		}
		if filter, ok := policyFilter("g.", pattern); ok {
			if in := server.SubjectMatchesFilter("g."+group, filter); in != matched {
				t.Fatalf("pattern %q matches %q: %v; its filter %q: %v", pattern, group, matched, filter, in)
			}
		}
	})
}
