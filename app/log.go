package main

import (
	"io"
	"log/slog"
	"os"
)

// newLogger returns a JSON logger that Cloud Logging reads (severity,
// message, time) or, on a terminal, a readable text logger.
func newLogger(w io.Writer, format string, level slog.Level) *slog.Logger {
	if format == "auto" {
		format = "json"
		if isTerminal(w) {
			format = "text"
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: cloudLogging}))
}

// cloudLogging renames slog's keys to those of Cloud Logging's structured
// logs: severity (with WARNING for WARN) and message.
func cloudLogging(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.LevelKey:
		a.Key = "severity"
		if lvl, ok := a.Value.Any().(slog.Level); ok {
			switch {
			case lvl >= slog.LevelError:
				a.Value = slog.StringValue("ERROR")
			case lvl >= slog.LevelWarn:
				a.Value = slog.StringValue("WARNING")
			case lvl >= slog.LevelInfo:
				a.Value = slog.StringValue("INFO")
			default:
				a.Value = slog.StringValue("DEBUG")
			}
		}
	case slog.MessageKey:
		a.Key = "message"
	}
	return a
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
