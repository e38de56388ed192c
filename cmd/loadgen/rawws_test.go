package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/groupcast/groupcast/protocol"
)

// TestRawWS reads what coder/websocket writes as a server: a fragmented
// message, long frames of both extended lengths, a ping it must answer,
// and a close; and the server reads the loader's masked frame.
func TestRawWS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	long := bytes.Repeat([]byte("y"), 70_000)
	mid := bytes.Repeat([]byte("z"), 300)
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		mw, _ := conn.Writer(ctx, websocket.MessageText)
		mw.Write([]byte("hel"))
		mw.Write([]byte("lo"))
		mw.Close()
		conn.Write(ctx, websocket.MessageBinary, long)
		conn.Write(ctx, websocket.MessageText, mid)
		go func() { // the reader that Ping needs, then the loader's frame
			_, p, err := conn.Read(ctx)
			if err != nil {
				p = []byte(err.Error())
			}
			got <- string(p)
		}()
		if err := conn.Ping(ctx); err != nil {
			got <- "ping: " + err.Error()
			return
		}
		conn.Write(ctx, websocket.MessageText, []byte("after ping"))
		<-ctx.Done()
	}))
	defer srv.Close()

	ws, err := dialRaw(ctx, &net.Dialer{}, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?x=1")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.closeNow()
	for _, want := range []struct {
		op byte
		p  []byte
	}{{opText, []byte("hello")}, {opBinary, long}, {opText, mid}, {opText, []byte("after ping")}} {
		op, p, err := ws.next()
		if err != nil || op != want.op || !bytes.Equal(p, want.p) {
			t.Fatalf("next: op %d, %d bytes %.20q, %v; want op %d, %d bytes", op, len(p), p, err, want.op, len(want.p))
		}
	}
	if err := ws.write(opText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "hi" {
		t.Fatalf("the server read %q", s)
	}
}

// TestRawWSReceiveTime: a frame read well after it came in carries the
// kernel's time of its arrival, not of the read.
func TestRawWSReceiveTime(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	send, written := make(chan string), make(chan int64, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		for {
			select {
			case p := <-send: // not in the handshake's read
				conn.Write(ctx, websocket.MessageText, []byte(p))
				written <- time.Now().UnixNano()
			case <-ctx.Done():
				return
			}
		}
	}))
	defer srv.Close()
	ws, err := dialRaw(ctx, &net.Dialer{}, "ws"+strings.TrimPrefix(srv.URL, "http"))
	if err != nil {
		t.Fatal(err)
	}
	defer ws.closeNow()
	if ws.stamp.rc == nil {
		t.Fatal("no receive timestamps on a TCP connection")
	}
	// The first socket on a machine to ask for timestamps has the kernel
	// turn them on a moment later: segments before that carry none (and
	// the loader leaves their deliveries out of "at socket").
	for i := 0; ; i++ {
		send <- "warm"
		<-written
		if _, p, err := ws.next(); err != nil || string(p) != "warm" {
			t.Fatalf("next: %q, %v", p, err)
		}
		if ws.at != 0 {
			break
		}
		if i == 50 {
			t.Fatal("no receive timestamp on 50 frames, 10 ms apart")
		}
		time.Sleep(10 * time.Millisecond)
	}
	send <- "first"
	sent := <-written
	time.Sleep(200 * time.Millisecond) // the frame waits in the socket
	if _, p, err := ws.next(); err != nil || string(p) != "first" {
		t.Fatalf("next: %q, %v", p, err)
	}
	read := time.Now().UnixNano()
	if ws.at == 0 || ws.at > sent+50e6 || read-ws.at < 150e6 {
		t.Fatalf("receive time %d: %.1f ms after the write, %.1f ms before the read; want it at the write",
			ws.at, float64(ws.at-sent)/1e6, float64(read-ws.at)/1e6)
	}
}

