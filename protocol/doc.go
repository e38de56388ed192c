// Package protocol is groupcast's wire protocol in one place: the names of
// frame types, error codes and close codes, the encoders of every server
// frame and the one decoder of server frames that Go clients use (Decode,
// and View for loops that decode without allocating).
//
// The contract is PROTOCOL.md (sections cited as §WebSocket, §Shutdown,
// ...) with the additions documented in the README. The package depends on
// the standard library only, so that the Go client pulls nothing new, and
// it knows no transport: the bytes of one encoded frame are one JSON
// object, the data of one WebSocket text frame (several joined by '\n')
// or of one Server-Sent Event.
//
// Encoders append to a caller's buffer and copy the payload once, so a
// delivery is encoded once and shared by every member it reaches.
package protocol
