package protocol

import (
	"strconv"
	"strings"
	"time"
)

// reconnectKey names, in a 1012 close reason, the span over which the
// server asks clients to spread their reconnects (§Shutdown; the README's
// planned closes): "<reason> reconnect_within_ms=<n>".
const reconnectKey = "reconnect_within_ms="

// maxMillis is the most milliseconds a time.Duration holds.
const maxMillis = int64(1<<63-1) / int64(time.Millisecond)

// ReconnectReason is reason with the spread within appended.
func ReconnectReason(reason string, within time.Duration) string {
	return reason + " " + reconnectKey + strconv.FormatInt(within.Milliseconds(), 10)
}

// ReconnectWithin reads the spread a close reason asks for: the first
// space-separated field reconnect_within_ms=<n> with n a positive integer
// of milliseconds; 0 when there is none. Clients cap what they honour.
func ReconnectWithin(reason string) time.Duration {
	for _, f := range strings.Fields(reason) {
		if v, ok := strings.CutPrefix(f, reconnectKey); ok {
			if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 {
				return time.Duration(min(ms, maxMillis)) * time.Millisecond
			}
		}
	}
	return 0
}
