package web

import (
	"errors"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/protocol"
)

// Error codes, stable parts of the protocol, shared by WebSocket error
// frames and HTTP error bodies; their home is package protocol.
const (
	CodeInvalidJSON   = protocol.CodeInvalidJSON
	CodeInvalidFrame  = protocol.CodeInvalidFrame
	CodeUnknownType   = protocol.CodeUnknownType
	CodeInvalidType   = protocol.CodeInvalidType
	CodeInvalidGroup  = protocol.CodeInvalidGroup
	CodeInvalidChan   = protocol.CodeInvalidChan
	CodeInvalidData   = protocol.CodeInvalidData
	CodeForbidden     = protocol.CodeForbidden
	CodeTooManyGroups = protocol.CodeTooManyGroups
	CodeTooLarge      = protocol.CodeTooLarge
	CodeUnavailable   = protocol.CodeUnavailable
	CodeUnauthorized  = protocol.CodeUnauthorized
	CodeNotFound      = protocol.CodeNotFound
	CodeRateLimited   = protocol.CodeRateLimited
	CodeInternal      = protocol.CodeInternal
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
	var pe *protocol.Error
	switch {
	case errors.As(err, &ae):
		code, message = ae.code, ae.message
	case errors.As(err, &pe):
		code, message = pe.Code, pe.Message
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
	return code, message, protocol.HTTPStatus(code)
}

// clientFrame is one frame from a client.
type clientFrame = protocol.ClientFrame
