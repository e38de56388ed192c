package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/groupcast/groupcast/infra"
	"github.com/nats-io/nats-server/v2/server"
)

// joined reports nil once every server has routes to the other servers of its region
// and an outbound gateway to every other region, from their monitoring endpoints.
func (b *bench) joined(ctx context.Context) error {
	for k, urls := range b.monitors {
		for _, u := range urls {
			var rz server.Routez
			var gz server.Gatewayz
			if err := infra.FetchJSON(ctx, u+"/routez", &rz); err != nil {
				return err
			}
			if err := infra.FetchJSON(ctx, u+"/gatewayz", &gz); err != nil {
				return err
			}
			peers := map[string]bool{}
			for _, r := range rz.Routes {
				peers[r.RemoteName] = true
			}
			if len(peers) < b.cfg.servers-1 {
				return fmt.Errorf("%s: routes to %d servers", u, len(peers))
			}
			for j, s := range b.sites {
				if j != k && gz.OutboundGateways[s.Region] == nil {
					return fmt.Errorf("%s: no gateway to %s", u, s.Region)
				}
			}
		}
	}
	return nil
}

// calibrate times TCP handshakes from each region to a gateway listener of each
// other: what the delay line really gives, against what it was asked for.
func (b *bench) calibrate() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Println("emulated distances (TCP handshake, 10 times, from inside the namespaces):")
	fmt.Println("| regions | round trip set | measured min / median / max |")
	fmt.Println("| --- | --- | --- |")
	for i, s := range b.sites {
		for j, o := range b.sites {
			if j <= i {
				continue
			}
			out, err := exec.Command("ip", "netns", "exec", s.Netns, self, "-role", "rtt", o.Servers[0].String()+":7222", "10").Output()
			if err != nil {
				return fmt.Errorf("rtt %s: %w", b.pairName(i, j), err)
			}
			var r rttResult
			if err := json.Unmarshal(out, &r); err != nil {
				return err
			}
			us := func(v int64) string { return strconv.FormatFloat(float64(v)/1000, 'f', 1, 64) }
			fmt.Printf("| %s <-> %s | %s ms | %s / %s / %s ms |\n", s.Region, o.Region, ms(2*b.oneWay[[2]int{i, j}]), us(r.Min), us(r.Median), us(r.Max))
		}
	}
	fmt.Println()
	return nil
}

// wsClient is a WebSocket member of groupcast, from the host namespace.
type wsClient struct {
	conn   *websocket.Conn
	site   int
	onData func(group, region string, d data, at time.Time)

	mu   sync.Mutex
	acks map[string]chan time.Time
}

// data is what the benchmark publishes: origin site, sequence number, publish time.
type data struct {
	R int   `json:"r"`
	S int   `json:"s"`
	T int64 `json:"t"`
}

func dialWS(ctx context.Context, app *infra.App, site int, onData func(group, region string, d data, at time.Time)) (*wsClient, error) {
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(app.URL, "http")+"/ws", nil)
	if err != nil {
		return nil, err
	}
	conn.SetReadLimit(-1)
	c := &wsClient{conn: conn, site: site, onData: onData, acks: map[string]chan time.Time{}}
	go c.read()
	return c, nil
}

func (c *wsClient) read() {
	for {
		_, msg, err := c.conn.Read(context.Background())
		if err != nil {
			return
		}
		at := time.Now()
		for _, line := range bytes.Split(msg, []byte("\n")) {
			var f struct {
				Type   string `json:"type"`
				ID     string `json:"id"`
				Group  string `json:"group"`
				Region string `json:"region"`
				Data   data   `json:"data"`
			}
			if json.Unmarshal(line, &f) != nil {
				continue
			}
			switch f.Type {
			case "message":
				c.onData(f.Group, f.Region, f.Data, at)
			case "ack", "error":
				c.mu.Lock()
				if ch := c.acks[f.ID]; ch != nil {
					ch <- at
					delete(c.acks, f.ID)
				}
				c.mu.Unlock()
			}
		}
	}
}

