package web

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/apptest"
	"github.com/groupcast/groupcast/internal/natstest"
	"github.com/groupcast/groupcast/internal/wstest"
)

// namedConsumer takes the user and the presence info from ?name=.
type namedConsumer struct{ DefaultConsumer }

func (namedConsumer) Connect(_ context.Context, r *ConnectRequest) error {
	name := r.Request.URL.Query().Get("name")
	r.User = name
	r.Info, _ = json.Marshal(map[string]string{"name": name})
	return nil
}

// newPresenceEnv starts an instance on natsURL with presence for room.*.
// interval 0 takes the default heartbeat interval.
func newPresenceEnv(t testing.TB, natsURL, node string, interval time.Duration) *env {
	t.Helper()
	m := NewMetrics()
	b, err := broker.New(broker.Config{URL: natsURL, Node: node, Region: "r-" + node, Logger: apptest.Logger(t),
		ReconnectWait: 50 * time.Millisecond, Presence: []string{"room.*"}, PresenceInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(b, Config{ClientSend: true, Consumer: namedConsumer{}, Logger: apptest.Logger(t), Metrics: m, Region: "r-" + node})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, broker: b, srv: s, http: httptest.NewServer(s.Handler())}
	t.Cleanup(e.close)
	waitFor(t, 5*time.Second, func() bool { return b.Ready() == nil })
	return e
}

func (e *env) dialAs(name string) *wstest.Client {
	e.t.Helper()
	return wstest.Dial(e.t, e.wsURL()+"?name="+name, nil)
}

// get fetches a server API path and decodes the JSON answer.
func (e *env) get(path string) (int, map[string]any) {
	e.t.Helper()
	resp, err := http.Get(e.http.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		e.t.Fatalf("%s: %s", path, body)
	}
	return resp.StatusCode, m
}

// joinPresence joins a group asking for presence events.
func joinPresence(t testing.TB, c *wstest.Client, group string) {
	t.Helper()
	if m := c.Call(map[string]any{"type": "join", "group": group, "presence": true}); m["type"] != "ack" {
		t.Fatalf("join %s: %v", group, m)
	}
}

// nextPresence returns the next presence event, skipping other frames.
func nextPresence(t testing.TB, c *wstest.Client) map[string]any {
	t.Helper()
	for {
		m := c.Next()
		if m["type"] == "presence" && m["event"] != nil {
			return m
		}
	}
}

func expectPresence(t testing.TB, c *wstest.Client, event, channel string) map[string]any {
	t.Helper()
	m := nextPresence(t, c)
	member, _ := m["member"].(map[string]any)
	if m["event"] != event || member["channel"] != channel {
		t.Fatalf("got %v, want %s of %s", m, event, channel)
	}
	return m
}

// TestPresenceThreeInstances: members on three instances see each other's
// joins and leaves as events; the presence frame and the server API count
// and list them, fold tabs of one user, and refuse what they must.
func TestPresenceThreeInstances(t *testing.T) {
	ns := natstest.Start(t, -1)
	e1 := newPresenceEnv(t, ns.ClientURL(), "w1", 100*time.Millisecond)
	e2 := newPresenceEnv(t, ns.ClientURL(), "w2", 100*time.Millisecond)
	e3 := newPresenceEnv(t, ns.ClientURL(), "w3", 100*time.Millisecond)

	ann := e1.dialAs("ann")
	joinPresence(t, ann, "room.a")
	ben := e2.dialAs("ben")
	ben.Join("room.a")
	m := expectPresence(t, ann, "join", ben.Channel())
	if m["group"] != "room.a" || m["member"].(map[string]any)["user"] != "ben" ||
		m["member"].(map[string]any)["region"] != "r-w2" || m["member"].(map[string]any)["info"].(map[string]any)["name"] != "ben" {
		t.Fatalf("join event %v", m)
	}
	cy1 := e3.dialAs("cy")
	cy1.Join("room.a")
	expectPresence(t, ann, "join", cy1.Channel())
	cy2 := e3.dialAs("cy") // a second tab
	cy2.Join("room.a")
	expectPresence(t, ann, "join", cy2.Channel())

	// The presence frame, for members.
	waitFor(t, 3*time.Second, func() bool {
		r := ben.Call(map[string]any{"type": "presence", "group": "room.a"})
		return r["count"] == 4.0
	})
	r := ben.Call(map[string]any{"type": "presence", "group": "room.a", "limit": 2})
	if r["type"] != "presence" || r["group"] != "room.a" || r["count"] != 4.0 || len(r["members"].([]any)) != 2 {
		t.Fatalf("presence frame: %v", r)
	}
	r = ben.Call(map[string]any{"type": "presence", "group": "room.a", "by": "user"})
	if r["count"] != 3.0 {
		t.Fatalf("by user: %v", r)
	}
	if r := ben.Call(map[string]any{"type": "presence", "group": "room.b"}); r["code"] != CodeForbidden {
		t.Fatalf("not a member: %v", r)
	}
	ben.Join("plain")
	if r := ben.Call(map[string]any{"type": "presence", "group": "plain"}); r["code"] != CodeNotFound {
		t.Fatalf("plain group: %v", r)
	}
	if r := ben.Call(map[string]any{"type": "presence", "group": "room.a", "limit": 5000}); r["code"] != CodeInvalidData {
		t.Fatalf("limit too high: %v", r)
	}

	// The server API, on the third instance.
	status, body := e3.get("/api/groups/room.a/presence?count_only=1")
	if status != 200 || body["count"] != 4.0 || len(body["members"].([]any)) != 0 {
		t.Fatalf("count only: %d %v", status, body)
	}
	status, body = e3.get("/api/groups/room.a/presence?by=user&limit=10")
	members := body["members"].([]any)
	if status != 200 || body["count"] != 3.0 || len(members) != 3 || members[2].(map[string]any)["channels"] != 2.0 {
		t.Fatalf("by user: %d %v", status, body)
	}
	if status, _ := e3.get("/api/groups/plain/presence"); status != http.StatusNotFound {
		t.Fatalf("plain group: %d", status)
	}
	if status, _ := e3.get("/api/groups/room.a/presence?limit=x"); status != http.StatusBadRequest {
		t.Fatalf("bad limit: %d", status)
	}

	// dora folds events by user: of cy's two tabs, she hears only the
	// last leave.
	dora := e2.dialAs("dora")
	if m := dora.Call(map[string]any{"type": "join", "group": "room.a", "presence": true, "by": "tab"}); m["code"] != CodeInvalidData {
		t.Fatalf("join with an unknown by: %v", m)
	}
	if m := dora.Call(map[string]any{"type": "join", "group": "room.a", "presence": true, "by": "user"}); m["type"] != "ack" {
		t.Fatalf("join: %v", m)
	}
	expectPresence(t, ann, "join", dora.Channel())

	// Leaves: a leave frame, a server-side leave, a closed socket.
	ben.Call(map[string]any{"type": "leave", "group": "room.a"})
	expectPresence(t, ann, "leave", ben.Channel())
	expectPresence(t, dora, "leave", ben.Channel())
	req, _ := http.NewRequest("DELETE", e1.http.URL+"/api/groups/room.a/channels/"+cy2.Channel(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	expectPresence(t, ann, "leave", cy2.Channel())
	cy1.Conn.CloseNow()
	expectPresence(t, ann, "leave", cy1.Channel())
	expectPresence(t, dora, "leave", cy1.Channel()) // not cy2's: cy was still there
	waitFor(t, 3*time.Second, func() bool {
		_, body := e2.get("/api/groups/room.a/presence")
		return body["count"] == 2.0
	})
}

// TestPresenceSIGKILL: an instance (the real binary, on the shared NATS)
// killed with SIGKILL has its members dropped, with a leave event, within
// the documented bound of 4 s (three missed heartbeats, then a check
// every quarter second).
func TestPresenceSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	ns := natstest.Start(t, -1)
	proc := apptest.Start(t, nil, "NATS_URL="+ns.ClientURL(),
		"PRESENCE_GROUPS=room.*", "NODE_ID=doomed", "REGION=r1", "LOG_LEVEL=warn")
	url := "ws" + strings.TrimPrefix(proc.Base, "http") + "/ws"

	e := newPresenceEnv(t, ns.ClientURL(), "survivor", 0) // default interval: the documented bound
	watcher := e.dialAs("ann")
	joinPresence(t, watcher, "room.k")
	doomed := wstest.Dial(t, url, nil)
	doomed.Join("room.k")
	expectPresence(t, watcher, "join", doomed.Channel())
	waitFor(t, 5*time.Second, func() bool {
		_, body := e.get("/api/groups/room.k/presence?count_only=1")
		return body["count"] == 2.0 && body["partial"] == nil
	})

	killed := time.Now()
	if err := proc.Cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	<-proc.Exited
	expectPresence(t, watcher, "leave", doomed.Channel())
	took := time.Since(killed)
	t.Logf("leave event %v after SIGKILL", took.Round(time.Millisecond))
	if took > 4*time.Second {
		t.Fatalf("leave event %v after SIGKILL, over the 4 s bound", took)
	}
	if _, body := e.get("/api/groups/room.k/presence?count_only=1"); body["count"] != 1.0 {
		t.Fatalf("after the kill: %v", body)
	}
}
