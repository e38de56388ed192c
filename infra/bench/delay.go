package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// delayLine forwards IPv4 packets between the sites' TUN devices, holding each for
// the one-way delay of its pair of regions: netem's "delay" done in user space, for
// kernels without sch_netem. Every direction of every pair has its own queue and
// goroutine, so packets keep their order and a long queue does not hold up a short one.
type delayLine struct {
	sites  []*site
	oneWay map[[2]int]time.Duration // by 0-based site indices, both orders
	links  map[[2]int]chan packet

	receivers, senders sync.WaitGroup

	forwarded, dropped atomic.Uint64
	late1, late10      atomic.Uint64 // packets that left more than 1 ms, 10 ms after their time
	lateMax            atomic.Int64  // the most a packet left after its time, in ns
}

type packet struct {
	b   []byte
	due time.Time
}

// newDelayLine starts forwarding between sites; oneWay holds each pair's delay.
func newDelayLine(sites []*site, oneWay map[[2]int]time.Duration) *delayLine {
	d := &delayLine{sites: sites, oneWay: oneWay, links: map[[2]int]chan packet{}}
	for i := range sites {
		for j := range sites {
			if i != j {
				ch := make(chan packet, 1<<16)
				d.links[[2]int{i, j}] = ch
				d.senders.Add(1)
				go d.send(j, ch)
			}
		}
	}
	for i := range sites {
		d.receivers.Add(1)
		go d.receive(i)
	}
	return d
}

// receive reads the packets site i sends to other regions and queues them.
func (d *delayLine) receive(i int) {
	defer d.receivers.Done()
	buf := make([]byte, 65536)
	for {
		n, err := d.sites[i].tun.Read(buf)
		if err != nil {
			return
		}
		now := time.Now()
		if n < 20 || buf[0]>>4 != 4 {
			d.dropped.Add(1) // not IPv4
			continue
		}
		dst := netip.AddrFrom4([4]byte(buf[16:20]))
		j := d.siteOf(dst)
		if j < 0 || j == i {
			d.dropped.Add(1)
			continue
		}
		select {
		case d.links[[2]int{i, j}] <- packet{b: append([]byte(nil), buf[:n]...), due: now.Add(d.oneWay[[2]int{i, j}])}:
		default:
			d.dropped.Add(1) // a full queue: the link's buffer overflows
		}
	}
}

// send writes each queued packet into site j when it is due.
func (d *delayLine) send(j int, ch chan packet) {
	defer d.senders.Done()
	for p := range ch {
		if wait := time.Until(p.due); wait > 0 {
			time.Sleep(wait)
		}
		late := time.Since(p.due)
		if late > time.Millisecond {
			d.late1.Add(1)
			if late > 10*time.Millisecond {
				d.late10.Add(1)
			}
		}
		if int64(late) > d.lateMax.Load() {
			d.lateMax.Store(int64(late))
		}
		if _, err := d.sites[j].tun.Write(p.b); err != nil {
			d.dropped.Add(1)
			continue
		}
		d.forwarded.Add(1)
	}
}

func (d *delayLine) siteOf(a netip.Addr) int {
	for i, s := range d.sites {
		if s.Subnet.Contains(a) {
			return i
		}
	}
	return -1
}

// stop ends forwarding once the TUN devices are closed, which ends the readers.
func (d *delayLine) stop() {
	d.receivers.Wait()
	for _, ch := range d.links {
		close(ch)
	}
	d.senders.Wait()
}

// wanConfig is what the delay line's process is given (as JSON in GCBENCH_WAN).
type wanConfig struct {
	Sites  []*site
	OneWay map[string]time.Duration // by "i-j", 0-based site indices
	CC     string                   // TCP congestion control on the routes between regions
}

// wanStats is what the delay line's process reports: since it started, or since the
// last report.
type wanStats struct {
	Forwarded, Dropped uint64
	Late1ms, Late10ms  uint64 // packets forwarded more than 1 ms, 10 ms after their time
	LateMax            time.Duration
}

// take returns the statistics and starts counting afresh.
func (d *delayLine) take() wanStats {
	return wanStats{
		Forwarded: d.forwarded.Swap(0),
		Dropped:   d.dropped.Swap(0),
		Late1ms:   d.late1.Swap(0),
		Late10ms:  d.late10.Swap(0),
		LateMax:   time.Duration(d.lateMax.Swap(0)),
	}
}

// String describes the statistics in a sentence.
func (st wanStats) String() string {
	pct := func(n uint64) float64 { return 100 * float64(n) / float64(max(st.Forwarded, 1)) }
	return fmt.Sprintf("%d packets forwarded, %d dropped (not IPv4, or unroutable); %.2f%% left more than 1 ms late, %.2f%% more than 10 ms; the latest %v",
		st.Forwarded, st.Dropped, pct(st.Late1ms), pct(st.Late10ms), st.LateMax.Round(10*time.Microsecond))
}

// runWANRole is the delay line's process: it attaches a TUN device to every site,
// says "ready", and forwards until SIGTERM. On SIGUSR1 and at the end it prints its
// statistics since the last report as a line of JSON. It runs apart from the load
// generator and at a high priority (nice -20), so that the delays hold while the
// machine is busy.
func runWANRole() error {
	var cfg wanConfig
	if err := json.Unmarshal([]byte(os.Getenv("GCBENCH_WAN")), &cfg); err != nil {
		return fmt.Errorf("GCBENCH_WAN: %w", err)
	}
	oneWay := map[[2]int]time.Duration{}
	for k, d := range cfg.OneWay {
		var i, j int
		if _, err := fmt.Sscanf(k, "%d-%d", &i, &j); err != nil {
			return err
		}
		oneWay[[2]int{i, j}] = d
	}
	for _, s := range cfg.Sites {
		var others []netip.Prefix
		for _, o := range cfg.Sites {
			if o != s {
				others = append(others, o.Subnet)
			}
		}
		if err := s.attachWAN(others, cfg.CC); err != nil {
			return err
		}
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	report := make(chan os.Signal, 1)
	signal.Notify(report, syscall.SIGUSR1)
	d := newDelayLine(cfg.Sites, oneWay)
	fmt.Println("ready")
	out := json.NewEncoder(os.Stdout)
	for {
		select {
		case <-report:
			if err := out.Encode(d.take()); err != nil {
				return err
			}
		case <-stop:
			for _, s := range cfg.Sites {
				_ = s.tun.Close()
			}
			d.stop()
			return out.Encode(d.take())
		}
	}
}
