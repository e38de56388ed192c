package protocol

import "strconv"

// The frames of the Server-Sent Events fallback (the README's "over plain
// HTTP"): the stream carries the same frames as a WebSocket, one per
// event, with a secret in its welcome and a close event at its end.

// AppendStreamWelcome appends the welcome of an SSE stream: AppendWelcome's
// frame with "secret" last, which the client sends with each POST of its
// frames to prove the stream is its own.
func AppendStreamWelcome(buf []byte, channel, node, region, user, secret string) []byte {
	buf = AppendWelcome(buf, channel, node, region, user)
	buf = append(buf[:len(buf)-1], `,"secret":`...)
	buf = appendString(buf, secret)
	return append(buf, '}')
}

// AppendClose appends the data of an SSE stream's close event:
// {"code":..,"reason":..[,"reconnect_within_ms":n]}, what a WebSocket
// would get in its close frame, with the spread a planned close asks for
// (see ReconnectWithin) read out of the reason.
func AppendClose(buf []byte, code int, reason string) []byte {
	buf = append(buf, `{"code":`...)
	buf = strconv.AppendInt(buf, int64(code), 10)
	buf = append(buf, `,"reason":`...)
	buf = appendString(buf, reason)
	if within := ReconnectWithin(reason); within > 0 {
		buf = append(buf, `,"reconnect_within_ms":`...)
		buf = strconv.AppendInt(buf, within.Milliseconds(), 10)
	}
	return append(buf, '}')
}
