package main

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/protocol"
)

// floor is the least server that passes the loader's checks: the groupcast
// protocol subset a run uses (welcome, join and leave answered by ack, ping
// by pong, deliveries, POST /api/groups/{group}/messages), its frames built
// by package protocol with the protocol's codes, over hand-written
// WebSocket framing. A publish writes its delivery frame to each member with
// one write(2), straight from the publishing request's goroutine: no queue,
// no writer goroutine, no batching. The 101 and the welcome go out in one
// write. What it costs is the cost of the kernel writes (and of Go's HTTP
// parsing for connects and publishes): the limit for one write per delivery.
//
// It is a measuring instrument, not a server: a member that stops reading
// stalls publishing, as there is nowhere else for its frames to wait.
type floor struct {
	// URL is the ws:// URL of the WebSocket endpoint; API is the http://
	// base URL of the publishing API.
	URL, API string

	srv    *http.Server
	served chan struct{} // closed when Serve has returned

	mu     sync.RWMutex // read-held across a fan-out: a leave's ack ends deliveries
	groups map[string]map[net.Conn]struct{}

	connMu sync.Mutex
	conns  map[net.Conn]struct{} // hijacked connections, closed by Close
	closed bool
	nextID int
	wg     sync.WaitGroup // requests under way, WebSocket connections included
}

const (
	floorMaxFrame = 64 << 10 // largest client frame
	floorMaxBody  = 1 << 20  // largest published payload
	wsGUID        = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
)

// startFloor listens on addr ("host:port"; port 0 picks a free one) and
// serves until Close.
func startFloor(addr string) (*floor, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	f := &floor{
		URL: "ws://" + ln.Addr().String() + "/ws", API: "http://" + ln.Addr().String(),
		served: make(chan struct{}),
		groups: map[string]map[net.Conn]struct{}{},
		conns:  map[net.Conn]struct{}{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", f.upgrade)
	mux.HandleFunc("POST /api/groups/{group}/messages", f.publish)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	f.srv = &http.Server{Handler: f.counted(mux), ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 16 << 10}
	go func() {
		defer close(f.served)
		_ = f.srv.Serve(ln)
	}()
	return f, nil
}

// Close stops listening, closes every connection and waits for their
// goroutines.
func (f *floor) Close() {
	_ = f.srv.Close()
	<-f.served
	f.connMu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.connMu.Unlock()
	f.wg.Wait()
}

// counted refuses requests once Close has begun and counts the others in wg.
func (f *floor) counted(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.connMu.Lock()
		if f.closed {
			f.connMu.Unlock()
			http.Error(w, "closing", http.StatusServiceUnavailable)
			return
		}
		f.wg.Add(1)
		f.connMu.Unlock()
		defer f.wg.Done()
		h.ServeHTTP(w, r)
	})
}

