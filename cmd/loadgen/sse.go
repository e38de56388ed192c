package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Transports a groupcast client may use (-transport).
const (
	transportWS  = "ws"
	transportSSE = "sse" // GET /sse and POST /sse/{channel}: the fallback over plain HTTP
)

// sseConn is a client's stream of Server-Sent Events: the response it
// reads, and what POSTs need (the instance's base URL, the channel and
// its secret).
type sseConn struct {
	resp    *http.Response
	cancel  context.CancelFunc
	rd      *bufio.Reader
	base    string // http://host:port
	channel string
	secret  string
}

// close drops the stream; safe to call from any goroutine, more than once.
func (s *sseConn) close() {
	s.cancel()
	s.resp.Body.Close()
}

// sseURL is the base URL (scheme, host, port) of a groupcast -url.
func sseURL(wsURL string) (string, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	}
	return u.Scheme + "://" + u.Host, nil
}

// connectSSE opens the client's stream, reads its welcome and POSTs the
// home join; the ack comes over the stream, to readSSE.
func (c *client) connectSSE() error {
	r := c.r
	base, err := sseURL(r.cfg.URLs[c.inst])
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(r.ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/sse", nil)
	if err != nil {
		cancel()
		return err
	}
	hc := r.http[c.id%len(r.http)]
	dialed := time.AfterFunc(joinTimeout, cancel)
	resp, err := hc.Do(req)
	if err != nil {
		cancel()
		return err
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		cancel()
		return fmt.Errorf("GET /sse: %s %s", resp.Status, bytes.TrimSpace(body))
	}
	c.sse = &sseConn{resp: resp, cancel: cancel, rd: bufio.NewReaderSize(resp.Body, 1024+2*r.cfg.Size), base: base}
	c.buf = make([]byte, 0, 1024+2*r.cfg.Size)
	welcome, err := c.nextEvent()
	dialed.Stop()
	if err != nil {
		c.sse.close()
		return fmt.Errorf("welcome: %w", err)
	}
	var w struct{ Type, Channel, Secret string }
	if json.Unmarshal(welcome, &w) != nil || w.Type != "welcome" || w.Secret == "" {
		c.sse.close()
		return fmt.Errorf("first event %s, want a welcome with a secret", truncate(welcome, 200))
	}
	c.sse.channel, c.sse.secret = w.Channel, w.Secret
	if err := c.postSSE(hc, appendGroupcastOp(nil, "join", r.groups[c.room], 1)); err != nil {
		c.sse.close()
		return err
	}
	return nil
}

// postSSE sends client frames to the stream's POST endpoint.
func (c *client) postSSE(hc *http.Client, frames []byte) error {
	ctx, cancel := context.WithTimeout(c.r.ctx, joinTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.sse.base+"/sse/"+c.sse.channel, bytes.NewReader(frames))
	if err != nil {
		return err
	}
	req.Header.Set("X-Groupcast-Secret", c.sse.secret)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST /sse/%s: %s %s", c.sse.channel, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// readSSE reads the stream's frames until it ends.
func (c *client) readSSE() error {
	for {
		frame, err := c.nextEvent()
		if err != nil {
			return err
		}
		if err := c.groupcastObject(frame); err != nil {
			return err
		}
	}
}

// errStreamClosed is a stream's close event.
var errStreamClosed = errors.New("stream closed")

// nextEvent returns the data of the stream's next data event (one JSON
// object, valid until the next call), skipping heartbeats; a close event
// or the stream's end is an error.
func (c *client) nextEvent() ([]byte, error) {
	closing := false
	for {
		line, err := c.readLine()
		if err != nil {
			return nil, err
		}
		switch {
		case bytes.HasPrefix(line, []byte("data: ")):
			if closing {
				return nil, fmt.Errorf("%w: %s", errStreamClosed, line[len("data: "):])
			}
			return line[len("data: "):], nil
		case bytes.Equal(line, []byte("event: close")):
			closing = true
		case len(line) == 0, line[0] == ':':
		default:
			return nil, fmt.Errorf("unexpected line in the stream: %s", truncate(line, 200))
		}
	}
}

// readLine returns the stream's next line without its newline, valid
// until the next call; one longer than the reader's buffer is gathered in
// c.buf.
func (c *client) readLine() ([]byte, error) {
	line, err := c.sse.rd.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		c.buf = append(c.buf[:0], line...)
		for errors.Is(err, bufio.ErrBufferFull) {
			if len(c.buf) > maxFrameBytes {
				return nil, fmt.Errorf("a line over %d bytes", maxFrameBytes)
			}
			line, err = c.sse.rd.ReadSlice('\n')
			c.buf = append(c.buf, line...)
		}
		line = c.buf
	}
	if err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(line[:len(line)-1], []byte{'\r'}), nil
}

// checkTransport reports a -transport the run cannot use.
func checkTransport(c *Config) error {
	switch c.Transport {
	case "", transportWS:
		c.Transport = transportWS
		return nil
	case transportSSE:
		if c.Target != targetGroupcast {
			return errors.New("-transport sse needs -target groupcast")
		}
		return nil
	}
	return fmt.Errorf("-transport must be %s or %s, not %q", transportWS, transportSSE, strings.TrimSpace(c.Transport))
}
