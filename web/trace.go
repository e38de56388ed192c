package web

import (
	"net/http"
	"strings"
)

// traceAttrs returns the Cloud Logging trace fields of a request that came
// through Google's front end (X-Cloud-Trace-Context or traceparent).
func traceAttrs(r *http.Request, project string) []any {
	var trace, span string
	if h := r.Header.Get("X-Cloud-Trace-Context"); h != "" {
		trace, span, _ = strings.Cut(h, "/")
		span, _, _ = strings.Cut(span, ";")
	} else if h := r.Header.Get("traceparent"); h != "" {
		// version-trace-span-flags
		if parts := strings.Split(h, "-"); len(parts) == 4 {
			trace, span = parts[1], parts[2]
		}
	}
	if trace == "" || project == "" || !isHex(trace) {
		return nil
	}
	attrs := []any{"logging.googleapis.com/trace", "projects/" + project + "/traces/" + trace}
	if span != "" {
		attrs = append(attrs, "logging.googleapis.com/spanId", span)
	}
	return attrs
}

func isHex(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return len(s) > 0 && len(s) <= 64
}
