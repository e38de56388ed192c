package broker

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
)

// discard is a Receiver that drops frames, to measure the broker alone.
type discard struct{ n int }

func (d *discard) Receive(Delivery) { d.n++ }

// BenchmarkFanout measures one message fanned out to the local members of
// a group: one frame encoded, then one Receive per member. The frame is
// the only allocation, whatever the number of members.
func BenchmarkFanout(b *testing.B) {
	for _, members := range []int{1, 100, 10000} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			br := newBroker(b, "")
			r := &discard{}
			for range members {
				c, err := br.NewChannel(r)
				if err != nil {
					b.Fatal(err)
				}
				join(b, br, "bench", c)
			}
			br.mu.RLock()
			sub := br.groups["bench"].sub
			br.mu.RUnlock()
			msg := &nats.Msg{Subject: br.GroupSubject("bench"), Sub: sub,
				Data: []byte(`{"seq":12345,"t":1732700000000000000,"text":"hello, world"}`)}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				br.dispatch(msg)
			}
			b.StopTimer()
			if r.n < members {
				b.Fatalf("%d deliveries", r.n)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*members), "ns/delivery")
		})
	}
}
