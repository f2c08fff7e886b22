package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// hostileRow is one hostile request and the answer it must get. code ""
// means Go's HTTP server refuses the request itself, before any handler
// runs (its own plain-text answer, as the contract allows for malformed
// HTTP).
type hostileRow struct {
	name   string
	req    hreq
	status int
	code   string
}

// TestHostileRequests plays a hostile app against a real tokenproxy in
// front of walletsim (with a path prefix, /ams/api, and an inject path):
// every request of the table must get exactly its answer, and none may
// reach the wallet. A recorder in front of the wallet counts every request
// whatever its path (walletsim counts only the paths it serves), and
// walletsim's own counters must not move either. A valid authorization
// code is offered to the wallet through the hostile paths and must still
// be unused at the end. Every answer, the logs and /metrics are scanned
// for every token the wallet issued.
func TestHostileRequests(t *testing.T) {
	h := newHarness(t, "WALLETSIM_PATH_PREFIX=/ams/api")
	rec := newRecorder(t, h.tap.srv.URL)
	p := h.startProxy(
		"TOKENPROXY_WALLET_URL="+rec.srv.URL+"/ams/api",
		"TOKENPROXY_INJECT=/v1/payments/pay=paymentMethod.paymentMethodId",
		"TOKENPROXY_MAX_BODY_BYTES=4096",
	)
	const cust = "hostile-1"
	h.exchange(p, cust)
	if status, body, _ := do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": cust}); status != 200 || resultCode(body) != "SUCCESS" {
		t.Fatalf("a plain call before the table: %d %s", status, body)
	}
	victimCode := h.authCode("victim-1")
	exchangeBody := `{"grantType":"AUTHORIZATION_CODE","authCode":"` + victimCode + `"}`
	addr := strings.TrimPrefix(p.url, "http://")

	const (
		apply = "/v1/authorizations/applyToken"
		inq   = "/v1/users/inquiryUserInfo"
		pay   = "/v1/payments/pay"
	)
	ex := func(target string) hreq { return hreq{target: target, body: exchangeBody, noCustomer: true} }
	api := func(target string) hreq { return hreq{target: target, body: `{}`} }
	body := func(b string) hreq { return hreq{target: inq, body: b} }
	cust1 := func(v string) hreq { return hreq{target: inq, body: `{}`, headers: []string{"X-Customer-Id: " + v}} }
	nested := func(open, close string, n int) string {
		return `{"a":` + strings.Repeat(open, n-1) + strings.Repeat(close, n-1) + `}`
	}
	big := `{"pad":"` + strings.Repeat("x", 5000) + `"}`
	bigExchange := `{"grantType":"AUTHORIZATION_CODE","authCode":"` + victimCode + `","extendInfo":"` + strings.Repeat("x", 5000) + `"}`

	const bad, param, meth = http.StatusBadRequest, "PARAM_ILLEGAL", "METHOD_NOT_ALLOWED"
	rows := []hostileRow{
		// Paths: the token path moved with an encoded character.
		{"applyToken%3F with a valid authCode", ex(apply + "%3F"), bad, param},
		{"applyToken%3f lower-case", ex(apply + "%3f"), bad, param},
		{"applyToken%3F%3D", ex(apply + "%3F%3D"), bad, param},
		{"applyToken%23", ex(apply + "%23"), bad, param},
		{"applyToken with a raw # fragment", ex(apply + "#frag"), bad, param},
		{"applyToken%00", ex(apply + "%00"), bad, param},
		{"applyToken%0D%0A", ex(apply + "%0D%0A"), bad, param},
		{"applyToken%20", ex(apply + "%20"), bad, param},
		{"applyToken%09", ex(apply + "%09"), bad, param},
		{"applyToken;v=1", ex(apply + ";v=1"), bad, param},
		{"applyToken%3B", ex(apply + "%3B"), bad, param},
		{`raw backslash authorizations\applyToken`, ex(`/v1/authorizations\applyToken`), bad, param},
		{"%5C backslash", ex("/v1/authorizations%5CapplyToken"), bad, param},
		{"dot-dot segment", ex("/v1/x/../authorizations/applyToken"), bad, param},
		{"encoded dot-dot %2E%2E", ex("/v1/x/%2E%2E/authorizations/applyToken"), bad, param},
		{"dot segment", ex("/v1/./authorizations/applyToken"), bad, param},
		{"encoded dot segment %2E", ex("/v1/%2E/authorizations/applyToken"), bad, param},
		{"empty segment //", ex("/v1//authorizations/applyToken"), bad, param},
		{"trailing slash", ex(apply + "/"), bad, param},
		{"encoded slash %2F", ex("/v1/authorizations%2FapplyToken"), bad, param},
		{"encoded slash %2f", ex("/v1%2fauthorizations/applyToken"), bad, param},
		{"encoded percent %25", api(inq + "%25"), bad, param},
		{"double-encoded slash %252F", ex("/v1/authorizations%252FapplyToken"), bad, param},
		{"encoded NUL in an API path", api(inq + "%00"), bad, param},
		{"encoded CR LF header injection", api(inq + "%0D%0AX-Injected:%201"), bad, param},
		{"encoded LF", api(inq + "%0A"), bad, param},
		{"encoded DEL", api(inq + "%7F"), bad, param},
		{"raw non-ASCII", api(inq + "\xc3\xa9"), bad, param},
		{"encoded non-ASCII %C3%A9", api(inq + "%C3%A9"), bad, param},
		{"fullwidth solidus %EF%BC%8F", api("/v1/users%EF%BC%8FinquiryUserInfo"), bad, param},
		{"encoded space in a segment", api("/v1/users/inquiry%20UserInfo"), bad, param},
		{"path without a leading slash (asterisk)", api("*"), bad, param},
		{"absolute-URI naming the proxy", api("http://" + addr + inq), bad, param},
		{"absolute-URI naming another host", ex("http://wallet.evil.example" + apply), bad, param},
		{"bad escape %zz", api(inq + "%zz"), bad, ""},
		{"raw NUL in the request line", api(inq + "\x00"), bad, ""},
		{"request line over MaxHeaderBytes", api("/v1/" + strings.Repeat("a", 70<<10)), http.StatusRequestHeaderFieldsTooLarge, ""},
		{"token path in upper case, authCode", ex("/V1/authorizations/applyToken"), bad, param},
		{"token path in lower case, authCode", ex("/v1/authorizations/applytoken"), bad, param},
		{"token path with a Kelvin sign for K", ex("/v1/authorizations/applyTo%E2%84%AAen"), bad, param},
		{"query with raw non-ASCII", api(inq + "?x=\xc3\xa9"), bad, param},
		{"query with a raw #", api(inq + "?x#y"), bad, param},
		{"query over 4096 bytes", api(inq + "?x=" + strings.Repeat("q", 4100)), bad, param},
		// The inject path (token in paymentMethod.paymentMethodId) moved.
		{"inject path%3F", api(pay + "%3F"), bad, param},
		{"inject path%2F", api(pay + "%2F"), bad, param},
		{"inject path%00", api(pay + "%00"), bad, param},
		{"inject path;x", api(pay + ";x"), bad, param},
		{"inject path/.", api(pay + "/."), bad, param},
		{"inject path%23", api(pay + "%23"), bad, param},
		{"inject field blocked by a non-object", hreq{target: pay, body: `{"paymentMethod":"card"}`}, bad, param},
		// The wallet URL's prefix (/ams/api) in tricks.
		{"prefix then ..", api("/ams/api/../v1/users/inquiryUserInfo"), bad, param},
		{"prefix%2F", ex("/ams/api%2Fv1/authorizations/applyToken"), bad, param},
		{"prefix then //", ex("/ams/api//v1/authorizations/applyToken"), bad, param},
		{"prefix glued to the path, authCode", ex("/ams/apiv1/authorizations/applyToken"), bad, param},
		{"prefix twice, authCode", ex("/ams/api/ams/api" + apply), bad, param},
		{"prefix then applyToken%3F", ex("/ams/api" + apply + "%3F"), bad, param},
		{"prefix then an admin path", hreq{method: "GET", target: "/ams/api/tokenproxy/customers/" + cust}, bad, param},
		{"prefix then an admin refresh, POST", hreq{target: "/ams/api/tokenproxy/customers/" + cust + "/refresh", body: `{}`}, bad, param},
		{"admin prefix then ..", ex("/tokenproxy/../v1/authorizations/applyToken"), bad, param},
		{"admin prefix %2F", hreq{method: "GET", target: "/tokenproxy%2Fcustomers/" + cust}, bad, param},
		// Admin paths: the customer id segment.
		{"admin GET id%3F", hreq{method: "GET", target: "/tokenproxy/customers/" + cust + "%3F"}, bad, param},
		{"admin DELETE id%00", hreq{method: "DELETE", target: "/tokenproxy/customers/" + cust + "%00"}, bad, param},
		{"admin DELETE id%2F", hreq{method: "DELETE", target: "/tokenproxy/customers/" + cust + "%2F"}, bad, param},
		{"admin DELETE id%20", hreq{method: "DELETE", target: "/tokenproxy/customers/" + cust + "%20"}, bad, param},
		{"admin DELETE id/", hreq{method: "DELETE", target: "/tokenproxy/customers/" + cust + "/"}, bad, param},
		{"admin DELETE id%40x", hreq{method: "DELETE", target: "/tokenproxy/customers/" + cust + "%40x"}, bad, param},
		{"admin refresh via ..%2F", hreq{target: "/tokenproxy/customers/" + cust + "/..%2Frefresh"}, bad, param},
		{"admin refresh via ..", hreq{target: "/tokenproxy/customers/x/../" + cust + "/refresh"}, bad, param},
		{"admin PUT", hreq{method: "PUT", target: "/tokenproxy/customers/" + cust, body: `{}`}, http.StatusMethodNotAllowed, meth},
		{"admin POST on the record", hreq{target: "/tokenproxy/customers/" + cust, body: `{}`}, http.StatusMethodNotAllowed, meth},
		{"admin GET refresh", hreq{method: "GET", target: "/tokenproxy/customers/" + cust + "/refresh"}, http.StatusMethodNotAllowed, meth},
		// Methods.
		{"GET an API path", hreq{method: "GET", target: inq}, http.StatusMethodNotAllowed, meth},
		{"PUT an API path", hreq{method: "PUT", target: inq, body: `{}`}, http.StatusMethodNotAllowed, meth},
		{"PATCH an API path", hreq{method: "PATCH", target: inq, body: `{}`}, http.StatusMethodNotAllowed, meth},
		{"DELETE the token path", hreq{method: "DELETE", target: apply, noCustomer: true}, http.StatusMethodNotAllowed, meth},
		{"GET the token path with an authCode", hreq{method: "GET", target: apply, body: exchangeBody, noCustomer: true}, http.StatusMethodNotAllowed, meth},
		{"TRACE", hreq{method: "TRACE", target: inq}, http.StatusMethodNotAllowed, meth},
		{"CONNECT authority-form", hreq{method: "CONNECT", target: "wallet.evil.example:443"}, http.StatusMethodNotAllowed, meth},
		{"CONNECT a wallet path", hreq{method: "CONNECT", target: inq, body: `{}`}, http.StatusMethodNotAllowed, meth},
		// Bodies.
		{"duplicate keys", body(`{"a":1,"a":2}`), bad, param},
		{"duplicate keys nested", body(`{"x":{"a":1,"a":2}}`), bad, param},
		{"duplicate accessToken", body(`{"accessToken":"x","accessToken":"y"}`), bad, param},
		{"duplicate keys, one escaped", body(`{"a":1,"\u0061":2}`), bad, param},
		{"duplicate authCode on the token path", ex(apply).withBody(`{"grantType":"AUTHORIZATION_CODE","authCode":"` + victimCode + `","authCode":"x"}`), bad, param},
		{"nesting 65 objects", body(nested(`{"a":`, `}`, 65)), bad, param},
		{"nesting 65 arrays", body(nested(`[`, `]`, 65)), bad, param},
		{"invalid UTF-8", body("{\"a\":\"\xff\xfe\"}"), bad, param},
		{"overlong UTF-8 slash", body("{\"a\":\"\xc0\xaf\"}"), bad, param},
		{"array body", body(`[]`), bad, param},
		{"string body", body(`"accessToken"`), bad, param},
		{"null body", body(`null`), bad, param},
		{"empty body", body(``), bad, param},
		{"two objects", body(`{}{}`), bad, param},
		{"byte order mark", body("\xef\xbb\xbf{}"), bad, param},
		{"truncated object", body(`{"a":`), bad, param},
		{"authCode on an API path", body(`{"authCode":"` + victimCode + `"}`), bad, param},
		{"grantType on an API path", body(`{"grantType":"REFRESH_TOKEN","refreshToken":"x"}`), bad, param},
		{"REFRESH_TOKEN grant on the token path", ex(apply).withBody(`{"grantType":"REFRESH_TOKEN","refreshToken":"stolen"}`), bad, param},
		{"unsupported grantType", ex(apply).withBody(`{"grantType":"PASSWORD","authCode":"x"}`), bad, "AUTH_CLIENT_UNSUPPORTED_GRANT_TYPE"},
		{"no grantType", ex(apply).withBody(`{"authCode":"` + victimCode + `"}`), bad, param},
		{"no authCode", ex(apply).withBody(`{"grantType":"AUTHORIZATION_CODE"}`), bad, param},
		{"authCode of 65 characters", ex(apply).withBody(`{"grantType":"AUTHORIZATION_CODE","authCode":"` + strings.Repeat("c", 65) + `"}`), bad, param},
		{"authCode with ?", ex(apply).withBody(`{"grantType":"AUTHORIZATION_CODE","authCode":"a?b"}`), bad, param},
		{"authCode with a control character", ex(apply).withBody(`{"grantType":"AUTHORIZATION_CODE","authCode":"a\u0000b"}`), bad, param},
		{"authCode not a string", ex(apply).withBody(`{"grantType":"AUTHORIZATION_CODE","authCode":12345}`), bad, param},
		{"token fields from the app, unknown customer", hreq{target: inq, body: `{"accessToken":"app-chosen-token","refreshToken":"app-chosen-refresh"}`, headers: []string{"X-Customer-Id: nobody-here"}}, http.StatusUnauthorized, "CUSTOMER_NOT_AUTHORIZED"},
		{"oversize body with Content-Length", body(big), http.StatusRequestEntityTooLarge, param},
		{"oversize body chunked", hreq{target: inq, body: big, chunked: true}, http.StatusRequestEntityTooLarge, param},
		{"oversize exchange with Content-Length", ex(apply).withBody(bigExchange), http.StatusRequestEntityTooLarge, param},
		{"oversize exchange chunked", hreq{target: apply, body: bigExchange, chunked: true, noCustomer: true}, http.StatusRequestEntityTooLarge, param},
		// Headers.
		{"customer id with a space", cust1("hostile 1"), bad, param},
		{"customer id with /", cust1("hostile/1"), bad, param},
		{"customer id with %2F", cust1("hostile%2F1"), bad, param},
		{"customer id with @", cust1("hostile@1"), bad, param},
		{"customer id with ?", cust1("hostile?1"), bad, param},
		{"customer id with #", cust1("hostile#1"), bad, param},
		{"customer id of 65 characters", cust1(strings.Repeat("c", 65)), bad, param},
		{"customer id non-ASCII", cust1("hostile-\xc3\xa9"), bad, param},
		{"customer id with a tab", cust1("hostile\t1"), bad, param},
		{"empty customer header", hreq{target: inq, body: `{}`, headers: []string{"X-Customer-Id:"}}, bad, param},
		{"duplicate customer header", hreq{target: inq, body: `{}`, headers: []string{"X-Customer-Id: " + cust, "X-Customer-Id: other"}}, bad, param},
		{"customer header with a raw CR", cust1("hostile\r1"), bad, ""},
		{"customer header with DEL", cust1("hostile\x7f1"), bad, ""},
		{"header block over MaxHeaderBytes", hreq{target: inq, body: `{}`, headers: []string{"X-Request-Id: " + strings.Repeat("r", 70<<10)}}, http.StatusRequestHeaderFieldsTooLarge, ""},
		{"two different Content-Lengths", hreq{target: inq, body: `{}`, headers: []string{"Content-Length: 7"}}, bad, ""},
		{"Transfer-Encoding other than chunked", hreq{target: inq, body: `{}`, headers: []string{"Transfer-Encoding: gzip"}}, http.StatusNotImplemented, ""},
	}
	if len(rows) < 40 {
		t.Fatalf("only %d hostile requests", len(rows))
	}

	beforeSim, beforeRec, beforeTap := h.stats().total(), rec.count(), h.tap.requests()
	var answers [][]byte
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			a := rawDo(t, addr, row.req.build(addr, cust))
			answers = append(answers, a.raw)
			if a.status != row.status {
				t.Fatalf("HTTP %d, want %d: %s", a.status, row.status, a.body)
			}
			if row.code == "" {
				// Go's own refusal: plain text, not the wallet's envelope.
				if a.code() != "" {
					t.Fatalf("Go's server should have refused it, yet the handler answered %s", a.body)
				}
				return
			}
			if a.code() != row.code || a.resultStatus() != "F" {
				t.Fatalf("answer %s, want %s with resultStatus F", a.body, row.code)
			}
			if ct := a.header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q", ct)
			}
		})
	}
	if calls := rec.since(beforeRec); len(calls) != 0 {
		for _, c := range calls {
			t.Errorf("reached the wallet: %.120q %.200s", c.uri, c.body)
		}
	}
	if n := h.tap.requests() - beforeTap; n != 0 {
		t.Errorf("%d hostile requests reached the tap", n)
	}
	if after := h.stats().total(); after != beforeSim {
		t.Errorf("walletsim counted %d calls during the table", after-beforeSim)
	}
	t.Logf("%d hostile requests: %d refused by the handler, %d by Go's server, %d reached the wallet",
		len(rows), countRows(rows, true), countRows(rows, false), rec.count()-beforeRec)

	t.Run("the victim's code was never presented", func(t *testing.T) {
		status, b, _ := do(t, "POST", p.url+apply, exchangeBody, nil)
		if status != 200 || resultCode(b) != "SUCCESS" {
			t.Fatalf("the code offered through hostile paths no longer works: %d %s", status, b)
		}
		answers = append(answers, b)
	})
	t.Run("the customer hostile DELETEs aimed at survives", func(t *testing.T) {
		status, b, _ := do(t, "GET", p.url+"/tokenproxy/customers/"+cust, "", nil)
		if status != 200 || !strings.Contains(string(b), `"state":"valid"`) {
			t.Fatalf("%d %s", status, b)
		}
		answers = append(answers, b)
	})

	t.Run("forwarded requests go to the one canonical path", func(t *testing.T) {
		answers = append(answers, checkForwarded(t, h, rec, p, addr, cust)...)
	})

	scanEverything(t, h.tap.allTokens(), answers, p)
}

