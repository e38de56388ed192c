package main

import (
	"bufio"
	"bytes"
	"context"
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
