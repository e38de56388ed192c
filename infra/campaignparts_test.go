package infra

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/groupcast/groupcast/internal/apptest"

	gcclient "github.com/groupcast/groupcast/client"
)

// campaignInstance is one groupcast process of the campaign, restarted on the same
// port after a kill.
type campaignInstance struct {
	name     string
	bin      string
	port     int
	settings map[string]string
	logs     *apptest.Buffer

	mu  sync.Mutex
	app *App
}

func (c *campaignInstance) url() string { return fmt.Sprintf("http://127.0.0.1:%d", c.port) }

func (c *campaignInstance) current() *App {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.app
}

// start runs the binary (again).
func (c *campaignInstance) start() error {
	settings := map[string]string{"NODE_ID": c.name}
	for k, v := range c.settings {
		settings[k] = v
	}
	app, err := StartApp(c.bin, c.port, settings, c.logs)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.app = app
	c.mu.Unlock()
	return nil
}

// kill sends SIGKILL and waits until the process is gone.
func (c *campaignInstance) kill() {
	app := c.current()
	_ = app.cmd.Process.Kill()
	<-app.Done()
}

// signal sends sig (SIGSTOP, SIGCONT) to the process.
func (c *campaignInstance) signal(sig syscall.Signal) { _ = c.current().cmd.Process.Signal(sig) }

// waitReady waits up to timeout for /readyz to answer 200.
func (c *campaignInstance) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return c.current().WaitReady(ctx)
}

// stop ends the process, paused or not.
func (c *campaignInstance) stop() error {
	c.signal(syscall.SIGCONT)
	return c.current().Stop(10 * time.Second)
}

// campaignPayload is what the campaign's publishers send.
type campaignPayload struct {
	From  string `json:"from"`
	Seq   int    `json:"seq"`
	Group string `json:"group"` // the group it was published to
}

// campaignDelivery is one message a member received.
type campaignDelivery struct {
	campaignPayload
	offset uint64
	epoch  string
	at     time.Time // when the handler got it
}

// campaignMember is a Go client joined to some of the campaign's groups.
type campaignMember struct {
	name string
	inst *campaignInstance // the instance it connects to
	c    *gcclient.Client
	// slowUntil, in Unix nanoseconds, stalls the handler, and so the client's
	// reader, until then.
	slowUntil atomic.Int64

	gaps atomic.Int64 // gaps the client was told of (OnGap)

	mu     sync.Mutex
	got    map[string][]campaignDelivery // by the group it arrived in
	errors []string
	events []string // state changes and gaps, timed, for a run that loses messages
}

// note records a client event, timed; at most maxEvents are kept.
func (m *campaignMember) note(what string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.events) < maxEvents {
		m.events = append(m.events, time.Now().Format("15:04:05.000")+" "+what)
	}
}

const maxEvents = 500

func (m *campaignMember) receive(msg gcclient.Message) {
	if until := time.Unix(0, m.slowUntil.Load()); time.Now().Before(until) {
		time.Sleep(time.Until(until)) // the reader stalls
	}
	var d campaignDelivery
	_ = json.Unmarshal(msg.Data, &d.campaignPayload)
	var pos struct {
		Offset uint64 `json:"offset"`
		Epoch  string `json:"epoch"`
	}
	_ = json.Unmarshal(msg.Raw, &pos)
	d.offset, d.epoch = pos.Offset, pos.Epoch
	d.at = time.Now()
	m.mu.Lock()
	m.got[msg.Group] = append(m.got[msg.Group], d)
	m.mu.Unlock()
}

func (m *campaignMember) noteError(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.errors) < 100 {
		m.errors = append(m.errors, err.Error())
	}
}

func (m *campaignMember) deliveries(group string) []campaignDelivery {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]campaignDelivery(nil), m.got[group]...)
}

func (m *campaignMember) heard(group, from string) bool {
	for _, d := range m.deliveries(group) {
		if d.From == from {
			return true
		}
	}
	return false
}

func (m *campaignMember) hasSeq(group, from string, seq int) bool {
	for _, d := range m.deliveries(group) {
		if d.From == from && d.Seq == seq {
			return true
		}
	}
	return false
}

// subscribed reports whether the client still holds group (it drops a group the
// server refuses for good on a rejoin).
func (m *campaignMember) subscribed(group string) bool {
	for _, g := range m.c.Groups() {
		if g == group {
			return true
		}
	}
	return false
}

