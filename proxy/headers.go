package proxy

import (
	"net/http"
	"strings"
)

// Limits of the tracing headers that pass through to the wallet.
const (
	maxTraceState = 512
	maxRequestID  = 128
)

// passThrough returns the headers that pass from the app to the wallet:
// traceparent only when it is a valid W3C traceparent, tracestate and
// X-Request-Id only within their length and character limits. Anything
// else is dropped, never an error: tracing must not fail a call.
// The answer is nil when none passes (most calls carry none).
func passThrough(h http.Header) http.Header {
	var out http.Header
	set := func(k, v string) {
		if out == nil {
			out = make(http.Header, 3)
		}
		out[k] = []string{v}
	}
	if v, ok := single(h, "Traceparent"); ok && validTraceparent(v) {
		set("Traceparent", v)
	}
	if v, ok := single(h, "Tracestate"); ok && len(v) <= maxTraceState && visible(v, true) {
		set("Tracestate", v)
	}
	if v, ok := single(h, "X-Request-Id"); ok && len(v) <= maxRequestID && visible(v, false) {
		set("X-Request-Id", v)
	}
	return out
}

func single(h http.Header, key string) (string, bool) {
	vs := h.Values(key)
	if len(vs) != 1 || vs[0] == "" {
		return "", false
	}
	return vs[0], true
}

// validTraceparent: version-traceid-parentid-flags, lower-case hex of 2,
// 32, 16 and 2 digits; version ff and all-zero ids are invalid.
func validTraceparent(v string) bool {
	parts := strings.Split(v, "-")
	if len(parts) != 4 || parts[0] == "ff" {
		return false
	}
	for i, n := range []int{2, 32, 16, 2} {
		p := parts[i]
		if len(p) != n {
			return false
		}
		zero := true
		for j := 0; j < len(p); j++ {
			c := p[j]
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
			if c != '0' {
				zero = false
			}
		}
		if zero && (i == 1 || i == 2) {
			return false
		}
	}
	return true
}

// visible: printable ASCII; spaces only where allowed (tracestate lists).
func visible(v string, spaces bool) bool {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == ' ' && spaces {
			continue
		}
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

// logIDs are the request's trace attributes for log lines about it.
func logIDs(h http.Header) []any {
	var out []any
	if v := h.Get("X-Request-Id"); v != "" {
		out = append(out, "request_id", v)
	}
	if v := h.Get("Traceparent"); v != "" {
		out = append(out, "trace_id", strings.Split(v, "-")[1])
	}
	return out
}
