package presence

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testLogger writes to the test log when -v is given, else nowhere.
func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newManager returns node's Manager over its own connection to url,
// closed at cleanup, with a 100 ms heartbeat.
func newManager(t testing.TB, url, node string) *Manager {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	valid := func(s string) bool { return s != "" }
	m, err := New(Config{Bus: nc, Ready: func() error { return nil }, Prefix: "groupcast", Node: node,
		Interval: 100 * time.Millisecond, Timeout: 250 * time.Millisecond, MaxGroups: 100,
		ValidNode: valid, ValidChannel: valid, Logger: testLogger()})
	if err != nil {
		nc.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); nc.Close() })
	return m
}

// discard is a Receiver that drops every frame.
type discard struct{}

func (discard) Receive([]byte) {}

// add makes channel present in group, failing the test on error.
func add(t testing.TB, m *Manager, group, channel, user string) {
	t.Helper()
	if err := m.Add(group, Member{Channel: channel, User: user}, discard{}, NoEvents); err != nil {
		t.Fatal(err)
	}
}

// get queries m, failing the test on error.
func get(t testing.TB, m *Manager, group string, q Query) Result {
	t.Helper()
	r, err := m.Get(context.Background(), group, q)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
