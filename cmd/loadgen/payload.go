package main

import (
	"bytes"
	"math"
	"strconv"
)

// The payload the loader publishes and reads back in every delivery. The
// delivery hot path must not allocate or json.Unmarshal: a single loader
// core handles 250,000 deliveries/s. The helpers below scan bytes instead
// (groupcast's frames around the payload: protocol.View).

// Quoted JSON keys the scanners look for.
const (
	keySeq = `"seq"`
	keyT   = `"t"`
)

// appendPayload appends the JSON payload {"seq":S,"t":T,"pad":"xxx"} to dst,
// padding it with 'x' so that it is exactly size bytes long when size allows
// (a payload never drops its seq and t fields, so tiny sizes come out longer).
func appendPayload(dst []byte, seq uint64, t int64, size int) []byte {
	start := len(dst)
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"t":`...)
	dst = strconv.AppendInt(dst, t, 10)
	dst = append(dst, `,"pad":"`...)
	if n := size - (len(dst) - start) - len(`"}`); n > 0 {
		for range n {
			dst = append(dst, 'x')
		}
	}
	return append(dst, `"}`...)
}

// findValue returns the index in b of the value that follows key (a quoted
// JSON key such as `"t"`), allowing whitespace around the colon, or -1.
func findValue(b []byte, key string) int {
	off := 0
	for {
		i := bytes.Index(b[off:], []byte(key)) // short key: no allocation
		if i < 0 {
			return -1
		}
		j := off + i + len(key)
		j = skipSpace(b, j)
		if j < len(b) && b[j] == ':' {
			return skipSpace(b, j+1)
		}
		off += i + 1
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// parseInt reads a decimal integer (optionally negative) at b[i:].
func parseInt(b []byte, i int) (int64, bool) {
	neg := i < len(b) && b[i] == '-'
	if neg {
		i++
	}
	v, _, ok := uintAt(b, i)
	if neg {
		v = -v
	}
	return v, ok
}

// parsePayload extracts seq and t from a payload produced by appendPayload,
// tolerating reordered keys and whitespace (a server may re-encode the JSON).
func parsePayload(p []byte) (seq, t int64, ok bool) {
	if seq, t, ok = exactPayload(p); ok {
		return seq, t, true
	}
	i := findValue(p, keySeq)
	if i < 0 {
		return 0, 0, false
	}
	if seq, ok = parseInt(p, i); !ok || seq < 0 {
		return 0, 0, false
	}
	j := findValue(p, keyT)
	if j < 0 {
		return 0, 0, false
	}
	t, ok = parseInt(p, j)
	return seq, t, ok
}

// exactPayload parses p when it is byte for byte what appendPayload
// writes: {"seq":S,"t":T,"pad":"x..."} with S and T decimal, S not
// negative, the pad free of quotes and escapes.
func exactPayload(p []byte) (seq, t int64, ok bool) {
	const seqKey, tKey, padKey, end = `{"seq":`, `,"t":`, `,"pad":"`, `"}`
	if !bytes.HasPrefix(p, []byte(seqKey)) || !bytes.HasSuffix(p, []byte(end)) {
		return 0, 0, false
	}
	seq, j, ok := uintAt(p, len(seqKey))
	if !ok || !bytes.HasPrefix(p[j:], []byte(tKey)) {
		return 0, 0, false
	}
	t, j, ok = uintAt(p, j+len(tKey))
	if !ok || !bytes.HasPrefix(p[j:], []byte(padKey)) {
		return 0, 0, false
	}
	pad := p[j+len(padKey) : len(p)-len(end)]
	if bytes.IndexByte(pad, '"') >= 0 || bytes.IndexByte(pad, '\\') >= 0 {
		return 0, 0, false
	}
	return seq, t, true
}

// uintAt parses the decimal digits at b[i:] up to the first other byte:
// their value, that byte's index, and whether there was at least one digit
// and the value fits an int64.
func uintAt(b []byte, i int) (v int64, end int, ok bool) {
	start := i
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		d := int64(b[i] - '0')
		if v > (math.MaxInt64-d)/10 {
			return 0, i, false
		}
		v = v*10 + d
	}
	return v, i, i > start
}

// deliveryPayload parses obj when it is exactly what a groupcast server
// writes for a delivery of the loader's payload to a group with neither
// history nor region: {"type":"message","group":"<name>","data":<payload>},
// the payload as exactPayload takes it. Any other form (more fields,
// spaces, escapes) is left to protocol.View, so that the shortcut never
// takes a frame the decoder would refuse.
func deliveryPayload(obj []byte) (seq, t int64, ok bool) {
	const head, mid = `{"type":"message","group":"`, `","data":`
	if !bytes.HasPrefix(obj, []byte(head)) || obj[len(obj)-1] != '}' {
		return 0, 0, false
	}
	rest := obj[len(head) : len(obj)-1]
	i := bytes.IndexByte(rest, '"')
	if i <= 0 || !bytes.HasPrefix(rest[i:], []byte(mid)) {
		return 0, 0, false
	}
	for _, c := range rest[:i] {
		if c < 0x20 || c == '\\' {
			return 0, 0, false
		}
	}
	return exactPayload(rest[i+len(mid):])
}

// parseDigits parses b, which must be 1 to 18 decimal digits and nothing else.
func parseDigits(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var v int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	return v, true
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
