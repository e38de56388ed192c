package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/groupcast/groupcast/client"
	"github.com/groupcast/groupcast/internal/natstest"
	"github.com/groupcast/groupcast/internal/wstest"
	"github.com/groupcast/groupcast/web"
)

// TestMain checks that Close stops every goroutine a client started.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, url string, opts *client.Options) *client.Client {
	t.Helper()
	c, err := client.Dial(testCtx(t), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// inbox collects deliveries.
type inbox chan client.Message

func newInbox() inbox { return make(inbox, 100) }

func (in inbox) handle(m client.Message) { in <- m }

// expect waits for the next delivery and checks its group and data.
func (in inbox) expect(t *testing.T, group, data string) client.Message {
	t.Helper()
	select {
	case m := <-in:
		if m.Group != group || !sameJSON(m.Data, data) {
			t.Fatalf("got %s on %q, want %s on %q", m.Data, m.Group, data, group)
		}
		return m
	case <-time.After(5 * time.Second):
		t.Fatalf("no message %s on %q", data, group)
	}
	return client.Message{}
}

func (in inbox) empty(t *testing.T) {
	t.Helper()
	select {
	case m := <-in:
		t.Fatalf("unexpected message %s on %q", m.Data, m.Group)
	default:
	}
}

func sameJSON(got []byte, want string) bool {
	var a, b any
	return json.Unmarshal(got, &a) == nil && json.Unmarshal([]byte(want), &b) == nil &&
		fmt.Sprint(a) == fmt.Sprint(b)
}

// states records state changes.
type states chan client.State

func (s states) await(t *testing.T, want client.State) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-s:
			if got == want {
				return
			}
		case <-timeout:
			t.Fatalf("state %v not reached", want)
		}
	}
}

