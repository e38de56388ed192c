package web

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzParseFrame: no input panics; an error answer built for any input is
// one valid JSON object on one line that echoes only a number or string id.
func FuzzParseFrame(f *testing.F) {
	for _, s := range []string{`{"type":"join","group":"g","id":1}`, `{"type":"send","group":"g","data":{"a":[1]},"id":"x"}`,
		`[]`, `{"id":{"a":1}}`, `{"type":1}`, `{"id":1e999}`, "\x00", `{"data":nul}`, `  {"type":"ping"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		fr, err := parseFrame(p)
		if fr.ID != nil && validID(fr.ID) == nil {
			t.Fatalf("kept a bad id %q", fr.ID)
		}
		if err == nil && fr.Data != nil && !json.Valid(fr.Data) {
			t.Fatalf("accepted bad data %q", fr.Data)
		}
		reply := errorFrame(fr.ID, CodeInvalidJSON, "m")
		if !json.Valid(reply) {
			t.Fatalf("error frame %q is not JSON", reply)
		}
		for _, c := range reply {
			if c == '\n' {
				t.Fatalf("error frame %q holds a newline", reply)
			}
		}
		ack := appendReply(nil, "ack", fr.ID)
		if !json.Valid(ack) {
			t.Fatalf("ack %q is not JSON", ack)
		}
	})
}

// FuzzPatterns: a valid pattern never lets a join escape its prefix, and
// no pattern matches a name that is not a valid group.
func FuzzPatterns(f *testing.F) {
	for _, s := range [][2]string{{"room.*", "room.lobby"}, {"*", "x"}, {"room.>", "room.a"}, {"a", "a"}, {"a*", "b"}, {"..*", "a"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, group string) {
		if !validPattern(pattern) {
			return
		}
		if !allowed([]string{pattern}, group) {
			return
		}
		prefix, wild := strings.CutSuffix(pattern, "*")
		if !wild && pattern != group {
			t.Fatalf("exact pattern %q matched %q", pattern, group)
		}
		if wild && !strings.HasPrefix(group, prefix) {
			t.Fatalf("pattern %q matched %q", pattern, group)
		}
	})
}

// FuzzToken: no input panics the verifier, and none passes without the
// key (the fuzzer cannot forge an HMAC).
func FuzzToken(f *testing.F) {
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")
	f.Add("a.b.c")
	f.Add("")
	a, err := newAuthenticator(AuthConfig{Secret: []byte("0123456789abcdef0123456789abcdef")}, testLogger())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, token string) {
		if id, err := a.connection(token); err == nil {
			t.Fatalf("forged token %q accepted as %+v", token, id)
		}
	})
}

// FuzzIntersect: the intersection of two pattern lists allows exactly the
// groups both allow.
func FuzzIntersect(f *testing.F) {
	for _, s := range [][3]string{{"room.*", "room.1", "room.1"}, {"*", "room.a*", "room.ab"}, {"a*", "ab*", "abc"}, {"a", "b*", "a"}} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, p, q, group string) {
		if !validPattern(p) || !validPattern(q) {
			return
		}
		a, b := []string{p, "fixed"}, []string{q}
		got := allowed(intersect(a, b), group)
		if want := allowed(a, group) && allowed(b, group); got != want {
			t.Fatalf("intersect(%q, %q) = %q allows %q: %v, want %v", a, b, intersect(a, b), group, got, want)
		}
	})
}
