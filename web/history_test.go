package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/natstest"
	"github.com/groupcast/groupcast/internal/wstest"
)

var chatPolicies = []broker.PolicyRule{{Pattern: "chat.*", Policy: broker.Recoverable}, {Pattern: "price.*", Policy: broker.Latest}}

// kept is a delivery of a recoverable group.
type kept struct {
	Offset uint64
	Epoch  string
	Data   json.RawMessage
}

// appendKept appends frame to got if it is a delivery.
func appendKept(got []kept, frame []byte) []kept {
	var k struct {
		Type   string
		Offset uint64
		Epoch  string
		Data   json.RawMessage
	}
	if json.Unmarshal(frame, &k) == nil && k.Type == "message" {
		got = append(got, kept{k.Offset, k.Epoch, k.Data})
	}
	return got
}

func readKept(t *testing.T, c *wstest.Client, n int) []kept {
	t.Helper()
	out := make([]kept, 0, n)
	for len(out) < n {
		m := c.Next()
		if m["type"] != "message" {
			continue
		}
		data, _ := json.Marshal(m["data"])
		out = append(out, kept{Offset: uint64(m["offset"].(float64)), Epoch: m["epoch"].(string), Data: data})
	}
	return out
}

// resume joins with since and returns the ack.
func resume(c *wstest.Client, group string, last kept) map[string]any {
	return c.Call(map[string]any{"type": "join", "group": group, "since": map[string]any{"offset": last.Offset, "epoch": last.Epoch}})
}

// TestResumeAcrossPlannedCloses: whatever closes a socket on purpose (the
// age cap, a slow-consumer close), a client that resumes from its last
// offset on another instance misses nothing and gets nothing twice, while
// messages keep being published.
func TestResumeAcrossPlannedCloses(t *testing.T) {
	ns := natstest.StartJetStream(t)
	a := newEnvBroker(t, broker.Config{URL: ns.ClientURL(), Policies: chatPolicies}, &Config{MaxConnectionAge: 700 * time.Millisecond})
	b := newEnvBroker(t, broker.Config{URL: ns.ClientURL(), Policies: chatPolicies}, nil)

	c := a.dial()
	c.Join("chat.room") // before the first publish: it expects them all
	stop := make(chan struct{})
	published := make(chan int, 1)
	go func() {
		i := 0
		defer func() { published <- i }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if status, _ := b.post("/api/groups/chat.room/messages", fmt.Sprint(i)); status == http.StatusAccepted {
				i++
			}
		}
	}()
	var got []kept
	// Read until the age cap closes the socket.
	for {
		m, err := c.Raw()
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusServiceRestart {
				t.Fatalf("closed with %v", err)
			}
			break
		}
		got = appendKept(got, m)
	}
	if len(got) == 0 {
		t.Fatal("nothing received before the close")
	}
	time.Sleep(50 * time.Millisecond) // messages go on while the client is away
	before := len(got)
	c2 := b.dial()
	if ack := resume(c2, "chat.room", got[len(got)-1]); ack["type"] != "ack" || ack["recovered"] != true {
		t.Fatalf("resume ack: %v", ack)
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	n := <-published
	for len(got) < n {
		got = append(got, readKept(t, c2, 1)...)
	}
	for i, k := range got {
		if string(k.Data) != fmt.Sprint(i) {
			for j := max(0, i-3); j < min(len(got), i+3); j++ {
				t.Logf("received %d: offset %d, data %s (the resume began at %d)", j, got[j].Offset, got[j].Data, before)
			}
			t.Fatalf("message %d is %s: lost or doubled across the resume", i, k.Data)
		}
	}
	c2.Quiet(100 * time.Millisecond)
}

// TestResumeAfterSlowConsumerClose: a client that stops reading while a
// recoverable group streams is closed as a slow consumer; resuming on
// another instance from the last offset it got, it ends up with every
// message exactly once, in order.
func TestResumeAfterSlowConsumerClose(t *testing.T) {
	ns := natstest.StartJetStream(t)
	bc := broker.Config{URL: ns.ClientURL(), Policies: chatPolicies, HistorySize: 10_000}
	a := newEnvBroker(t, bc, &Config{OutboxFrames: 256, OutboxBytes: 256 << 10})
	b := newEnvBroker(t, bc, &Config{OutboxFrames: 20_000, OutboxBytes: 64 << 20})

	c := a.dial()
	c.Join("chat.flood")
	const n = 5000 // 20 MB: more than socket buffers and the outbox hold
	pad := strings.Repeat("x", 4000)
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := b.broker.GroupPublish("chat.flood", []byte(fmt.Sprintf(`{"i":%d,"pad":%q}`, i, pad)), ""); err != nil {
				t.Error(err)
				return
			}
		}
	}
	publish(0, 10)
	got := readKept(t, c, 10)
	publish(10, n) // the client reads nothing meanwhile
	waitFor(t, 5*time.Second, func() bool { return a.broker.Stats().Channels == 0 })
	for {
		m, err := c.Raw()
		if err != nil {
			if status := websocket.CloseStatus(err); status != CloseSlowConsumer && status != -1 {
				t.Fatalf("closed with %v, want %d or a dropped connection", err, CloseSlowConsumer)
			}
			break
		}
		got = appendKept(got, m)
	}
	before := len(got)
	c2 := b.dial()
	// A replay that takes longer than a join may (the 16 MB of it, on a
	// busy machine) is refused unavailable after what it sent: the
	// client resumes again from the last message it got, as a client
	// should.
	for tries := 1; ; tries++ {
		ack := resume(c2, "chat.flood", got[len(got)-1])
		if ack["type"] == "ack" && ack["recovered"] == true {
			break
		}
		if ack["code"] != "unavailable" || tries == 5 {
			t.Fatalf("resume ack: %v", ack)
		}
		for _, f := range c2.Queued() {
			got = appendKept(got, f)
		}
		t.Logf("resume %d refused after %d messages: %v", tries, len(got), ack["message"])
	}
	for len(got) < n {
		got = append(got, readKept(t, c2, 1)...)
	}
	for i, k := range got {
		var v struct{ I int }
		json.Unmarshal(k.Data, &v)
		if v.I != i {
			t.Fatalf("message %d is %d: lost or doubled across the resume", i, v.I)
		}
	}
	t.Logf("%d messages before the slow-consumer close, %d replayed", before, n-before)
	c2.Quiet(100 * time.Millisecond)
}

