package web

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// BenchmarkFanout measures group messages fanned out to real WebSocket
// connections on loopback, from the broker's publish to every client's
// read, in windows of 1 message (each fanned out alone: what a steady
// rate looks like) or 16 (a burst, which batches): ns/delivery is the
// time per delivery, cpu-ns/delivery the whole process's CPU time per
// delivery (the clients' reads included; time spent waiting for a core on
// a busy machine is not), and frames/write how many deliveries went out
// per write.
func BenchmarkFanout(b *testing.B) {
	for _, c := range []struct{ members, window int }{{1, 1}, {100, 1}, {2000, 1}, {100, 16}, {2000, 16}} {
		members, window := c.members, c.window
		b.Run(fmt.Sprintf("members=%d/window=%d", members, window), func(b *testing.B) {
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
			m := e.srv.metrics
			writes, frames := counterValue(m.writes), counterValue(m.framesWritten)
			cpu := cpuTime()
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
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N*members), "cpu-ns/delivery")
			writes, frames = counterValue(m.writes)-writes, counterValue(m.framesWritten)-frames
			b.ReportMetric(frames/writes, "frames/write")
		})
	}
}

// counterValue reads a counter.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// cpuTime is the CPU time the process has used, in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
