package natstest

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Cluster is a JetStream cluster of nats-servers on loopback whose route
// links each pass through a proxy of their own, so that a test can cut a
// server off the others while its clients stay connected.
type Cluster struct {
	Servers []*server.Server
	links   [][]*Proxy // links[i][j]: server i's route to server j
}

// StartCluster starts n servers with JetStream in one cluster and waits
// for JetStream's meta leader. They stop when the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
	}
	c := &Cluster{links: make([][]*Proxy, n)}
	for i := range n {
		c.links[i] = make([]*Proxy, n)
		var routes []*url.URL
		for j := range n {
			if j == i {
				continue
			}
			p := StartProxy(t, fmt.Sprintf("127.0.0.1:%d", ports[j]))
			c.links[i][j] = p
			routes = append(routes, &url.URL{Scheme: "nats", Host: p.Addr()})
		}
		c.Servers = append(c.Servers, StartWith(t, server.Options{
			ServerName: fmt.Sprintf("n%d", i), JetStream: true, StoreDir: t.TempDir(), Routes: routes,
			// Every route is configured, through its proxy: none is
			// learnt from the others, which would bypass the proxies.
			Cluster: server.ClusterOpts{Name: "c", Host: "127.0.0.1", Port: ports[i], Advertise: "127.0.0.1:1"},
		}))
	}
	WaitFor(t, 20*time.Second, func() bool { return c.MetaLeader() >= 0 })
	return c
}

// MetaLeader returns the index of the server that is JetStream's meta
// leader, or -1.
func (c *Cluster) MetaLeader() int {
	for i, s := range c.Servers {
		if s.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// Isolate cuts server i's route links and refuses new ones until Rejoin.
func (c *Cluster) Isolate(i int) {
	for j := range c.Servers {
		if j != i {
			c.links[i][j].Cut()
			c.links[j][i].Cut()
		}
	}
}

// Rejoin lets server i's route links be made again.
func (c *Cluster) Rejoin(i int) {
	for j := range c.Servers {
		if j != i {
			c.links[i][j].Restore()
			c.links[j][i].Restore()
		}
	}
}

// Proxy forwards TCP connections to targets: the first connection to the
// first target, the second to the second, and so on, the rest to the last.
// It stops when the test ends.
type Proxy struct {
	ln      net.Listener
	targets []string
	mu      sync.Mutex
	n       int // connections accepted
	cut     bool
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

// StartProxy starts a proxy to targets on a loopback port.
func StartProxy(t testing.TB, targets ...string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, targets: targets, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes the connections through the proxy and refuses new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for conn := range p.conns {
		conn.Close()
	}
}

// Restore accepts connections again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target := p.targets[min(p.n, len(p.targets)-1)]
		p.n++
		cut := p.cut
		p.mu.Unlock()
		if cut {
			in.Close()
			continue
		}
		out, err := net.DialTimeout("tcp", target, time.Second)
		if err != nil {
			in.Close()
			continue
		}
		if !p.track(in, out) {
			continue
		}
		p.wg.Add(2)
		go p.pump(in, out)
		go p.pump(out, in)
	}
}

// track records a connection's two ends, unless the proxy was cut
// meanwhile: then it closes them and reports false.
func (p *Proxy) track(in, out net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		in.Close()
		out.Close()
		return false
	}
	p.conns[in], p.conns[out] = struct{}{}, struct{}{}
	return true
}

func (p *Proxy) pump(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}
