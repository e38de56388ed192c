package web

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
)

// bucket is a token bucket: rate tokens a second, up to burst.
type bucket struct {
	tokens float64
	filled time.Time
}

// take refills b and takes one token if there is one.
func (b *bucket) take(now time.Time, rate, burst float64) bool {
	b.tokens = min(burst, b.tokens+now.Sub(b.filled).Seconds()*rate)
	b.filled = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// ipLimiter bounds new connections per client IP. It tracks at most max
// addresses; the watchdog forgets those whose bucket has refilled.
type ipLimiter struct {
	rate, burst float64
	max         int

	mu      sync.Mutex
	buckets map[string]*bucket
}

// maxTrackedIPs bounds the addresses the handshake limiter remembers.
const maxTrackedIPs = 100_000

func newIPLimiter(rate float64, max int) *ipLimiter {
	return &ipLimiter{rate: rate, burst: 2 * rate, max: max, buckets: make(map[string]*bucket)}
}

// allow reports whether ip may open a connection now. When the table is
// full of addresses that are all still limited, new addresses are let in
// rather than refused: the limit protects against one noisy address, not
// against many.
func (l *ipLimiter) allow(ip string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[ip]
	if b == nil {
		if len(l.buckets) >= l.max {
			return true
		}
		b = &bucket{tokens: l.burst, filled: now}
		l.buckets[ip] = b
	}
	return b.take(now, l.rate, l.burst)
}

// sweep forgets addresses whose bucket would be full again by now.
func (l *ipLimiter) sweep(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for ip, b := range l.buckets {
		if b.tokens+now.Sub(b.filled).Seconds()*l.rate >= l.burst {
			delete(l.buckets, ip)
		}
	}
}

// ipConns counts each client IP's open WebSockets (and upgrades under
// way), so that one address cannot take all of MaxConnections. It holds
// only addresses with connections, so it is bounded by them.
type ipConns struct {
	max int

	mu     sync.Mutex
	counts map[string]int
}

func newIPConns(max int) *ipConns { return &ipConns{max: max, counts: make(map[string]int)} }

// acquire takes one of ip's connections, false when it has max already.
func (l *ipConns) acquire(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.counts[ip] >= l.max {
		return false
	}
	l.counts[ip]++
	return true
}

// release gives back a connection that acquire took.
func (l *ipConns) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.counts[ip]--; l.counts[ip] <= 0 {
		delete(l.counts, ip)
	}
}

// readDeadline bounds the reading of a plain HTTP request to ReadTimeout,
// so that a client that declares a body and never sends it holds no
// connection for long. The WebSocket endpoint is left alone: its
// connection lives on after the upgrade (which clears deadlines anyway).
func (s *Server) readDeadline(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if c.Path() != "/ws" {
			// Fails only for writers that cannot set deadlines (tests' recorders).
			_ = http.NewResponseController(c.Response()).SetReadDeadline(time.Now().Add(s.cfg.ReadTimeout))
		}
		return next(c)
	}
}

// clientIP is the address of the client behind trusted proxies: the entry
// that many places from the end of X-Forwarded-For, or the TCP peer when
// there are no trusted proxies or the header is too short.
func clientIP(r *http.Request, trustedProxies int) string {
	if trustedProxies > 0 {
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			parts := strings.Split(strings.Join(xff, ","), ",")
			if i := len(parts) - trustedProxies; i >= 0 {
				if ip, err := netip.ParseAddr(strings.TrimSpace(parts[i])); err == nil {
					return ip.Unmap().String()
				}
			}
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
