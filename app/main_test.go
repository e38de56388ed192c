package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/groupcast/groupcast/internal/apptest"
	"github.com/groupcast/groupcast/internal/natstest"
	"github.com/groupcast/groupcast/internal/wstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// instance is one groupcast started through run.
type instance struct {
	t    testing.TB
	base string // http://127.0.0.1:port
	logs *apptest.Buffer
	stop func() error
}

// start runs the server with env (PORT=0 unless given) until the test
// ends or stop is called.
func start(t testing.TB, env map[string]string) *instance {
	t.Helper()
	if _, ok := env["PORT"]; !ok {
		env["PORT"] = "0"
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan net.Addr, 1)
	logs := &apptest.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, func(k string) string { return env[k] }, logs, func(a net.Addr) { addr <- a })
	}()
	inst := &instance{t: t, logs: logs}
	select {
	case a := <-addr:
		inst.base = fmt.Sprintf("http://127.0.0.1:%d", a.(*net.TCPAddr).Port)
	case err := <-done:
		cancel()
		t.Fatalf("run: %v\n%s", err, logs)
	}
	var once sync.Once
	var err error
	inst.stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { inst.stop() })
	return inst
}

// ready waits until the instance answers 200 on /readyz: with an external
// NATS, run returns before the first connection is made.
func (i *instance) ready() *instance {
	i.t.Helper()
	natstest.WaitFor(i.t, 10*time.Second, func() bool { return i.status("/readyz") == http.StatusOK })
	return i
}

func (i *instance) ws() *wstest.Client {
	return wstest.Dial(i.t, "ws"+strings.TrimPrefix(i.base, "http")+"/ws", nil)
}

func (i *instance) publish(group, body string) {
	i.t.Helper()
	resp, err := http.Post(i.base+"/api/groups/"+group+"/messages", "application/json", strings.NewReader(body))
	if err != nil {
		i.t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		i.t.Fatalf("publish %s: %d %s", body, resp.StatusCode, answer)
	}
}

