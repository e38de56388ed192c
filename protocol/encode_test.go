package protocol

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

func TestEncoders(t *testing.T) {
	msg := func(d Message, data string) string {
		b, err := AppendMessage(nil, d, []byte(data))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for _, c := range []struct{ got, want string }{
		{msg(Message{Group: "g"}, `{"a":1}`), `{"type":"message","group":"g","data":{"a":1}}`},
		{msg(Message{Channel: "c1", Region: "eu"}, `2`), `{"type":"message","channel":"c1","region":"eu","data":2}`},
		{msg(Message{Group: "g", Region: "us", Kept: true, Offset: 7, Epoch: "e1"}, "{\n\"a\": [1,\n2]}"),
			`{"type":"message","group":"g","region":"us","offset":7,"epoch":"e1","data":{"a":[1,2]}}`},
		{string(AppendWelcome(nil, "c1", "n1", "", "")), `{"type":"welcome","channel":"c1","node":"n1","region":""}`},
		{string(AppendWelcome(nil, "c1", "n1", "eu", `u"1`)), `{"type":"welcome","channel":"c1","node":"n1","region":"eu","user":"u\"1"}`},
		{string(AppendReply(nil, TypeAck, json.RawMessage(`7`))), `{"type":"ack","id":7}`},
		{string(AppendReply(nil, TypePong, nil)), `{"type":"pong"}`},
		{string(AppendError(nil, json.RawMessage(`"x"`), CodeForbidden, "no <way>\n")), `{"type":"error","id":"x","code":"forbidden","message":"no \u003cway\u003e\n"}`},
		{string(AppendError(nil, nil, CodeInternal, "m")), `{"type":"error","code":"internal","message":"m"}`},
		{string(AppendJoinAck(nil, json.RawMessage(`1`), true)), `{"type":"ack","id":1,"recovered":true}`},
		{string(AppendSendAck(nil, nil, 42, false)), `{"type":"ack","offset":42,"duplicate":false}`},
		{string(AppendDataReply(nil, json.RawMessage(`"r"`), []byte(`{"ok":1}`))), `{"type":"reply","id":"r","data":{"ok":1}}`},
		{string(AppendGap(nil, "g", "e2")), `{"type":"gap","group":"g","epoch":"e2"}`},
		{string(AppendGroupEvent(nil, TypeJoined, "g")), `{"type":"joined","group":"g"}`},
		{string(AppendPresence(nil, "g", "join", []byte(`{"channel":"c"}`))), `{"type":"presence","group":"g","event":"join","member":{"channel":"c"}}`},
	} {
		if c.got != c.want {
			t.Errorf("got  %s\nwant %s", c.got, c.want)
		}
		if !json.Valid([]byte(c.got)) {
			t.Errorf("%s is not JSON", c.got)
		}
	}
	for _, m := range []Message{{Group: "g"}, {Channel: "c.1", Region: "eu"}, {Group: "g", Region: "r", Kept: true, Offset: 1<<64 - 1, Epoch: "e"}} {
		if b, _ := AppendMessage(nil, m, []byte(`{"a":1}`)); len(b) > cap(b) || cap(b)-len(b) > 2 { // "group" is 2 bytes shorter than "channel"
			t.Errorf("%s: cap %d for %d bytes: the estimate is off", b, cap(b), len(b))
		}
	}
	if _, err := AppendMessage(nil, Message{Group: "g"}, []byte(`{"a":`)); err != ErrInvalidData {
		t.Errorf("bad data: %v, want ErrInvalidData", err)
	}
}

// TestEncodeNoAllocs: with room in the caller's buffer, encoding a
// delivery or a reply allocates nothing (the payload is copied once).
func TestEncodeNoAllocs(t *testing.T) {
	buf := make([]byte, 0, 512)
	data := []byte(`{"seq":1,"text":"hello"}`)
	d := Message{Group: "room.1", Region: "eu", Kept: true, Offset: 99, Epoch: "abc"}
	if n := testing.AllocsPerRun(100, func() {
		buf, _ = AppendMessage(buf[:0], d, data)
		buf = AppendReply(buf[:0], TypeAck, json.RawMessage(`12`))
		buf = AppendGap(buf[:0], "room.1", "abc")
	}); n != 0 {
		t.Errorf("%v allocations, want 0", n)
	}
}

func TestRoundTrip(t *testing.T) {
	b, _ := AppendMessage(nil, Message{Group: "g", Region: "eu", Kept: true, Offset: 3, Epoch: "e"}, []byte(`[1]`))
	b = append(b, '\n')
	b = AppendReply(b, TypeAck, json.RawMessage(`5`))
	var got []Frame
	for obj := range Objects(b) {
		f, err := Decode(obj)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, f)
	}
	if len(got) != 2 {
		t.Fatalf("%d frames", len(got))
	}
	m := got[0]
	if m.Type != TypeMessage || m.Group != "g" || m.Region != "eu" || m.Offset != 3 || m.Epoch != "e" || string(m.Data) != "[1]" {
		t.Errorf("message decoded as %+v", m)
	}
	if got[1].Type != TypeAck || string(got[1].ID) != "5" || string(got[1].Raw) != `{"type":"ack","id":5}` {
		t.Errorf("ack decoded as %+v", got[1])
	}
	for _, bad := range []string{``, `[]`, `null`, ` 1`, `{"type":1}`, `{"type":"ack"`} {
		if _, err := Decode([]byte(bad)); err == nil {
			t.Errorf("Decode(%q) succeeded", bad)
		}
	}
}

