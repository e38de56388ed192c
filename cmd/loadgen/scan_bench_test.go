package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/groupcast/groupcast/protocol"
)

// The frame scanner the load generator used before protocol.View, kept as
// the baseline of BenchmarkFrameScan: it finds "type" and "data" by their
// quoted keys and bounds the data by brackets, without checking the JSON.

type oldKind int

const (
	oldOther oldKind = iota
	oldMessage
	oldAck
	oldError
)

func oldClassify(line []byte) (oldKind, []byte) {
	i := findValue(line, `"type"`)
	if i < 0 || i >= len(line) || line[i] != '"' {
		return oldOther, nil
	}
	v := line[i+1:]
	switch {
	case bytes.HasPrefix(v, []byte(`message"`)):
		d := findValue(line, `"data"`)
		if d < 0 {
			return oldOther, nil
		}
		return oldMessage, line[d:]
	case bytes.HasPrefix(v, []byte(`ack"`)):
		return oldAck, nil
	case bytes.HasPrefix(v, []byte(`error"`)):
		return oldError, nil
	}
	return oldOther, nil
}

func oldObjectEnd(b []byte) int {
	depth, inStr := 0, false
	for i := 0; i < len(b); i++ {
		ch := b[i]
		if inStr {
			switch ch {
			case '\\':
				i++
			case '"':
				inStr = false
			}
			continue
		}
		switch ch {
		case '"':
			inStr = true
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return i + 1
			}
		case ' ', '\t', '\r', '\n':
		default:
			if depth == 0 {
				return -1
			}
		}
	}
	return -1
}

// oldScan does per object what readGroupcast did with the old scanner: a
// delivery's payload parsed, an ack's id unmarshalled.
func oldScan(obj []byte) (n int64) {
	kind, data := oldClassify(obj)
	switch kind {
	case oldMessage:
		if e := oldObjectEnd(data); e > 0 {
			data = data[:e]
		}
		seq, _, _ := parsePayload(data)
		return seq
	case oldAck:
		var a struct {
			ID int `json:"id"`
		}
		if json.Unmarshal(obj, &a) == nil {
			return int64(a.ID)
		}
	}
	return 0
}

// viewScan does the same through protocol.View, as groupcastObject does.
func viewScan(v *protocol.View, obj []byte) (n int64) {
	if v.Decode(obj) != nil {
		return 0
	}
	switch string(v.Type) {
	case protocol.TypeMessage:
		seq, _, _ := parsePayload(v.Data)
		return seq
	case protocol.TypeAck:
		id, _ := parseDigits(v.ID)
		return id
	}
	return 0
}

// BenchmarkFrameScan compares, per server WebSocket frame, the old scanner,
// protocol.View and protocol.Decode on a delivery, a batch of 16 and an ack.
func BenchmarkFrameScan(b *testing.B) {
	msg := `{"type":"message","group":"room-1","data":` + string(appendPayload(nil, 4711, 1764770000000000000, 100)) + `}`
	for _, fr := range []struct{ name, frame string }{
		{"message", msg},
		{"batch", strings.Repeat(msg+"\n", 16)},
		{"ack", `{"type":"ack","id":12}`},
	} {
		var objs [][]byte // split once: protocol.Objects costs the same in every row
		var want int64
		for obj := range protocol.Objects([]byte(fr.frame)) {
			objs = append(objs, obj)
			want += oldScan(obj)
		}
		run := func(name string, scan func([]byte) int64) {
			b.Run(fr.name+"/"+name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					var n int64
					for _, obj := range objs {
						n += scan(obj)
					}
					if n != want {
						b.Fatalf("%s read %d, the old scanner %d", name, n, want)
					}
				}
			})
		}
		run("scanner", oldScan)
		var v protocol.View
		run("view", func(obj []byte) int64 { return viewScan(&v, obj) })
		run("decode", func(obj []byte) int64 {
			f, err := protocol.Decode(obj)
			if err != nil {
				return 0
			}
			switch f.Type {
			case protocol.TypeMessage:
				seq, _, _ := parsePayload(f.Data)
				return seq
			case protocol.TypeAck:
				id, _ := parseDigits(f.ID)
				return id
			}
			return 0
		})
	}
}
