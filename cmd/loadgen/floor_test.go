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

// TestFloorProtocol checks the floor's answers frame by frame: the welcome
// in the handshake's write, ack, pong, error, deliveries only between a
// join's ack and a leave's.
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
	welcome := make([]byte, 2)
	if _, err := io.ReadFull(br, welcome); err != nil || welcome[0] != 0x81 {
		t.Fatalf("frame header % x, %v", welcome, err)
	}
	welcome = make([]byte, welcome[1])
	if _, err := io.ReadFull(br, welcome); err != nil || !bytes.HasPrefix(welcome, []byte(`{"type":"welcome","channel":"floor.`)) {
		t.Fatalf("welcome %s, %v", welcome, err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, f.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	read := func() string {
		t.Helper()
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	exchange := func(frame, want string) {
		t.Helper()
		if err := ws.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
			t.Fatal(err)
		}
		if got := read(); got != want {
			t.Fatalf("%s: got %s, want %s", frame, got, want)
		}
	}
	post := func(group, body string, want int) {
		t.Helper()
		resp, err := http.Post(f.API+"/api/groups/"+group+"/messages", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("POST %s %s: %d, want %d", group, body, resp.StatusCode, want)
		}
	}
	if w := read(); !strings.HasPrefix(w, `{"type":"welcome"`) {
		t.Fatalf("first frame %s", w)
	}
	exchange(`{"type":"ping","id":7}`, `{"type":"pong","id":7}`)
	exchange(`{"type":"ping"}`, `{"type":"pong"}`)
	exchange(`nope`, `{"type":"error","code":"bad_frame","message":"not a JSON object"}`)
	exchange(`{"type":"join","group":"a..b","id":2}`, `{"type":"error","id":2,"code":"bad_group","message":"invalid group name"}`)
	exchange(`{"type":"shout","id":3}`, `{"type":"error","id":3,"code":"unknown_type","message":"unknown frame type"}`)
	exchange(`{"type":"join","group":"g","id":4}`, `{"type":"ack","id":4}`)
	post("g", `{"n":1}`, http.StatusAccepted)
	if got := read(); got != `{"type":"message","group":"g","data":{"n":1}}` {
		t.Fatalf("delivery %s", got)
	}
	post("g", `{"n":`, http.StatusBadRequest)
	post("a..b", `{}`, http.StatusBadRequest)
	post("g", `"`+strings.Repeat("x", floorMaxBody)+`"`, http.StatusRequestEntityTooLarge)
	exchange(`{"type":"leave","group":"g","id":5}`, `{"type":"ack","id":5}`)
	post("g", `{"n":2}`, http.StatusAccepted)
	// Nothing for g after the leave's ack: the next frame is the pong.
	exchange(`{"type":"ping","id":6}`, `{"type":"pong","id":6}`)

	// A frame over the limit ends the connection.
	err = ws.Write(ctx, websocket.MessageText, bytes.Repeat([]byte("x"), floorMaxFrame+1))
	if err == nil {
		_, _, err = ws.Read(ctx)
	}
	if err == nil {
		t.Fatal("connection survived an oversized frame")
	}
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

// FuzzFloorAnswer: whatever a client sends, the answer is one JSON object
// of a type the protocol knows.
func FuzzFloorAnswer(f *testing.F) {
	for _, s := range []string{`{"type":"join","group":"g","id":1}`, `{"type":"leave","group":"g"}`, `{"type":"ping","id":-3}`, `[]`, `{"id":1e400}`, `{"type":"join","group":"..","id":2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		fl := &floor{groups: map[string]map[net.Conn]struct{}{}}
		joined := map[string]struct{}{}
		var m struct{ Type string }
		ans := fl.answer(nil, frame, joined)
		if err := json.Unmarshal(ans, &m); err != nil {
			t.Fatalf("answer %s to %q: %v", ans, frame, err)
		}
		switch m.Type {
		case "ack", "pong", "error":
		default:
			t.Fatalf("answer %s to %q", ans, frame)
		}
		if len(joined) > 0 && len(fl.groups) != len(joined) {
			t.Fatalf("joined %v, groups %v", joined, fl.groups)
		}
	})
}
