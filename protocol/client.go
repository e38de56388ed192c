package protocol

import (
	"encoding/json"
	"errors"
	"strconv"
)

// Error is a refusal: a protocol code (Code*, or an application's own)
// and a human message. It is what an error frame and an HTTP error body
// carry.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ClientFrame is one frame from a client (§WebSocket, client frames, and
// the README's additions). Unknown fields are ignored.
type ClientFrame struct {
	Type  string          `json:"type"`
	Group string          `json:"group"`
	ID    json.RawMessage `json:"id"` // a JSON number or string, raw, or nil
	Data  json.RawMessage `json:"data"`
	Token string          `json:"token"` // join: a per-group token; refresh: a new connection token
	Raw   json.RawMessage `json:"-"`     // the whole frame, for an application's own types

	// Presence (join) asks for the group's join and leave events; Limit,
	// CountOnly and By shape a presence query.
	Presence  bool   `json:"presence"`
	Limit     *int   `json:"limit"`
	CountOnly bool   `json:"count_only"`
	By        string `json:"by"`

	// Since (join) resumes a recoverable group after an offset.
	Since *Since `json:"since"`
	// IdempotencyKey (send) makes a retried send deliver once.
	IdempotencyKey string `json:"idempotency_key"`
	// Echo (send), when false, skips the sender's own connection.
	Echo *bool `json:"echo"`
}

// Since is where a join resumes a recoverable group: after Offset, in Epoch.
type Since struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

// ParseClientFrame decodes a client frame; a refusal is an *Error with
// CodeInvalidJSON or CodeInvalidFrame. The id, when present, must be a
// number or a string; it is kept raw, to be echoed as sent. On error the
// returned frame still carries the id if it could be read, so that the
// error frame can answer it. The caller bounds p's size.
func ParseClientFrame(p []byte) (ClientFrame, error) {
	var f ClientFrame
	if len(p) == 0 || firstNonSpace(p) != '{' {
		return f, &Error{CodeInvalidJSON, "a frame must be one JSON object"}
	}
	if err := json.Unmarshal(p, &f); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			f.ID = validID(f.ID)
			return f, &Error{CodeInvalidFrame, "field " + strconv.Quote(te.Field) + " has the wrong type"}
		}
		return ClientFrame{}, &Error{CodeInvalidJSON, "a frame must be one JSON object"}
	}
	f.Raw = p
	if string(f.ID) == "null" {
		f.ID = nil
	}
	if f.ID != nil && validID(f.ID) == nil {
		f.ID = nil
		return f, &Error{CodeInvalidFrame, `"id" must be a number or a string`}
	}
	return f, nil
}

// validID returns a client frame's id if it is a JSON number or string, else nil.
func validID(id json.RawMessage) json.RawMessage {
	if len(id) == 0 {
		return nil
	}
	switch c := id[0]; {
	case c == '"', c == '-', c >= '0' && c <= '9':
		return id
	}
	return nil
}

func firstNonSpace(p []byte) byte {
	for _, c := range p {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c
	}
	return 0
}
