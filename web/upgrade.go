package web

import (
	"encoding/base64"
	"net/http"
	"strings"
)

// isUpgrade reports whether r is a WebSocket upgrade that the WebSocket
// library would accept (the Origin aside: checkOrigin decides it), so that
// nothing is spent on one it would refuse (no slot, no token check, no
// connect hook). It follows the checks of coder/websocket's Accept, which
// answers the refusals itself.
func isUpgrade(r *http.Request) bool {
	key := r.Header.Values("Sec-WebSocket-Key")
	if !r.ProtoAtLeast(1, 1) || r.Method != http.MethodGet ||
		!hasToken(r.Header, "Connection", "upgrade") || !hasToken(r.Header, "Upgrade", "websocket") ||
		r.Header.Get("Sec-WebSocket-Version") != "13" || len(key) != 1 {
		return false
	}
	v, err := base64.StdEncoding.DecodeString(strings.TrimSpace(key[0]))
	return err == nil && len(v) == 16
}

// hasToken reports whether a comma-separated header holds token, in any case.
func hasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
