package web

import (
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
)

// errOriginRefused refuses a browser page from a site not allowed to
// connect.
var errOriginRefused = refuse(CodeForbidden, "pages of this origin may not open WebSockets here (see ALLOWED_ORIGINS)")

// checkOriginPatterns reports the first pattern of AllowedOrigins that is
// not a valid path.Match pattern or has a scheme other than http(s).
func checkOriginPatterns(patterns []string) error {
	for _, p := range patterns {
		scheme, host, ok := strings.Cut(p, "://")
		if ok && (scheme != "http" && scheme != "https" || host == "") {
			return fmt.Errorf("allowed origin %q: want host or http(s)://host", p)
		}
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("allowed origin %q: %v", p, err)
		}
	}
	return nil
}

// checkOrigin lets a WebSocket be opened by a non-browser client (no
// Origin), by this server's own pages (the Origin's host is the request's
// Host), or by a page whose origin matches AllowedOrigins: a pattern
// with a scheme ("http://localhost:*") matches scheme and host, and a bare
// host pattern ("*.example.com") matches https pages only, since a page
// served over plain http can be rewritten by anyone on its path.
func (s *Server) checkOrigin(r *http.Request) error {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return errOriginRefused
	}
	if strings.EqualFold(u.Host, r.Host) {
		return nil
	}
	scheme, host := strings.ToLower(u.Scheme), strings.ToLower(u.Host)
	for _, p := range s.cfg.AllowedOrigins {
		p = strings.ToLower(p)
		target := host
		if strings.Contains(p, "://") {
			target = scheme + "://" + host
		} else if scheme != "https" {
			continue
		}
		if ok, _ := path.Match(p, target); ok {
			return nil
		}
	}
	return errOriginRefused
}
