package main

import (
	"container/heap"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"time"
)

// maxChurnCatchUp bounds the visits started in one step when the churn
// goroutine has fallen behind its schedule.
const maxChurnCatchUp = 100

// churn drives the visits of a rooms run: cfg.Churn times a second a
// connection that is not visiting joins another room than its own, stays
// cfg.ChurnStay after the join's ack, and leaves. So joins and leaves go on
// while publishing, and each is checked against the protocol's promises
// ("join means live", "leave means gone") by account.
type churn struct {
	r       *fanoutRun
	clients []*client
	quit    chan struct{}
	done    chan struct{} // closed when loop has returned

	// Owned by loop; read after done.
	skipped int // slots with no idle connection found
}

// startChurn starts the churn goroutine; stop ends it and waits.
func (r *fanoutRun) startChurn(clients []*client) *churn {
	ch := &churn{r: r, clients: clients, quit: make(chan struct{}), done: make(chan struct{})}
	if len(r.groups) < 2 {
		close(ch.done)
		return ch
	}
	go ch.loop()
	return ch
}

// stop ends the churn: no visit starts or ends after it returns (visits
// under way stay, and count as visiting until the run ends).
func (ch *churn) stop() {
	select {
	case <-ch.done:
		return
	default:
	}
	close(ch.quit)
	<-ch.done
}

// pending returns how many visits await the answer to a join or leave; 0
// for a nil churn. Call it once the churn has stopped.
func (ch *churn) pending() int {
	if ch == nil {
		return 0
	}
	n := 0
	for _, c := range ch.clients {
		if v := c.cur.Load(); v != nil && (v.joinAck.Load() == 0 || v.leaveSent.Load() != 0) {
			n++
		}
	}
	return n
}

// leaveDue is a visit's next step: at due, leave if the join was
// acknowledged, else look again (or give up after joinTimeout).
type leaveDue struct {
	due time.Time
	c   *client
	v   *visit
}

type dueHeap []leaveDue

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(leaveDue)) }
func (h *dueHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func (ch *churn) loop() {
	defer close(ch.done)
	r, cfg := ch.r, ch.r.cfg
	rng := rand.New(rand.NewPCG(uint64(cfg.Conns), uint64(len(r.groups))))
	interval := time.Duration(float64(time.Second) / cfg.Churn)
	start := time.Now()
	var due dueHeap
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for k := 0; ; {
		next := start.Add(time.Duration(k) * interval)
		if len(due) > 0 && due[0].due.Before(next) {
			next = due[0].due
		}
		if d := time.Until(next); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ch.quit:
				return
			case <-r.ctx.Done():
				return
			}
		}
		select {
		case <-ch.quit:
			return
		default:
		}
		now := time.Now()
		for len(due) > 0 && !due[0].due.After(now) {
			d := heap.Pop(&due).(leaveDue)
			if d.v.joinAck.Load() == 0 {
				if now.UnixNano()-d.v.joinSent.Load() > int64(joinTimeout) {
					r.noteErr(fmt.Errorf("conn %d: no answer to a visit's join within %s", d.c.id, joinTimeout))
					d.c.cur.Store(nil)
					continue
				}
				d.due = now.Add(20 * time.Millisecond)
				heap.Push(&due, d)
				continue
			}
			ch.leave(d.c, d.v)
		}
		for n := 0; !start.Add(time.Duration(k)*interval).After(now) && n < maxChurnCatchUp; n++ {
			k++
			c := ch.pickIdle(rng)
			if c == nil {
				ch.skipped++
				continue
			}
			room := (c.room + 1 + rng.IntN(len(r.groups)-1)) % len(r.groups)
			if v := ch.join(c, room); v != nil {
				heap.Push(&due, leaveDue{due: now.Add(cfg.ChurnStay), c: c, v: v})
			}
		}
		if n := int(time.Since(start) / interval); k < n-maxChurnCatchUp {
			ch.skipped += n - k // too far behind: skip the missed slots
			k = n
		}
	}
}

// pickIdle returns a random joined connection with no visit under way, or
// nil if a few tries find none.
func (ch *churn) pickIdle(rng *rand.Rand) *client {
	for range 16 {
		c := ch.clients[rng.IntN(len(ch.clients))]
		if c.isJoined.Load() && c.cur.Load() == nil {
			return c
		}
	}
	return nil
}