func TestJoinSendLeave(t *testing.T) {
	s := startServer(t, "", web.Config{ClientSend: true})
	ctx := testCtx(t)
	a, b := dial(t, s.WSURL(), nil), dial(t, s.WSURL(), nil)
	if w := a.Welcome(); w.Region != "test-region" || w.Node == "" || !strings.HasPrefix(w.Channel, w.Node+".") {
		t.Fatalf("welcome %+v", w)
	}
	if a.State() != client.Connected {
		t.Fatalf("state after Dial: %v", a.State())
	}
	ina, inb := newInbox(), newInbox()
	if err := a.Join(ctx, "room.lobby", ina.handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Join(ctx, "room.lobby", inb.handle); err != nil {
		t.Fatal(err)
	}

	if err := a.Send(ctx, "room.lobby", map[string]string{"text": "hi"}); err != nil {
		t.Fatal(err)
	}
	if m := inb.expect(t, "room.lobby", `{"text":"hi"}`); m.Region != "test-region" {
		t.Fatalf("delivery region %q", m.Region)
	}
	ina.expect(t, "room.lobby", `{"text":"hi"}`)
	s.Publish("room.lobby", `{"n":1}`)
	ina.expect(t, "room.lobby", `{"n":1}`)
	inb.expect(t, "room.lobby", `{"n":1}`)
	if err := b.Send(ctx, "room.lobby", json.RawMessage(`[1, 2]`)); err != nil {
		t.Fatal(err)
	}
	ina.expect(t, "room.lobby", `[1,2]`)
	inb.expect(t, "room.lobby", `[1,2]`)
	if err := a.Ping(ctx); err != nil {
		t.Fatal(err)
	}

	// After Leave, nothing more for the group: a message to another group
	// published after it arrives, and the left group's does not.
	if err := a.Leave(ctx, "room.lobby"); err != nil {
		t.Fatal(err)
	}
	fence := newInbox()
	if err := a.Join(ctx, "fence", fence.handle); err != nil {
		t.Fatal(err)
	}
	s.Publish("room.lobby", `{"n":2}`)
	s.Publish("fence", `"after"`)
	fence.expect(t, "fence", `"after"`)
	inb.expect(t, "room.lobby", `{"n":2}`)
	ina.empty(t)
	if g := a.Groups(); !slices.Equal(g, []string{"fence"}) {
		t.Fatalf("groups %v", g)
	}
}

// TestSendExceptSelf: a send with ExceptSelf reaches the other members and
// not the sender, who still gets the next ordinary send.
func TestSendExceptSelf(t *testing.T) {
	s := startServer(t, "", web.Config{ClientSend: true})
	ctx := testCtx(t)
	a, b := dial(t, s.WSURL(), nil), dial(t, s.WSURL(), nil)
	ina, inb := newInbox(), newInbox()
	if err := a.Join(ctx, "room", ina.handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Join(ctx, "room", inb.handle); err != nil {
		t.Fatal(err)
	}
	if err := a.Send(ctx, "room", "to the others", client.ExceptSelf()); err != nil {
		t.Fatal(err)
	}
	if err := a.Send(ctx, "room", "to all"); err != nil {
		t.Fatal(err)
	}
	inb.expect(t, "room", `"to the others"`)
	inb.expect(t, "room", `"to all"`)
	ina.expect(t, "room", `"to all"`) // the first one skipped a
}

func TestDirectMessage(t *testing.T) {
	s := startServer(t, "", web.Config{})
	direct := newInbox()
	c := dial(t, s.WSURL(), &client.Options{OnDirect: direct.handle})
	s.Send(c.Welcome().Channel, `"just you"`)
	select {
	case m := <-direct:
		if m.Channel != c.Welcome().Channel || m.Group != "" || string(m.Data) != `"just you"` {
			t.Fatalf("got %+v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no direct message")
	}
}

// TestRefusals checks that the server's error frames come back as *Error
// with their codes, and that the client stays usable.
func TestRefusals(t *testing.T) {
	s := startServer(t, "", web.Config{MaxGroups: 2})
	ctx := testCtx(t)
	c := dial(t, s.WSURL(), nil)
	code := func(err error) string {
		var e *client.Error
		if !errors.As(err, &e) {
			t.Fatalf("error %v (%T), want *client.Error", err, err)
		}
		return e.Code
	}
	if got := code(c.Join(ctx, "bad..name", nil)); got != "invalid_group" {
		t.Fatalf("bad group: %s", got)
	}
	if len(c.Groups()) != 0 {
		t.Fatalf("a refused join is kept: %v", c.Groups())
	}
	if got := code(c.Send(ctx, "room", "x")); got != "forbidden" {
		t.Fatalf("send without permission: %s", got)
	}
	for _, g := range []string{"one", "two"} {
		if err := c.Join(ctx, g, nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := code(c.Join(ctx, "three", nil)); got != "too_many_groups" {
		t.Fatalf("third group: %s", got)
	}
	if err := c.Send(ctx, "one", json.RawMessage(`{`)); err == nil || errors.As(err, new(*client.Error)) {
		t.Fatalf("invalid JSON sent: %v", err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("unusable after refusals: %v", err)
	}
}

// TestReconnectAfterRestart restarts the server on the same address
// (NATS outlives it, as in production): the client reports reconnecting,
// comes back to the new instance, rejoins its group and receives again.
func TestReconnectAfterRestart(t *testing.T) {
	ns := natstest.Start(t, -1)
	s := startServer(t, fmt.Sprintf("nats://127.0.0.1:%d", natstest.Port(ns)), web.Config{ClientSend: true})
	ctx := testCtx(t)
	st := make(states, 100)
	c := dial(t, s.WSURL(), &client.Options{OnState: func(s client.State) { st <- s }, MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	in := newInbox()
	if err := c.Join(ctx, "room.lobby", in.handle); err != nil {
		t.Fatal(err)
	}
	st.await(t, client.Connected)
	before := c.Welcome()

	s.Restart()
	st.await(t, client.Reconnecting)
	st.await(t, client.Connected)
	after := c.Welcome()
	if after.Node == before.Node || after.Channel == before.Channel {
		t.Fatalf("same instance after restart: %+v then %+v", before, after)
	}
	s.Publish("room.lobby", `{"after":"restart"}`)
	in.expect(t, "room.lobby", `{"after":"restart"}`)
	if err := c.Send(ctx, "room.lobby", "still here"); err != nil {
		t.Fatal(err)
	}
	in.expect(t, "room.lobby", `"still here"`)
}

// TestPlannedCloseReconnectsAtOnce: the server closes sockets with 1012
// when they reach their maximum age; the client comes back at once, not
// after its (here very long) backoff, and rejoins each time.
func TestPlannedCloseReconnectsAtOnce(t *testing.T) {
	s := startServer(t, "", web.Config{MaxConnectionAge: 300 * time.Millisecond})
	welcomes := make(chan client.Welcome, 10)
	c := dial(t, s.WSURL(), &client.Options{
		MinBackoff: time.Minute, MaxBackoff: time.Minute,
		OnWelcome: func(w client.Welcome) { welcomes <- w },
	})
	in := newInbox()
	if err := c.Join(testCtx(t), "g", in.handle); err != nil {
		t.Fatal(err)
	}
	<-welcomes // the first connection's
	for range 2 {
		select {
		case <-welcomes:
		case <-time.After(5 * time.Second):
			t.Fatal("no reconnection after a 1012 close")
		}
	}
	// Rejoined: once connected again, a publish reaches the handler.
	if err := c.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	s.Publish("g", `1`)
	in.expect(t, "g", `1`)
}

// TestServerDown: while the server is gone the client retries with
// backoff, reports each failure, and requests wait for their context;
// when it is back, the client reconnects.
func TestServerDown(t *testing.T) {
	s := startServer(t, "", web.Config{})
	var failures atomic.Int32
	st := make(states, 100)
	c := dial(t, s.WSURL(), &client.Options{
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		OnState: func(s client.State) { st <- s },
		OnError: func(error) { failures.Add(1) },
	})
	s.Stop()
	st.await(t, client.Reconnecting)
	time.Sleep(600 * time.Millisecond)
	// About 600ms/(50..100ms): between 4 and 13 attempts, never a busy loop.
	if n := failures.Load(); n < 4 || n > 14 {
		t.Fatalf("%d failed attempts in 600ms", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := c.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ping while down: %v", err)
	}
	s.Restart() // stopped: starts it again
	st.await(t, client.Connected)
	if err := c.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

func TestClose(t *testing.T) {
	s := startServer(t, "", web.Config{})
	st := make(states, 100)
	c := dial(t, s.WSURL(), &client.Options{OnState: func(s client.State) { st <- s }})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	st.await(t, client.Closed)
	if err := c.Join(testCtx(t), "g", nil); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("join after close: %v", err)
	}
	if err := c.Ping(testCtx(t)); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("ping after close: %v", err)
	}
	c.Close() // again: harmless

	// Closing while reconnecting to a server that is gone returns at once.
	c2 := dial(t, s.WSURL(), &client.Options{MinBackoff: time.Minute, MaxBackoff: time.Minute})
	s.Stop()
	start := time.Now()
	c2.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v", d)
	}
}

func TestDialFails(t *testing.T) {
	s := startServer(t, "", web.Config{})
	if _, err := client.Dial(testCtx(t), "ws://"+s.Addr+"/nothing", nil); err == nil {
		t.Fatal("dial to a path that is no WebSocket succeeded")
	}
	s.Stop()
	if _, err := client.Dial(testCtx(t), s.WSURL(), nil); err == nil {
		t.Fatal("dial to a stopped server succeeded")
	}
}

// peer is a scripted WebSocket peer for the two behaviours the real
// server cannot provoke: a server that stops answering, and deliveries
// that carry a recovery offset.
func peer(t *testing.T, serve func(ctx context.Context, conn *websocket.Conn, n int)) string {
	var n atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		wg.Add(1)
		defer wg.Done()
		defer conn.CloseNow()
		conn.Write(ctx, websocket.MessageText, []byte(`{"type":"welcome","channel":"n.1","node":"n","region":"r"}`))
		serve(ctx, conn, int(n.Add(1)))
	}))
	t.Cleanup(func() { cancel(); wg.Wait(); hs.Close() })
	return "ws" + strings.TrimPrefix(hs.URL, "http")
}

// TestKeepaliveDropsDeadConnection: a server that stops reading (and so
// never answers pings) is given up on, and the client reconnects.
func TestKeepaliveDropsDeadConnection(t *testing.T) {
	url := peer(t, func(ctx context.Context, conn *websocket.Conn, n int) { <-ctx.Done() })
	st := make(states, 100)
	dial(t, url, &client.Options{
		PingInterval: 50 * time.Millisecond, WriteTimeout: 200 * time.Millisecond,
		OnState: func(s client.State) { st <- s },
	})
	st.await(t, client.Reconnecting)
	st.await(t, client.Connected)
}

// TestRejoinResumesFromOffset: when deliveries carry "offset" and
// "epoch", the client sends back the last ones seen as "since" and
// "epoch" when it rejoins.
func TestRejoinResumesFromOffset(t *testing.T) {
	joins := make(chan map[string]any, 10)
	url := peer(t, func(ctx context.Context, conn *websocket.Conn, n int) {
		for {
			_, p, err := conn.Read(ctx)
			if err != nil {
				return
			}
			var f map[string]any
			json.Unmarshal(p, &f)
			id, _ := json.Marshal(f["id"])
			conn.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"type":"ack","id":%s}`, id))
			if f["type"] != "join" {
				continue
			}
			joins <- f
			if n == 1 {
				conn.Write(ctx, websocket.MessageText, []byte(
					`{"type":"message","group":"g","offset":6,"epoch":"e1","data":1}`+"\n"+
						`{"type":"message","group":"g","offset":7,"epoch":"e1","data":2}`))
				conn.Close(websocket.StatusServiceRestart, "restart")
				return
			}
		}
	})
	c := dial(t, url, nil)
	in := newInbox()
	if err := c.Join(testCtx(t), "g", in.handle); err != nil {
		t.Fatal(err)
	}
	in.expect(t, "g", "1")
	in.expect(t, "g", "2")
	if f := <-joins; f["since"] != nil {
		t.Fatalf("first join %v has since", f)
	}
	select {
	case f := <-joins:
		s, _ := f["since"].(map[string]any)
		if f["group"] != "g" || s["offset"] != 7.0 || s["epoch"] != "e1" {
			t.Fatalf("rejoin %v, want since 7 epoch e1", f)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no rejoin")
	}
}

// TestReconnectSpread: clients closed together with 1012 and a reason
// asking for reconnects spread over 1 s come back at random moments over
// that second, not together.
func TestReconnectSpread(t *testing.T) {
	const n = 20
	closes := wstest.NewPlannedCloses("server restart reconnect_within_ms=1000")
	hs := httptest.NewServer(closes)
	defer hs.Close()
	var clients []*client.Client
	defer func() {
		closes.Stop() // the server lets go first: Close then needs no handshake timeout
		for _, c := range clients {
			c.Close()
		}
	}()
	ws := "ws" + strings.TrimPrefix(hs.URL, "http")
	for i := range n {
		c, err := client.Dial(testCtx(t), fmt.Sprintf("%s/ws?c=%d", ws, i), nil)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	wstest.CheckSpread(t, closes.Delays(t, n), time.Second)
}
