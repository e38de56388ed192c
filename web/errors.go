package web

import (
	"errors"
	"net/http"

	"github.com/labstack/echo/v4"
)

// httpError writes every HTTP error as {"error":{"code":..,"message":..}}.
func (s *Server) httpError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var he *echo.HTTPError
	if errors.As(err, &he) {
		code := CodeInternal
		switch he.Code {
		case http.StatusNotFound:
			code = CodeNotFound
		case http.StatusMethodNotAllowed:
			code = "method_not_allowed"
		case http.StatusRequestEntityTooLarge:
			code = CodeTooLarge
		}
		msg, _ := he.Message.(string)
		if msg == "" {
			msg = http.StatusText(he.Code)
		}
		s.metrics.errors.WithLabelValues(code).Inc()
		writeError(c, he.Code, code, msg)
		return
	}
	code, message, status := classify(err)
	if code == CodeInternal {
		s.log.Error("request failed", "method", c.Request().Method, "path", c.Path(), "error", err)
	}
	s.metrics.errors.WithLabelValues(code).Inc()
	writeError(c, status, code, message)
}

func writeError(c echo.Context, status int, code, message string) error {
	type body struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	return c.JSON(status, map[string]body{"error": {code, message}})
}
