package infra

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// metaLeaderTo moves JetStream's meta leader into region (a cluster).
func metaLeaderTo(t *testing.T, sc *Supercluster, region string) {
	t.Helper()
	u, _ := url.Parse(sc.ClientURLs(region)[0])
	u.User = url.UserPassword(SysUser, sc.Topology.SysPassword)
	nc, err := nats.Connect(u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	waitUntil(t, 20*time.Second, "the meta leader in "+region, func() bool {
		for i, s := range sc.Servers {
			if s.JetStreamIsLeader() {
				if sc.Topology.Servers[i].Region == region {
					return true
				}
				_, _ = nc.Request("$JS.API.META.LEADER.STEPDOWN", []byte(`{"placement":{"cluster":"`+region+`"}}`), 2*time.Second)
				return false
			}
		}
		return false
	})
}

// historyOf reads a group's kept messages through an instance's server API.
func historyOf(ctx context.Context, app *App, apiKey, group string, since uint64) ([]uint64, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/api/groups/%s/history?since=%d&limit=1000", app.URL, group, since), nil)
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	var body struct {
		Epoch    string `json:"epoch"`
		Messages []struct {
			Offset uint64 `json:"offset"`
		} `json:"messages"`
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("history: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, "", err
	}
	var offsets []uint64
	for _, m := range body.Messages {
		offsets = append(offsets, m.Offset)
	}
	return offsets, body.Epoch, nil
}

// TestHistorySurvivesRegionLoss runs three regions of two servers with an instance
// each and a recoverable group whose history lives in the first region
// (HISTORY_REGION); the other regions keep mirrors. Messages are published from
// every region while a member in the third region listens; then the first region's
// NATS cluster is lost. The history stays readable in the other regions with the
// same offsets and epoch: a member resuming in the third region from the middle gets
// the rest exactly once, in order, recovered; the second region's history API lists
// every message. Publishing into the group is refused while the history's region is
// away (nothing is accepted that could be lost), and works again when it returns,
// reaching the resumed member live with the next offset.
func TestHistorySurvivesRegionLoss(t *testing.T) {
	bin := buildImageBinary(t)
	sc := startSupercluster(t, 2)
	regions := sc.Topology.Regions
	const apiKey, group, total, resumeAt = "history-test-key", "room.1", 60, 20

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	apps := startRegionApps(ctx, t, bin, sc, apiKey, map[string]string{
		"GROUP_POLICIES": "room.*=recoverable",
		"HISTORY_REGION": regions[0],
		"HISTORY_STORE":  "file",
		// Two copies in each two-server region: the instances restart a
		// mirror that is slow to follow its returned stream by moving its
		// leader, which a single copy cannot do.
		"HISTORY_REPLICAS": "2",
	})
	b, c := apps[1], apps[2]

	listener := dial(ctx, t, c, regions[2])
	defer listener.conn.CloseNow()
	if f := listener.next(t, 5*time.Second); f.Type != "welcome" {
		t.Fatalf("first frame %q, want welcome", f.Type)
	}
	listener.send(ctx, t, map[string]any{"type": "join", "group": group, "id": 1})
	if f := listener.next(t, 5*time.Second); f.Type != "ack" {
		t.Fatalf("join: %+v", f)
	}
	for i := range total {
		if err := publish(ctx, apps[i%3], apiKey, group, i+1); err != nil {
			t.Fatal(err)
		}
	}
	var epoch string
	for want := uint64(1); want <= total; want++ {
		f := listener.next(t, 5*time.Second)
		if f.Type != "message" || f.Offset != want {
			t.Fatalf("live delivery in %s: %+v, want message with offset %d", regions[2], f, want)
		}
		if want == 1 {
			epoch = f.Epoch
		} else if f.Epoch != epoch {
			t.Fatalf("epoch changed from %q to %q", epoch, f.Epoch)
		}
	}
	for _, app := range []*App{b, c} {
		waitUntil(t, 5*time.Second, "the mirror of "+app.URL+" holding every message", func() bool {
			got, e, err := historyOf(ctx, app, apiKey, group, 0)
			return err == nil && len(got) == total && e == epoch
		})
	}

	// The worst case: JetStream's meta leader, which creates consumers,
	// is in the region that goes.
	metaLeaderTo(t, sc, regions[0])

	// The history's region goes: every NATS server of it.
	for i, spec := range sc.Topology.Servers {
		if spec.Region == regions[0] {
			sc.StopServer(i)
		}
	}
	lost := time.Now()

	// Reads need no consumer, so no meta leader: they go on at once
	// (JetStream takes seconds to elect another).
	var got []uint64
	var e string
	var err error
	waitUntil(t, 2*time.Second, regions[1]+" history readable after the loss", func() bool {
		got, e, err = historyOf(ctx, b, apiKey, group, 0)
		return err == nil
	})
	t.Logf("history readable in %s %v after the loss", regions[1], time.Since(lost).Round(time.Millisecond))
	if len(got) != total || e != epoch {
		t.Fatalf("history in %s after the loss: %d messages, epoch %q (want %d, %q), %v", regions[1], len(got), e, total, epoch, err)
	}
	for i, o := range got {
		if o != uint64(i+1) {
			t.Fatalf("history in %s: offsets %v", regions[1], got)
		}
	}
	if code := readyz(b); code != http.StatusOK {
		t.Errorf("%s /readyz %d with its mirror readable, want 200", regions[1], code)
	}

	resumer := dial(ctx, t, c, regions[2])
	defer resumer.conn.CloseNow()
	resumer.next(t, 5*time.Second) // welcome
	resumer.send(ctx, t, map[string]any{"type": "join", "group": group, "id": 1, "since": map[string]any{"offset": resumeAt, "epoch": epoch}})
	for want := uint64(resumeAt + 1); want <= total; want++ {
		if f := resumer.next(t, 5*time.Second); f.Type != "message" || f.Offset != want || f.Epoch != epoch {
			t.Fatalf("replay in %s during the loss: %+v, want offset %d of epoch %s", regions[2], f, want, epoch)
		}
	}
	if f := resumer.next(t, 5*time.Second); f.Type != "ack" || f.Recovered == nil || !*f.Recovered {
		t.Fatalf("resume in %s during the loss: %+v, want an ack with recovered:true after the replay", regions[2], f)
	}
	t.Logf("resumed %d messages from the mirror in %s, %v after the loss", total-resumeAt, regions[2], time.Since(lost).Round(time.Millisecond))

	// A group no member had on an instance needs a new consumer there,
	// which waits for the new meta leader: refused as unavailable until
	// then, and the client tries again.
	var first time.Duration
	waitUntil(t, 20*time.Second, "a resume into a group new to "+regions[1], func() bool {
		m := dial(ctx, t, b, regions[1])
		defer m.conn.CloseNow()
		m.next(t, 5*time.Second) // welcome
		m.send(ctx, t, map[string]any{"type": "join", "group": group, "id": 1, "since": map[string]any{"offset": total - 1, "epoch": epoch}})
		for {
			f := m.next(t, 10*time.Second)
			switch f.Type {
			case "message":
				continue
			case "ack":
				if f.Recovered == nil || !*f.Recovered {
					t.Fatalf("resume in %s: %+v, want recovered", regions[1], f)
				}
				first = time.Since(lost)
				return true
			}
			if f.Code != "unavailable" {
				t.Fatalf("resume in %s: %+v", regions[1], f)
			}
			time.Sleep(200 * time.Millisecond)
			return false
		}
	})
	t.Logf("a group new to %s joined %v after the loss", regions[1], first.Round(time.Millisecond))

	if err := publish(ctx, b, apiKey, group, "during"); err == nil {
		t.Errorf("a publish into a recoverable group was accepted while its history's region was away")
	} else {
		t.Logf("publish during the loss: %v", err)
	}

	// The region returns with its data (file storage); publishing works again.
	for i, spec := range sc.Topology.Servers {
		if spec.Region == regions[0] {
			if err := sc.StartServer(i); err != nil {
				t.Fatal(err)
			}
		}
	}
	back := time.Now()
	waitUntil(t, 30*time.Second, "a publish accepted after the return", func() bool {
		return publish(ctx, b, apiKey, group, "after") == nil
	})
	t.Logf("publishing again %v after the region's return", time.Since(back).Round(time.Millisecond))
	waitUntil(t, 60*time.Second, "the mirror catching up", func() bool {
		got, _, err := historyOf(ctx, c, apiKey, group, 0)
		return err == nil && len(got) > total
	})
	t.Logf("mirror caught up %v after the region's return", time.Since(back).Round(time.Millisecond))
	for _, m := range []*client{resumer, listener} {
		f := m.next(t, 10*time.Second)
		if f.Type != "message" || f.Offset != total+1 || f.Epoch != epoch || string(f.Data) != `"after"` {
			t.Errorf("after the return: %+v, want %q at offset %d", f, "after", total+1)
		}
	}
}
