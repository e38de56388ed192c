package web

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// sseEvent is one event of a stream: its name ("" for data events) and data.
type sseEvent struct {
	name, data string
}

// sseClient is a test client of GET /sse: a goroutine reads the events,
// which next hands out; POSTs go to any instance.
type sseClient struct {
	t       testing.TB
	resp    *http.Response
	events  chan sseEvent // closed at the end of the stream
	done    chan struct{} // closed when the reading goroutine has returned
	cancel  context.CancelFunc
	comment chan struct{} // a heartbeat comment arrived (capacity 1)
	Welcome map[string]any
}

// openSSE opens a stream with query (such as "?token=...") and header
// pairs, and reads the welcome; it fails the test unless the answer is 200.
func (e *env) openSSE(query string, header ...string) *sseClient {
	e.t.Helper()
	c, status, body := e.trySSE(query, header...)
	if c == nil {
		e.t.Fatalf("GET /sse: %d %s", status, body)
	}
	c.readWelcome()
	return c
}

func (c *sseClient) readWelcome() {
	c.t.Helper()
	c.Welcome = c.frame()
	if c.Welcome["type"] != "welcome" {
		c.t.Fatalf("first event %v, want the welcome", c.Welcome)
	}
}

// trySSE opens a stream, or returns the refusal's status and body.
func (e *env) trySSE(query string, header ...string) (*sseClient, int, string) {
	e.t.Helper()
	return e.trySSEVia(http.DefaultClient, e.http.URL, query, header...)
}

// trySSEVia is trySSE through client, to the server at base.
func (e *env) trySSEVia(client *http.Client, base, query string, header ...string) (*sseClient, int, string) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/sse"+query, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		return nil, resp.StatusCode, string(body)
	}
	c := &sseClient{t: e.t, resp: resp, events: make(chan sseEvent, 100_000), done: make(chan struct{}),
		cancel: cancel, comment: make(chan struct{}, 1)}
	go c.read()
	e.t.Cleanup(c.close)
	return c, resp.StatusCode, ""
}

// read parses the stream into events until it ends.
func (c *sseClient) read() {
	defer close(c.done)
	defer close(c.events)
	sc := bufio.NewScanner(c.resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var ev sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.data != "" || ev.name != "" {
				c.events <- ev
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, ":"):
			select {
			case c.comment <- struct{}{}:
			default:
			}
		case strings.HasPrefix(line, "data: "):
			if ev.data != "" {
				ev.data += "\n"
			}
			ev.data += line[len("data: "):]
		case strings.HasPrefix(line, "event: "):
			ev.name = line[len("event: "):]
		default:
			panic("unexpected line in the stream: " + line)
		}
	}
}

// close drops the stream and waits for its reader.
func (c *sseClient) close() {
	c.cancel()
	c.resp.Body.Close()
	<-c.done
}

// next returns the next event, or ok false at the end of the stream.
func (c *sseClient) next() (ev sseEvent, ok bool) {
	c.t.Helper()
	select {
	case ev, ok = <-c.events:
		return ev, ok
	case <-time.After(10 * time.Second):
		c.t.Fatal("no event in time")
		return sseEvent{}, false
	}
}

// frame returns the next data event's frame, failing on any other event.
func (c *sseClient) frame() map[string]any {
	c.t.Helper()
	ev, ok := c.next()
	if !ok || ev.name != "" {
		c.t.Fatalf("got %+v (open %v), want a frame", ev, ok)
	}
	var f map[string]any
	if err := json.Unmarshal([]byte(ev.data), &f); err != nil {
		c.t.Fatalf("event data %q: %v", ev.data, err)
	}
	return f
}

// closeEvent skips frames up to the close event and returns its data,
// then checks that the stream ends.
func (c *sseClient) closeEvent() map[string]any {
	c.t.Helper()
	for {
		ev, ok := c.next()
		if !ok {
			c.t.Fatal("the stream ended without a close event")
		}
		if ev.name == "" {
			continue
		}
		if ev.name != "close" {
			c.t.Fatalf("event %q, want close", ev.name)
		}
		var f map[string]any
		if err := json.Unmarshal([]byte(ev.data), &f); err != nil {
			c.t.Fatalf("close data %q: %v", ev.data, err)
		}
		if ev, ok := c.next(); ok {
			c.t.Fatalf("event after the close event: %+v", ev)
		}
		return f
	}
}

func (c *sseClient) channel() string { return c.Welcome["channel"].(string) }
func (c *sseClient) secret() string  { return c.Welcome["secret"].(string) }

// post sends body to e's POST /sse/{channel} with the stream's secret
// and returns the status and body.
func (c *sseClient) post(e *env, body string) (int, string) {
	c.t.Helper()
	return e.post("/sse/"+c.channel(), body, SecretHeader, c.secret())
}

// call posts one frame and returns the stream's next frame, its answer.
func (c *sseClient) call(e *env, frame string) map[string]any {
	c.t.Helper()
	if status, body := c.post(e, frame); status != http.StatusAccepted || body != "{}" {
		c.t.Fatalf("POST %s: %d %s", frame, status, body)
	}
	return c.frame()
}
