package web

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/groupcast/groupcast/broker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// env is one instance under test: a broker, a web.Server and an HTTP
// test server in front of it.
type env struct {
	t      testing.TB
	broker *broker.Broker
	srv    *Server
	http   *httptest.Server
}

// newEnv starts an instance on natsURL (embedded when empty). cfg may
// be nil for defaults (with client sends allowed).
func newEnv(t testing.TB, natsURL string, cfg *Config) *env {
	t.Helper()
	b, err := broker.New(broker.Config{URL: natsURL, Logger: testLogger(), ReconnectWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if cfg == nil {
		cfg = &Config{ClientSend: true}
	}
	cfg.Logger = testLogger()
	if cfg.Region == "" {
		cfg.Region = "test-region"
	}
	s := New(b, *cfg)
	hs := httptest.NewServer(s.Handler())
	e := &env{t: t, broker: b, srv: s, http: hs}
	t.Cleanup(e.close)
	waitFor(t, 5*time.Second, func() bool { return b.Ready() == nil })
	return e
}

func (e *env) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
	e.http.Close()
	e.broker.Close(ctx)
}

// post sends a JSON body to the server API and returns status and body.
func (e *env) post(path, body string, header ...string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.http.URL+path, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func startNATS(t testing.TB) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

func waitFor(t testing.TB, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// client is a test WebSocket client that splits server frames on newlines.
type client struct {
	t       testing.TB
	conn    *websocket.Conn
	welcome map[string]any
	pending [][]byte
	nextID  int
}

func (e *env) dial(header ...string) *client {
	e.t.Helper()
	h := http.Header{}
	for i := 0; i+1 < len(header); i += 2 {
		h.Set(header[i], header[i+1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.http.URL, "http")+"/ws", &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		e.t.Fatal(err)
	}
	conn.SetReadLimit(-1)
	c := &client{t: e.t, conn: conn}
	e.t.Cleanup(func() { conn.CloseNow() })
	c.welcome = c.next()
	if c.welcome["type"] != "welcome" {
		e.t.Fatalf("first frame %v, want welcome", c.welcome)
	}
	return c
}

func (c *client) channel() string { return c.welcome["channel"].(string) }

// raw reads the next JSON object as bytes.
func (c *client) raw() ([]byte, error) {
	for len(c.pending) == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, p, err := c.conn.Read(ctx)
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

func (c *client) next() map[string]any {
	c.t.Helper()
	p, err := c.raw()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		c.t.Fatalf("frame %q: %v", p, err)
	}
	return m
}

func (c *client) write(frame string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		c.t.Fatal(err)
	}
}

// call sends a frame with a fresh id and returns the answer with that id.
func (c *client) call(frame map[string]any) map[string]any {
	c.t.Helper()
	c.nextID++
	frame["id"] = c.nextID
	b, _ := json.Marshal(frame)
	c.write(string(b))
	for {
		m := c.next()
		if id, ok := m["id"].(float64); ok && int(id) == c.nextID {
			return m
		}
		if m["type"] != "message" {
			c.t.Fatalf("unexpected frame %v", m)
		}
	}
}

func (c *client) join(group string) {
	c.t.Helper()
	if m := c.call(map[string]any{"type": "join", "group": group}); m["type"] != "ack" {
		c.t.Fatalf("join %s: %v", group, m)
	}
}

// expectMessage reads the next frame and checks it is a delivery of data.
func (c *client) expectMessage(group, data string) {
	c.t.Helper()
	m := c.next()
	got, _ := json.Marshal(m["data"])
	var want any
	json.Unmarshal([]byte(data), &want)
	w, _ := json.Marshal(want)
	if m["type"] != "message" || m["group"] != group || string(got) != string(w) {
		c.t.Fatalf("got %v, want message %s on %s", m, data, group)
	}
}

// quiet fails if a frame arrives within d. It ends the connection (a
// read that times out closes a coder/websocket Conn), so call it last.
func (c *client) quiet(d time.Duration) {
	c.t.Helper()
	if len(c.pending) > 0 {
		c.t.Fatalf("unexpected frame %s", c.pending[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if _, p, err := c.conn.Read(ctx); err == nil {
		c.t.Fatalf("unexpected frame %s", p)
	}
}
