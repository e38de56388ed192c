package broker

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/groupcast/groupcast/internal/apptest"
	"github.com/groupcast/groupcast/internal/natstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	testLogger    = apptest.Logger
	startNATSOn   = natstest.Start
	waitFor       = natstest.WaitFor
	subscriptions = natstest.Subscriptions
)

func startNATS(t testing.TB) *server.Server { return natstest.Start(t, -1) }

func startJetStreamNATS(t testing.TB) *server.Server { return natstest.StartJetStream(t) }

// newBroker returns a broker (embedded when url is empty) closed at cleanup.
func newBroker(t testing.TB, url string) *Broker {
	t.Helper()
	b, err := New(Config{URL: url, Logger: testLogger(t), ReconnectWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	waitFor(t, 5*time.Second, func() bool { return b.Ready() == nil })
	return b
}

// inbox is a Receiver that keeps what it receives.
type inbox struct{ frames chan []byte }

func newInbox() *inbox { return &inbox{frames: make(chan []byte, 100000)} }

func (r *inbox) Receive(d Delivery) {
	select {
	case r.frames <- d.Frame:
	default:
		panic("test inbox full")
	}
}

// next returns the next frame, failing the test after a while.
func (r *inbox) next(t testing.TB) string {
	t.Helper()
	select {
	case f := <-r.frames:
		return string(f)
	case <-time.After(5 * time.Second):
		t.Fatal("no frame received")
		return ""
	}
}

// none fails if a frame arrives within d.
func (r *inbox) none(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case f := <-r.frames:
		t.Fatalf("unexpected frame %s", f)
	case <-time.After(d):
	}
}

// open opens a channel for a new inbox.
func open(t testing.TB, b *Broker) (string, *inbox) {
	t.Helper()
	r := newInbox()
	ch, err := b.NewChannel(r)
	if err != nil {
		t.Fatal(err)
	}
	return ch, r
}

func join(t testing.TB, b *Broker, group, channel string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.GroupAdd(ctx, group, channel); err != nil {
		t.Fatalf("GroupAdd(%q): %v", group, err)
	}
}
