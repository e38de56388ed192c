package client_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/groupcast/groupcast/client"
	"github.com/groupcast/groupcast/internal/livetest"
	"github.com/groupcast/groupcast/internal/natstest"
	"github.com/groupcast/groupcast/web"
)

const secret = "client-test-secret-0123456789abcdef"

// authServer starts an instance that requires HS256 tokens, with no
// leeway on their expiry.
func authServer(t *testing.T, natsURL string) *livetest.Server {
	return startServer(t, natsURL, web.Config{ClientSend: true, Auth: web.AuthConfig{Secret: []byte(secret), Leeway: time.Millisecond}})
}

// mint signs a token for user sub that may join and send to room.*, and
// expires after ttl (whole seconds, as JWTs count).
func mint(t *testing.T, sub string, ttl time.Duration) string {
	return sign(t, jwt.MapClaims{"sub": sub, "exp": time.Now().Add(ttl).Unix(), "join": []string{"room.*"}, "send": []string{"room.*"}})
}

func sign(t *testing.T, c jwt.MapClaims) string {
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTokenRefresh: a connection whose token is about to expire gets a
// fresh one from GetToken over the open socket, and so outlives the
// first token without reconnecting.
func TestTokenRefresh(t *testing.T) {
	s := authServer(t, "")
	var calls atomic.Int32
	var welcomes atomic.Int32
	first := time.Now().Add(3 * time.Second).Truncate(time.Second) // the first token's exp
	c := dial(t, s.WSURL(), &client.Options{
		GetToken: func(context.Context) (string, error) {
			calls.Add(1)
			return mint(t, "ada", 3*time.Second), nil
		},
		OnWelcome: func(client.Welcome) { welcomes.Add(1) },
	})
	if u := c.Welcome().User; u != "ada" {
		t.Fatalf("welcome user %q", u)
	}
	time.Sleep(time.Until(first) + 700*time.Millisecond)
	if err := c.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if n := welcomes.Load(); n != 1 {
		t.Fatalf("%d connections: the token was not refreshed in time", n)
	}
	if n := calls.Load(); n < 2 {
		t.Fatalf("GetToken called %d times", n)
	}
}

// TestTokenExpiredReconnects: when a refresh fails and the server closes
// the socket with 4001, the client comes back at once (not after its long
// backoff) with a fresh token.
func TestTokenExpiredReconnects(t *testing.T) {
	s := authServer(t, "")
	var calls atomic.Int32
	welcomes := make(chan client.Welcome, 10)
	errs := make(chan error, 10)
	dial(t, s.WSURL(), &client.Options{
		MinBackoff: time.Minute, MaxBackoff: time.Minute,
		GetToken: func(context.Context) (string, error) {
			if calls.Add(1) == 2 {
				return "", errors.New("token service down")
			}
			return mint(t, "ada", 2*time.Second), nil
		},
		OnWelcome: func(w client.Welcome) { welcomes <- w },
		OnError:   func(err error) { errs <- err },
	})
	<-welcomes
	select {
	case <-welcomes:
	case <-time.After(5 * time.Second):
		t.Fatal("no reconnection after the token expired")
	}
	if err := <-errs; !strings.Contains(fmt.Sprint(err), "refreshing the token: token service down") {
		t.Fatalf("the failed refresh was reported as %v", err)
	}
}

// TestGroupToken: a per-group token admits the user to a group its
// connection token does not cover, and is fetched again for the rejoin
// after a restart.
func TestGroupToken(t *testing.T) {
	ns := natstest.Start(t, -1)
	s := authServer(t, fmt.Sprintf("nats://127.0.0.1:%d", natstest.Port(ns)))
	st := make(states, 100)
	c := dial(t, s.WSURL(), &client.Options{
		MinBackoff: 20 * time.Millisecond,
		GetToken:   func(context.Context) (string, error) { return mint(t, "ada", time.Hour), nil },
		OnState:    func(s client.State) { st <- s },
	})
	ctx := testCtx(t)
	var e *client.Error
	if err := c.Join(ctx, "private.7", nil); !errors.As(err, &e) || e.Code != "forbidden" {
		t.Fatalf("join without a group token: %v", err)
	}
	var fetched atomic.Int32
	in := newInbox()
	err := c.Join(ctx, "private.7", in.handle, client.GroupToken(func(context.Context) (string, error) {
		fetched.Add(1)
		return sign(t, jwt.MapClaims{"sub": "ada", "group": "private.7", "exp": time.Now().Add(time.Hour).Unix()}), nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	s.Restart()
	st.await(t, client.Reconnecting)
	st.await(t, client.Connected)
	s.Publish("private.7", `"secret"`)
	in.expect(t, "private.7", `"secret"`)
	if n := fetched.Load(); n != 2 {
		t.Fatalf("group token fetched %d times, want 2 (join, rejoin)", n)
	}
}
