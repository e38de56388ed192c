package web

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// BenchmarkFanout measures group messages fanned out to real WebSocket
// connections on loopback, from the broker's publish to every client's
// read, in windows of 16 messages: ns/delivery is the whole instance's
// cost per delivery (with the clients' reads, on the same cores).
func BenchmarkFanout(b *testing.B) {
	for _, members := range []int{1, 100, 2000} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			e := newEnv(b, "", nil)
			var got atomic.Int64
			var want atomic.Int64
			want.Store(1 << 62)
			reached := make(chan struct{}, 1)
			var readers sync.WaitGroup
			var conns []*websocket.Conn
			for range members {
				c := e.dial()
				conns = append(conns, c.Conn)
				c.Join("bench")
				readers.Add(1)
				go func() {
					defer readers.Done()
					buf := make([]byte, 64<<10)
					for {
						_, r, err := c.Conn.Reader(context.Background())
						if err != nil {
							return
						}
						n := int64(1)
						for {
							k, err := r.Read(buf)
							n += int64(bytes.Count(buf[:k], []byte{'\n'}))
							if err == io.EOF {
								break
							}
							if err != nil {
								return
							}
						}
						if got.Add(n) >= want.Load() {
							select {
							case reached <- struct{}{}:
							default:
							}
						}
					}
				}()
			}
			b.Cleanup(func() {
				for _, c := range conns {
					c.CloseNow()
				}
				readers.Wait()
			})
			data := []byte(`{"seq":12345,"t":1732700000000000000,"text":"hello, world"}`)
			const window = 16
			b.ReportAllocs()
			b.ResetTimer()
			sent := 0
			for sent < b.N {
				k := min(window, b.N-sent)
				sent += k
				want.Store(int64(sent * members))
				for range k {
					if err := e.broker.GroupSend("bench", data); err != nil {
						b.Fatal(err)
					}
				}
				for got.Load() < want.Load() {
					select {
					case <-reached:
					case <-time.After(10 * time.Second):
						b.Fatalf("%d of %d deliveries", got.Load(), want.Load())
					}
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*members), "ns/delivery")
		})
	}
}
