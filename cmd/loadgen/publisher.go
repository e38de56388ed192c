package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// publisher sends the payloads of a run.
type publisher interface {
	// workers is how many goroutines may call publish at once.
	workers() int
	// publish sends publish seq (to room seq mod rooms).
	publish(ctx context.Context, seq int64, payload []byte) error
	flush(ctx context.Context) error // wait until the server has taken every publish
	close()
}

func (r *fanoutRun) newPublisher() (publisher, error) {
	if r.cfg.Target != targetNATSWS {
		return newHTTPPublisher(r.cfg, r.groups), nil
	}
	return r.newNATSPublisher()
}

// httpPublisher POSTs to groupcast's HTTP API over up to httpPublishers
// keep-alive connections per instance: a request per message, or with
// batch > 0 a request per batch messages (POST /api/messages).
type httpPublisher struct {
	client *http.Client
	urls   [][]string // [api][room]
	n      int

	batch     int
	batchURLs []string // [api]
	groups    []string // [room]
	mu        sync.Mutex
	pending   []byte // the batch being filled, from its opening bracket
	count     int    // messages in pending
	nextAPI   int
}

// httpPublishers is how many POSTs may be in flight at once.
const httpPublishers = 8

func (p *httpPublisher) workers() int { return p.n }

func newHTTPPublisher(cfg Config, groups []string) *httpPublisher {
	urls := make([][]string, len(cfg.APIs))
	for i, api := range cfg.APIs {
		base := strings.TrimRight(api, "/")
		urls[i] = make([]string, len(groups))
		for j, g := range groups {
			urls[i][j] = base + "/api/groups/" + url.PathEscape(g) + "/messages"
		}
	}
	return &httpPublisher{
		client: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				Proxy:               nil,
				DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
				MaxIdleConnsPerHost: httpPublishers,
				MaxIdleConns:        httpPublishers * len(cfg.APIs),
				IdleConnTimeout:     time.Minute,
				DisableCompression:  true,
			},
		},
		urls:   urls,
		n:      httpPublishers,
		batch:  cfg.Batch,
		groups: groups,
		batchURLs: func() []string {
			var u []string
			for _, api := range cfg.APIs {
				u = append(u, strings.TrimRight(api, "/")+"/api/messages")
			}
			return u
		}(),
	}
}

// publishBatched adds a message to the batch being filled and, when that
// is full, sends it.
func (p *httpPublisher) publishBatched(ctx context.Context, seq int64, payload []byte) error {
	p.mu.Lock()
	if p.count == 0 {
		p.pending = append(p.pending[:0], `{"messages":[`...)
	} else {
		p.pending = append(p.pending, ',')
	}
	p.pending = append(p.pending, `{"group":"`...)
	p.pending = append(p.pending, p.groups[seq%int64(len(p.groups))]...)
	p.pending = append(p.pending, `","data":`...)
	p.pending = append(p.pending, payload...)
	p.pending = append(p.pending, '}')
	p.count++
	if p.count < p.batch {
		p.mu.Unlock()
		return nil
	}
	return p.sendLocked(ctx)
}

// sendLocked sends the pending batch; p.mu is held on entry and released.
func (p *httpPublisher) sendLocked(ctx context.Context) error {
	body, n := append(p.pending, "]}"...), p.count
	u := p.batchURLs[p.nextAPI%len(p.batchURLs)]
	p.pending, p.count, p.nextAPI = nil, 0, p.nextAPI+1
	p.mu.Unlock()
	answer, err := p.post(ctx, u, body)
	if err == nil && !bytes.HasPrefix(answer, []byte(`{"ok":true`)) {
		err = fmt.Errorf("batch refused: %s", truncate(answer, 200))
	}
	if err != nil {
		err = fmt.Errorf("batch of %d: %w", n, err)
	}
	return err
}

