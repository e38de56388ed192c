package protocol

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzDecode: no server input panics the decoder; what it accepts is a
// JSON object, and its raw fields are valid JSON.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"type":"welcome","channel":"c","node":"n","region":""}`,
		`{"type":"message","group":"g","offset":1,"epoch":"e","data":{"a":[1]}}`, `{"type":"ack","id":"x"}`,
		"{\"type\":\"ack\",\"id\":1}\n{\"type\":\"pong\"}", `[]`, `{"type":1}`, `{"data":nul}`, "\x00", `{"type":"x","data":1e999}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		for obj := range Objects(p) {
			if bytes.IndexByte(obj, '\n') >= 0 {
				t.Fatalf("object %q holds a newline", obj)
			}
			fr, err := Decode(obj)
			if err != nil {
				continue
			}
			if !json.Valid(obj) || bytes.TrimSpace(obj)[0] != '{' {
				t.Fatalf("accepted %q as %+v", obj, fr)
			}
			for _, raw := range []json.RawMessage{fr.ID, fr.Data, fr.Member} {
				if raw != nil && !json.Valid(raw) {
					t.Fatalf("field %q of %q is not JSON", raw, obj)
				}
			}
		}
	})
}

// FuzzParseClientFrame: no client input panics the parser; the answers
// built for any input are valid one-line JSON that echo only a number or
// string id.
func FuzzParseClientFrame(f *testing.F) {
	for _, s := range []string{`{"type":"join","group":"g","id":1}`, `{"type":"send","group":"g","data":{"a":[1]},"id":"x"}`,
		`[]`, `{"id":{"a":1}}`, `{"type":1}`, `{"id":1e999}`, "\x00", `{"data":nul}`, `  {"type":"ping"}`,
		`{"type":"join","since":{"offset":-1}}`, `{"id":null}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		fr, err := ParseClientFrame(p)
		if fr.ID != nil && validID(fr.ID) == nil {
			t.Fatalf("kept a bad id %q", fr.ID)
		}
		if err == nil && fr.Data != nil && !json.Valid(fr.Data) {
			t.Fatalf("accepted bad data %q", fr.Data)
		}
		if err != nil {
			if e, ok := err.(*Error); !ok || (e.Code != CodeInvalidJSON && e.Code != CodeInvalidFrame) {
				t.Fatalf("error %v", err)
			}
		}
		for _, reply := range [][]byte{AppendError(nil, fr.ID, CodeInvalidJSON, string(p)), AppendReply(nil, TypeAck, fr.ID)} {
			if !json.Valid(reply) || bytes.IndexByte(reply, '\n') >= 0 {
				t.Fatalf("answer %q is not one line of JSON", reply)
			}
		}
	})
}

func TestParseClientFrame(t *testing.T) {
	f, err := ParseClientFrame([]byte(`{"type":"join","group":"g","id":"a","since":{"offset":4,"epoch":"e"},"echo":false}`))
	if err != nil || f.Type != TypeJoin || f.Group != "g" || string(f.ID) != `"a"` || f.Since == nil || f.Since.Offset != 4 || *f.Echo {
		t.Fatalf("%+v, %v", f, err)
	}
	f, err = ParseClientFrame([]byte(`{"type":"ping","id":7,"group":3}`))
	if e, ok := err.(*Error); !ok || e.Code != CodeInvalidFrame || string(f.ID) != "7" {
		t.Fatalf("wrong type: %+v, %v (the id must survive for the answer)", f, err)
	}
	if _, err := ParseClientFrame([]byte(`{"id":{}}`)); err == nil {
		t.Fatal("an object id was accepted")
	}
	if _, err := ParseClientFrame([]byte(`[1]`)); err == nil || err.(*Error).Code != CodeInvalidJSON {
		t.Fatalf("an array: %v", err)
	}
}

// FuzzAppendMessage: any payload either is refused or yields one JSON object
// on one line whose data is the payload, semantically unchanged.
func FuzzAppendMessage(f *testing.F) {
	for _, s := range []string{`{"a":1}`, "[1,\n2]", `"x"`, "nul", "{", `{"a":"\u2028"}`, " 1 ", "1 2"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		frame, err := AppendMessage(nil, Message{Group: "g", Kept: true, Offset: 1, Epoch: "e"}, data)
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