// TestRawWSClose: the server's close code and reason come back as a
// *rawCloseError.
func TestRawWSClose(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		conn.Close(4003, "bye")
	}))
	defer srv.Close()
	ws, err := dialRaw(ctx, &net.Dialer{}, "ws"+strings.TrimPrefix(srv.URL, "http"))
	if err != nil {
		t.Fatal(err)
	}
	defer ws.closeNow()
	_, _, err = ws.next()
	var ce *rawCloseError
	if !errors.As(err, &ce) || ce.code != 4003 || ce.reason != "bye" {
		t.Fatalf("next: %v", err)
	}
}

// TestRawWSRefused: a refused upgrade's status and body are in the error.
func TestRawWSRefused(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"code":"unavailable"}`, http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	_, err := dialRaw(context.Background(), &net.Dialer{}, "ws"+strings.TrimPrefix(srv.URL, "http"))
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "unavailable") {
		t.Fatalf("dial: %v", err)
	}
}

// FuzzParseFrameHeader: whatever the bytes, a whole frame lies within
// them, a partial one asks for more than there is, and nothing panics.
func FuzzParseFrameHeader(f *testing.F) {
	f.Add([]byte{0x81, 0x02, 'h', 'i'})
	f.Add([]byte{0x82, 126, 0x01, 0x00})
	f.Add([]byte{0x02, 127, 0, 0, 0, 0, 0, 1, 0, 0})
	f.Add([]byte{0x89, 0x85, 1, 2, 3, 4, 5})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, op, start, end, err := parseFrameHeader(b)
		switch {
		case err != nil:
			return
		case end > 0:
			if start < 2 || start > end || end > len(b) || op >= opClose && end-start > 125 {
				t.Fatalf("frame [%d:%d] of %d bytes, op %d", start, end, len(b), op)
			}
		case start != 0 && start <= len(b):
			t.Fatalf("asks for %d bytes with %d at hand", start, len(b))
		}
	})
}

// TestDeliveryPayload: the shortcut takes only the exact frame a server
// writes, and finds there what protocol.View finds.
func TestDeliveryPayload(t *testing.T) {
	payload := string(appendPayload(nil, 7, 1_796_313_282_159_188_898, 64))
	exact := `{"type":"message","group":"bench.3","data":` + payload + `}`
	seq, ts, ok := deliveryPayload([]byte(exact))
	var v protocol.View
	if err := v.Decode([]byte(exact)); err != nil || string(v.Data) != payload {
		t.Fatalf("View of the exact frame: %v, data %q", err, v.Data)
	}
	if vs, vt, vok := parsePayload(v.Data); !ok || !vok || seq != 7 || ts != 1_796_313_282_159_188_898 || vs != seq || vt != ts {
		t.Fatalf("exact frame: %d %d %v; through View %d %d %v", seq, ts, ok, vs, vt, vok)
	}
	for _, obj := range []string{
		`{"type":"message","group":"bench","offset":3,"epoch":"e","data":` + payload + `}`,
		`{"type":"message","group":"bench","data":` + payload + `,"x":1}`,
		`{"type":"message","group":"be\"nch","data":` + payload + `}`,
		`{"type":"message","group":"bench","data": ` + payload + `}`,
		`{"type":"message","group":"","data":` + payload + `}`,
		`{"type":"message","group":"bench","data":{"seq":7,"t":1,"pad":"x\"y"}}`,
		`{"type":"message","group":"bench","data":{"seq":7,"t":1,"pad":"x\\"}}`,
		`{"type":"message","group":"bench","data":{"seq":-7,"t":1,"pad":"x"}}`,
		`{"type":"message","group":"bench","data":{"seq":99999999999999999999,"t":1,"pad":"x"}}`,
		`{"type":"message","group":"bench","data":{"seq":7,"t":1,"pad":"x"}`,
	} {
		if seq, ts, ok := deliveryPayload([]byte(obj)); ok {
			t.Errorf("took %s: seq %d, t %d", obj, seq, ts)
		}
	}
}