func TestObjectsSkipsBlank(t *testing.T) {
	var n int
	for obj := range Objects([]byte("\n{\"type\":\"a\"}\n \n{\"type\":\"b\"}\n")) {
		if obj[0] != '{' {
			t.Errorf("object %q", obj)
		}
		n++
	}
	if n != 2 {
		t.Errorf("%d objects, want 2", n)
	}
}

func TestReconnectReason(t *testing.T) {
	r := ReconnectReason("server restart", 1500*time.Millisecond)
	if r != "server restart reconnect_within_ms=1500" {
		t.Fatalf("reason %q", r)
	}
	for reason, want := range map[string]time.Duration{
		r:                                  1500 * time.Millisecond,
		"server restart":                   0,
		"reconnect_within_ms=0":            0,
		"reconnect_within_ms=-5":           0,
		"reconnect_within_ms=x":            0,
		"x reconnect_within_ms=9 y":        9 * time.Millisecond,
		"reconnect_within_ms=999999999999": 999999999999 * time.Millisecond,
	} {
		if got := ReconnectWithin(reason); got != want {
			t.Errorf("ReconnectWithin(%q) = %v, want %v", reason, got, want)
		}
	}
	if ReconnectWithin("reconnect_within_ms=9223372036854775807") <= 0 {
		t.Error("a huge spread overflowed")
	}
}

func TestHTTPStatus(t *testing.T) {
	for code, want := range map[string]int{CodeInvalidGroup: 400, CodeTooLarge: 413, CodeUnavailable: 503,
		CodeRateLimited: 429, CodeUnauthorized: 401, CodeNotFound: 404, CodeInternal: 500, "app_own": http.StatusForbidden} {
		if got := HTTPStatus(code); got != want {
			t.Errorf("HTTPStatus(%q) = %d, want %d", code, got, want)
		}
	}
}

func BenchmarkEncodeMessage(b *testing.B) {
	data := []byte(`{"seq":12345,"t":1732700000000000000,"text":"hello, world"}`)
	d := Message{Group: "bench", Region: "eu", Kept: true, Offset: 12345, Epoch: "k3j2"}
	b.Run("fresh", func(b *testing.B) { // as the broker does: one frame shared by all members
		b.ReportAllocs()
		for b.Loop() {
			if _, err := AppendMessage(nil, d, data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reused", func(b *testing.B) {
		buf := make([]byte, 0, 256)
		b.ReportAllocs()
		for b.Loop() {
			buf, _ = AppendMessage(buf[:0], d, data)
		}
	})
}

func BenchmarkEncodeReply(b *testing.B) {
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendReply(buf[:0], TypeAck, json.RawMessage(`12345`))
	}
}

func BenchmarkDecode(b *testing.B) {
	obj, _ := AppendMessage(nil, Message{Group: "bench", Kept: true, Offset: 1, Epoch: "e"}, []byte(`{"seq":12345,"text":"hello, world"}`))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(obj); err != nil {
			b.Fatal(err)
		}
	}
}
