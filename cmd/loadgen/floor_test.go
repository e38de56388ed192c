package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/protocol"
)

// TestFanoutFloor runs each mode against the floor, exactly as against the
// servers it is the limit for.
func TestFanoutFloor(t *testing.T) {
	t.Parallel()
	f, err := startFloor("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	checkEveryMode(t, smallRun(targetFloor, []string{f.URL}, []string{f.API}))
}

// TestFloorProtocol checks the floor's answers frame by frame, decoded by
// package protocol and held to its types and codes: the welcome in the
// handshake's write, ack, pong, error, deliveries only between a join's ack
// and a leave's, the API's error bodies, 1009 for an oversized frame.
func TestFloorProtocol(t *testing.T) {
	t.Parallel()
	f, err := startFloor("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	// The handshake answer carries the welcome frame.
	nc, err := net.Dial("tcp", strings.TrimPrefix(f.API, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	key := "dGhlIHNhbXBsZSBub25jZQ==" // RFC 6455's example
	fmt.Fprintf(nc, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", key)
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("handshake %d %v", resp.StatusCode, resp.Header)
	}
	if br.Buffered() == 0 {
		t.Fatal("the welcome did not come with the 101")
	}
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(br, hdr); err != nil || hdr[0] != 0x81 {
		t.Fatalf("frame header % x, %v", hdr, err)
	}
	raw := make([]byte, hdr[1])
	if _, err := io.ReadFull(br, raw); err != nil {
		t.Fatal(err)
	}
	checkWelcome(t, raw)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, f.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	read := func() protocol.Frame {
		t.Helper()
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fr, err := protocol.Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		return fr
	}
	exchange := func(frame string, want protocol.Frame) {
		t.Helper()
		if err := ws.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
			t.Fatal(err)
		}
		if got := read(); !sameFrame(got, want) {
			t.Fatalf("%s: got %s, want type %s id %s code %s", frame, got.Raw, want.Type, want.ID, want.Code)
		}
	}
	post := func(group, body, wantCode string) {
		t.Helper()
		resp, err := http.Post(f.API+"/api/groups/"+group+"/messages", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got struct{ Error protocol.Error }
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatalf("POST %s: body: %v", group, err)
		}
		want := http.StatusAccepted
		if wantCode != "" {
			want = protocol.HTTPStatus(wantCode)
		}
		if resp.StatusCode != want || got.Error.Code != wantCode || (wantCode != "" && got.Error.Message == "") {
			t.Fatalf("POST %s %.20s: %d %+v, want %d %q", group, body, resp.StatusCode, got.Error, want, wantCode)
		}
	}
	refusal := func(id, code string) protocol.Frame {
		return protocol.Frame{Type: protocol.TypeError, ID: json.RawMessage(id), Code: code}
	}
	checkWelcome(t, read().Raw)
	exchange(`{"type":"ping","id":7}`, protocol.Frame{Type: protocol.TypePong, ID: json.RawMessage(`7`)})
	exchange(`{"type":"ping","id":"s"}`, protocol.Frame{Type: protocol.TypePong, ID: json.RawMessage(`"s"`)})
	exchange(`{"type":"ping"}`, protocol.Frame{Type: protocol.TypePong})
	exchange(`nope`, refusal(``, protocol.CodeInvalidJSON))
	exchange(`{"type":"join","group":7,"id":1}`, refusal(`1`, protocol.CodeInvalidFrame))
	exchange(`{"type":"join","group":"a..b","id":2}`, refusal(`2`, protocol.CodeInvalidGroup))
	exchange(`{"type":"shout","id":3}`, refusal(`3`, protocol.CodeUnknownType))
	exchange(`{"type":"join","group":"g","id":4}`, protocol.Frame{Type: protocol.TypeAck, ID: json.RawMessage(`4`)})
	post("g", "{\"n\":\n1}", "")
	if got := read(); !sameFrame(got, protocol.Frame{Type: protocol.TypeMessage, Group: "g", Data: json.RawMessage(`{"n":1}`)}) {
		t.Fatalf("delivery %s", got.Raw)
	}
	post("g", `{"n":`, protocol.CodeInvalidJSON)
	post("a..b", `{}`, protocol.CodeInvalidGroup)
	post("g", `"`+strings.Repeat("x", floorMaxBody)+`"`, protocol.CodeTooLarge)
	exchange(`{"type":"leave","group":"g","id":5}`, protocol.Frame{Type: protocol.TypeAck, ID: json.RawMessage(`5`)})
	post("g", `{"n":2}`, "")
	// Nothing for g after the leave's ack: the next frame is the pong.
	exchange(`{"type":"ping","id":6}`, protocol.Frame{Type: protocol.TypePong, ID: json.RawMessage(`6`)})

	// A frame over the limit ends the connection with 1009.
	err = ws.Write(ctx, websocket.MessageText, bytes.Repeat([]byte("x"), floorMaxFrame+1))
	if err == nil {
		_, _, err = ws.Read(ctx)
	}
	if got := websocket.CloseStatus(err); got != protocol.CloseTooLarge {
		t.Fatalf("oversized frame: close %d (%v), want %d", got, err, protocol.CloseTooLarge)
	}
}

// checkWelcome checks a welcome frame: its type, a channel of the shape
// channel names have, the floor's node.
func checkWelcome(t *testing.T, raw []byte) {
	t.Helper()
	w, err := protocol.Decode(raw)
	if err != nil || w.Type != protocol.TypeWelcome || !broker.ValidChannel(w.Channel) || w.Node != "floor" {
		t.Fatalf("welcome %s, %v", raw, err)
	}
}

// sameFrame compares the fields the floor's frames carry; an error's
// message is free text, required but not compared.
func sameFrame(got, want protocol.Frame) bool {
	return got.Type == want.Type && string(got.ID) == string(want.ID) && got.Code == want.Code &&
		got.Group == want.Group && string(got.Data) == string(want.Data) &&
		(got.Type != protocol.TypeError || got.Message != "")
}

// FuzzReadWSFrame feeds arbitrary bytes to the floor's frame reader: it
// must not panic, must keep to its limit, and must give back the payload of
// a well-formed masked frame.
func FuzzReadWSFrame(f *testing.F) {
	f.Add([]byte{0x81, 0x85, 1, 2, 3, 4, 'h' ^ 1, 'e' ^ 2, 'l' ^ 3, 'l' ^ 4, 'o' ^ 1}, []byte("hi"))
	f.Add([]byte{0x81, 0xfe, 0xff, 0xff}, []byte{})
	f.Add([]byte{0x81, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, bytes.Repeat([]byte("x"), 200))
	f.Fuzz(func(t *testing.T, raw, payload []byte) {
		op, p, err := readWSFrame(bufio.NewReader(bytes.NewReader(raw)), nil)
		if err == nil && (len(p) > floorMaxFrame || op > 0xf) {
			t.Fatalf("op %d, %d bytes accepted", op, len(p))
		}
		if len(payload) > floorMaxFrame {
			return
		}
		frame := maskedFrame(wsText, payload, [4]byte{9, 8, 7, 6})
		op, p, err = readWSFrame(bufio.NewReader(bytes.NewReader(frame)), make([]byte, 3))
		if err != nil || op != wsText || !bytes.Equal(p, payload) {
			t.Fatalf("round trip of %d bytes: op %d, %v, equal %v", len(payload), op, err, bytes.Equal(p, payload))
		}
	})
}

// maskedFrame builds a final client frame.
func maskedFrame(op byte, p []byte, mask [4]byte) []byte {
	b := appendWSFrame(nil, op, p)
	b[1] |= 0x80
	hdr := len(b) - len(p)
	out := append(append(b[:hdr:hdr], mask[:]...), p...)
	for i := range p {
		out[hdr+4+i] ^= mask[i&3]
	}
	return out
}

// FuzzFloorAnswer: whatever a client sends, the answer is one frame that
// package protocol decodes, of a type and with a code the protocol knows,
// answering the frame's id as sent.
func FuzzFloorAnswer(f *testing.F) {
	for _, s := range []string{`{"type":"join","group":"g","id":1}`, `{"type":"leave","group":"g"}`, `{"type":"ping","id":-3}`, `[]`, `{"id":1e400}`, `{"type":"join","group":"..","id":2}`, `{"type":"ping","id":"x\u00e9"}`, `{"type":"join","group":1,"id":"a"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		fl := &floor{groups: map[string]map[net.Conn]struct{}{}}
		joined := map[string]struct{}{}
		ans := fl.answer(nil, frame, joined)
		got, err := protocol.Decode(ans)
		if err != nil {
			t.Fatalf("answer %s to %q: %v", ans, frame, err)
		}
		switch got.Type {
		case protocol.TypeAck, protocol.TypePong:
		case protocol.TypeError:
			switch got.Code {
			case protocol.CodeInvalidJSON, protocol.CodeInvalidFrame, protocol.CodeInvalidGroup, protocol.CodeUnknownType:
			default:
				t.Fatalf("answer %s to %q: not a code of the protocol's", ans, frame)
			}
		default:
			t.Fatalf("answer %s to %q", ans, frame)
		}
		if p, _ := protocol.ParseClientFrame(frame); string(got.ID) != string(p.ID) {
			t.Fatalf("answer %s to %q: id %s, want %s", ans, frame, got.ID, p.ID)
		}
		if len(joined) > 0 && len(fl.groups) != len(joined) {
			t.Fatalf("joined %v, groups %v", joined, fl.groups)
		}
	})
}