// campaignPublisher publishes 1, 2, ... into a group through the server API, one at a
// time. With keyed, each message carries an Idempotency-Key and is retried, through
// the next instance each time, until answered 2xx; otherwise it is sent once (a retry
// without a key would be a legitimate duplicate).
type campaignPublisher struct {
	name  string
	group string
	keyed bool
	stopc chan struct{}
	done  chan struct{}

	mu      sync.Mutex
	acked   []int // sequence numbers answered 2xx
	sent    int
	retries int
}

func (cl *campaignCluster) startPublisher(name, group string, first int, keyed bool) *campaignPublisher {
	p := &campaignPublisher{name: name, group: group, keyed: keyed, stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		target := first
		for seq := 1; ; seq++ {
			select {
			case <-p.stopc:
				return
			case <-time.After(40 * time.Millisecond):
			}
			body := campaignPayload{From: name, Seq: seq, Group: group}
			key := ""
			if keyed {
				key = fmt.Sprintf("%s-%d", name, seq)
			}
			// A keyed message is retried for up to a minute past the stop, so that
			// none is left in doubt.
			giveUp := time.Now().Add(time.Minute)
			for attempt := 0; ; attempt++ {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				err := cl.post(ctx, target%len(cl.instances), group, body, key)
				cancel()
				p.mu.Lock()
				p.sent++
				if err == nil {
					p.acked = append(p.acked, seq)
				} else if keyed {
					p.retries++
				}
				p.mu.Unlock()
				if err == nil || !keyed || time.Now().After(giveUp) {
					break
				}
				target++
				time.Sleep(50 * time.Millisecond)
			}
		}
	}()
	return p
}

func (p *campaignPublisher) stop() {
	close(p.stopc)
	<-p.done
}

func (p *campaignPublisher) ackedSeqs() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int(nil), p.acked...)
}

func (p *campaignPublisher) lastAcked() int {
	a := p.ackedSeqs()
	if len(a) == 0 {
		return 0
	}
	return a[len(a)-1]
}

// post publishes data into group through instance i, with an idempotency key unless
// key is empty; any answer but 2xx is an error.
func (cl *campaignCluster) post(ctx context.Context, i int, group string, data any, key string) error {
	b, _ := json.Marshal(data)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cl.instances[i].url()+"/api/groups/"+group+"/messages", bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+cl.apiKey)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := cl.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(http.MaxBytesReader(nil, resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: %s", resp.Status, buf.String())
	}
	return nil
}

// faultKinds names the campaign's kinds of fault, in the order the schedule
// numbers them.
var faultKinds = []string{"kill-instance", "kill-nats", "cut-links", "pause-instance", "stall-reader"}

// parseFaultKinds reads -campaign.faults: the numbers of the kinds named,
// all of them when list is empty.
func parseFaultKinds(list string) ([]int, error) {
	var kinds []int
	for _, name := range strings.Split(list, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		i := slices.Index(faultKinds, name)
		if i < 0 {
			return nil, fmt.Errorf("-campaign.faults: no fault kind %q (kinds: %s)", name, strings.Join(faultKinds, ", "))
		}
		kinds = append(kinds, i)
	}
	if len(kinds) == 0 {
		for i := range faultKinds {
			kinds = append(kinds, i)
		}
	}
	return kinds, nil
}

// startHistoryReaders starts n readers per instance that read the whole kept
// history of the recoverable group through the server API, over and over,
// taking replay turns from the resumes; the function returned stops them.
func (cl *campaignCluster) startHistoryReaders(n int) (stop func()) {
	stopc := make(chan struct{})
	var wg sync.WaitGroup
	for _, inst := range cl.instances {
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stopc:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, inst.url()+"/api/groups/"+campaignRec+"/history?since=0&limit=1000", nil)
					req.Header.Set("Authorization", "Bearer "+cl.apiKey)
					if resp, err := cl.http.Do(req); err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					} else {
						time.Sleep(50 * time.Millisecond) // the instance is down
					}
					cancel()
				}
			}()
		}
	}
	return func() {
		close(stopc)
		wg.Wait()
	}
}

