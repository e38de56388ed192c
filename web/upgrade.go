package web

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"path"
	"strings"
)

// isUpgrade reports whether r is a WebSocket upgrade that the WebSocket
// library would accept, from an allowed Origin, so that nothing is spent
// on one it would refuse (no slot, no token check, no connect hook). It
// follows the checks of coder/websocket's Accept, which answers the
// refusals itself.
func isUpgrade(r *http.Request, originPatterns []string) bool {
	key := r.Header.Values("Sec-WebSocket-Key")
	if !r.ProtoAtLeast(1, 1) || r.Method != http.MethodGet ||
		!hasToken(r.Header, "Connection", "upgrade") || !hasToken(r.Header, "Upgrade", "websocket") ||
		r.Header.Get("Sec-WebSocket-Version") != "13" || len(key) != 1 {
		return false
	}
	if v, err := base64.StdEncoding.DecodeString(strings.TrimSpace(key[0])); err != nil || len(v) != 16 {
		return false
	}
	return originAllowed(r, originPatterns)
}

// originAllowed reports whether r has no Origin, this host's, or one that
// a pattern matches (path.Match, case-insensitive, against the host, or
// against scheme://host for a pattern with "://").
func originAllowed(r *http.Request, patterns []string) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	if strings.EqualFold(r.Host, u.Host) {
		return true
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, err := path.Match(strings.ToLower(p), strings.ToLower(target)); err == nil && ok {
			return true
		}
	}
	return false
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
