package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// rawWS is a receiving connection's WebSocket client: its own handshake
// and frame reader over a plain net.Conn. One read(2) takes in every frame
// the server wrote at once, and each frame is then handed over where it
// lies in the read buffer, with no call into a library per frame: at
// 250,000 deliveries a second on one core the loader must cost less than
// the server it measures.
type rawWS struct {
	conn net.Conn
	buf  []byte // read buffer; the unread bytes are buf[r:w]
	r, w int
	msg  []byte // a fragmented message being put together
	wmu  sync.Mutex
	wbuf []byte // the frame being written, under wmu

	// at is when the kernel received the latest bytes read (unix ns; 0:
	// not known), so also the frame next returned last: that frame was
	// completed by the latest read. See stamp.
	at    int64
	stamp socketStamp
}

// WebSocket opcodes (RFC 6455, 5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// rawReadBuffer is the read buffer's starting size; it grows to hold the
// largest frame seen, up to maxFrameBytes.
const rawReadBuffer = 4096

// errRawProto is a server frame that breaks RFC 6455.
var errRawProto = errors.New("websocket protocol violation")

// rawCloseError is the server's close frame.
type rawCloseError struct {
	code   int
	reason string
}

func (e *rawCloseError) Error() string {
	return fmt.Sprintf("closed by the server: %d %q", e.code, e.reason)
}

// websocketGUID is RFC 6455's key suffix for Sec-WebSocket-Accept.
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// dialRaw dials rawURL (ws://host[:port]/path?query) through d and
// performs the opening handshake; the context bounds both.
func dialRaw(ctx context.Context, d *net.Dialer, rawURL string) (*rawWS, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "ws" {
		return nil, fmt.Errorf("%s: only ws:// URLs", rawURL)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	ws := &rawWS{conn: conn, buf: make([]byte, rawReadBuffer)}
	ws.stamp.init(conn)
	if err := ws.handshake(ctx, u); err != nil {
		conn.Close()
		return nil, err
	}
	return ws, nil
}

func (ws *rawWS) handshake(ctx context.Context, u *url.URL) error {
	if dl, ok := ctx.Deadline(); ok {
		ws.conn.SetDeadline(dl)
		defer ws.conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { ws.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req := "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(ws.conn, req); err != nil {
		return err
	}
	// Read up to the end of the head; what follows it (the welcome, sent
	// with the 101) stays in buf.
	for {
		if end := bytes.Index(ws.buf[:ws.w], []byte("\r\n\r\n")); end >= 0 {
			ws.r = end + 4
			break
		}
		if ws.w == len(ws.buf) {
			return errors.New("handshake answer head over 4096 bytes")
		}
		n, err := ws.read(ws.buf[ws.w:])
		ws.w += n
		if err != nil {
			return fmt.Errorf("handshake: %w", err)
		}
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(ws.buf[:ws.r])), nil)
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return ws.refusal(resp)
	}
	sum := sha1.Sum([]byte(key + websocketGUID))
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") ||
		resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		return errors.New("handshake: the answer is not a WebSocket upgrade")
	}
	return nil
}

// refusal reads a little of a refused upgrade's body, for the error.
func (ws *rawWS) refusal(resp *http.Response) error {
	body := ws.buf[ws.r:ws.w]
	if len(body) == 0 {
		n, _ := ws.conn.Read(ws.buf[ws.w:])
		body = ws.buf[ws.w : ws.w+n]
	}
	return fmt.Errorf("expected handshake response status code 101 but got %d: %s", resp.StatusCode, bytes.TrimSpace(truncate(body, 200)))
}

// next returns the next data message: its opcode and payload, which stays
// valid until the next call. It answers pings itself and ends with a
// *rawCloseError when the server closes.
func (ws *rawWS) next() (byte, []byte, error) {
	ws.msg = ws.msg[:0]
	msgOp := byte(0)
	for {
		fin, op, p, err := ws.frame()
		if err != nil {
			return 0, nil, err
		}
		switch op {
		case opPing:
			if err := ws.write(opPong, p); err != nil {
				return 0, nil, err
			}
			continue
		case opPong:
			continue
		case opClose:
			e := &rawCloseError{code: 1005}
			if len(p) >= 2 {
				e.code, e.reason = int(binary.BigEndian.Uint16(p)), string(p[2:])
			}
			return 0, nil, e
		case opText, opBinary:
			if msgOp != 0 {
				return 0, nil, fmt.Errorf("%w: a new message inside a fragmented one", errRawProto)
			}
			if fin {
				return op, p, nil
			}
			msgOp = op
			ws.msg = append(ws.msg, p...)
		case opContinuation:
			if msgOp == 0 {
				return 0, nil, fmt.Errorf("%w: a continuation with no message", errRawProto)
			}
			if len(ws.msg)+len(p) > maxFrameBytes {
				return 0, nil, fmt.Errorf("%w: a message over %d bytes", errRawProto, maxFrameBytes)
			}
			ws.msg = append(ws.msg, p...)
			if fin {
				return msgOp, ws.msg, nil
			}
		default:
			return 0, nil, fmt.Errorf("%w: opcode %#x", errRawProto, op)
		}
	}
}