// runSchedule injects random faults of the given kinds, one at a time, for
// d, each healed before the next once every instance is ready again, and
// returns what it did. With every kind, a seed draws the same schedule as
// before kinds could be chosen.
func (cl *campaignCluster) runSchedule(ctx context.Context, t *testing.T, rng *rand.Rand, kinds []int, members []*campaignMember, d time.Duration) (done []string, byKind []int) {
	t.Helper()
	byKind = make([]int, len(faultKinds))
	start := time.Now()
	for time.Since(start) < d {
		time.Sleep(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
		hold := time.Duration(300+rng.IntN(1700)) * time.Millisecond
		var what string
		kind := kinds[rng.IntN(len(kinds))]
		byKind[kind]++
		switch kind {
		case 0:
			inst := cl.instances[rng.IntN(len(cl.instances))]
			what = "SIGKILL " + inst.name
			inst.kill()
			time.Sleep(hold)
			if err := inst.start(); err != nil {
				t.Fatalf("restart %s: %v", inst.name, err)
			}
		case 1:
			i := rng.IntN(len(cl.proxies)) // a server of the history's region
			what = "kill " + cl.sc.Topology.Servers[i].Name
			cl.sc.StopServer(i)
			time.Sleep(hold)
			if err := cl.sc.StartServer(i); err != nil {
				t.Fatalf("restart %s: %v", cl.sc.Topology.Servers[i].Name, err)
			}
		case 2:
			i := rng.IntN(len(cl.proxies))
			what = "cut links to " + cl.sc.Topology.Servers[i].Name
			cl.proxies[i].Cut("") // client connections carry no gateway name
			time.Sleep(hold)
			cl.proxies[i].Restore("")
		case 3:
			inst := cl.instances[rng.IntN(len(cl.instances))]
			what = "SIGSTOP " + inst.name
			inst.signal(syscall.SIGSTOP)
			time.Sleep(hold)
			inst.signal(syscall.SIGCONT)
		case 4:
			m := members[rng.IntN(len(members))]
			hold = 2*hold + 3*time.Second
			what = "stalled reader " + m.name
			m.slowUntil.Store(time.Now().Add(hold).UnixNano())
			time.Sleep(hold)
		}
		what += fmt.Sprintf(" at %v (%s) for %v", time.Since(start).Round(100*time.Millisecond), time.Now().Add(-hold).Format("15:04:05.000"), hold.Round(100*time.Millisecond))
		t.Log("fault: " + what)
		done = append(done, what)
		for _, inst := range cl.instances {
			if err := inst.waitReady(ctx, 30*time.Second); err != nil {
				t.Fatalf("after %s: %v", what, err)
			}
		}
	}
	return done, byKind
}

// faultSummary names how many faults of each kind were injected.
func faultSummary(byKind []int) string {
	var parts []string
	for k, n := range byKind {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", faultKinds[k], n))
		}
	}
	return strings.Join(parts, ", ")
}

// checkCampaign checks the invariants and returns the figures and the instances of
// the members that lost messages.
func checkCampaign(t *testing.T, pubs []*campaignPublisher, members []*campaignMember) (string, map[*campaignInstance]bool) {
	t.Helper()
	lossy := map[*campaignInstance]bool{}
	var checked, lost, duplicated, misrouted, disordered, sent, retries int
	for _, p := range pubs {
		p.mu.Lock()
		sent += p.sent
		retries += p.retries
		p.mu.Unlock()
	}
	for _, m := range members {
		for _, g := range []string{campaignRec, campaignAMO, campaignOther} {
			got := m.deliveries(g)
			seen := map[string]int{} // "from/seq" -> times
			last := map[string]int{} // from -> last seq
			var lastOffset uint64
			lastEpoch := ""
			for _, d := range got {
				if d.Group != g {
					misrouted++
					t.Errorf("%s received %s's message %d of %s in %s", m.name, d.From, d.Seq, d.Group, g)
				}
				if d.From == "marker" {
					continue
				}
				k := fmt.Sprintf("%s/%d", d.From, d.Seq)
				seen[k]++
				if seen[k] == 2 {
					duplicated++
					t.Errorf("%s received %s twice in %s", m.name, k, g)
				}
				if g != campaignRec {
					continue
				}
				if d.Seq <= last[d.From] && seen[k] == 1 {
					disordered++
					t.Errorf("%s received %s after %s/%d in %s", m.name, k, d.From, last[d.From], g)
				}
				last[d.From] = max(last[d.From], d.Seq)
				if d.epoch == lastEpoch && d.offset <= lastOffset {
					disordered++
					t.Errorf("%s received offset %d after %d in %s", m.name, d.offset, lastOffset, g)
				} else if lastEpoch != "" && d.epoch != lastEpoch {
					t.Errorf("%s: the epoch of %s changed from %s to %s", m.name, g, lastEpoch, d.epoch)
				}
				lastOffset, lastEpoch = d.offset, d.epoch
			}
			if g != campaignRec {
				continue
			}
			if !m.subscribed(g) {
				t.Logf("%s no longer holds %s; not checked for losses (errors: %v)", m.name, g, m.errors)
				continue
			}
			for _, p := range pubs {
				if p.group != g {
					continue
				}
				var missing []int
				for _, seq := range p.ackedSeqs() {
					checked++
					if seen[fmt.Sprintf("%s/%d", p.name, seq)] == 0 {
						missing = append(missing, seq)
					}
				}
				if len(missing) > 0 {
					lost += len(missing)
					lossy[m.inst] = true
					t.Errorf("%s lost %d messages of %s answered 2xx: %v; %s", m.name, len(missing), p.name, head(missing, 20), around(got, p.name, missing[0]))
				}
			}
		}
		m.mu.Lock()
		if len(m.errors) > 0 {
			t.Logf("%s: %d client errors, the last: %s", m.name, len(m.errors), m.errors[len(m.errors)-1])
		}
		if lossy[m.inst] {
			t.Logf("%s: client events: %s", m.name, strings.Join(m.events, "; "))
		}
		m.mu.Unlock()
		if n := m.gaps.Load(); n > 0 {
			t.Logf("%s was told of %d gaps", m.name, n)
		}
	}
	return fmt.Sprintf("%d publish attempts (%d retried); %d recoverable deliveries checked, %d lost, %d duplicated, %d out of order, %d misrouted",
		sent, retries, checked, lost, duplicated, disordered, misrouted), lossy
}

