package web

import (
	"crypto/subtle"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/labstack/echo/v4"
)

// authorize guards the server API: a Bearer API key when one is set,
// otherwise loopback callers only.
func (s *Server) authorize(next echo.HandlerFunc) echo.HandlerFunc {
	var wants [][]byte
	for _, k := range s.cfg.APIKeys {
		if k != "" {
			wants = append(wants, []byte("Bearer "+k))
		}
	}
	return func(c echo.Context) error {
		if len(wants) > 0 {
			got := []byte(c.Request().Header.Get(echo.HeaderAuthorization))
			ok := 0
			for _, want := range wants { // every key compared: no early exit
				ok |= subtle.ConstantTimeCompare(got, want)
			}
			if ok != 1 {
				return refuse(CodeUnauthorized, "a valid API key is required: Authorization: Bearer <API_KEY>")
			}
			return next(c)
		}
		if !isLoopback(c.Request().RemoteAddr) {
			return refuse(CodeUnauthorized, "API_KEY is not set, so only loopback callers may use the server API")
		}
		if err := localTool(c.Request()); err != nil {
			return err
		}
		return next(c)
	}
}

// localTool refuses, without an API key, a loopback request that a local
// tool did not make on its own: one a browser sent for a page (Origin,
// Sec-Fetch-*: a cross-site POST would be CSRF), one a proxy on this
// machine relayed (Forwarded, Via, X-Forwarded-*), or one for a Host that
// is not this machine (DNS rebinding: a page's own name made to point at
// 127.0.0.1).
func localTool(r *http.Request) error {
	for name := range r.Header {
		if name == "Origin" || name == "Forwarded" || name == "Via" ||
			strings.HasPrefix(name, "Sec-Fetch-") || strings.HasPrefix(name, "X-Forwarded-") {
			return refuse(CodeForbidden, "API_KEY is not set, so the server API serves local tools only, and this request carries "+
				name+" (sent by a browser or a proxy); set API_KEY to call it from there")
		}
	}
	if !isLocalHost(r.Host) {
		return refuse(CodeForbidden, "API_KEY is not set, so the server API serves local tools only, and Host names another machine; "+
			"use localhost or a loopback address, or set API_KEY")
	}
	return nil
}

// isLocalHost reports whether a Host header names this machine: localhost
// (or a name under it) or a loopback address, with any port.
func isLocalHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	return host == "localhost" || strings.HasSuffix(host, ".localhost") || isLoopbackIP(host)
}

// isLoopback reports whether a request's TCP peer is on this machine. It
// reads the connection's address, never a forwarded header.
func isLoopback(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	return err == nil && isLoopbackIP(host)
}

// isLoopbackIP reports whether ip is a loopback address.
func isLoopbackIP(ip string) bool {
	addr, err := netip.ParseAddr(ip)
	return err == nil && addr.Unmap().IsLoopback()
}
