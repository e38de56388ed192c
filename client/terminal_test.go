package client_test

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/groupcast/groupcast/client"
	"github.com/groupcast/groupcast/internal/livetest"
)

// TestDisconnectIsTerminal: the server API disconnects the user (4003, as
// at logout). The client does not reconnect with the same credentials,
// although its backoff is short: it ends Closed, Done and Err say why (the
// code and the server's reason), requests return that error, and the
// server sees no new connection.
func TestDisconnectIsTerminal(t *testing.T) {
	s := authServer(t, "")
	var tokens atomic.Int32
	st := make(states, 100)
	errs := make(chan error, 10)
	c := dial(t, s.WSURL(), &client.Options{
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 40 * time.Millisecond,
		GetToken: func(context.Context) (string, error) { tokens.Add(1); return mint(t, "ada", time.Hour), nil },
		OnState:  func(s client.State) { st <- s },
		OnError:  func(err error) { errs <- err },
	})
	if err := c.Join(testCtx(t), "room.lobby", newInbox().handle); err != nil {
		t.Fatal(err)
	}
	if n := connects(t, s); n != 1 {
		t.Fatalf("%d connections before the disconnect", n)
	}

	resp, err := http.Post(s.URL()+"/api/users/ada/disconnect", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("disconnect: %d", resp.StatusCode)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("the client still runs after a 4003 close (state %v)", c.State())
	}
	st.await(t, client.Closed)
	var te *client.TerminalCloseError
	if err := c.Err(); !errors.As(err, &te) || te.Code != 4003 || te.Reason != "disconnected" || !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Err() = %v, want a *TerminalCloseError 4003 \"disconnected\" that is ErrClosed", err)
	}
	if err := <-errs; !errors.As(err, &te) {
		t.Fatalf("OnError was told %v", err)
	}
	if err := c.Join(testCtx(t), "room.other", nil); !errors.As(err, &te) {
		t.Fatalf("Join after the end: %v", err)
	}
	if err := c.Send(testCtx(t), "room.lobby", "hi"); !errors.As(err, &te) {
		t.Fatalf("Send after the end: %v", err)
	}

	// Many backoffs later: still one connection on the server, one token.
	time.Sleep(2 * time.Second)
	if n := connects(t, s); n != 1 {
		t.Fatalf("%d connections on the server: the client reconnected after 4003", n)
	}
	if n := tokens.Load(); n != 1 {
		t.Fatalf("GetToken called %d times", n)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Err(); !errors.As(err, &te) {
		t.Fatalf("Close replaced the terminal error: %v", err)
	}
}

// connects reads from the server's metrics how many WebSocket
// connections it has accepted.
func connects(t *testing.T, s *livetest.Server) int {
	t.Helper()
	resp, err := http.Get(s.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	const name = `groupcast_connects_total{transport="ws"} `
	for sc := bufio.NewScanner(resp.Body); sc.Scan(); {
		if v, ok := strings.CutPrefix(sc.Text(), name); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s%s: %v", name, v, err)
			}
			return int(n)
		}
	}
	return 0
}
