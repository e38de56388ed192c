package broker

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
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
		if !validID(node) || !validID(conn) || node+"."+conn != name {
			t.Fatalf("%q split into %q and %q", name, node, conn)
		}
	})
}

// FuzzAppendFrame: any payload either is refused or yields one JSON object
// on one line whose data is the payload, semantically unchanged.
func FuzzAppendFrame(f *testing.F) {
	for _, s := range []string{`{"a":1}`, "[1,\n2]", `"x"`, "nul", "{", `{"a":"\u2028"}`, " 1 ", "1 2"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		frame, err := appendFrame(nil, `{"type":"message","group":"`, "g", "", data)
		if err != nil {
			if json.Valid(data) {
				t.Fatalf("valid JSON %q refused", data)
			}
			return
		}
		if bytes.IndexByte(frame, '\n') >= 0 {
			t.Fatalf("frame %q holds a newline", frame)
		}
		var got struct {
			Type, Group string
			Data        json.RawMessage
		}
		if err := json.Unmarshal(frame, &got); err != nil {
			t.Fatalf("frame %q is not JSON: %v", frame, err)
		}
		var want, have any
		json.Unmarshal(data, &want)
		json.Unmarshal(got.Data, &have)
		a, _ := json.Marshal(want)
		b, _ := json.Marshal(have)
		if got.Type != "message" || got.Group != "g" || !bytes.Equal(a, b) {
			t.Fatalf("frame %q does not carry %q", frame, data)
		}
	})
}
