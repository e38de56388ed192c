package broker

import (
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/nats-io/nats.go"
)

// discard is a Receiver that drops frames, to measure the broker alone.
type discard struct{ n int }

func (d *discard) Receive(Delivery) { d.n++ }

// BenchmarkFanout measures one message fanned out to the local members of
// a group: one frame encoded, then one Receive per member (each its own
// receiver, as connections are). The frame is the only allocation,
// whatever the number of members.
func BenchmarkFanout(b *testing.B) {
	for _, members := range []int{1, 100, 10000} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			rs := make([]discard, members)
			br, msg := benchGroup(b, members, func(i int) Receiver { return &rs[i] })
			b.ReportAllocs()
			b.ResetTimer()
			d := &dispatcher{split: newSplitter(fanoutWorkers())}
			for b.Loop() {
				br.dispatch(d, []*nats.Msg{msg})
			}
			b.StopTimer()
			for i := range rs {
				if rs[i].n == 0 {
					b.Fatalf("member %d got nothing", i)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*members), "ns/delivery")
		})
	}
}

// devNull is an ImmediateReceiver that writes every frame to its own
// descriptor of /dev/null: one real write(2) per delivery, as a socket
// that takes it at once, without the network stack's work.
type devNull struct{ f *os.File }

func (d devNull) Receive(Delivery) { panic("devNull queued a delivery") }

func (d devNull) ReceiveNow(ds []Delivery) bool {
	for _, x := range ds {
		if _, err := syscall.Write(int(d.f.Fd()), x.Frame); err != nil {
			panic(err)
		}
	}
	return true
}

// BenchmarkFanoutWrite measures one message fanned out to members that
// write it at once (a write system call each), split over the Broker's
// fan-out workers: run it with -cpu 1,2,4 to see one message's fan-out
// spread over cores.
func BenchmarkFanoutWrite(b *testing.B) {
	for _, members := range []int{1, 100, 4000} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			br, msg := benchGroup(b, members, func(int) Receiver {
				f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { f.Close() })
				return devNull{f}
			})
			d := &dispatcher{split: newSplitter(fanoutWorkers())}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				br.dispatch(d, []*nats.Msg{msg})
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*members), "ns/delivery")
		})
	}
}

// benchGroup returns a broker with a group "bench" of members channels,
// each with its own receiver, and a message of the group to dispatch.
func benchGroup(b *testing.B, members int, recv func(i int) Receiver) (*Broker, *nats.Msg) {
	br := newBroker(b, "")
	for i := range members {
		c, err := br.NewChannel(recv(i))
		if err != nil {
			b.Fatal(err)
		}
		join(b, br, "bench", c)
	}
	br.mu.RLock()
	sub := br.groups["bench"].sub
	br.mu.RUnlock()
	return br, &nats.Msg{Subject: br.GroupSubject("bench"), Sub: sub,
		Data: []byte(`{"seq":12345,"t":1732700000000000000,"text":"hello, world"}`)}
}
