package web

import (
	"log/slog"
	"testing"

	"github.com/groupcast/groupcast/broker"
)

// FuzzToken: no input panics the verifier, and none passes without the
// key (the fuzzer cannot forge an HMAC).
func FuzzToken(f *testing.F) {
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")
	f.Add("a.b.c")
	f.Add("")
	a, err := newAuthenticator(AuthConfig{Secret: []byte("0123456789abcdef0123456789abcdef")}, slog.New(slog.DiscardHandler))
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
		if !broker.ValidPattern(p) || !broker.ValidPattern(q) {
			return
		}
		a, b := []string{p, "fixed"}, []string{q}
		got := broker.MatchAny(intersect(a, b), group)
		if want := broker.MatchAny(a, group) && broker.MatchAny(b, group); got != want {
			t.Fatalf("intersect(%q, %q) = %q allows %q: %v, want %v", a, b, intersect(a, b), group, got, want)
		}
	})
}
