package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/groupcast/groupcast/internal/natstest"
)

// counter is a Receiver that counts the messages it gets and keeps
// nothing, so that large replays cost the test no memory.
type counter struct {
	msgs, bytes atomic.Int64
	closing     func() bool // nil: never
}

func (c *counter) Receive(d Delivery) {
	c.msgs.Add(int64(strings.Count(string(d.Frame), "\n") + 1))
	c.bytes.Add(int64(len(d.Frame)))
}

// closingCounter is a counter that says it takes no more frames once it
// got its first.
type closingCounter struct{ counter }

func (c *closingCounter) Closing() bool { return c.msgs.Load() > 0 }

// startSmallPendingNATS starts a JetStream nats-server that cuts a client
// once 2 MiB are waiting to be written to it: a small stand-in for the
// default 64 MiB, reached with a few megabytes of history.
func startSmallPendingNATS(t *testing.T) *server.Server {
	return natstest.StartWith(t, server.Options{JetStream: true, StoreDir: t.TempDir(), MaxPending: 2 << 20})
}

// TestReplaysSpareLiveTraffic: many resumes from offset 0 of a group full
// of large messages neither cut the instance off NATS nor delay anything
// else: an at-most-once member misses nothing and backend publishes are
// all taken, while each resume gets the whole history or is refused as
// unavailable.
func TestReplaysSpareLiveTraffic(t *testing.T) {
	ns := startSmallPendingNATS(t)
	b, err := New(Config{URL: ns.ClientURL(), Logger: testLogger(t), HistorySize: 1000, MaxReplays: 3,
		Policies: []PolicyRule{{"room.*", Recoverable}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	waitFor(t, 5*time.Second, func() bool { return b.Ready() == nil })

	const kept, size = 100, 50 << 10 // 5 MB of history
	big := []byte(`"` + strings.Repeat("x", size) + `"`)
	for range kept {
		if _, err := b.GroupPublish("room.big", big, ""); err != nil {
			t.Fatal(err)
		}
	}
	plain, live := open(t, b)
	join(t, b, "plain", plain)
	kc, keptLive := open(t, b)
	join(t, b, "room.other", kc)

	stop := make(chan struct{})
	var published atomic.Int64
	var pubErr atomic.Pointer[error]
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a backend publishing all along
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			err := b.GroupSend("plain", fmt.Appendf(nil, "%d", i))
			if err == nil {
				_, err = b.GroupPublish("room.other", fmt.Appendf(nil, "%d", i), "")
			}
			if err != nil {
				pubErr.Store(&err)
				return
			}
			published.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()

	const resumes = 10
	var ok, refused atomic.Int64
	for range resumes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &counter{}
			ch, err := b.NewChannel(r)
			if err != nil {
				t.Error(err)
				return
			}
			defer b.CloseChannel(ch)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			rec, err := b.GroupJoin(ctx, "room.big", ch, &Since{Offset: 0, Epoch: b.history.streams[Recoverable].currentEpoch()})
			switch {
			case errors.Is(err, ErrUnavailable):
				refused.Add(1)
			case err != nil:
				t.Errorf("resume: %v", err)
			case rec.Replayed != kept || r.msgs.Load() != kept:
				t.Errorf("resume replayed %d, received %d; want %d", rec.Replayed, r.msgs.Load(), kept)
			default:
				ok.Add(1)
			}
		}()
	}
	waitFor(t, 30*time.Second, func() bool { return ok.Load()+refused.Load() == resumes || pubErr.Load() != nil })
	close(stop)
	wg.Wait()
	if e := pubErr.Load(); e != nil {
		t.Fatalf("a backend publish failed during the replays: %v", *e)
	}
	if ok.Load() < 3 {
		t.Fatalf("%d resumes got their history, %d refused; want at least the 3 allowed at once", ok.Load(), refused.Load())
	}
	n := int(published.Load())
	for _, r := range []*inbox{live, keptLive} {
		for i := range n {
			got := r.next(t)
			if !strings.Contains(got, fmt.Sprintf(`"data":%d}`, i)) {
				t.Fatalf("live message %d: got %s", i, got)
			}
		}
	}
	if s := b.Stats(); s.Disconnects != 0 || s.SlowConsumer != 0 {
		t.Fatalf("NATS connection hurt: %+v", s)
	}
	t.Logf("%d resumes replayed %d messages each, %d refused; %d live publishes meanwhile", ok.Load(), kept, refused.Load(), n)
}

// TestReplayStopsForClosingReceiver: a replay to a receiver that takes no
// more frames (closed as a slow consumer) stops instead of reading the
// rest of the history.
func TestReplayStopsForClosingReceiver(t *testing.T) {
	b := historyBroker(t, "", 1000, PolicyRule{"*", Recoverable})
	big := []byte(`"` + strings.Repeat("x", 30<<10) + `"`)
	for range 50 {
		if _, err := b.GroupPublish("g", big, ""); err != nil {
			t.Fatal(err)
		}
	}
	r := &closingCounter{}
	ch, err := b.NewChannel(r)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.GroupJoin(context.Background(), "g", ch, &Since{Offset: 0, Epoch: b.history.streams[Recoverable].currentEpoch()})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("join: %v, want unavailable", err)
	}
	if got := r.msgs.Load(); got == 0 || got >= 50 {
		t.Fatalf("the closing receiver got %d of 50 messages; want the first chunk only", got)
	}
}

// TestServerSlowConsumerNoticeAtInfo: the embedded server's reason for
// cutting a slow consumer reaches the log at Info; its other notices stay
// at Debug.
func TestServerSlowConsumerNoticeAtInfo(t *testing.T) {
	var buf strings.Builder
	l := serverLog{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	l.Noticef("Starting nats-server")
	l.Noticef("%s - cid:%d - Slow Consumer Detected: MaxPending of %d Exceeded", "127.0.0.1:5000", 7, 67108864)
	if out := buf.String(); strings.Contains(out, "Starting") || !strings.Contains(out, "level=INFO") || !strings.Contains(out, "MaxPending of 67108864 Exceeded") {
		t.Fatalf("log: %q", out)
	}
}