var requestIDs atomic.Uint64

// request sends a join or leave and returns when its answer arrived.
func (c *wsClient) request(ctx context.Context, typ, group string) (time.Time, error) {
	id := strconv.FormatUint(requestIDs.Add(1), 10)
	ch := make(chan time.Time, 1)
	c.mu.Lock()
	c.acks[id] = ch
	c.mu.Unlock()
	b, _ := json.Marshal(map[string]string{"type": typ, "group": group, "id": id})
	if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
		return time.Time{}, err
	}
	select {
	case at := <-ch:
		return at, nil
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	}
}

// httpClient publishes through the server API; one pool for everything.
var httpClient = &http.Client{
	Timeout:   5 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute},
}

// post publishes d to group through app.
func (b *bench) post(ctx context.Context, app *infra.App, group string, d data) error {
	body, _ := json.Marshal(d)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, app.URL+"/api/groups/"+group+"/messages", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+b.apiKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST: %s", resp.Status)
	}
	return nil
}

// measureJoins measures, for every ordered pair of regions, how long after a join's
// ack in one region a publish from the other can still miss the new member: a
// publisher posts to a fresh group every millisecond, a member in the other region
// joins it, and the window is the latest publish after the ack that did not arrive.
func (b *bench) measureJoins(ctx context.Context) error {
	type trialState struct {
		mu  sync.Mutex
		got map[int]bool
	}
	var cur atomic.Pointer[trialState]
	var group atomic.Value
	group.Store("")
	joiners := make([]*wsClient, len(b.sites))
	for k := range b.sites {
		c, err := dialWS(ctx, b.apps[k][0], k, func(g, _ string, d data, _ time.Time) {
			if st := cur.Load(); st != nil && g == group.Load() {
				st.mu.Lock()
				st.got[d.S] = true
				st.mu.Unlock()
			}
		})
		if err != nil {
			return err
		}
		defer c.conn.CloseNow()
		joiners[k] = c
	}
	fmt.Printf("join propagation: a member joins in one region while another region publishes every ms (%d joins per pair):\n", b.cfg.joins)
	fmt.Println("| publisher -> joiner | one-way delay | joins that missed a publish after the ack | last miss after the ack: median / max |")
	fmt.Println("| --- | --- | --- | --- |")
	for a := range b.sites {
		for j := range b.sites {
			if a == j {
				continue
			}
			var windows []time.Duration
			missedJoins := 0
			for k := range b.cfg.joins {
				g := fmt.Sprintf("join-%d-%d-%d", a, j, k)
				st := &trialState{got: map[int]bool{}}
				cur.Store(st)
				group.Store(g)
				var sentMu sync.Mutex
				var sent []time.Time
				stop := make(chan struct{})
				done := make(chan struct{})
				go func() {
					defer close(done)
					for seq := 1; ; seq++ {
						select {
						case <-stop:
							return
						default:
						}
						at := time.Now()
						if err := b.post(ctx, b.apps[a][0], g, data{R: a, S: seq, T: at.UnixNano()}); err != nil {
							return
						}
						sentMu.Lock()
						sent = append(sent, at)
						sentMu.Unlock()
						time.Sleep(time.Until(at.Add(time.Millisecond)))
					}
				}()
				time.Sleep(20 * time.Millisecond)
				jctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				ack, err := joiners[j].request(jctx, "join", g)
				cancel()
				if err != nil {
					close(stop)
					<-done
					return err
				}
				// Run until the member has had 50 messages or 3 s went by.
				deadline := time.Now().Add(3 * time.Second)
				for time.Now().Before(deadline) {
					st.mu.Lock()
					n := len(st.got)
					st.mu.Unlock()
					if n >= 50 {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				close(stop)
				<-done
				st.mu.Lock()
				last := 0
				for s := range st.got {
					last = max(last, s)
				}
				var window time.Duration
				missed := false
				for seq := 1; seq < last; seq++ {
					if at := sent[seq-1]; at.After(ack) && !st.got[seq] {
						missed = true
						window = max(window, at.Sub(ack))
					}
				}
				st.mu.Unlock()
				if missed {
					missedJoins++
				}
				windows = append(windows, window)
				lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err = joiners[j].request(lctx, "leave", g)
				cancel()
				if err != nil {
					return err
				}
			}
			s := sortedDurations(windows)
			fmt.Printf("| %s | %s ms | %d of %d | %s / %s ms |\n", b.pairName(a, j), ms(b.oneWay[[2]int{a, j}]), missedJoins, b.cfg.joins, ms(quantile(s, 0.5)), ms(s[len(s)-1]))
		}
	}
	fmt.Println()
	return nil
}

// fanoutResult is one run of measureFanout.
type fanoutResult struct {
	rate          float64 // asked for, per region
	published     []int64 // per site, taken by the server API during the measured time
	failed        int64
	delivered     []int64 // per site, in the measured time
	lost, dups    int64
	wrongRegion   int64           // deliveries whose region is not the publisher's
	cross         []time.Duration // every cross-region latency
	worstP99Slack time.Duration   // max over pairs of p99 - one-way
	busy          float64         // the machine's CPU use, 0-1
	wan           wanStats        // the delay line during the run
}

// measureFanout publishes rate messages per second in every region into one group
// with members on every instance, for warmup then measure, and reports latency per
// pair of regions, loss, duplicates and the gateways' counts.
func (b *bench) measureFanout(ctx context.Context, rate float64, warmup, measure time.Duration, report bool) (*fanoutResult, error) {
	group := fmt.Sprintf("bench-%d", int(rate))
	n := len(b.sites)
	res := &fanoutResult{rate: rate, published: make([]int64, n), delivered: make([]int64, n)}
	var mu sync.Mutex
	lat := map[[2]int][]time.Duration{}
	type key struct{ member, origin, seq int }
	seen := map[key]int{}
	var measureFrom, measureUntil atomic.Int64
	measureFrom.Store(int64(^uint64(0) >> 1))
	var clients []*wsClient
	memberN := 0
	memberSite := map[int]int{}
	for k := range b.sites {
		for _, app := range b.apps[k] {
			for range b.cfg.members {
				id := memberN
				memberN++
				memberSite[id] = k
				c, err := dialWS(ctx, app, k, func(g, region string, d data, at time.Time) {
					if g != group || d.T < measureFrom.Load() || d.T > measureUntil.Load() {
						return
					}
					mu.Lock()
					seen[key{id, d.R, d.S}]++
					if d.R != k {
						lat[[2]int{d.R, k}] = append(lat[[2]int{d.R, k}], at.Sub(time.Unix(0, d.T)))
					} else {
						lat[[2]int{k, k}] = append(lat[[2]int{k, k}], at.Sub(time.Unix(0, d.T)))
					}
					if region != b.sites[d.R].Region {
						res.wrongRegion++
					}
					mu.Unlock()
				})
				if err != nil {
					return nil, err
				}
				defer c.conn.CloseNow()
				jctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err = c.request(jctx, "join", group)
				cancel()
				if err != nil {
					return nil, err
				}
				clients = append(clients, c)
			}
		}
	}
	// Interest crosses the emulated distance in a one-way delay (measureJoins).
	time.Sleep(2*maxDuration(b.oneWay) + 50*time.Millisecond)

	before, err := b.gatewayCounts(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := b.wanReport(); err != nil {
		return nil, err
	}
	measureUntil.Store(int64(^uint64(0) >> 1))
	start := time.Now()
	measureFrom.Store(start.Add(warmup).UnixNano())
	cpu0 := readCPU()
	// Publishers: per region a pacer and a pool of HTTP workers, spread over the
	// region's instances.
	var sentMu sync.Mutex
	sentOK := map[sentKey]int64{}
	var wg sync.WaitGroup
	end := start.Add(warmup + measure)
	for k := range b.sites {
		jobs := make(chan int, 1<<16)
		for w := range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for seq := range jobs {
					app := b.apps[k][(seq+w)%len(b.apps[k])]
					t := time.Now()
					if err := b.post(ctx, app, group, data{R: k, S: seq, T: t.UnixNano()}); err != nil {
						atomic.AddInt64(&res.failed, 1)
						continue
					}
					sentMu.Lock()
					sentOK[sentKey{k, seq}] = t.UnixNano()
					sentMu.Unlock()
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(jobs)
			period := time.Duration(float64(time.Second) / rate)
			next := start
			for seq := 1; ; seq++ {
				next = next.Add(period)
				if next.After(end) || ctx.Err() != nil {
					return
				}
				time.Sleep(time.Until(next))
				jobs <- seq
			}
		}()
	}
	wg.Wait()
	measureUntil.Store(end.UnixNano())
	busy := readCPU().busySince(cpu0)
	if res.wan, err = b.wanReport(); err != nil {
		return nil, err
	}
	time.Sleep(time.Second + 2*maxDuration(b.oneWay)) // the last messages arrive
	after, err := b.gatewayCounts(ctx)
	if err != nil {
		return nil, err
	}

	mu.Lock()
	defer mu.Unlock()
	from, until := measureFrom.Load(), end.UnixNano()
	for sk, t := range sentOK {
		if t < from || t > until {
			continue
		}
		res.published[sk.site]++
		for m := range memberN {
			c := seen[key{m, sk.site, sk.seq}]
			switch {
			case c == 0:
				res.lost++
			case c > 1:
				res.dups += int64(c - 1)
			}
			if c > 0 {
				res.delivered[memberSite[m]]++
			}
		}
	}
	res.busy = busy
	for o := range b.sites {
		for d := range b.sites {
			if o != d {
				res.cross = append(res.cross, lat[[2]int{o, d}]...)
				s := sortedDurations(lat[[2]int{o, d}])
				res.worstP99Slack = max(res.worstP99Slack, quantile(s, 0.99)-b.oneWay[[2]int{o, d}])
			}
		}
	}
	if !report {
		return res, nil
	}

	fmt.Printf("fan-out: %.0f messages/s published in each region through the server API, %d members per region (%d instances x %d), %v measured after %v:\n",
		rate, b.cfg.instances*b.cfg.members, b.cfg.instances, b.cfg.members, measure, warmup)
	fmt.Println("| publisher -> member | one-way delay (RTT) | deliveries | p50 | p99 | p99.9 | max | p99 - one-way |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- |")
	for o := range b.sites {
		for d := range b.sites {
			s := sortedDurations(lat[[2]int{o, d}])
			ow := b.oneWay[[2]int{o, d}]
			name := b.pairName(o, d)
			if o == d {
				name = b.sites[o].Region + " (same region)"
			}
			fmt.Printf("| %s | %s ms (%s) | %d | %s | %s | %s | %s | %s ms |\n", name, ms(ow), ms(2*ow), len(s),
				ms(quantile(s, 0.5)), ms(quantile(s, 0.99)), ms(quantile(s, 0.999)), ms(s[len(s)-1]), ms(quantile(s, 0.99)-ow))
		}
	}
	secs := measure.Seconds()
	var pub, del int64
	for k := range b.sites {
		pub += res.published[k]
		del += res.delivered[k]
	}
	fmt.Printf("\npublished %.0f/s per region (%d failed); delivered %.0f/s per region, %.0f/s in all; lost %d, duplicated %d, wrong region label %d; machine CPU %.0f%% busy\n",
		float64(pub)/secs/float64(n), res.failed, float64(del)/secs/float64(n), float64(del)/secs, res.lost, res.dups, res.wrongRegion, 100*res.busy)
	fmt.Printf("worst pair: cross-region p99 = one-way delay + %s ms (target: + 10 ms)\n", ms(res.worstP99Slack))
	fmt.Printf("delay line meanwhile: %v\n", res.wan)
	fmt.Println("gateway crossings over the whole run (warm-up included), from nats-server's /gatewayz and /accstatz:")
	own := make([]int64, n)
	var total int64
	for sk := range sentOK {
		own[sk.site]++
		total++
	}
	for d, s := range b.sites {
		var recv, sentBy int64
		for i := range b.monitors[d] {
			recv += after[d][i].Received[infra.AppAccount] - before[d][i].Received[infra.AppAccount]
			sentBy += after[d][i].Sent[infra.AppAccount] - before[d][i].Sent[infra.AppAccount]
		}
		fmt.Printf("  %s: received %d (messages published in the other regions: %d); sent %d (its own messages x %d other regions: %d)\n",
			s.Region, recv, total-own[d], sentBy, n-1, own[d]*int64(n-1))
	}
	fmt.Println()
	return res, nil
}

// sentKey names one published message.
type sentKey struct{ site, seq int }

// gatewayCounts reads every server's gateway counters, by site and server.
func (b *bench) gatewayCounts(ctx context.Context) ([][]infra.GatewayStats, error) {
	out := make([][]infra.GatewayStats, len(b.sites))
	for k, urls := range b.monitors {
		for _, u := range urls {
			st, err := infra.FetchGatewayStats(ctx, u, infra.AppAccount)
			if err != nil {
				return nil, err
			}
			out[k] = append(out[k], st)
		}
	}
	return out, nil
}

// measureThroughput doubles the rate from twice -rate until messages are lost, the
// publishers fall behind, or cross-region p99 exceeds a second, and reports each step.
func (b *bench) measureThroughput(ctx context.Context) error {
	fmt.Println("throughput: the rate doubles every 5 s (1 s warm-up) until the machine cannot keep up:")
	fmt.Println("| asked per region | published per region | delivered per region | lost | cross-region p50 / p99 | worst pair: p99 - one-way | CPU busy | delay line: packets > 1 ms late, latest |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- |")
	for rate := 2 * b.cfg.rate; ; rate *= 2 {
		r, err := b.measureFanout(ctx, rate, time.Second, 4*time.Second, false)
		if err != nil {
			return err
		}
		var pub, del int64
		for k := range b.sites {
			pub += r.published[k]
			del += r.delivered[k]
		}
		n := float64(len(b.sites))
		s := sortedDurations(r.cross)
		fmt.Printf("| %.0f/s | %.0f/s | %.0f/s | %d | %s / %s ms | %s ms | %.0f%% | %.2f%%, %s ms |\n", rate, float64(pub)/4/n, float64(del)/4/n, r.lost,
			ms(quantile(s, 0.5)), ms(quantile(s, 0.99)), ms(r.worstP99Slack), 100*r.busy,
			100*float64(r.wan.Late1ms)/float64(max(r.wan.Forwarded, 1)), ms(r.wan.LateMax))
		if r.lost > 0 || float64(pub)/4/n < 0.9*rate || quantile(s, 0.99) > time.Second {
			break
		}
	}
	fmt.Println()
	return nil
}

func maxDuration(m map[[2]int]time.Duration) time.Duration {
	var d time.Duration
	for _, v := range m {
		d = max(d, v)
	}
	return d
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// cpuTimes is the machine's CPU time from /proc/stat, in clock ticks.
type cpuTimes struct{ busy, total uint64 }

func readCPU() cpuTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var t cpuTimes
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		t.total += v
		if i != 3 && i != 4 { // idle, iowait
			t.busy += v
		}
	}
	return t
}

func (t cpuTimes) busySince(t0 cpuTimes) float64 {
	if t.total == t0.total {
		return 0
	}
	return float64(t.busy-t0.busy) / float64(t.total-t0.total)
}
