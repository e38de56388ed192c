package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
)

// ErrInvalidData is returned by the message encoders for a payload that is
// not one JSON value.
var ErrInvalidData = errors.New("protocol: data is not one JSON value")

// Every encoder appends one JSON object to buf and returns the extended
// buffer. Names (groups, channels, nodes, regions, epochs, frame types)
// are appended as they are: callers validate them to be plain ASCII that
// needs no escaping. Free text (messages, users) is escaped.

// Message says where a message frame goes and what it carries besides
// its data (§WebSocket "Deliveries" and the README's extensions).
type Message struct {
	Group   string // the group published to, or
	Channel string // the one channel it is sent to (when Group is "")
	Region  string // the region it was published in, when known
	// Kept says the group keeps history: Offset and Epoch, written then,
	// place the message in it (offsets start at 1).
	Kept   bool
	Offset uint64
	Epoch  string
}

// AppendMessage appends {"type":"message","group"|"channel":..,
// ["region":..,]["offset":..,"epoch":..,]"data":data}. data must be one
// JSON value (else ErrInvalidData); it is copied as is, or compacted when
// it holds newlines, which separate objects in a server frame. A nil buf
// is allocated at the frame's size.
func AppendMessage(buf []byte, d Message, data []byte) ([]byte, error) {
	if !json.Valid(data) {
		return nil, ErrInvalidData
	}
	if buf == nil {
		n := len(`{"type":"message","channel":"","data":}`) + len(d.Group) + len(d.Channel) + len(data)
		if d.Region != "" {
			n += len(`,"region":""`) + len(d.Region)
		}
		if d.Kept {
			n += len(`,"offset":18446744073709551615,"epoch":""`) + len(d.Epoch)
		}
		buf = make([]byte, 0, n)
	}
	if d.Group != "" {
		buf = append(buf, `{"type":"message","group":"`...)
		buf = append(buf, d.Group...)
	} else {
		buf = append(buf, `{"type":"message","channel":"`...)
		buf = append(buf, d.Channel...)
	}
	if d.Region != "" {
		buf = append(buf, `","region":"`...)
		buf = append(buf, d.Region...)
	}
	buf = append(buf, '"')
	if d.Kept {
		buf = append(buf, `,"offset":`...)
		buf = strconv.AppendUint(buf, d.Offset, 10)
		buf = append(buf, `,"epoch":"`...)
		buf = append(buf, d.Epoch...)
		buf = append(buf, '"')
	}
	buf = append(buf, `,"data":`...)
	if bytes.IndexByte(data, '\n') < 0 {
		buf = append(buf, data...)
	} else {
		out := bytes.NewBuffer(buf)
		if err := json.Compact(out, data); err != nil {
			return nil, ErrInvalidData
		}
		buf = out.Bytes()
	}
	return append(buf, '}'), nil
}

// AppendWelcome appends the first frame of a connection (§WebSocket):
// {"type":"welcome","channel":..,"node":..,"region":..[,"user":..]}.
func AppendWelcome(buf []byte, channel, node, region, user string) []byte {
	buf = append(buf, `{"type":"welcome","channel":"`...)
	buf = append(buf, channel...)
	buf = append(buf, `","node":"`...)
	buf = append(buf, node...)
	buf = append(buf, `","region":`...)
	buf = appendString(buf, region)
	if user != "" {
		buf = append(buf, `,"user":`...)
		buf = appendString(buf, user)
	}
	return append(buf, '}')
}

// AppendReply appends {"type":typ[,"id":id]}: an ack or a pong. id is a
// client's id as it sent it, already checked to be a JSON number or
// string (see ParseClientFrame), or nil.
func AppendReply(buf []byte, typ string, id json.RawMessage) []byte {
	buf = append(buf, `{"type":"`...)
	buf = append(buf, typ...)
	buf = append(buf, '"')
	buf = appendID(buf, id)
	return append(buf, '}')
}

// AppendJoinAck appends the ack of a join that resumed from an offset:
// {"type":"ack"[,"id":id],"recovered":recovered}.
func AppendJoinAck(buf []byte, id json.RawMessage, recovered bool) []byte {
	buf = append(buf, `{"type":"ack"`...)
	buf = appendID(buf, id)
	buf = append(buf, `,"recovered":`...)
	buf = strconv.AppendBool(buf, recovered)
	return append(buf, '}')
}

// AppendSendAck appends the ack of a send to a recoverable or latest
// group: {"type":"ack"[,"id":id],"offset":..,"duplicate":..}.
func AppendSendAck(buf []byte, id json.RawMessage, offset uint64, duplicate bool) []byte {
	buf = append(buf, `{"type":"ack"`...)
	buf = appendID(buf, id)
	buf = append(buf, `,"offset":`...)
	buf = strconv.AppendUint(buf, offset, 10)
	buf = append(buf, `,"duplicate":`...)
	buf = strconv.AppendBool(buf, duplicate)
	return append(buf, '}')
}

// AppendDataReply appends an application's answer to its own frame type:
// {"type":"reply"[,"id":id],"data":data}, data one compact JSON value.
func AppendDataReply(buf []byte, id json.RawMessage, data []byte) []byte {
	buf = append(buf, `{"type":"reply"`...)
	buf = appendID(buf, id)
	buf = append(buf, `,"data":`...)
	buf = append(buf, data...)
	return append(buf, '}')
}

// AppendError appends {"type":"error"[,"id":id],"code":..,"message":..}
// (§WebSocket "Any refusal").
func AppendError(buf []byte, id json.RawMessage, code, message string) []byte {
	buf = append(buf, `{"type":"error"`...)
	buf = appendID(buf, id)
	buf = append(buf, `,"code":`...)
	buf = appendString(buf, code)
	buf = append(buf, `,"message":`...)
	buf = appendString(buf, message)
	return append(buf, '}')
}

// AppendGap appends {"type":"gap","group":..,"epoch":..}: the group's
// history lost messages, its offsets start again in epoch.
func AppendGap(buf []byte, group, epoch string) []byte {
	buf = append(buf, `{"type":"gap","group":"`...)
	buf = append(buf, group...)
	buf = append(buf, `","epoch":"`...)
	buf = append(buf, epoch...)
	return append(buf, `"}`...)
}

// AppendGroupEvent appends {"type":typ,"group":..}: TypeJoined or
// TypeLeft, a membership the server changed.
func AppendGroupEvent(buf []byte, typ, group string) []byte {
	buf = append(buf, `{"type":"`...)
	buf = append(buf, typ...)
	buf = append(buf, `","group":"`...)
	buf = append(buf, group...)
	return append(buf, `"}`...)
}

// AppendPresence appends {"type":"presence","group":..,"event":..,
// "member":member}: event is "join" or "leave", member one JSON object
// (the member as encoded by its owner).
func AppendPresence(buf []byte, group, event string, member []byte) []byte {
	buf = append(buf, `{"type":"presence","group":"`...)
	buf = append(buf, group...)
	buf = append(buf, `","event":`...)
	buf = appendString(buf, event)
	buf = append(buf, `,"member":`...)
	buf = append(buf, member...)
	return append(buf, '}')
}

func appendID(buf []byte, id json.RawMessage) []byte {
	if len(id) == 0 {
		return buf
	}
	buf = append(buf, `,"id":`...)
	return append(buf, id...)
}

// appendString appends s as a JSON string, escaped as encoding/json does.
func appendString(buf []byte, s string) []byte {
	b, _ := json.Marshal(s) // a string always encodes
	return append(buf, b...)
}
