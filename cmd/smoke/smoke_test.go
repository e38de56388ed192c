package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/groupcast/groupcast/internal/apptest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// smoke runs the command with args and env (KEY=value) and returns its exit
// status and log.
func smoke(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	var out apptest.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, args, func(k string) string { return env[k] }, &out)
	t.Logf("exit %d:\n%s", code, out.String())
	return code, out.String()
}

func wantFailure(t *testing.T, code int, log string, fragments ...string) {
	t.Helper()
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	for _, f := range fragments {
		if !strings.Contains(log, f) {
			t.Errorf("log does not say %q", f)
		}
	}
}

// TestPasses runs the check against the real binary, publishing both ways.
func TestPasses(t *testing.T) {
	p := apptest.Start(t, nil, "REGION=smoke-region", "API_KEY=k3y")
	t.Run("WebSocket send", func(t *testing.T) {
		code, log := smoke(t, nil, "-url", p.Base+"/", "-region", "smoke-region")
		if code != 0 {
			t.Fatalf("exit %d, want 0", code)
		}
		for _, step := range []string{"msg=ready", "msg=welcomed", "region=smoke-region", "msg=joined", `via="WebSocket send"`, "msg=delivered", `msg="smoke check passed"`} {
			if !strings.Contains(log, step) {
				t.Errorf("log does not show %s", step)
			}
		}
	})
	t.Run("server API", func(t *testing.T) {
		code, log := smoke(t, map[string]string{"API_KEY": "k3y"}, "-url", p.Base)
		if code != 0 {
			t.Fatalf("exit %d, want 0", code)
		}
		if !strings.Contains(log, `via="server API"`) {
			t.Error("the message did not go through the server API")
		}
	})
	t.Run("wrong API key", func(t *testing.T) {
		code, log := smoke(t, map[string]string{"API_KEY": "wrong"}, "-url", p.Base)
		wantFailure(t, code, log, "through the server API", "401")
	})
	t.Run("another region", func(t *testing.T) {
		code, log := smoke(t, nil, "-url", p.Base, "-region", "us-central1")
		wantFailure(t, code, log, `welcome names region \"smoke-region\", want \"us-central1\"`)
	})
}

// TestWrongURL points the check at a port nobody listens on and at a server
// that is not groupcast.
func TestWrongURL(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	code, log := smoke(t, nil, "-url", closed, "-timeout", "2s")
	wantFailure(t, code, log, closed+"/readyz: not ready before the deadline", "connection refused")

	other := httptest.NewServer(http.NotFoundHandler())
	defer other.Close()
	code, log = smoke(t, nil, "-url", other.URL, "-timeout", "2s")
	wantFailure(t, code, log, "last answer: 404 Not Found", "ingress")
}

// TestNoDelivery sends the WebSocket to one instance and the publish to
// another that does not share its NATS: the check must see that the message
// never arrives.
func TestNoDelivery(t *testing.T) {
	a := apptest.Start(t, nil, "API_KEY=k3y")
	b := apptest.Start(t, nil, "API_KEY=k3y")
	toA, toB := reverseProxy(t, a.Base), reverseProxy(t, b.Base)
	split := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			toA.ServeHTTP(w, r)
			return
		}
		toB.ServeHTTP(w, r)
	}))
	defer split.Close()
	code, log := smoke(t, map[string]string{"API_KEY": "k3y"}, "-url", split.URL, "-delivery-timeout", "500ms")
	wantFailure(t, code, log, "no delivery", "did not reach the joined WebSocket within 500ms")
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"-url", "ftp://example.com"},
		{"-url", "https://"},
		{"-url", "https://example.com?x=1"},
		{"-url", "https://example.com", "-timeout", "0s"},
		{"-nope"},
	} {
		if code, _ := smoke(t, nil, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
}

func reverseProxy(t *testing.T, target string) *httputil.ReverseProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	return httputil.NewSingleHostReverseProxy(u)
}