// publishRetry publishes with an Idempotency-Key, trying again while the
// answer is 503 (as a backend does while NATS recovers), up to 10 s.
func (i *instance) publishRetry(group, body, key string) {
	i.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodPost, i.base+"/api/groups/"+group+"/messages", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			i.t.Fatal(err)
		}
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusAccepted:
			return
		case resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline):
			i.t.Fatalf("publish %s: %d %s", body, resp.StatusCode, answer)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (i *instance) status(path string) int {
	resp, err := http.Get(i.base + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestEmbeddedEndToEnd is the two-minute tour: start with no settings,
// join from a socket, publish over HTTP, receive, stop cleanly.
func TestEmbeddedEndToEnd(t *testing.T) {
	inst := start(t, map[string]string{"REGION": "local"}).ready()
	if inst.status("/readyz") != 200 || inst.status("/healthz") != 200 || inst.status("/") != 200 {
		t.Fatal("not healthy")
	}
	c := inst.ws()
	if c.Welcome["region"] != "local" {
		t.Fatalf("welcome %v", c.Welcome)
	}
	c.Join("room.lobby")
	inst.publish("room.lobby", `{"text":"hi"}`)
	c.ExpectMessage("room.lobby", `{"text":"hi"}`)
	if err := inst.stop(); err != nil {
		t.Fatalf("run returned %v", err)
	}
	_, err := c.Raw()
	if status := websocket.CloseStatus(err); status != websocket.StatusServiceRestart {
		t.Fatalf("socket ended with %v, want 1012", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(inst.logs.String()), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil || entry["severity"] == nil || entry["message"] == nil {
			t.Fatalf("log line is not Cloud Logging JSON: %s", line)
		}
	}
}

// TestIdleKeepAliveClosed: the real server closes a keep-alive
// connection that sends nothing after its request, and a stalled body,
// within the timeouts set.
func TestIdleKeepAliveClosed(t *testing.T) {
	inst := start(t, map[string]string{"HTTP_IDLE_TIMEOUT": "300ms", "HTTP_READ_TIMEOUT": "300ms"}).ready()
	for _, req := range []string{
		"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
		"POST /api/groups/g/messages HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n",
	} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(inst.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		conn.SetReadDeadline(start.Add(3 * time.Second))
		conn.Write([]byte(req))
		_, err = io.ReadAll(conn) // the answer, then EOF once closed
		conn.Close()
		if err != nil {
			t.Fatalf("%q: still open after %v: %v", req, time.Since(start), err)
		}
	}
}

// TestTwoInstancesExternalNATS: two instances on one NATS server; a
// message published on either reaches every member on both, exactly once.
func TestTwoInstancesExternalNATS(t *testing.T) {
	ns := natstest.Start(t, -1)
	a := start(t, map[string]string{"NATS_URL": ns.ClientURL()}).ready()
	b := start(t, map[string]string{"NATS_URL": ns.ClientURL()}).ready()
	clients := []*wstest.Client{a.ws(), a.ws(), b.ws(), b.ws()}
	for _, c := range clients {
		c.Join("everyone")
	}
	if clients[0].Welcome["node"] == clients[2].Welcome["node"] {
		t.Fatal("two instances share a node id")
	}
	const n = 50
	for i := range n {
		[]*instance{a, b}[i%2].publish("everyone", fmt.Sprint(i))
	}
	for _, c := range clients {
		seen := map[string]int{}
		for range n {
			m := c.Next()
			seen[fmt.Sprint(m["data"])]++
		}
		for i := range n {
			if seen[fmt.Sprint(i)] != 1 {
				t.Fatalf("message %d delivered %d times", i, seen[fmt.Sprint(i)])
			}
		}
	}
	// Nothing more: a duplicate would show up here.
	for _, c := range clients {
		c.Quiet(100 * time.Millisecond)
	}
	// Channel sends reach the other instance's connection.
	d := b.ws()
	resp, err := http.Post(a.base+"/api/channels/"+d.Channel()+"/messages", "application/json", strings.NewReader(`"direct"`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if m := d.Next(); m["data"] != "direct" || m["channel"] != d.Channel() {
		t.Fatalf("direct message: %v", m)
	}
}

// TestNATSRestart: the NATS server goes away and comes back; /readyz goes
// 503 then 200, and the SAME WebSocket connections receive again.
func TestNATSRestart(t *testing.T) {
	ns := natstest.Start(t, -1)
	port := natstest.Port(ns)
	inst := start(t, map[string]string{"NATS_URL": ns.ClientURL()}).ready()
	c1, c2 := inst.ws(), inst.ws()
	c1.Join("g")
	c2.Join("g")
	inst.publish("g", `1`)
	c1.ExpectMessage("g", `1`)
	c2.ExpectMessage("g", `1`)

	ns.Shutdown()
	ns.WaitForShutdown()
	natstest.WaitFor(t, 10*time.Second, func() bool { return inst.status("/readyz") == http.StatusServiceUnavailable })
	natstest.Start(t, port)
	natstest.WaitFor(t, 10*time.Second, func() bool { return inst.status("/readyz") == http.StatusOK })
	inst.publish("g", `2`)
	c1.ExpectMessage("g", `2`)
	c2.ExpectMessage("g", `2`)
}

func TestBadSettings(t *testing.T) {
	cases := map[string]string{
		"PORT":                      "80a",
		"NATS_URL":                  "http://user:pw@host:4222",
		"NATS_CREDS":                "/nonexistent/user.creds",
		"NATS_TLS_CA":               "/nonexistent/ca.pem",
		"NODE_ID":                   "has.dot",
		"CLIENT_SEND":               "maybe",
		"MAX_FRAME_BYTES":           "-1",
		"OUTBOX_FRAMES":             "lots",
		"WRITE_TIMEOUT":             "10",
		"LOG_LEVEL":                 "loud",
		"NATS_LISTEN":               "4222",
		"MAX_GROUPS_PER_CONNECTION": "0",
		"REGION":                    "eu west",
		"HOOK_JOIN_URL":             "ftp://backend/join",
		"HOOK_HEADERS":              "Cookie,Authorization",
		"JWT_ALLOW_NO_EXP":          "sometimes",
		"DRAIN_PERIOD":              "-1s",
	}
	for name, value := range cases {
		err := run(context.Background(), func(k string) string {
			if k == name {
				return value
			}
			return ""
		}, io.Discard, nil)
		if err == nil {
			t.Errorf("%s=%q: started", name, value)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, name) || strings.Contains(msg, "\n") {
			t.Errorf("%s=%q: error %q does not start with the variable or is not one line", name, value, msg)
		}
		if strings.Contains(msg, "pw@") {
			t.Errorf("error %q leaks a password", msg)
		}
	}
	if err := run(context.Background(), func(k string) string {
		return map[string]string{"NATS_TLS_CERT": "main.go"}[k]
	}, io.Discard, nil); err == nil || !strings.Contains(err.Error(), "NATS_TLS_KEY") {
		t.Errorf("cert without key: %v", err)
	}
}

// TestSIGTERM runs the real binary with hundreds of open sockets, sends
// SIGTERM, and checks every socket is closed with 1012 and the process
// exits cleanly well inside Cloud Run's 10 seconds.
func TestSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	proc, inst, stderr := startBinary(t)

	const n = 300
	clients := make([]*wstest.Client, n)
	for i := range clients {
		clients[i] = inst.ws()
		clients[i].Join("all")
	}
	codes := make(chan websocket.StatusCode, n)
	for _, c := range clients {
		go func() {
			_, err := c.Raw()
			codes <- websocket.CloseStatus(err)
		}()
	}
	start := time.Now()
	proc.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-proc.Exited:
		if proc.Err != nil {
			t.Fatalf("exit: %v\n%s", proc.Err, stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still running 10 s after SIGTERM\n%s", stderr)
	}
	t.Logf("exited %v after SIGTERM with %d sockets", time.Since(start).Round(time.Millisecond), n)
	for range n {
		if code := <-codes; code != websocket.StatusServiceRestart {
			t.Fatalf("a socket ended with %d, want 1012", code)
		}
	}
	if !strings.Contains(stderr.String(), `"message":"stopped"`) {
		t.Fatalf("no clean stop logged:\n%s", stderr)
	}
}

// TestExternalNATSWithToken: credentials from settings reach the server;
// a wrong token keeps the instance unready instead of failing silently.
func TestExternalNATSWithToken(t *testing.T) {
	ns := natstest.StartWith(t, server.Options{Authorization: "s3cret-token"})
	good := start(t, map[string]string{"NATS_URL": ns.ClientURL(), "NATS_TOKEN": "s3cret-token"})
	natstest.WaitFor(t, 5*time.Second, func() bool { return good.status("/readyz") == http.StatusOK })
	c := good.ws()
	c.Join("g")
	good.publish("g", `1`)
	c.ExpectMessage("g", `1`)

	bad := start(t, map[string]string{"NATS_URL": ns.ClientURL(), "NATS_TOKEN": "wrong"})
	time.Sleep(300 * time.Millisecond) // a few connection attempts
	if status := bad.status("/readyz"); status != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with a wrong token: %d", status)
	}
	c.Conn.CloseNow()
}

// startBinary runs the real binary with env (JSON logs into the returned
// buffer) until the test ends, once it is ready.
func startBinary(t *testing.T, env ...string) (*apptest.Process, *instance, *apptest.Buffer) {
	t.Helper()
	stderr := &apptest.Buffer{}
	p := apptest.Start(t, stderr, append([]string{"LOG_FORMAT=json"}, env...)...)
	return p, &instance{t: t, base: p.Base}, stderr
}

// TestResumeAfterSIGKILL: a client reads part of a recoverable group, its
// instance is killed without a word, and it resumes on another instance
// from its last offset: every message exactly once, in order; then the
// same across a restart of the NATS server, whose history is on disk.
func TestResumeAfterSIGKILL(t *testing.T) {
	store := t.TempDir()
	ns := natstest.StartJetStreamAt(t, -1, store)
	port := natstest.Port(ns)
	policy := "GROUP_POLICIES=chat.*=recoverable"
	cmdA, instA, _ := startBinary(t, "NATS_URL="+ns.ClientURL(), policy, "HISTORY_STORE=file")
	b := start(t, map[string]string{"NATS_URL": ns.ClientURL(), "GROUP_POLICIES": "chat.*=recoverable", "HISTORY_STORE": "file"}).ready()
	c := instA.ws()
	c.Join("chat.room")
	next := 0
	publish := func(n int) {
		for range n {
			b.publish("chat.room", fmt.Sprint(next))
			next++
		}
	}
	var offset float64
	var epoch string
	read := func(c *wstest.Client, from, n int) {
		t.Helper()
		for i := from; i < from+n; i++ {
			m := c.Next()
			if m["type"] != "message" || m["data"] != float64(i) {
				t.Fatalf("want message %d, got %v", i, m)
			}
			offset, epoch = m["offset"].(float64), m["epoch"].(string)
		}
	}
	publish(20)
	read(c, 0, 10) // the client has seen 10 of 20 when its instance dies
	cmdA.Cmd.Process.Signal(syscall.SIGKILL)
	<-cmdA.Exited
	publish(10)

	c2 := b.ws()
	ack := c2.Call(map[string]any{"type": "join", "group": "chat.room", "since": map[string]any{"offset": offset, "epoch": epoch}})
	if ack["recovered"] != true {
		t.Fatalf("resume after SIGKILL: %v", ack)
	}
	read(c2, 10, 20)

	// The NATS server restarts; history is on its disk.
	ns.Shutdown()
	ns.WaitForShutdown()
	natstest.StartJetStreamAt(t, port, store)
	natstest.WaitFor(t, 15*time.Second, func() bool { return b.status("/readyz") == http.StatusOK })
	c2.Conn.CloseNow()
	for range 5 { // JetStream may still refuse a moment after the restart
		b.publishRetry("chat.room", fmt.Sprint(next), fmt.Sprint("after-restart-", next))
		next++
	}
	c3 := b.ws()
	if ack := c3.Call(map[string]any{"type": "join", "group": "chat.room", "since": map[string]any{"offset": offset, "epoch": epoch}}); ack["recovered"] != true {
		t.Fatalf("resume after a NATS restart: %v", ack)
	}
	read(c3, 30, 5)
	c3.Conn.CloseNow()
}
