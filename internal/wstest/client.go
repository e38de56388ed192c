// Package wstest is a WebSocket client of groupcast's protocol for tests:
// it splits server frames on newlines and matches answers to requests.
package wstest

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/groupcast/groupcast/protocol"
)

// Client is one test connection. Its methods fail the test on error.
type Client struct {
	t       testing.TB
	Conn    *websocket.Conn
	Welcome map[string]any
	pending [][]byte
	nextID  int
}

// Dial connects to a ws:// URL and reads the welcome frame. The connection
// is dropped when the test ends.
func Dial(t testing.TB, url string, header http.Header) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: header})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadLimit(-1)
	c := &Client{t: t, Conn: conn}
	t.Cleanup(func() { conn.CloseNow() })
	c.Welcome = c.Next()
	if c.Welcome["type"] != protocol.TypeWelcome {
		t.Fatalf("first frame %v, want welcome", c.Welcome)
	}
	return c
}

// Channel is the connection's channel name, from the welcome frame.
func (c *Client) Channel() string { return c.Welcome["channel"].(string) }

// Raw returns the next JSON object the server sent, or the read error
// (whose websocket.CloseStatus tells the close code).
func (c *Client) Raw() ([]byte, error) {
	for len(c.pending) == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, p, err := c.Conn.Read(ctx)
		cancel()
		if err != nil {
			return nil, err
		}
		c.pending = bytes.Split(p, []byte("\n"))
	}
	f := c.pending[0]
	c.pending = c.pending[1:]
	return f, nil
}

// Queued returns, and takes, the frames already read but not yet
// returned (say the deliveries Call kept for Next).
func (c *Client) Queued() [][]byte {
	q := c.pending
	c.pending = nil
	return q
}

// Next returns the next JSON object, decoded.
func (c *Client) Next() map[string]any {
	c.t.Helper()
	p, err := c.Raw()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		c.t.Fatalf("frame %q: %v", p, err)
	}
	return m
}

// Write sends one text frame.
func (c *Client) Write(frame string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Conn.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		c.t.Fatal(err)
	}
}

// Call sends frame with a fresh id and returns the answer carrying that
// id. Deliveries that arrive before it stay queued for Next; anything else
// fails the test.
func (c *Client) Call(frame map[string]any) map[string]any {
	c.t.Helper()
	c.nextID++
	frame["id"] = c.nextID
	b, _ := json.Marshal(frame)
	c.Write(string(b))
	var skipped [][]byte
	for {
		p, err := c.Raw()
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		f, err := protocol.Decode(p)
		if err != nil {
			c.t.Fatalf("frame %q: %v", p, err)
		}
		if string(f.ID) == strconv.Itoa(c.nextID) {
			c.pending = append(skipped, c.pending...)
			var m map[string]any
			json.Unmarshal(p, &m) // decoded above
			return m
		}
		switch f.Type {
		case protocol.TypeMessage, protocol.TypeJoined, protocol.TypeLeft, protocol.TypePresence:
			skipped = append(skipped, p)
		default:
			c.t.Fatalf("unexpected frame %s", p)
		}
	}
}

// Join joins a group and waits for the ack.
func (c *Client) Join(group string) {
	c.t.Helper()
	if m := c.Call(map[string]any{"type": "join", "group": group}); m["type"] != "ack" {
		c.t.Fatalf("join %s: %v", group, m)
	}
}

// ExpectMessage reads the next frame and checks it delivers data to group.
func (c *Client) ExpectMessage(group, data string) {
	c.t.Helper()
	m := c.Next()
	got, _ := json.Marshal(m["data"])
	var want any
	json.Unmarshal([]byte(data), &want)
	w, _ := json.Marshal(want)
	if m["type"] != "message" || m["group"] != group || string(got) != string(w) {
		c.t.Fatalf("got %v, want message %s on %s", m, data, group)
	}
}

// Quiet fails if a frame arrives within d. It ends the connection (a read
// that times out closes a coder/websocket Conn), so call it last.
func (c *Client) Quiet(d time.Duration) {
	c.t.Helper()
	if len(c.pending) > 0 {
		c.t.Fatalf("unexpected frame %s", c.pending[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if _, p, err := c.Conn.Read(ctx); err == nil {
		c.t.Fatalf("unexpected frame %s", p)
	}
}