// upgrade completes the handshake and then, on the request's goroutine,
// reads the connection's frames until it closes.
func (f *floor) upgrade(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Sec-WebSocket-Key")
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || key == "" {
		http.Error(w, "a WebSocket upgrade is needed", http.StatusBadRequest)
		return
	}
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	_ = nc.SetDeadline(time.Time{}) // no deadline of the HTTP server's lingers
	f.connMu.Lock()
	if f.closed {
		f.connMu.Unlock()
		nc.Close()
		return
	}
	f.conns[nc] = struct{}{}
	f.nextID++
	id := f.nextID
	f.connMu.Unlock()
	joined := map[string]struct{}{} // this goroutine's
	defer f.drop(nc, joined)

	sum := sha1.Sum([]byte(key + wsGUID))
	b := append([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "),
		base64.StdEncoding.EncodeToString(sum[:])...)
	b = appendWSFrame(append(b, "\r\n\r\n"...), wsText, protocol.AppendWelcome(nil, "floor."+strconv.Itoa(id), "floor", "", ""))
	if _, err := nc.Write(b); err != nil {
		return
	}
	var buf []byte
	for {
		var op byte
		op, buf, err = readWSFrame(brw.Reader, buf)
		if errors.Is(err, errWSTooLarge) {
			_, _ = nc.Write(appendWSFrame(nil, wsClose, appendClose(nil, protocol.CloseTooLarge, "frame too large")))
			// Closing with the frame unread would reset the connection
			// before the client reads the close: drain for a while first.
			_ = nc.SetReadDeadline(time.Now().Add(time.Second))
			_, _ = io.Copy(io.Discard, io.LimitReader(brw.Reader, floorMaxBody))
		}
		if err != nil {
			return
		}
		switch op {
		case wsText:
			_, _ = nc.Write(appendWSFrame(nil, wsText, f.answer(nc, buf, joined)))
		case wsPing:
			_, _ = nc.Write(appendWSFrame(nil, wsPong, buf))
		case wsClose:
			_, _ = nc.Write(appendWSFrame(nil, wsClose, buf[:min(2, len(buf))]))
			return
		case wsPong:
		default:
			return // binary or continuation: not this protocol
		}
	}
}

// answer handles one client frame and returns the answer's JSON.
func (f *floor) answer(nc net.Conn, frame []byte, joined map[string]struct{}) []byte {
	m, err := protocol.ParseClientFrame(frame)
	if pe := (*protocol.Error)(nil); errors.As(err, &pe) {
		return protocol.AppendError(nil, m.ID, pe.Code, pe.Message)
	}
	switch m.Type {
	case protocol.TypePing:
		return protocol.AppendReply(nil, protocol.TypePong, m.ID)
	case protocol.TypeJoin, protocol.TypeLeave:
		if !broker.ValidGroup(m.Group) {
			return protocol.AppendError(nil, m.ID, protocol.CodeInvalidGroup, "invalid group name")
		}
	default:
		return protocol.AppendError(nil, m.ID, protocol.CodeUnknownType, "unknown frame type")
	}
	f.mu.Lock()
	if m.Type == protocol.TypeJoin {
		if f.groups[m.Group] == nil {
			f.groups[m.Group] = map[net.Conn]struct{}{}
		}
		f.groups[m.Group][nc], joined[m.Group] = struct{}{}, struct{}{}
	} else {
		f.leaveLocked(nc, m.Group)
		delete(joined, m.Group)
	}
	f.mu.Unlock()
	return protocol.AppendReply(nil, protocol.TypeAck, m.ID)
}

func (f *floor) leaveLocked(nc net.Conn, group string) {
	delete(f.groups[group], nc)
	if len(f.groups[group]) == 0 {
		delete(f.groups, group)
	}
}

// drop forgets a connection that has ended and closes it.
func (f *floor) drop(nc net.Conn, joined map[string]struct{}) {
	f.mu.Lock()
	for g := range joined {
		f.leaveLocked(nc, g)
	}
	f.mu.Unlock()
	f.connMu.Lock()
	delete(f.conns, nc)
	f.connMu.Unlock()
	nc.Close()
}

// publish delivers the body to every member of the group: one frame, built
// once, and one write(2) per member.
func (f *floor) publish(w http.ResponseWriter, r *http.Request) {
	group := r.PathValue("group")
	if !broker.ValidGroup(group) {
		floorError(w, protocol.CodeInvalidGroup, "invalid group name")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, floorMaxBody))
	if err != nil {
		floorError(w, protocol.CodeTooLarge, "body over 1 MiB")
		return
	}
	msg, err := protocol.AppendMessage(nil, protocol.Message{Group: group}, body)
	if err != nil {
		floorError(w, protocol.CodeInvalidJSON, "the body must be one JSON value")
		return
	}
	frame := appendWSFrame(nil, wsText, msg)
	f.mu.RLock()
	for nc := range f.groups[group] {
		_, _ = nc.Write(frame) // a failed member's reader sees its end
	}
	f.mu.RUnlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write([]byte(`{"ok":true}`))
}

// floorError answers an API request with the protocol's error body and the
// code's status (§HTTP server API).
func floorError(w http.ResponseWriter, code, message string) {
	type body struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	b, _ := json.Marshal(map[string]body{"error": {code, message}})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(protocol.HTTPStatus(code))
	_, _ = w.Write(b)
}

// WebSocket opcodes (RFC 6455).
const (
	wsText  = 0x1
	wsClose = 0x8
	wsPing  = 0x9
	wsPong  = 0xa
)

var (
	errWSFrame    = errors.New("websocket: unmasked, fragmented or extended client frame")
	errWSTooLarge = errors.New("websocket: client frame over the size limit")
)

// appendWSFrame appends an unmasked final frame (the server's kind).
func appendWSFrame(dst []byte, op byte, p []byte) []byte {
	dst = append(dst, 0x80|op)
	switch n := len(p); {
	case n < 126:
		dst = append(dst, byte(n))
	case n <= 0xffff:
		dst = binary.BigEndian.AppendUint16(append(dst, 126), uint16(n))
	default:
		dst = binary.BigEndian.AppendUint64(append(dst, 127), uint64(n))
	}
	return append(dst, p...)
}

// appendClose appends a close frame's payload: the status code, then the
// reason.
func appendClose(dst []byte, code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(dst, code), reason...)
}

// readWSFrame reads one client frame (final, masked, at most floorMaxFrame
// bytes) into buf and returns its opcode and unmasked payload.
func readWSFrame(rd *bufio.Reader, buf []byte) (byte, []byte, error) {
	var h [8]byte
	if _, err := io.ReadFull(rd, h[:2]); err != nil {
		return 0, buf, err
	}
	op, n := h[0]&0x0f, uint64(h[1]&0x7f)
	if h[0]&0xf0 != 0x80 || h[1]&0x80 == 0 {
		return 0, buf, errWSFrame
	}
	switch n {
	case 126:
		if _, err := io.ReadFull(rd, h[:2]); err != nil {
			return 0, buf, err
		}
		n = uint64(binary.BigEndian.Uint16(h[:2]))
	case 127:
		if _, err := io.ReadFull(rd, h[:8]); err != nil {
			return 0, buf, err
		}
		n = binary.BigEndian.Uint64(h[:8])
	}
	if n > floorMaxFrame {
		return 0, buf, errWSTooLarge
	}
	var mask [4]byte
	if _, err := io.ReadFull(rd, mask[:]); err != nil {
		return 0, buf, err
	}
	if uint64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(rd, buf); err != nil {
		return 0, buf, err
	}
	for i := range buf {
		buf[i] ^= mask[i&3]
	}
	return op, buf, nil
}
