package web

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/groupcast/groupcast/broker"
)

// Error codes, stable parts of the protocol, shared by WebSocket error
// frames and HTTP error bodies.
const (
	CodeInvalidJSON   = "invalid_json"    // not one JSON object / not JSON
	CodeInvalidFrame  = "invalid_frame"   // a binary frame, or a field of the wrong type
	CodeUnknownType   = "unknown_type"    // "type" missing or unknown
	CodeInvalidType   = "invalid_type"    // a custom frame type breaks the naming rule
	CodeInvalidGroup  = "invalid_group"   // group name breaks the naming rule
	CodeInvalidChan   = "invalid_channel" // channel name is not one
	CodeInvalidData   = "invalid_data"    // "data" missing or not JSON
	CodeForbidden     = "forbidden"       // not permitted (client sends disabled)
	CodeTooManyGroups = "too_many_groups" // the connection is in as many groups as allowed
	CodeTooLarge      = "too_large"       // the payload is over the limit
	CodeUnavailable   = "unavailable"     // NATS cannot deliver now; retry later
	CodeUnauthorized  = "unauthorized"    // missing or wrong API key
	CodeNotFound      = "not_found"       // no such route
	CodeRateLimited   = "rate_limited"    // too many frames or connections; slow down
	CodeInternal      = "internal"        // a bug; logged
)

// apiError is a refusal with a protocol code and a human message.
type apiError struct {
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func refuse(code, message string) error { return &apiError{code, message} }

// classify maps any error to its protocol code, message and HTTP status.
// It is the one place where errors become codes.
func classify(err error) (code, message string, status int) {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		code, message = ae.code, ae.message
	case errors.Is(err, broker.ErrInvalidGroup):
		code, message = CodeInvalidGroup, "group names are 1-100 letters, digits, '-', '_' or '.', with no leading, trailing or double '.'"
	case errors.Is(err, broker.ErrInvalidChannel):
		code, message = CodeInvalidChan, "not a channel name"
	case errors.Is(err, broker.ErrInvalidData):
		code, message = CodeInvalidData, "data must be one JSON value"
	case errors.Is(err, broker.ErrTooLarge):
		code, message = CodeTooLarge, "payload too large"
	case errors.Is(err, broker.ErrIdempotencyUnsupported):
		code, message = CodeInvalidData, "idempotency keys need a recoverable or latest group"
	case errors.Is(err, broker.ErrNoHistory):
		code, message = CodeNotFound, "this group keeps no history"
	case errors.Is(err, broker.ErrUnavailable):
		code, message = CodeUnavailable, "messaging is unavailable, retry later"
	case errors.Is(err, broker.ErrUnknownChannel):
		code, message = CodeUnavailable, "connection is closing"
	default:
		code, message = CodeInternal, "internal error"
	}
	return code, message, httpStatus(code)
}

// httpStatus is the HTTP status of a refusal with code.
func httpStatus(code string) int {
	switch code {
	case CodeInvalidJSON, CodeInvalidFrame, CodeUnknownType, CodeInvalidType, CodeInvalidGroup, CodeInvalidChan, CodeInvalidData:
		return http.StatusBadRequest
	case CodeForbidden:
		return http.StatusForbidden
	case CodeTooManyGroups, CodeRateLimited:
		return http.StatusTooManyRequests
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodeNotFound:
		return http.StatusNotFound
	case CodeInternal:
		return http.StatusInternalServerError
	}
	// A code of the application's own, from a hook or a Consumer: a refusal.
	return http.StatusForbidden
}

// clientFrame is one frame from a client. Unknown fields are ignored.
type clientFrame struct {
	Type  string          `json:"type"`
	Group string          `json:"group"`
	ID    json.RawMessage `json:"id"`
	Data  json.RawMessage `json:"data"`
	Token string          `json:"token"` // join: a per-group token; refresh: a new connection token
	raw   json.RawMessage // the whole frame, for a Consumer's own types

	// Presence (join) asks for the group's join and leave events; Limit,
	// CountOnly and By shape a presence query.
	Presence  bool   `json:"presence"`
	Limit     *int   `json:"limit"`
	CountOnly bool   `json:"count_only"`
	By        string `json:"by"`

	// Since (join) resumes a recoverable group after an offset.
	Since *struct {
		Offset uint64 `json:"offset"`
		Epoch  string `json:"epoch"`
	} `json:"since"`
	// IdempotencyKey (send) makes a retried send deliver once.
	IdempotencyKey string `json:"idempotency_key"`
	// Echo (send), when false, skips the sender's own connection.
	Echo *bool `json:"echo"`
}

// parseFrame decodes a client frame. The id, when present, must be a
// number or a string; it is kept raw and echoed as sent. On error the
// returned frame still carries the id if it could be read.
func parseFrame(p []byte) (clientFrame, error) {
	var f clientFrame
	if len(p) == 0 || firstNonSpace(p) != '{' {
		return f, refuse(CodeInvalidJSON, "a frame must be one JSON object")
	}
	if err := json.Unmarshal(p, &f); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			f.ID = frameID(f.ID)
			return f, refuse(CodeInvalidFrame, "field "+strconv.Quote(te.Field)+" has the wrong type")
		}
		return clientFrame{}, refuse(CodeInvalidJSON, "a frame must be one JSON object")
	}
	f.raw = p
	if string(f.ID) == "null" {
		f.ID = nil
	}
	if f.ID != nil && frameID(f.ID) == nil {
		f.ID = nil
		return f, refuse(CodeInvalidFrame, `"id" must be a number or a string`)
	}
	return f, nil
}

// frameID returns a client frame's id if it is a JSON number or string, else nil.
func frameID(id json.RawMessage) json.RawMessage {
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

// appendReply appends {"type":<typ>[,"id":<id>]}.
func appendReply(buf []byte, typ string, id json.RawMessage) []byte {
	buf = append(buf, `{"type":"`...)
	buf = append(buf, typ...)
	buf = append(buf, '"')
	if id != nil {
		buf = append(buf, `,"id":`...)
		buf = append(buf, id...)
	}
	return append(buf, '}')
}

// errorFrame encodes an error answer for the frame with the given id.
func errorFrame(id json.RawMessage, code, message string) []byte {
	frame := struct {
		Type    string          `json:"type"`
		ID      json.RawMessage `json:"id,omitempty"`
		Code    string          `json:"code"`
		Message string          `json:"message"`
	}{"error", id, code, message}
	b, _ := json.Marshal(frame) // cannot fail: id is a validated number or string
	return b
}
