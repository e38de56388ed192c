package protocol

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// viewSeeds are objects that take every path of View.Decode: each field
// type, null, escapes, folded keys, duplicates, nesting and bad JSON.
var viewSeeds = []string{
	`{"type":"welcome","channel":"c","node":"n","region":"","user":"u\"1\""}`,
	`{"type":"message","group":"g","offset":1,"epoch":"e","data":{"a":[1,{"b":null}],"type":"x"}}`,
	`{"type":"ack","id":"x","recovered":true}`, `{"type":"ack","id":7,"offset":18446744073709551615,"duplicate":true}`,
	`{"type":"ack","offset":18446744073709551616}`, `{"offset":-0}`, `{"offset":1e2}`, `{"offset":1.5}`,
	`{"type":"error","id":1,"code":"bad","message":"a\u00e9\ud83d\ude00\ud800x\\\/\b\f\n\r\t"}`,
	`{"TYPE":"ack","Id":1,"meſſage":"m","ty\u0070e":"x"}`, `{"type":"a","type":null}`, `{"recovered":true,"recovered":null}`,
	`{"duplicate":true,"duplicate":null,"id":null}`, `{"type":1}`, `{"data":nul}`, `{"group":{"a":1}}`,
	`{"recovered":"true"}`, " \t\r\n{ \"type\" : \"x\" , \"data\" : [ 1 , 2 ] } \n", `{"a":1} x`, `{"a":1,}`, `{"a" 1}`,
	`[]`, `{`, `"x"`, "{\"type\":\"\xff\"}", "{\"type\":\"a\x01\"}", `{"type":"\x"}`, `{"type":"\u12"}`,
	`{"data":01}`, `{"data":-}`, `{"data":1.}`, `{"data":1e}`, `{"data":1E+5}`, `{"data":[tru]}`, `{"data":"\u00"}`,
	`{"event":"join","member":{"user":"u"},"group":"g"}`, `{"raw":"x","Raw":"y","-":1}`,
}

// FuzzViewAgrees: View.Decode accepts exactly what Decode accepts, with the
// same Frame, also when the View is reused.
func FuzzViewAgrees(f *testing.F) {
	for _, s := range viewSeeds {
		f.Add([]byte(s))
	}
	var v View
	f.Fuzz(func(t *testing.T, p []byte) {
		checkAgrees(t, &v, p)
	})
}

func checkAgrees(t *testing.T, v *View, p []byte) {
	t.Helper()
	want, err := Decode(p)
	verr := v.Decode(p)
	if (err == nil) != (verr == nil) {
		t.Fatalf("%q: Decode: %v, View.Decode: %v", p, err, verr)
	}
	if got := v.Frame(); !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\nView   %+v\nDecode %+v", p, got, want)
	}
}

func TestViewAgrees(t *testing.T) {
	var v View
	for _, s := range viewSeeds {
		checkAgrees(t, &v, []byte(s))
	}
	// encoding/json's nesting limit: 10,000 levels, the frame's included.
	for _, depth := range []int{maxDepth, maxDepth + 1} {
		deep := `{"data":` + strings.Repeat("[", depth-1) + strings.Repeat("]", depth-1) + `}`
		checkAgrees(t, &v, []byte(deep))
	}
}

// TestViewValidity: what a View returns sub-slices the object, and escaped
// strings survive the View's buffer growing within one Decode.
func TestViewValidity(t *testing.T) {
	obj := []byte(`{"type":"message","group":"g","data":{"x":1},"message":"` + strings.Repeat(`\"`, 100) +
		`","user":"` + strings.Repeat(`\n`, 1000) + `"}`)
	var v View
	if err := v.Decode(obj); err != nil {
		t.Fatal(err)
	}
	if &v.Data[0] != &obj[bytes.Index(obj, []byte(`{"x"`))] {
		t.Error("data is a copy")
	}
	if string(v.Message) != strings.Repeat(`"`, 100) || string(v.User) != strings.Repeat("\n", 1000) {
		t.Errorf("escaped strings: %q %q", v.Message, v.User)
	}
	if err := v.Decode([]byte(`{"type":"pong"}`)); err != nil || v.Data != nil || v.Message != nil || string(v.Type) != "pong" {
		t.Errorf("a second decode kept %+v, %v", v, err)
	}
	if err := v.Decode([]byte(`{"type":1}`)); err == nil || v.Type != nil || v.Raw != nil {
		t.Errorf("a failed decode left %+v, %v", v, err)
	}
}

// viewFrames are the hot loop's frames: a delivery, a batch of them and an ack.
var viewFrames = []struct{ name, frame string }{
	{"message", `{"type":"message","group":"room-1","offset":912,"epoch":"e81f","data":{"seq":4711,"t":1764770000000000000,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxx"}}`},
	{"batch", strings.Repeat(`{"type":"message","group":"room-1","data":{"seq":4711,"t":1764770000000000000,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxx"}}`+"\n", 16)},
	{"ack", `{"type":"ack","id":12}`},
}

func TestViewAllocs(t *testing.T) {
	var v View
	for _, fr := range viewFrames {
		p := []byte(fr.frame)
		allocs := testing.AllocsPerRun(100, func() {
			for obj := range Objects(p) {
				if err := v.Decode(obj); err != nil {
					t.Fatal(err)
				}
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %.1f allocations per frame", fr.name, allocs)
		}
	}
}

func BenchmarkDecodeView(b *testing.B) {
	for _, fr := range viewFrames {
		p := []byte(fr.frame)
		b.Run(fr.name+"/Decode", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				for obj := range Objects(p) {
					if _, err := Decode(obj); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		b.Run(fr.name+"/View", func(b *testing.B) {
			b.ReportAllocs()
			var v View
			for b.Loop() {
				for obj := range Objects(p) {
					if err := v.Decode(obj); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// TestViewFolding: encoding/json matches a key to a field when they are
// equal under Unicode simple folding; the only non-ASCII runes that fold
// to a letter of a field's name are those foldEqual knows.
func TestViewFolding(t *testing.T) {
	var letters string
	for _, f := range viewFields {
		letters += f.name
	}
	for r := rune(utf8.RuneSelf); r <= unicode.MaxRune; r++ {
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if f < utf8.RuneSelf && strings.ContainsRune(letters, unicode.ToLower(f)) && r != 'ſ' {
				t.Errorf("%U folds to %c, which foldEqual does not know", r, f)
			}
		}
	}
	var v View
	checkAgrees(t, &v, []byte(`{"meſſage":"m","uſer":"u","CODE":"c"}`))
}
