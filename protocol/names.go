package protocol

import "net/http"

// Frame types of server frames (§WebSocket, and the README's additions).
const (
	TypeWelcome  = "welcome"  // first frame of every connection
	TypeMessage  = "message"  // a delivery, to a group or to one channel
	TypeAck      = "ack"      // a client frame done
	TypePong     = "pong"     // the answer to ping
	TypeError    = "error"    // a refusal, with a code
	TypeGap      = "gap"      // a recoverable group lost history: resume is impossible
	TypePresence = "presence" // a member joined or left, or a presence answer
	TypeJoined   = "joined"   // the server joined the connection to a group
	TypeLeft     = "left"     // the server removed the connection from a group
	TypeReply    = "reply"    // an application's answer to its own frame type
)

// Frame types of client frames (§WebSocket, client frames).
const (
	TypeJoin  = "join"
	TypeLeave = "leave"
	TypeSend  = "send"
	TypePing  = "ping"
	// TypeRefresh hands the server a new connection token.
	TypeRefresh = "refresh"
)

// Error codes, stable parts of the protocol, shared by WebSocket error
// frames and HTTP error bodies (§WebSocket "Any refusal", §HTTP server API).
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

// HTTPStatus is the HTTP status of a refusal with code (§HTTP server API).
// A code of the application's own (from a hook or a consumer) is a
// refusal: 403.
func HTTPStatus(code string) int {
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
	return http.StatusForbidden
}

// WebSocket close codes the server sends (§WebSocket, §Shutdown, and
// the README's additions).
const (
	CloseGoingAway      = 1001 // the instance stops
	CloseTooLarge       = 1009 // a client frame over the size limit
	CloseServiceRestart = 1012 // planned: reconnect, maybe elsewhere (drain, max age, NATS lost); see ReconnectReason
	CloseTokenExpired   = 4001 // the token expired without a refresh: reconnect with a new one
	CloseDisconnected   = 4003 // a backend disconnected the connection or its user
	CloseSlowConsumer   = 4008 // the outbox overflowed: the client missed messages
)