// around describes the deliveries on either side of the first message of from
// that is missing, seq: when they came and their offsets.
func around(got []campaignDelivery, from string, seq int) string {
	var before, after *campaignDelivery
	for i := range got {
		d := &got[i]
		if d.From != from {
			continue
		}
		if d.Seq < seq {
			before = d
		} else if after == nil {
			after = d
		}
	}
	describe := func(d *campaignDelivery) string {
		if d == nil {
			return "none"
		}
		return fmt.Sprintf("%d at offset %d, %s", d.Seq, d.offset, d.at.Format("15:04:05.000"))
	}
	return fmt.Sprintf("before the hole: %s; after it: %s", describe(before), describe(after))
}

func head[T any](s []T, n int) []T {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// instanceLoad is what an instance's /metrics says about its own weight.
type instanceLoad struct {
	goroutines float64
	heap       float64 // bytes in use
	slowCloses float64 // sockets closed as slow consumers since the process started
}

// readMetrics reads every instance's goroutines and heap.
func (cl *campaignCluster) readMetrics(ctx context.Context, t *testing.T) []instanceLoad {
	t.Helper()
	loads := make([]instanceLoad, len(cl.instances))
	for i, inst := range cl.instances {
		l, err := cl.load(ctx, inst)
		if err != nil {
			t.Fatalf("%s: %v", inst.name, err)
		}
		loads[i] = l
	}
	return loads
}

func (cl *campaignCluster) load(ctx context.Context, inst *campaignInstance) (instanceLoad, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, inst.url()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+cl.apiKey)
	resp, err := cl.http.Do(req)
	if err != nil {
		return instanceLoad{}, err
	}
	defer resp.Body.Close()
	var l instanceLoad
	found := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch name {
		case "go_goroutines":
			l.goroutines, found = v, found+1
		case "go_memstats_heap_inuse_bytes":
			l.heap, found = v, found+1
		case "groupcast_slow_consumer_closes_total":
			l.slowCloses = v
		}
	}
	if found != 2 {
		return l, errors.New("/metrics has no go_goroutines or go_memstats_heap_inuse_bytes")
	}
	return l, nil
}

// checkMetrics waits up to 15 s for every instance's goroutines and heap to come back
// near their level before the campaign (same sockets, same groups), and fails the
// test with the figures otherwise. A restarted instance is compared with its
// predecessor.
func (cl *campaignCluster) checkMetrics(ctx context.Context, t *testing.T, baseline []instanceLoad) {
	t.Helper()
	near := func(b, now instanceLoad) bool {
		return now.goroutines <= b.goroutines*1.25+20 && now.heap <= max(2*b.heap, b.heap+32<<20)
	}
	var now []instanceLoad
	deadline := time.Now().Add(15 * time.Second)
	for {
		now = cl.readMetrics(ctx, t)
		all := true
		for i := range now {
			all = all && near(baseline[i], now[i])
		}
		if all || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	for i, inst := range cl.instances {
		line := fmt.Sprintf("%s: goroutines %.0f -> %.0f, heap in use %.1f -> %.1f MB, %.0f slow-consumer closes since its last start", inst.name,
			baseline[i].goroutines, now[i].goroutines, baseline[i].heap/(1<<20), now[i].heap/(1<<20), now[i].slowCloses)
		if near(baseline[i], now[i]) {
			t.Log(line)
		} else {
			t.Error(line + ": not back near its level")
		}
	}
}