// post POSTs a JSON body and returns the start of the answer.
func (p *httpPublisher) post(ctx context.Context, u string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.ContentLength = int64(len(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("%s: %s", resp.Status, truncate(answer, 200))
	}
	return answer, nil
}

// publish POSTs publish seq to room seq mod rooms, through the instances in
// turn (room by room, so that every room is published through each).
func (p *httpPublisher) publish(ctx context.Context, seq int64, payload []byte) error {
	if p.batch > 0 {
		return p.publishBatched(ctx, seq, payload)
	}
	rooms := int64(len(p.urls[0]))
	_, err := p.post(ctx, p.urls[(seq/rooms)%int64(len(p.urls))][seq%rooms], payload)
	return err
}

// flush sends a batch that is not full yet.
func (p *httpPublisher) flush(ctx context.Context) error {
	p.mu.Lock()
	if p.count == 0 {
		p.mu.Unlock()
		return nil
	}
	return p.sendLocked(ctx)
}

func (p *httpPublisher) close() { p.client.CloseIdleConnections() }

// natsPublisher sends PUB operations over its own WebSocket connection (to
// the first -url).
type natsPublisher struct {
	ws    *websocket.Conn
	subjs []string // per room
	buf   []byte
	pongs chan struct{}
	done  chan struct{} // closed when the reader goroutine has exited
	stop  func() bool
}

func (r *fanoutRun) newNATSPublisher() (*natsPublisher, error) {
	ctx, cancel := context.WithTimeout(r.ctx, joinTimeout)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, r.cfg.URLs[0], &websocket.DialOptions{HTTPClient: r.http[0]})
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	ws.SetReadLimit(maxFrameBytes)
	p := &natsPublisher{
		ws: ws, subjs: r.groups,
		pongs: make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
	p.stop = context.AfterFunc(r.ctx, func() { ws.CloseNow() })
	connect := []byte("CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":false,\"echo\":false}\r\nPING\r\n")
	if err := ws.Write(ctx, websocket.MessageBinary, connect); err != nil {
		p.stop()
		ws.CloseNow()
		return nil, fmt.Errorf("publisher: %w", err)
	}
	r.wg.Add(1)
	go p.readLoop(r)
	if err := p.waitPong(ctx); err != nil {
		p.close()
		return nil, fmt.Errorf("publisher: %w", err)
	}
	return p, nil
}

// readLoop answers PINGs and reports PONGs until the connection closes.
func (p *natsPublisher) readLoop(r *fanoutRun) {
	defer r.wg.Done()
	defer close(p.done)
	h := &pubHandler{p: p, r: r}
	buf := make([]byte, 0, 4096)
	for {
		_, rd, err := p.ws.Reader(context.Background())
		if err != nil {
			return
		}
		for err == nil {
			if len(buf) == cap(buf) {
				if cap(buf) >= maxFrameBytes {
					r.noteErr(errors.New("publisher: oversized operation"))
					p.ws.CloseNow()
					return
				}
				buf = append(buf, make([]byte, cap(buf))...)[:len(buf)]
			}
			var n int
			n, err = rd.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			used, perr := parseNATS(buf, h)
			if perr != nil {
				r.noteErr(fmt.Errorf("publisher: %w", perr))
				p.ws.CloseNow()
				return
			}
			buf = buf[:copy(buf, buf[used:])]
		}
		if err != io.EOF {
			return
		}
	}
}

type pubHandler struct {
	p *natsPublisher
	r *fanoutRun
}

func (h *pubHandler) natsMsg([]byte) {}
func (h *pubHandler) natsPing() {
	ctx, cancel := context.WithTimeout(h.r.ctx, writeTimeout)
	defer cancel()
	_ = h.p.ws.Write(ctx, websocket.MessageBinary, []byte("PONG\r\n"))
}
func (h *pubHandler) natsPong() {
	select {
	case h.p.pongs <- struct{}{}:
	default:
	}
}
func (h *pubHandler) natsErr(line []byte) {
	h.r.noteErr(fmt.Errorf("publisher: %s", line))
}

func (p *natsPublisher) waitPong(ctx context.Context) error {
	select {
	case <-p.pongs:
		return nil
	case <-p.done:
		return errors.New("connection closed")
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// workers is 1: publish reuses one buffer, and one connection's writes are
// serialized anyway.
func (p *natsPublisher) workers() int { return 1 }

func (p *natsPublisher) publish(ctx context.Context, seq int64, payload []byte) error {
	p.buf = append(p.buf[:0], "PUB "...)
	p.buf = append(p.buf, p.subjs[seq%int64(len(p.subjs))]...)
	p.buf = append(p.buf, ' ')
	p.buf = strconv.AppendInt(p.buf, int64(len(payload)), 10)
	p.buf = append(p.buf, "\r\n"...)
	p.buf = append(p.buf, payload...)
	p.buf = append(p.buf, "\r\n"...)
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return p.ws.Write(ctx, websocket.MessageBinary, p.buf)
}

func (p *natsPublisher) flush(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := p.ws.Write(ctx, websocket.MessageBinary, []byte("PING\r\n")); err != nil {
		return err
	}
	return p.waitPong(ctx)
}

func (p *natsPublisher) close() {
	p.stop()
	p.ws.CloseNow()
	<-p.done
}