func (r hreq) withBody(b string) hreq {
	r.body = b
	return r
}

func countRows(rows []hostileRow, handler bool) int {
	n := 0
	for _, r := range rows {
		if (r.code != "") == handler {
			n++
		}
	}
	return n
}

// checkForwarded sends the hostile requests that are legitimately
// forwarded (a canonical path sent encoded, the wallet's prefix sent by
// the app, tracing headers that fail their checks, token fields from the
// app) and checks what reached the wallet: the path it was matched as, the
// token where that path puts it, and no invalid tracing header. It returns
// the answers.
func checkForwarded(t *testing.T, h *harness, rec *recorder, p *proxyProc, addr, cust string) [][]byte {
	var answers [][]byte
	send := func(r hreq) (rawAnswer, walletCall) {
		t.Helper()
		n := rec.count()
		a := rawDo(t, addr, r.build(addr, cust))
		answers = append(answers, a.raw)
		calls := rec.since(n)
		if len(calls) != 1 {
			t.Fatalf("%d wallet calls for %q, want 1: %d %s", len(calls), r.target, a.status, a.body)
		}
		return a, calls[0]
	}
	tokenOf := func(c walletCall) (top string, injected string) {
		var m struct {
			AccessToken   string `json:"accessToken"`
			PaymentMethod struct {
				PaymentMethodID string `json:"paymentMethodId"`
			} `json:"paymentMethod"`
		}
		if err := json.Unmarshal(c.body, &m); err != nil {
			t.Fatalf("forwarded body %s: %v", c.body, err)
		}
		return m.AccessToken, m.PaymentMethod.PaymentMethodID
	}

	// An encoded letter decodes to the inject path: the token goes where
	// that path puts it, and the wallet is called at that same path.
	_, c := send(hreq{target: "/v1/payments/%70ay", body: `{"amount":1}`})
	if top, inj := tokenOf(c); c.uri != "/ams/api/v1/payments/pay" || top != "" || len(inj) < 12 {
		t.Errorf("encoded inject path: wallet called at %q, top-level token %t, injected token %t", c.uri, top != "", inj != "")
	}
	// The prefix sent by the app is not doubled; the query passes as the
	// query only.
	a, c := send(hreq{target: "/ams/api/v1/users/inquiryUserInfo?x=%3F", body: `{}`})
	if a.status != 200 || a.code() != "SUCCESS" || c.uri != "/ams/api/v1/users/inquiryUserInfo?x=%3F" {
		t.Errorf("prefixed path: %d %s, wallet called at %q", a.status, a.body, c.uri)
	}
	// Tracing headers that fail their checks are dropped, never an error.
	for _, hd := range []string{
		"Traceparent: 00-" + strings.Repeat("0", 32) + "-" + strings.Repeat("1", 16) + "-01",
		"Traceparent: ff-" + strings.Repeat("a", 32) + "-" + strings.Repeat("b", 16) + "-01",
		"Traceparent: 00-ABCDEF" + strings.Repeat("a", 26) + "-" + strings.Repeat("b", 16) + "-01",
		"Traceparent: 00-" + strings.Repeat("a", 32) + "-" + strings.Repeat("b", 16) + "-01-extra",
		"X-Request-Id: " + strings.Repeat("r", 129),
		"X-Request-Id: req-\xc3\xa9",
		"Tracestate: " + strings.Repeat("k=v,", 200),
	} {
		a, c := send(hreq{target: "/v1/users/inquiryUserInfo", body: `{}`, headers: []string{hd}})
		name, _, _ := strings.Cut(hd, ":")
		if a.status != 200 || a.code() != "SUCCESS" {
			t.Errorf("%.60q: %d %s", hd, a.status, a.body)
		}
		if v := c.header.Values(name); len(v) != 0 {
			t.Errorf("%.60q reached the wallet as %.60q", hd, v)
		}
	}
	// A valid traceparent and X-Request-Id pass (the control).
	tp := "00-" + strings.Repeat("a", 32) + "-" + strings.Repeat("b", 16) + "-01"
	_, c = send(hreq{target: "/v1/users/inquiryUserInfo", body: `{}`, headers: []string{"Traceparent: " + tp, "X-Request-Id: req-1"}})
	if c.header.Get("Traceparent") != tp || c.header.Get("X-Request-Id") != "req-1" {
		t.Errorf("valid tracing headers did not pass: %v", c.header)
	}
	// A token field name the app JSON-escaped is still a token field.
	_, c = send(hreq{target: "/v1/users/inquiryUserInfo", noCustomer: true, body: `{"\u0061ccessToken":"app-chosen-token"}`})
	if strings.Contains(string(c.body), "app-chosen") {
		t.Errorf("an escaped accessToken from the app was forwarded: %s", c.body)
	}
	// Token fields from the app, without a customer: removed.
	_, c = send(hreq{target: "/v1/users/inquiryUserInfo", noCustomer: true,
		body: `{"accessToken":"app-chosen-token","refreshToken":"app-chosen-refresh","keep":1}`})
	if strings.Contains(string(c.body), "app-chosen") || !strings.Contains(string(c.body), `"keep":1`) {
		t.Errorf("forwarded body %s", c.body)
	}
	// The customer header and the app's protocol headers are not
	// forwarded as the app sent them.
	_, c = send(hreq{target: "/v1/users/inquiryUserInfo", body: `{}`,
		headers: []string{"Client-Id: EVIL", "Signature: algorithm=RSA256,keyVersion=1,signature=forged", "Key-Version: 9"}})
	if c.header.Get("X-Customer-Id") != "" || c.header.Get("Client-Id") != "TEST_CLIENT" ||
		strings.Contains(c.header.Get("Signature"), "forged") || c.header.Get("Key-Version") == "9" {
		t.Errorf("forwarded headers %v", c.header)
	}
	return answers
}