// join starts a visit of c to room; nil if the join could not be sent.
func (ch *churn) join(c *client, room int) *visit {
	r := ch.r
	v := &visit{room: room}
	var msg []byte
	op := byte(opText)
	if r.cfg.Target == targetNATSWS {
		v.id = 2 + len(c.visits)
		msg = fmt.Appendf(nil, "SUB %s %d\r\nPING\r\n", r.groups[room], v.id)
		op = opBinary
	} else {
		v.id = 2 + 2*len(c.visits)
		msg = appendGroupcastOp(nil, "join", r.groups[room], v.id)
	}
	c.visits = append(c.visits, v)
	c.cur.Store(v)
	v.joinSent.Store(time.Now().UnixNano())
	if err := ch.write(c, op, msg); err != nil {
		r.noteErr(fmt.Errorf("conn %d: visit join: %w", c.id, err))
		c.cur.Store(nil)
		return nil
	}
	return v
}

// leave ends c's visit v; the reader clears c.cur on the answer.
func (ch *churn) leave(c *client, v *visit) {
	r := ch.r
	var msg []byte
	op := byte(opText)
	if r.cfg.Target == targetNATSWS {
		msg = fmt.Appendf(nil, "UNSUB %d\r\nPING\r\n", v.id)
		op = opBinary
	} else {
		msg = appendGroupcastOp(nil, "leave", r.groups[v.room], v.id+1)
	}
	v.leaveSent.Store(time.Now().UnixNano())
	if err := ch.write(c, op, msg); err != nil {
		r.noteErr(fmt.Errorf("conn %d: visit leave: %w", c.id, err))
		c.cur.Store(nil)
	}
}

func (ch *churn) write(c *client, op byte, msg []byte) error {
	if c.sse != nil {
		return c.postSSE(ch.r.http[c.id%len(ch.r.http)], msg)
	}
	return c.ws.write(op, msg)
}

// account checks the visits once every goroutine has stopped: it adds the
// visitors' promised deliveries (published after the join's ack, and handed
// out by the instance, as a member there proves by its receipt, before the
// leave was sent) to res.Expected, those missing to res.Lost, and counts
// strays: deliveries of messages published after a leave's ack.
func (ch *churn) account(res *Result, clients []*client) {
	r := ch.r
	rooms := int64(len(r.groups))
	for _, c := range clients {
		for _, v := range c.visits {
			res.Visits++
			ja, ls, la := v.joinAck.Load(), v.leaveSent.Load(), v.leaveAck.Load()
			if ja != 0 {
				res.JoinsLeaves++
			}
			if la != 0 {
				res.JoinsLeaves++
			}
			if ja == 0 || (ls != 0 && la == 0) {
				res.VisitsFailed++
			}
			if ja == 0 {
				continue
			}
			wit := r.witness[c.inst]
			for seq := int64(v.room); seq < r.seqLimit; seq += rooms {
				pt := r.pubT[seq].Load()
				if pt == 0 || pt <= ja {
					continue
				}
				if w := wit[seq].Load(); w == 0 || (ls != 0 && w >= ls) {
					continue
				}
				res.VisitExpected++
				if c.seen[seq>>6]&(1<<(seq&63)) == 0 {
					res.VisitLost++
				}
			}
		}
		for wi, word := range c.seen {
			for word != 0 {
				seq := int64(wi*64 + bits.TrailingZeros64(word))
				word &= word - 1
				room := r.roomOf(seq)
				if room == c.room {
					continue
				}
				pt := r.pubT[seq].Load()
				legit := false
				for _, v := range c.visits {
					if la := v.leaveAck.Load(); v.room == room && (la == 0 || pt == 0 || pt < la) {
						legit = true
						break
					}
				}
				if !legit {
					res.Strays++
				}
			}
		}
	}
	res.Expected += res.VisitExpected
	res.Lost += res.VisitLost
	res.VisitExtra = max(0, res.VisitDelivered-(res.VisitExpected-res.VisitLost)-res.Strays)
	if ch.skipped > 0 {
		r.noteErr(fmt.Errorf("churn: %d visit slots found no idle connection or fell behind", ch.skipped))
	}
}
