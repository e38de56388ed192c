package main

import (
	"bytes"
	"errors"
	"fmt"
)

// The NATS client protocol as a nats-ws target's server speaks it, read
// without allocating (see payload.go).

// natsHandler receives the operations that natsParser finds in the stream a
// NATS server sends to a client.
type natsHandler interface {
	natsMsg(payload []byte)
	natsPing()
	natsPong()
	natsErr(line []byte)
}

// errNATSProto reports a byte stream that is not the NATS client protocol.
var errNATSProto = errors.New("nats protocol error")

// parseNATS consumes as many complete server operations from b as it can,
// calling h for each, and returns how many bytes it consumed; the caller keeps
// b[n:] and appends more data to it. A WebSocket frame may hold several
// operations, or part of one, so the caller treats frames as one byte stream.
func parseNATS(b []byte, h natsHandler) (n int, err error) {
	for {
		rest := b[n:]
		eol := bytes.Index(rest, []byte("\r\n"))
		if eol < 0 {
			if len(rest) > 4096 && !bytes.HasPrefix(rest, []byte("INFO")) {
				return n, fmt.Errorf("%w: no line end in %d bytes", errNATSProto, len(rest))
			}
			return n, nil
		}
		line := rest[:eol]
		switch {
		case bytes.HasPrefix(line, []byte("MSG ")):
			// MSG <subject> <sid> [reply-to] <#bytes>
			size, ok := parseDigits(line[bytes.LastIndexByte(line, ' ')+1:])
			if !ok {
				return n, fmt.Errorf("%w: bad MSG line %q", errNATSProto, line)
			}
			end := eol + 2 + int(size) + 2
			if len(rest) < end {
				return n, nil // payload not complete yet
			}
			if rest[end-2] != '\r' || rest[end-1] != '\n' {
				return n, fmt.Errorf("%w: MSG payload not followed by CRLF", errNATSProto)
			}
			h.natsMsg(rest[eol+2 : end-2])
			n += end
			continue
		case bytes.Equal(line, []byte("PING")):
			h.natsPing()
		case bytes.Equal(line, []byte("PONG")):
			h.natsPong()
		case bytes.HasPrefix(line, []byte("-ERR")):
			h.natsErr(line)
		case bytes.HasPrefix(line, []byte("INFO")), bytes.Equal(line, []byte("+OK")):
		default:
			return n, fmt.Errorf("%w: unexpected line %q", errNATSProto, truncate(line, 80))
		}
		n += eol + 2
	}
}