// frame returns the next frame, its payload in the read buffer.
func (ws *rawWS) frame() (fin bool, op byte, payload []byte, err error) {
	for {
		fin, op, start, end, perr := parseFrameHeader(ws.buf[ws.r:ws.w])
		if perr != nil {
			return false, 0, nil, perr
		}
		if end > 0 {
			payload = ws.buf[ws.r+start : ws.r+end]
			ws.r += end
			return fin, op, payload, nil
		}
		if err := ws.fill(start); err != nil {
			return false, 0, nil, err
		}
	}
}

// fill reads more, first making room for a frame of need bytes (0: not
// known yet) at the front of the buffer.
func (ws *rawWS) fill(need int) error {
	if ws.r > 0 {
		ws.w = copy(ws.buf, ws.buf[ws.r:ws.w])
		ws.r = 0
	}
	if need > len(ws.buf) {
		ws.buf = append(ws.buf, make([]byte, need-len(ws.buf))...)
	}
	if ws.w == len(ws.buf) {
		ws.buf = append(ws.buf, make([]byte, len(ws.buf))...)
	}
	n, err := ws.read(ws.buf[ws.w:])
	ws.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// read reads from the connection into p, noting when the kernel received
// what it read (at) when it can tell.
func (ws *rawWS) read(p []byte) (n int, err error) {
	if ws.stamp.rc == nil {
		return ws.conn.Read(p)
	}
	n, ws.at, err = ws.stamp.read(p)
	return n, err
}

// parseFrameHeader reads the frame at the front of b, which a server sent:
// unmasked, its control frames short and whole. With the whole frame in
// b, its payload is b[start:end]; else end is 0 and start is how many
// bytes the frame needs (0 while its header is incomplete).
func parseFrameHeader(b []byte) (fin bool, op byte, start, end int, err error) {
	if len(b) < 2 {
		return false, 0, 0, 0, nil
	}
	fin, op = b[0]&0x80 != 0, b[0]&0x0F
	if b[0]&0x70 != 0 {
		return false, 0, 0, 0, fmt.Errorf("%w: reserved bits set", errRawProto)
	}
	if b[1]&0x80 != 0 {
		return false, 0, 0, 0, fmt.Errorf("%w: a masked server frame", errRawProto)
	}
	n, start := uint64(b[1]&0x7F), 2
	switch n {
	case 126:
		if len(b) < 4 {
			return false, 0, 0, 0, nil
		}
		n, start = uint64(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		if len(b) < 10 {
			return false, 0, 0, 0, nil
		}
		n, start = binary.BigEndian.Uint64(b[2:]), 10
	}
	if op >= opClose && (n > 125 || !fin) {
		return false, 0, 0, 0, fmt.Errorf("%w: a long or fragmented control frame", errRawProto)
	}
	if n > maxFrameBytes {
		return false, 0, 0, 0, fmt.Errorf("%w: a frame of %d bytes, over %d", errRawProto, n, maxFrameBytes)
	}
	total := start + int(n)
	if total > len(b) {
		return false, 0, total, 0, nil
	}
	return fin, op, start, total, nil
}

// write sends one whole frame, masked as a client's must be. Safe for
// concurrent use.
func (ws *rawWS) write(op byte, p []byte) error {
	ws.wmu.Lock()
	defer ws.wmu.Unlock()
	b := append(ws.wbuf[:0], 0x80|op)
	switch n := len(p); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xFFFF:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	var mask [4]byte
	rand.Read(mask[:])
	b = append(b, mask[:]...)
	for i, c := range p {
		b = append(b, c^mask[i&3])
	}
	ws.wbuf = b
	ws.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := ws.conn.Write(b)
	return err
}

// closeNow drops the connection without a closing handshake.
func (ws *rawWS) closeNow() { ws.conn.Close() }
