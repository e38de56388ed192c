package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/groupcast/groupcast/protocol"
)

// client is one receiving WebSocket connection. Its fields other than the
// atomics belong to its goroutine, but for visits, which the churn
// goroutine owns.
type client struct {
	r       *fanoutRun
	id      int
	room    int // home room: joined in the ramp, left never
	inst    int // index of the instance (-url) it dials
	ws      *rawWS
	sse     *sseConn // instead of ws with -transport sse
	seen    []uint64 // bitset of received seqs (when r.bitset)
	lastSeq int64    // highest seq received (without bitset)
	buf     []byte
	view    protocol.View // decodes groupcast frames, reused
	release func()        // called once: joined or failed
	dialed  int64         // unix ns when the dial started

	visits []*visit              // churn-owned: every visit, in order
	cur    atomic.Pointer[visit] // the visit under way; nil: none

	isJoined  atomic.Bool // the home join was acknowledged
	unique    atomic.Int64
	away      atomic.Int64 // unique deliveries for rooms other than home
	dups      atomic.Int64
	bad       atomic.Int64
	errFrames atomic.Int64
	lastRecv  atomic.Int64 // unix nanos of the latest delivery
}

// visit is one visit of a connection to a room other than its own: a join,
// a stay, a leave. Times are unix ns, 0 until they happen.
type visit struct {
	room int
	id   int // groupcast: the join's id; the leave's is id+1. nats-ws: the sid.

	joinSent, joinAck, leaveSent, leaveAck atomic.Int64
}

// run dials, joins and then reads until the run ends. It gives back its
// semaphore slot once it has joined or failed.
func (c *client) run(sem chan struct{}) {
	r := c.r
	defer r.wg.Done()
	var once sync.Once
	c.release = func() { once.Do(func() { <-sem }) }
	defer c.release()

	if err := c.connect(); err != nil {
		c.fail(err)
		return
	}
	defer c.closeNow()
	stop := context.AfterFunc(r.ctx, c.closeNow)
	defer stop()
	timer := time.AfterFunc(joinTimeout, func() {
		if !c.isJoined.Load() {
			r.noteErr(fmt.Errorf("conn %d: no join answer within %s", c.id, joinTimeout))
			c.closeNow()
		}
	})
	defer timer.Stop()

	err := c.readLoop()
	if r.ctx.Err() != nil {
		return // run over: the close is ours
	}
	if !c.isJoined.Load() {
		c.fail(err)
		return
	}
	r.disconnects.Add(1)
	r.noteErr(fmt.Errorf("conn %d lost: %w", c.id, err))
}

func (c *client) fail(err error) {
	c.r.failed.Add(1)
	c.r.noteErr(fmt.Errorf("conn %d: %w", c.id, err))
	c.r.cancel(fmt.Errorf("conn %d failed", c.id))
}

// joined marks the home join as acknowledged.
func (c *client) joined() {
	if c.isJoined.Swap(true) {
		return
	}
	now := time.Now().UnixNano()
	c.r.connHist.record(now - c.dialed)
	c.r.cfg.Joins.record(now, now-c.dialed)
	c.r.joined.Add(1)
	c.release()
}

// closeNow drops the connection.
func (c *client) closeNow() {
	if c.sse != nil {
		c.sse.close()
		return
	}
	c.ws.closeNow()
}

// connect dials and sends the join request.
func (c *client) connect() error {
	r := c.r
	c.dialed = time.Now().UnixNano()
	if r.cfg.Transport == transportSSE {
		return c.connectSSE()
	}
	ctx, cancel := context.WithTimeout(r.ctx, joinTimeout)
	defer cancel()
	ws, err := dialRaw(ctx, r.dialers[c.id%len(r.dialers)], r.cfg.URLs[c.inst])
	if err != nil {
		return err
	}
	c.ws = ws
	var msg []byte
	op := byte(opText)
	group := r.groups[c.room]
	if r.cfg.Target == targetNATSWS {
		msg = fmt.Appendf(nil, "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":false}\r\nSUB %s 1\r\nPING\r\n", group)
		op = opBinary
		c.buf = make([]byte, 0, 4096+2*r.cfg.Size)
	} else {
		msg = appendGroupcastOp(nil, "join", group, 1)
	}
	if err := ws.write(op, msg); err != nil {
		ws.closeNow()
		return err
	}
	return nil
}

// appendGroupcastOp appends a join or leave frame.
func appendGroupcastOp(dst []byte, typ, group string, id int) []byte {
	dst = append(dst, `{"type":"`...)
	dst = append(dst, typ...)
	dst = append(dst, `","group":`...)
	b, _ := json.Marshal(group)
	dst = append(dst, b...)
	dst = append(dst, `,"id":`...)
	dst = strconv.AppendInt(dst, int64(id), 10)
	return append(dst, '}')
}

// readLoop reads frames until the connection closes. Reads use a context
// without Done, which coder/websocket serves without per-read timers; the
// connection is closed from outside (run's end, join timeout) instead.
func (c *client) readLoop() error {
	if c.sse != nil {
		return c.readSSE()
	}
	nats := c.r.cfg.Target == targetNATSWS
	for {
		_, p, err := c.ws.next()
		if err != nil {
			return err
		}
		if nats {
			err = c.readNATS(p)
		} else {
			err = c.readGroupcast(p)
		}
		if err != nil {
			return err
		}
	}
}

