package proxy

import (
	"testing"
)

func TestListParameters(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		method, query string
		status        int
		code, next    string
	}{
		{"GET", "?state=reauthorization_required", 200, "", "reauthorization_required/100"},
		{"GET", "?state=valid&limit=1", 200, "", "valid/1"},
		{"GET", "?state=expired&limit=1000&cursor=abc", 200, "", "expired/1000"},
		{"GET", "?state=refreshing", 200, "", "refreshing/100"},
		{"GET", "", 400, "PARAM_ILLEGAL", ""},
		{"GET", "?state=gone", 400, "PARAM_ILLEGAL", ""},
		{"GET", "?state=valid&limit=0", 400, "PARAM_ILLEGAL", ""},
		{"GET", "?state=valid&limit=1001", 400, "PARAM_ILLEGAL", ""},
		{"GET", "?state=valid&limit=ten", 400, "PARAM_ILLEGAL", ""},
		{"GET", "?state=valid&cursor=bad", 400, "PARAM_ILLEGAL", ""},
		{"GET", "?state=valid&state=expired", 400, "PARAM_ILLEGAL", ""},
		{"GET", "?state=valid&other=1", 400, "PARAM_ILLEGAL", ""},
		{"GET", "?state=valid&limit=%zz", 400, "PARAM_ILLEGAL", ""},
		{"POST", "?state=valid", 405, "METHOD_NOT_ALLOWED", ""},
		{"DELETE", "", 405, "METHOD_NOT_ALLOWED", ""},
	} {
		status, body, _ := f.do(t, tc.method, "/tokenproxy/customers"+tc.query, "", nil)
		if status != tc.status || resultCode(body) != tc.code {
			t.Errorf("%s %s: %d %s, want %d %s", tc.method, tc.query, status, resultCode(body), tc.status, tc.code)
			continue
		}
		if status == 200 {
			if next, _ := body["nextCursor"].(string); next != tc.next {
				t.Errorf("%s: nextCursor %q, want %q (state and limit passed on)", tc.query, next, tc.next)
			}
			if c, _ := body["customers"].([]any); len(c) != 1 {
				t.Errorf("%s: customers %v", tc.query, body["customers"])
			}
		}
	}
}
