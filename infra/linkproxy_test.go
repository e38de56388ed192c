package infra

import (
	"bufio"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// linkProxy forwards TCP connections from its own loopback port to a nats-server's
// route or gateway listener. It can delay everything it forwards, and it can cut the
// gateway links of one region: it reads the region's name from the CONNECT a
// soliciting gateway sends first, closes that region's connections and refuses new
// ones until restored. A server that advertises the proxy's address
// (ServerSpec.GatewayAdvertise, ClusterAdvertise) is reached only through it.
type linkProxy struct {
	ln     net.Listener
	target string
	delay  time.Duration

	mu    sync.Mutex
	cut   map[string]bool         // regions whose gateway links are refused
	conns map[*proxyConn]struct{} // open connections
	wg    sync.WaitGroup          // every goroutine of the proxy
	done  bool
}

// proxyConn is one forwarded connection.
type proxyConn struct {
	client, server net.Conn
	gateway        string // the soliciting region, once its CONNECT is read
}

// listenLinkProxies opens n proxies on free loopback ports, delaying each direction
// by delay. Open them before picking the servers' ports (LoopbackTopology), so that
// the two cannot collide, then Start each. They are closed when the test ends.
func listenLinkProxies(t *testing.T, n int, delay time.Duration) []*linkProxy {
	t.Helper()
	proxies := make([]*linkProxy, n)
	for i := range proxies {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		proxies[i] = &linkProxy{ln: ln, delay: delay, cut: map[string]bool{}, conns: map[*proxyConn]struct{}{}}
		t.Cleanup(proxies[i].close)
	}
	return proxies
}

// Start forwards the proxy's connections to target.
func (p *linkProxy) Start(target string) {
	p.target = target
	p.wg.Add(1)
	go p.accept()
}

// Addr is the proxy's host:port.
func (p *linkProxy) Addr() string { return p.ln.Addr().String() }

func (p *linkProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		pc := &proxyConn{client: c, server: s}
		p.mu.Lock()
		if p.done {
			p.mu.Unlock()
			_ = c.Close()
			_ = s.Close()
			return
		}
		p.conns[pc] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pump(pc, s, c, false)
		go p.pump(pc, c, s, true)
	}
}

// pump copies from src to dst. On the client's side it first reads the CONNECT line
// to learn which region is connecting. With a delay, a second goroutine writes each
// chunk once the delay since it was read has passed, so that chunks read meanwhile
// are not delayed twice.
func (p *linkProxy) pump(pc *proxyConn, src, dst net.Conn, fromClient bool) {
	defer p.wg.Done()
	defer p.drop(pc)
	type chunk struct {
		b    []byte
		read time.Time
	}
	var queue chan chunk
	if p.delay > 0 {
		queue = make(chan chunk, 4096)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.drop(pc)
			for c := range queue {
				time.Sleep(time.Until(c.read.Add(p.delay)))
				if _, err := dst.Write(c.b); err != nil {
					for range queue {
					}
					return
				}
			}
		}()
		defer close(queue)
	}
	send := func(b []byte) bool {
		if queue == nil {
			_, err := dst.Write(b)
			return err == nil
		}
		queue <- chunk{append([]byte(nil), b...), time.Now()}
		return true
	}

	r := bufio.NewReader(src)
	if fromClient {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if rest, ok := strings.CutPrefix(line, "CONNECT "); ok {
			var c struct {
				Gateway string `json:"gateway"`
			}
			_ = json.Unmarshal([]byte(rest), &c)
			p.mu.Lock()
			pc.gateway = c.Gateway
			refused := p.cut[c.Gateway]
			p.mu.Unlock()
			if refused {
				return
			}
		}
		if !send([]byte(line)) {
			return
		}
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 && !send(buf[:n]) {
			return
		}
		if err != nil {
			return
		}
	}
}

// drop closes both sides of pc.
func (p *linkProxy) drop(pc *proxyConn) {
	_ = pc.client.Close()
	_ = pc.server.Close()
	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
}

// Cut closes the gateway connections that region opened through the proxy, and
// refuses its new ones until Restore.
func (p *linkProxy) Cut(region string) {
	p.mu.Lock()
	p.cut[region] = true
	var victims []*proxyConn
	for pc := range p.conns {
		if pc.gateway == region {
			victims = append(victims, pc)
		}
	}
	p.mu.Unlock()
	for _, pc := range victims {
		_ = pc.client.Close()
		_ = pc.server.Close()
	}
}

// Restore lets region's gateway connections through again.
func (p *linkProxy) Restore(region string) {
	p.mu.Lock()
	delete(p.cut, region)
	p.mu.Unlock()
}

func (p *linkProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	p.done = true
	for pc := range p.conns {
		_ = pc.client.Close()
		_ = pc.server.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