// readNATS feeds one frame into the NATS stream parser; a partial operation
// stays in c.buf for the next frame.
func (c *client) readNATS(p []byte) error {
	if len(c.buf)+len(p) > maxFrameBytes {
		return fmt.Errorf("%w: operation over %d bytes", errNATSProto, maxFrameBytes)
	}
	c.buf = append(c.buf, p...)
	used, err := parseNATS(c.buf, c)
	if err != nil {
		return err
	}
	c.buf = c.buf[:copy(c.buf, c.buf[used:])]
	return nil
}

// A client is the natsHandler of its own stream (a pointer, so passing it
// as an interface does not allocate).

func (c *client) natsMsg(p []byte) { c.deliver(p) }

func (c *client) natsPing() {
	if err := c.ws.write(opBinary, []byte("PONG\r\n")); err != nil {
		c.r.noteErr(fmt.Errorf("conn %d: PONG: %w", c.id, err))
	}
}

// natsPong answers a PING the client sent after SUB or UNSUB: the server
// has processed it. The first is the home join's; the others answer the
// visit under way, which has one operation in flight at a time.
func (c *client) natsPong() {
	if !c.isJoined.Load() {
		c.joined()
		return
	}
	c.visitAck(-1)
}

// visitAck records the answer to the visit's operation in flight. id is
// the groupcast ack's id, or -1 for a NATS PONG.
func (c *client) visitAck(id int) {
	v := c.cur.Load()
	if v == nil {
		return
	}
	now := time.Now().UnixNano()
	switch {
	case v.joinAck.Load() == 0 && (id < 0 || id == v.id):
		v.joinAck.Store(now)
	case v.leaveSent.Load() != 0 && (id < 0 || id == v.id+1):
		v.leaveAck.Store(now)
		c.cur.Store(nil)
	}
}

func (c *client) natsErr(line []byte) {
	c.errFrames.Add(1)
	c.r.noteErr(fmt.Errorf("conn %d: %s", c.id, line))
	if !c.isJoined.Load() {
		c.ws.closeNow()
	}
}

// readGroupcast handles one frame (one or more JSON objects, one per line).
func (c *client) readGroupcast(p []byte) error {
	for obj := range protocol.Objects(p) {
		if err := c.groupcastObject(obj); err != nil {
			return err
		}
	}
	return nil
}

// groupcastObject handles one server object, without allocating for a
// delivery or an ack. An object that does not decode counts as malformed.
func (c *client) groupcastObject(obj []byte) error {
	if seq, t, ok := deliveryPayload(obj); ok {
		c.count(seq, t, true)
		return nil
	}
	v := &c.view
	if v.Decode(obj) != nil {
		c.bad.Add(1)
		return nil
	}
	switch string(v.Type) {
	case protocol.TypeMessage:
		c.deliver(v.Data)
	case protocol.TypeAck:
		id, ok := parseDigits(v.ID)
		if !ok {
			break
		}
		if id == 1 {
			c.joined()
		} else {
			c.visitAck(int(id))
		}
	case protocol.TypeError:
		c.errFrames.Add(1)
		c.r.noteErr(fmt.Errorf("conn %d: error frame %s", c.id, truncate(obj, 200)))
		if !c.isJoined.Load() {
			return fmt.Errorf("join refused: %s", truncate(obj, 200))
		}
	}
	return nil
}

// deliver accounts for one received payload.
func (c *client) deliver(p []byte) {
	seq, t, ok := parsePayload(p)
	c.count(seq, t, ok)
}

// count accounts for one delivery, the payload's seq and t as parsed
// (ok false: it did not parse). Publish seq went to room seq mod rooms: a
// delivery for another room than home is a visitor's.
func (c *client) count(seq, t int64, ok bool) {
	now := time.Now().UnixNano()
	r := c.r
	if !ok || seq >= r.seqLimit {
		c.bad.Add(1)
		return
	}
	c.lastRecv.Store(now)
	if c.seen != nil {
		w, bit := seq>>6, uint64(1)<<(seq&63)
		if c.seen[w]&bit != 0 {
			c.dups.Add(1)
			return
		}
		c.seen[w] |= bit
	} else {
		if seq <= c.lastSeq {
			c.dups.Add(1) // or reordered
			return
		}
		c.lastSeq = seq
	}
	if len(r.groups) > 1 && r.roomOf(seq) != c.room {
		c.away.Add(1)
	} else {
		c.unique.Add(1)
		if r.witness != nil {
			w := &r.witness[c.inst][seq]
			for {
				old := w.Load()
				if (old != 0 && old <= now) || w.CompareAndSwap(old, now) {
					break
				}
			}
		}
	}
	r.hist.record(now - t)
	if c.ws != nil && c.ws.at != 0 {
		r.sockHist.record(c.ws.at - t)
	}
	r.cfg.Deliveries.record(now, now-t)
}
