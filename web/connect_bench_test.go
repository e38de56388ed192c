package web

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

// BenchmarkConnect measures a connect and join over loopback as the load
// generator's storm makes them: a WebSocket upgrade, the welcome, a join
// answered by its ack, then a hang-up. The client is a few lines of raw
// framing that allocate next to nothing, so allocs/op and B/op are the
// server's (its teardown included). One member stays joined throughout, so
// the group's subscription is not what is measured.
func BenchmarkConnect(b *testing.B) {
	// Logs as the binary writes them, JSON at level info, to nowhere.
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	e := newEnv(b, "", &Config{Logger: log})
	addr := strings.TrimPrefix(e.http.URL, "http://")
	upgrade := []byte("GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	join := maskedText([]byte(`{"type":"join","group":"bench","id":1}`))
	buf := make([]byte, 4096)
	var got []byte
	// exchange writes p and reads until the answer holds want.
	exchange := func(c net.Conn, p []byte, want string) {
		if _, err := c.Write(p); err != nil {
			b.Fatal(err)
		}
		got = got[:0]
		for !bytes.Contains(got, []byte(want)) {
			n, err := c.Read(buf)
			if err != nil {
				b.Fatalf("waiting for %s: %v, read %q", want, err, got)
			}
			got = append(got, buf[:n]...)
		}
	}
	// The client waits for the welcome before it joins, as clients do.
	connect := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		exchange(c, upgrade, `"type":"welcome"`)
		exchange(c, join, `"type":"ack"`)
		return c
	}
	// A hang-up without a close frame, as the storm's clients leave: the
	// server reads the end of the stream, and closes its side.
	hangUp := func(c net.Conn) {
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
		c.Close()
	}
	// One member stays, as in a storm of many into one group: the group
	// stays subscribed, and what is measured is a join, not a subscribe.
	held := connect()
	defer hangUp(held)
	for b.Loop() {
		hangUp(connect())
	}
}

// maskedText is a client's text frame of p, masked with a zero key.
func maskedText(p []byte) []byte {
	return append([]byte{0x81, 0x80 | byte(len(p)), 0, 0, 0, 0}, p...)
}
