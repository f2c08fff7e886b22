package proxy

import (
	"net/http"
	"strings"
	"testing"
)

func TestParseTarget(t *testing.T) {
	tests := []struct {
		uri, prefix string
		path, query string
		admin, ok   bool
	}{
		{"/v1/users/inquiryUserInfo", "", "/v1/users/inquiryUserInfo", "", false, true},
		{"/v1/users/inquiryUserInfo?a=1&b=2", "", "/v1/users/inquiryUserInfo", "a=1&b=2", false, true},
		{"/v1/pay:confirm/x-y_z~1.2", "", "/v1/pay:confirm/x-y_z~1.2", "", false, true},
		{"/v1/%61bc", "", "/v1/abc", "", false, true}, // decoded once
		{"/ams/api/v1/authorizations/applyToken", "/ams/api", "/v1/authorizations/applyToken", "", false, true},
		{"/v1/authorizations/applyToken", "/ams/api", "/v1/authorizations/applyToken", "", false, true},
		{"/ams/apix/v1", "/ams/api", "/ams/apix/v1", "", false, true}, // not the prefix
		{"/ams/api/tokenproxy/customers/c1", "/ams/api", "", "", false, false},
		{"/tokenproxy/customers/a+b=c", "", "/tokenproxy/customers/a+b=c", "", true, true},
		{"/tokenproxy/customers/c1/refresh", "", "/tokenproxy/customers/c1/refresh", "", true, true},
		{"/tokenproxy%2Fcustomers/c1", "", "", "", false, false},
		{"/%74okenproxy/customers/c1", "", "/tokenproxy/customers/c1", "", true, true}, // one decoding, one routing
	}
	bad := []string{
		"/v1/authorizations/applyToken%3F", "/v1/a%23b", "/v1/a%25b", "/v1/a%2525", "/v1/a;b", "/v1/a%3Bb",
		"/v1/a\\b", "/v1/a%5Cb", "/v1//a", "/v1/./a", "/v1/../a", "/v1/%2E%2E/a", "/v1/a%00", "/v1/a%0D%0A",
		"/v1/a%09", "/v1/a%20b", "/v1/é", "/v1/%C3%A9", "/v1/a%2Fb", "/v1/a%2fb", "/v1/a%zz", "/v1/a/", "/",
		"/v1/a?b#c", "/v1/a?b=%00\x01", "*", "http://evil.example/v1/a", "/tokenproxy/customers/a%3Fb",
		"/tokenproxy/customers/../x", "/tokenproxy//customers", "/v1/a@b", "/v1/a!b", "/v1/a$b", "/v1/a'b",
		"/v1/" + strings.Repeat("a", 1021),
	}
	for _, tt := range tests {
		r := &http.Request{RequestURI: tt.uri}
		got, err := parseTarget(r, tt.prefix)
		if (err == nil) != tt.ok {
			t.Errorf("%q: err %v, want ok %v", tt.uri, err, tt.ok)
			continue
		}
		if tt.ok && (got.path != tt.path || got.query != tt.query || got.admin != tt.admin) {
			t.Errorf("%q: got %+v, want path %q query %q admin %v", tt.uri, got, tt.path, tt.query, tt.admin)
		}
	}
	for _, uri := range bad {
		if got, err := parseTarget(&http.Request{RequestURI: uri}, ""); err == nil {
			t.Errorf("%q: accepted as %+v", uri, got)
		} else if pe := classify(err); pe.status != 400 || pe.code != "PARAM_ILLEGAL" {
			t.Errorf("%q: %d %s, want 400 PARAM_ILLEGAL", uri, pe.status, pe.code)
		}
	}
}

func TestPassThrough(t *testing.T) {
	valid := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tests := []struct {
		name  string
		hdr   http.Header
		trace string
		reqID string
	}{
		{"valid", http.Header{"Traceparent": {valid}, "X-Request-Id": {"req-1"}}, valid, "req-1"},
		{"upper-case hex", http.Header{"Traceparent": {strings.ToUpper(valid)}}, "", ""},
		{"zero trace id", http.Header{"Traceparent": {"00-00000000000000000000000000000000-00f067aa0ba902b7-01"}}, "", ""},
		{"version ff", http.Header{"Traceparent": {"ff" + valid[2:]}}, "", ""},
		{"short", http.Header{"Traceparent": {valid[:20]}}, "", ""},
		{"two values", http.Header{"Traceparent": {valid, valid}}, "", ""},
		{"request id too long", http.Header{"X-Request-Id": {strings.Repeat("a", 129)}}, "", ""},
		{"request id with space", http.Header{"X-Request-Id": {"a b"}}, "", ""},
		{"request id with control", http.Header{"X-Request-Id": {"a\x7fb"}}, "", ""},
	}
	for _, tt := range tests {
		got := passThrough(tt.hdr)
		if got.Get("Traceparent") != tt.trace || got.Get("X-Request-Id") != tt.reqID {
			t.Errorf("%s: got %v", tt.name, got)
		}
	}
	if got := passThrough(http.Header{"Tracestate": {strings.Repeat("a", 513)}}); got.Get("Tracestate") != "" {
		t.Error("tracestate over 512 passed")
	}
	if got := passThrough(http.Header{"Tracestate": {"rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"}}); got.Get("Tracestate") == "" {
		t.Error("valid tracestate dropped")
	}
}
