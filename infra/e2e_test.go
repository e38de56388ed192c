package infra

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/groupcast/groupcast/protocol"
)

// frame is one JSON object of a server frame (a frame may hold several, one a line).
type frame = protocol.Frame

// client is a WebSocket to one region, its frames read into a channel.
type client struct {
	region string
	conn   *websocket.Conn
	frames chan frame
	closed chan error // the read error that ended the socket
}

func dial(ctx context.Context, t *testing.T, app *App, region string) *client {
	t.Helper()
	wsURL := "ws" + strings.TrimPrefix(app.URL, "http") + "/ws"
	conn, _, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		t.Fatalf("%s: dial: %v", region, err)
	}
	c := &client{region: region, conn: conn, frames: make(chan frame, 256), closed: make(chan error, 1)}
	go func() {
		for {
			_, data, err := conn.Read(context.Background())
			if err != nil {
				c.closed <- err
				close(c.frames)
				return
			}
			for line := range protocol.Objects(data) {
				f, err := protocol.Decode(line)
				if err != nil {
					t.Errorf("%s: a line that is not one JSON object: %q", region, line)
					continue
				}
				c.frames <- f
			}
		}
	}()
	return c
}

// next returns the next frame, or fails the test when none comes in time.
func (c *client) next(t *testing.T, timeout time.Duration) frame {
	t.Helper()
	select {
	case f, ok := <-c.frames:
		if !ok {
			t.Fatalf("%s: socket closed", c.region)
		}
		return f
	case <-time.After(timeout):
		t.Fatalf("%s: no frame within %v", c.region, timeout)
	}
	return frame{}
}

func (c *client) send(ctx context.Context, t *testing.T, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
		t.Fatalf("%s: write: %v", c.region, err)
	}
}

// publish posts data to a group through an instance's server API.
func publish(ctx context.Context, app *App, apiKey, group string, data any) error {
	b, _ := json.Marshal(data)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, app.URL+"/api/groups/"+group+"/messages", bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %s %s", req.URL.Path, resp.Status, body)
	}
	return nil
}

// TestMultiRegion runs one groupcast instance per region against the supercluster
// booted from infra/nats, joins a group on each, publishes once through one region's
// HTTP API and expects every region's socket to get the message exactly once.
func TestMultiRegion(t *testing.T) {
	bin := buildImageBinary(t)
	sc := startSupercluster(t, 2)
	regions := sc.Topology.Regions
	const apiKey = "infra-test-key"

	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	apps := startRegionApps(ctx, t, bin, sc, apiKey, nil)

	// A socket per region: welcome (with the region), join, ack.
	clients := make([]*client, len(regions))
	for i, r := range regions {
		c := dial(ctx, t, apps[i], r)
		clients[i] = c
		if f := c.next(t, 5*time.Second); f.Type != "welcome" || f.Region != r {
			t.Fatalf("%s: first frame %+v, want a welcome naming the region", r, f)
		}
		c.send(ctx, t, map[string]any{"type": "join", "group": "demo", "id": 1})
		for {
			f := c.next(t, 5*time.Second)
			if f.Type == "ack" && string(f.ID) == "1" {
				break
			}
			if f.Type == "error" {
				t.Fatalf("%s: join refused: %+v", r, f)
			}
		}
	}

	// Interest reaches the other regions' gateways asynchronously after the ack:
	// publish markers until every region has received one.
	type marked struct {
		Marker int    `json:"marker"`
		Nonce  string `json:"nonce"`
	}
	start := time.Now()
	seen := make([]bool, len(clients))
	for n := 0; !allTrue(seen); n++ {
		if ctx.Err() != nil {
			t.Fatalf("markers reached regions %v only", seen)
		}
		if err := publish(ctx, apps[0], apiKey, "demo", marked{Marker: n + 1}); err != nil {
			t.Fatal(err)
		}
		for i, c := range clients {
			select {
			case f := <-c.frames:
				if f.Type == "message" && f.Group == "demo" {
					seen[i] = true
				}
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	t.Logf("interest in every region after %v", time.Since(start).Round(time.Millisecond))

	// The real message, once, from the first region; each socket gets it once.
	nonce := fmt.Sprintf("m-%d", time.Now().UnixNano())
	if err := publish(ctx, apps[0], apiKey, "demo", marked{Nonce: nonce}); err != nil {
		t.Fatal(err)
	}
	counts := make([]int, len(clients))
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() { counts[i] = countNonce(c, nonce, 5*time.Second, 500*time.Millisecond) })
	}
	wg.Wait()
	for i, n := range counts {
		if n != 1 {
			t.Errorf("%s received the message %d times, want 1", regions[i], n)
		}
	}

	// SIGTERM: the instance closes its sockets with a close frame (1001 or 1012) and
	// exits within 10 s.
	if err := apps[1].Stop(10 * time.Second); err != nil {
		t.Fatalf("%s: %v", regions[1], err)
	}
	var closeErr error
	select {
	case closeErr = <-clients[1].closed:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: socket still open after the instance stopped", regions[1])
	}
	if code := websocket.CloseStatus(closeErr); code != websocket.StatusGoingAway && code != websocket.StatusServiceRestart {
		t.Errorf("%s: socket closed with %v, want 1001 or 1012", regions[1], code)
	}
	for _, c := range clients {
		_ = c.conn.CloseNow()
	}
}

// countNonce counts the deliveries of the message carrying nonce: it waits up to
// wait for the first, then keeps reading for drain to catch duplicates.
func countNonce(c *client, nonce string, wait, drain time.Duration) int {
	n := 0
	until := time.After(wait)
	for {
		select {
		case f, ok := <-c.frames:
			if !ok {
				return n
			}
			var m struct {
				Nonce string `json:"nonce"`
			}
			if f.Type == "message" && f.Group == "demo" && json.Unmarshal(f.Data, &m) == nil && m.Nonce == nonce {
				if n == 0 {
					until = time.After(drain)
				}
				n++
			}
		case <-until:
			return n
		}
	}
}
