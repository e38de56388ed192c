package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
)

// Frame is one decoded server object, of any type: the fields a type does
// not have are zero. Unknown fields are ignored (§WebSocket "clients
// ignore unknown fields"); Raw keeps the whole object for them.
type Frame struct {
	Type    string          `json:"type"`
	ID      json.RawMessage `json:"id"`      // ack, pong, error: the id answered, raw
	Code    string          `json:"code"`    // error
	Message string          `json:"message"` // error
	Group   string          `json:"group"`   // message, gap, presence, joined, left
	Channel string          `json:"channel"` // welcome; message sent to one channel
	Node    string          `json:"node"`    // welcome
	Region  string          `json:"region"`  // welcome; message: where it was published
	User    string          `json:"user"`    // welcome
	Data    json.RawMessage `json:"data"`    // message
	Offset  uint64          `json:"offset"`  // message in a recoverable group; send ack
	Epoch   string          `json:"epoch"`   // message in a recoverable group (with Offset); gap
	Event   string          `json:"event"`   // presence: join or leave
	Member  json.RawMessage `json:"member"`  // presence
	// Recovered (join ack with since) tells whether every missed message
	// followed; Duplicate (send ack) that the idempotency key was seen.
	Recovered *bool  `json:"recovered"`
	Duplicate bool   `json:"duplicate"`
	Raw       []byte `json:"-"` // the whole object as received
}

// Decode decodes one server object. It fails on anything that is not one
// JSON object or whose known fields have the wrong JSON type; an object
// without a type decodes with Type "", which clients ignore as unknown.
func Decode(obj []byte) (Frame, error) {
	var f Frame
	if firstNonSpace(obj) != '{' {
		return Frame{}, errors.New("protocol: undecodable frame: not a JSON object")
	}
	if err := json.Unmarshal(obj, &f); err != nil {
		return Frame{}, fmt.Errorf("protocol: undecodable frame: %w", err)
	}
	f.Raw = obj
	return f, nil
}

// Objects yields the objects of one server WebSocket frame, which holds
// one or more separated by '\n' (§WebSocket); blank ones are skipped. The
// objects share p's memory.
func Objects(p []byte) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for len(p) > 0 {
			obj := p
			if i := bytes.IndexByte(p, '\n'); i >= 0 {
				obj, p = p[:i], p[i+1:]
			} else {
				p = nil
			}
			if len(bytes.TrimSpace(obj)) == 0 {
				continue
			}
			if !yield(obj) {
				return
			}
		}
	}
}