func TestResumeOutOfWindow(t *testing.T) {
	e := newEnvBroker(t, broker.Config{Policies: chatPolicies, HistorySize: 3}, nil)
	c := e.dial()
	c.Join("chat.x")
	e.post("/api/groups/chat.x/messages", `0`)
	first := readKept(t, c, 1)[0]
	for i := 1; i < 10; i++ {
		e.post("/api/groups/chat.x/messages", fmt.Sprint(i))
	}
	d := e.dial()
	if ack := resume(d, "chat.x", first); ack["recovered"] != false {
		t.Fatalf("past the window: %v", ack)
	}
	other := first
	other.Epoch = "reset"
	if ack := resume(e.dial(), "chat.x", other); ack["recovered"] != false {
		t.Fatalf("another epoch: %v", ack)
	}
}

func TestLatestAndIdempotencyAndHistory(t *testing.T) {
	e := newEnvBroker(t, broker.Config{Policies: chatPolicies}, nil)
	for _, p := range []string{`{"eur":1.1}`, `{"eur":1.2}`} {
		e.post("/api/groups/price.eur/messages", p)
	}
	c := e.dial()
	c.Join("price.eur")
	if k := readKept(t, c, 1)[0]; string(k.Data) != `{"eur":1.2}` {
		t.Fatalf("latest joiner got %s", k.Data)
	}

	// The same Idempotency-Key twice: delivered once, the retry says so.
	c.Join("chat.orders")
	var offsets []string
	for _, dup := range []string{"false", "true"} {
		status, body := e.post("/api/groups/chat.orders/messages", `{"order":7}`, "Idempotency-Key", "order-7")
		if status != http.StatusAccepted || !strings.Contains(body, `"duplicate":`+dup) {
			t.Fatalf("publish: %d %s", status, body)
		}
		offsets = append(offsets, body[strings.Index(body, `"offset"`):strings.Index(body, `,"ok"`)])
	}
	if offsets[0] != offsets[1] {
		t.Fatalf("retry got another offset: %v", offsets)
	}
	readKept(t, c, 1)
	// A client's keys are its own: the backend's key does not swallow its
	// send, and its own retry is the duplicate.
	for _, dup := range []bool{false, true} {
		if m := c.Call(map[string]any{"type": "send", "group": "chat.orders", "data": 1, "idempotency_key": "order-7"}); m["duplicate"] != dup {
			t.Fatalf("client send with the backend's key: %v, want duplicate %v", m, dup)
		}
	}
	readKept(t, c, 1)
	if status, body := e.post("/api/groups/plain/messages", `1`, "Idempotency-Key", "k"); status != http.StatusBadRequest {
		t.Fatalf("key on an at-most-once group: %d %s", status, body)
	}

	// History over HTTP.
	resp, err := http.Get(e.http.URL + "/api/groups/chat.orders/history?since=0&limit=10")
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Epoch    string
		Messages []struct {
			Offset uint64
			Data   json.RawMessage
		}
	}
	json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	if resp.StatusCode != 200 || h.Epoch == "" || len(h.Messages) != 2 || string(h.Messages[0].Data) != `{"order":7}` || string(h.Messages[1].Data) != `1` {
		t.Fatalf("history: %d %+v", resp.StatusCode, h)
	}
	for path, want := range map[string]int{"/api/groups/plain/history": 404, "/api/groups/chat.orders/history?limit=5000": 400} {
		resp, err := http.Get(e.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
}

// BenchmarkResume10k measures a resume over a real WebSocket that
// replays 10,000 missed messages, from the join to the last delivery.
func BenchmarkResume10k(b *testing.B) {
	e := newEnvBroker(b, broker.Config{Policies: chatPolicies, HistorySize: 20_000}, &Config{OutboxBytes: 8 << 20, OutboxFrames: 100_000})
	first, err := e.broker.GroupPublish("chat.big", []byte(`{"n":0}`), "")
	if err != nil {
		b.Fatal(err)
	}
	for i := 1; i <= 10_000; i++ {
		if _, err := e.broker.GroupPublish("chat.big", []byte(fmt.Sprintf(`{"n":%d}`, i)), ""); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		c := e.dial()
		c.Write(fmt.Sprintf(`{"type":"join","group":"chat.big","id":1,"since":{"offset":%d,"epoch":%q}}`, first.Offset, first.Epoch))
		got := 0
		for got < 10_000 {
			p, err := c.Raw()
			if err != nil {
				b.Fatal(err)
			}
			if strings.HasPrefix(string(p), `{"type":"message"`) {
				got++
			}
		}
		c.Conn.CloseNow()
	}
}
