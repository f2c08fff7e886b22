package main

// The OpenAPI test (issue 18): api/openapi.yaml is valid OpenAPI 3.1 as far
// as this API uses it; it documents exactly the routes the handler serves
// (a table read from proxy/ below, checked against the document both ways
// and against the running binary by probing every method on every path);
// and every proxy error it documents is produced by the running binary
// (tokenproxy, walletsim and redis-server processes) with the documented
// status and a body the documented schema accepts.
//
// Why a YAML-subset reader in the test rather than a YAML library and an
// OpenAPI validator in a module of their own: the test needs the real
// binaries through internal/testenv, which belongs to the root module, and
// the root go.mod admits no YAML package; the reader (openapi_yaml_test.go)
// is strict, so a construct outside its subset fails loudly instead of
// being misread, and the schema validator (openapi_spec_test.go) refuses
// any keyword it does not implement. Offline, no dependency, in `make test`.

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// route is one operation of the app-facing handler.
type route struct {
	method, path string
	planned      bool   // specified by the contract, not served yet
	where        string // where the handler serves it
}

// serverRoutes are the routes proxy.Handler serves, read from its code. A
// route added there must be added here and to api/openapi.yaml.
var serverRoutes = []route{
	{"post", "/v1/authorizations/applyToken", false, "proxy.go route: a TOKENPROXY_TOKEN_PATHS path (default) -> serveExchange"},
	{"post", "/v2/authorizations/applyToken", false, "proxy.go route: a TOKENPROXY_TOKEN_PATHS path (default) -> serveExchange"},
	{"post", "/{walletApiPath}", false, "proxy.go route: any other canonical path -> serveAPI"},
	{"post", "/v1/users/inquiryUserInfo", false, "proxy.go route: serveAPI (documented as the example wallet API)"},
	{"get", "/tokenproxy/customers/{customerId}", false, "admin.go serveAdmin: action \"\", GET -> Status"},
	{"delete", "/tokenproxy/customers/{customerId}", false, "admin.go serveAdmin: action \"\", DELETE -> Forget"},
	{"post", "/tokenproxy/customers/{customerId}/refresh", false, "admin.go serveAdmin: action refresh, POST -> Refresh"},
	{"get", "/tokenproxy/customers", false, "admin.go serveAdmin: the customers path, GET -> serveList -> List"},
}

// contractErrors is the contract's "Proxy errors" table, plus the two
// admin answers the contract and README name beside it (404
// CUSTOMER_NOT_AUTHORIZED on admin paths, 404 INVALID_API under
// /tokenproxy/). The document must say exactly these.
var contractErrors = []proxyErr{
	{400, "PARAM_ILLEGAL", "F"},
	{400, "AUTH_CLIENT_UNSUPPORTED_GRANT_TYPE", "F"},
	{405, "METHOD_NOT_ALLOWED", "F"},
	{413, "PARAM_ILLEGAL", "F"},
	{401, "CUSTOMER_NOT_AUTHORIZED", "F"},
	{401, "REAUTHORIZATION_REQUIRED", "F"},
	{502, "INVALID_WALLET_SIGNATURE", "U"},
	{504, "WALLET_TIMEOUT", "U"},
	{502, "WALLET_UNAVAILABLE", "U"},
	{503, "TOKEN_STORE_UNAVAILABLE", "U"},
	{503, "REQUEST_TRAFFIC_EXCEED_LIMIT", "F"},
	{404, "CUSTOMER_NOT_AUTHORIZED", "F"},
	{404, "INVALID_API", "F"},
}

// TestOpenAPIDocument checks the document alone: structure, the error
// table, the route table both ways, the webhook, and that the validator
// used on the server's answers rejects what it must (so the other tests
// cannot pass on a validator that accepts everything).
func TestOpenAPIDocument(t *testing.T) {
	sp := loadSpec(t)
	for _, p := range sp.checkDocument() {
		t.Error(p)
	}

	documented := sp.documentedErrors()
	for _, e := range contractErrors {
		if _, ok := documented[e]; !ok {
			t.Errorf("the contract's error %s is not documented", e)
		}
	}
	for e, where := range documented {
		if !slices.Contains(contractErrors, e) {
			t.Errorf("%v documents %s, which is not in the contract's error table", where, e)
		}
	}

	// The route table and the document's operations, both ways.
	paths := mapAt(sp.root, "paths")
	for _, r := range serverRoutes {
		item := mapAt(paths, r.path)
		if mapAt(item, r.method) == nil {
			t.Errorf("%s %s (%s) is not documented", r.method, r.path, r.where)
			continue
		}
		if planned := item[extStatus] == "planned"; planned != r.planned {
			t.Errorf("%s %s: %s planned in the document is %v, in the route table %v", r.method, r.path, extStatus, planned, r.planned)
		}
	}
	for _, path := range sortedKeys(paths) {
		item := paths[path].(map[string]any)
		for _, m := range httpMethods {
			if mapAt(item, m) == nil || item[extUnknownPath] == true {
				continue
			}
			if !slices.ContainsFunc(serverRoutes, func(r route) bool { return r.method == m && r.path == path }) {
				t.Errorf("the document has %s %s, which the handler does not serve", m, path)
			}
		}
		if item[extUnknownPath] != true && item[extOtherMethods] == nil {
			t.Errorf("%s: no %s", path, extOtherMethods)
		}
	}

	// The webhook: signed, the contract's body, never a token.
	hook := mapAt(sp.root, "webhooks", "reauthorizationEvent", "post")
	var sigHeader map[string]any
	for _, raw := range hook["parameters"].([]any) {
		if p, _ := sp.deref(raw); p["name"] == "Tokenproxy-Signature" && p["in"] == "header" && p["required"] == true {
			sigHeader = p
		}
	}
	if sigHeader == nil {
		t.Error("the webhook has no required Tokenproxy-Signature header")
	}
	event := mapAt(hook, "requestBody", "content", "application/json")["schema"]

	// Bodies the validator must refuse (and, first, accept).
	rejects := []struct {
		name   string
		schema any
		body   string
		ok     bool
	}{
		{"exchange answer", ref("ExchangeAnswer"), `{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"customerId":"c1","accessTokenExpiryTime":"2026-01-01T00:00:00+08:00"}`, true},
		{"exchange answer with a token", ref("ExchangeAnswer"), `{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"accessToken":"2810111301lGZcM9CjlF91WH00039190xxxx"}`, false},
		{"exchange answer with an unknown field", ref("ExchangeAnswer"), `{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"tokenInfo":{}}`, false},
		{"exchange answer with a bad time", ref("ExchangeAnswer"), `{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"accessTokenExpiryTime":"tomorrow"}`, false},
		{"status", ref("CustomerStatus"), `{"customerId":"c1","state":"valid","accessTokenExpiryTime":null,"refreshTokenExpiryTime":null,"nextRefreshTime":null,"lastRefreshTime":null,"lastError":null}`, true},
		{"status without lastError", ref("CustomerStatus"), `{"customerId":"c1","state":"valid","accessTokenExpiryTime":null,"refreshTokenExpiryTime":null,"nextRefreshTime":null,"lastRefreshTime":null}`, false},
		{"status in an unknown state", ref("CustomerStatus"), `{"customerId":"c1","state":"fine","accessTokenExpiryTime":null,"refreshTokenExpiryTime":null,"nextRefreshTime":null,"lastRefreshTime":null,"lastError":null}`, false},
		{"status with a bad customer id", ref("CustomerStatus"), `{"customerId":"a/b","state":"valid","accessTokenExpiryTime":null,"refreshTokenExpiryTime":null,"nextRefreshTime":null,"lastRefreshTime":null,"lastError":null}`, false},
		{"proxy error", ref("WalletTimeout"), `{"result":{"resultStatus":"U","resultCode":"WALLET_TIMEOUT","resultMessage":"x"}}`, true},
		{"proxy error with the wrong code", ref("WalletTimeout"), `{"result":{"resultStatus":"U","resultCode":"WALLET_UNAVAILABLE","resultMessage":"x"}}`, false},
		{"proxy error with the wrong status", ref("WalletTimeout"), `{"result":{"resultStatus":"F","resultCode":"WALLET_TIMEOUT","resultMessage":"x"}}`, false},
		{"proxy error with more fields", ref("WalletTimeout"), `{"result":{"resultStatus":"U","resultCode":"WALLET_TIMEOUT","resultMessage":"x"},"accessToken":"t"}`, false},
		{"proxy error without a message", ref("WalletTimeout"), `{"result":{"resultStatus":"U","resultCode":"WALLET_TIMEOUT"}}`, false},
		{"event", event, `{"id":"e1","type":"reauthorization_required","customerId":"c1","reason":"USED_REFRESH_TOKEN","time":"2026-01-01T00:00:00Z"}`, true},
		{"event with a token", event, `{"id":"e1","type":"reauthorized","customerId":"c1","reason":null,"time":"2026-01-01T00:00:00Z","refreshToken":"r"}`, false},
		{"event of an unknown type", event, `{"id":"e1","type":"expired","customerId":"c1","reason":null,"time":"2026-01-01T00:00:00Z"}`, false},
		{"event without reason", event, `{"id":"e1","type":"reauthorized","customerId":"c1","time":"2026-01-01T00:00:00Z"}`, false},
	}
	for _, c := range rejects {
		var v any
		if err := json.Unmarshal([]byte(c.body), &v); err != nil {
			t.Fatal(err)
		}
		err := sp.validate(c.schema, v, "body")
		if c.ok && err != nil {
			t.Errorf("%s: refused: %v", c.name, err)
		}
		if !c.ok && err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	t.Logf("%d paths, %d documented proxy errors, %d routes in the table, %d validator cases",
		len(paths), len(documented), len(serverRoutes), len(rejects))
}

func ref(schema string) any { return map[string]any{"$ref": "#/components/schemas/" + schema} }

// answer is one HTTP answer of the proxy.
type answer struct {
	status int
	body   []byte
	hdr    http.Header
}

func (a answer) code() string   { return resultCode(a.body) }
func (a answer) String() string { return strconv.Itoa(a.status) + " " + string(a.body) }

// checkAnswer validates a against the document's response of method on
// spec path for its status: the JSON body against the schema, and every
// documented header that is present against its schema (a required one
// must be present).
func checkAnswer(t *testing.T, sp *spec, path, method string, a answer) {
	t.Helper()
	resp, err := sp.response(path, method, a.status)
	if err != nil {
		t.Errorf("%s %s answered %s: %v", method, path, a, err)
		return
	}
	for _, name := range sortedKeys(mapAt(resp, "headers")) {
		h, err := sp.deref(resp["headers"].(map[string]any)[name])
		if err != nil {
			t.Error(err)
			continue
		}
		v, present := a.hdr.Get(name), len(a.hdr.Values(name)) > 0
		if !present {
			if h["required"] == true {
				t.Errorf("%s %s answered %d without the required header %s", method, path, a.status, name)
			}
			continue
		}
		if err := sp.validate(h["schema"], v, "header "+name); err != nil {
			t.Errorf("%s %s answered %d: %v", method, path, a.status, err)
		}
	}
	content := mapAt(resp, "content")
	if len(content) == 0 {
		if len(a.body) != 0 {
			t.Errorf("%s %s answered %d with a body where none is documented: %s", method, path, a.status, a.body)
		}
		return
	}
	media := mapAt(content, "application/json")
	if media == nil {
		t.Errorf("%s %s %d: no application/json content documented", method, path, a.status)
		return
	}
	if ct := a.hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s %s answered %d with Content-Type %q", method, path, a.status, ct)
	}
	var v any
	if err := json.Unmarshal(a.body, &v); err != nil {
		t.Errorf("%s %s answered %d with a body that is not JSON: %q", method, path, a.status, a.body)
		return
	}
	if err := sp.validate(media["schema"], v, "body"); err != nil {
		t.Errorf("%s %s answered %s: the documented schema refuses it: %v", method, path, a, err)
	}
}

// errorDriver drives proxy errors and keeps which documented errors were
// produced.
type errorDriver struct {
	sp     *spec
	driven map[proxyErr][]string
}

// expect checks that a is the proxy error want, that the document's
// response of method on the spec path for that status names that error,
// and that its schema accepts a (checkAnswer).
func (d *errorDriver) expect(t *testing.T, name, path, method string, a answer, want proxyErr) {
	t.Helper()
	var env struct {
		Result struct{ ResultStatus, ResultCode string }
	}
	_ = json.Unmarshal(a.body, &env)
	got := proxyErr{a.status, env.Result.ResultCode, env.Result.ResultStatus}
	if got != want {
		t.Errorf("%s: %s %s answered %s, want %s", name, method, path, a, want)
		return
	}
	checkAnswer(t, d.sp, path, method, a)
	resp, err := d.sp.response(path, method, a.status)
	if err != nil {
		return // reported by checkAnswer
	}
	admits := d.sp.errorsIn(mapAt(resp, "content", "application/json")["schema"])
	if admits[want.code] != want.result {
		t.Errorf("%s: %s %s documents no %s for %d", name, method, path, want.code, want.status)
		return
	}
	d.driven[want] = append(d.driven[want], name)
}

func send(t *testing.T, method, url, body string, hdr map[string]string) answer {
	t.Helper()
	status, b, h := do(t, method, url, body, hdr)
	return answer{status, b, h}
}

// TestOpenAPIErrors drives every proxy error the document lists on the
// running binaries and checks each answer against the document; the
// successful answers of each operation are checked on the way.
func TestOpenAPIErrors(t *testing.T) {
	sp := loadSpec(t)
	d := &errorDriver{sp: sp, driven: map[proxyErr][]string{}}
	h := newHarness(t).withRedis()
	const maxBody = 65536
	a := h.startProxy("TOKENPROXY_UPSTREAM_TIMEOUT=1s", "TOKENPROXY_MAX_BODY_BYTES="+strconv.Itoa(maxBody))
	const (
		v1, v2   = "/v1/authorizations/applyToken", "/v2/authorizations/applyToken"
		anyPath  = "/{walletApiPath}"
		adminOne = "/tokenproxy/customers/{customerId}"
		adminRef = "/tokenproxy/customers/{customerId}/refresh"
	)
	cust := map[string]string{"X-Customer-Id": "oa-cust"}

	// The successful answers of every operation, as documented.
	code := h.authCode("oa-cust")
	ex := send(t, "POST", a.url+v1, `{"grantType":"AUTHORIZATION_CODE","authCode":"`+code+`"}`, nil)
	if ex.status != 200 || ex.code() != "SUCCESS" {
		t.Fatalf("exchange: %s", ex)
	}
	checkAnswer(t, sp, v1, "post", ex)
	used := send(t, "POST", a.url+v1, `{"grantType":"AUTHORIZATION_CODE","authCode":"`+code+`"}`, nil)
	if used.code() != "USED_CODE" {
		t.Fatalf("a used code: %s", used)
	}
	checkAnswer(t, sp, v1, "post", used)
	ex2 := send(t, "POST", a.url+v2, `{"grantType":"AUTHORIZATION_CODE","authCode":"`+h.authCode("oa-del")+`","extendInfo":"x"}`, nil)
	if ex2.status != 200 || ex2.code() != "SUCCESS" {
		t.Fatalf("v2 exchange: %s", ex2)
	}
	checkAnswer(t, sp, v2, "post", ex2)
	for _, c := range []struct {
		method, url, path, op string
		hdr                   map[string]string
		status                int
	}{
		{"POST", a.url + inquiry, inquiry, "post", cust, 200},
		{"POST", a.url + "/v1/payments/pay", anyPath, "post", cust, 404}, // the wallet's own INVALID_API, passed on
		{"GET", a.url + "/tokenproxy/customers/oa-cust", adminOne, "get", nil, 200},
		{"POST", a.url + "/tokenproxy/customers/oa-cust/refresh", adminRef, "post", nil, 200},
		{"DELETE", a.url + "/tokenproxy/customers/oa-del", adminOne, "delete", nil, 204},
		{"GET", a.url + "/tokenproxy/customers?state=valid&limit=1", "/tokenproxy/customers", "get", nil, 200},
		{"GET", a.url + "/tokenproxy/customers?state=reauthorization_required", "/tokenproxy/customers", "get", nil, 200},
	} {
		got := send(t, c.method, c.url, "{}", c.hdr)
		if got.status != c.status {
			t.Errorf("%s %s: %s, want %d", c.method, c.url, got, c.status)
		}
		checkAnswer(t, sp, c.path, c.op, got)
	}

	// Refusals made before anything is sent.
	big := `{"pad":"` + strings.Repeat("x", maxBody) + `"}`
	for _, c := range []struct {
		name, method, url, path, op, body string
		hdr                               map[string]string
		want                              proxyErr
	}{
		{"body not an object", "POST", v1, v1, "post", `[1]`, nil, proxyErr{400, "PARAM_ILLEGAL", "F"}},
		{"a refresh grant", "POST", v1, v1, "post", `{"grantType":"REFRESH_TOKEN","refreshToken":"x"}`, nil, proxyErr{400, "PARAM_ILLEGAL", "F"}},
		{"no grantType", "POST", v1, v1, "post", `{"authCode":"x"}`, nil, proxyErr{400, "PARAM_ILLEGAL", "F"}},
		{"another grantType", "POST", v2, v2, "post", `{"grantType":"CLIENT_CREDENTIALS"}`, nil, proxyErr{400, "AUTH_CLIENT_UNSUPPORTED_GRANT_TYPE", "F"}},
		{"duplicate keys", "POST", inquiry, inquiry, "post", `{"a":1,"a":2}`, cust, proxyErr{400, "PARAM_ILLEGAL", "F"}},
		{"a bad customer id", "POST", inquiry, inquiry, "post", `{}`, map[string]string{"X-Customer-Id": "a b"}, proxyErr{400, "PARAM_ILLEGAL", "F"}},
		{"a path not canonical", "POST", "/v1/a%3Bb", anyPath, "post", `{}`, cust, proxyErr{400, "PARAM_ILLEGAL", "F"}},
		{"authCode on an API path", "POST", "/v1/payments/pay", anyPath, "post", `{"authCode":"x"}`, nil, proxyErr{400, "PARAM_ILLEGAL", "F"}},
		{"a bad admin customer id", "GET", "/tokenproxy/customers/a%40b", adminOne, "get", ``, nil, proxyErr{400, "PARAM_ILLEGAL", "F"}},
		{"GET on a wallet path", "GET", inquiry, inquiry, "other", ``, cust, proxyErr{405, "METHOD_NOT_ALLOWED", "F"}},
		{"PUT on an admin path", "PUT", "/tokenproxy/customers/oa-cust", adminOne, "other", `{}`, nil, proxyErr{405, "METHOD_NOT_ALLOWED", "F"}},
		{"a bad list state", "GET", "/tokenproxy/customers?state=gone", "/tokenproxy/customers", "get", ``, nil, proxyErr{400, "PARAM_ILLEGAL", "F"}},
		{"a bad list cursor", "GET", "/tokenproxy/customers?state=valid&cursor=x", "/tokenproxy/customers", "get", ``, nil, proxyErr{400, "PARAM_ILLEGAL", "F"}},
		{"POST on the list", "POST", "/tokenproxy/customers", "/tokenproxy/customers", "other", `{}`, nil, proxyErr{405, "METHOD_NOT_ALLOWED", "F"}},
		{"GET on refresh", "GET", "/tokenproxy/customers/oa-cust/refresh", adminRef, "other", ``, nil, proxyErr{405, "METHOD_NOT_ALLOWED", "F"}},
		{"a body over the limit", "POST", inquiry, inquiry, "post", big, cust, proxyErr{413, "PARAM_ILLEGAL", "F"}},
		{"an exchange over the limit", "POST", v1, v1, "post", big, nil, proxyErr{413, "PARAM_ILLEGAL", "F"}},
		{"an unknown customer", "POST", inquiry, inquiry, "post", `{}`, map[string]string{"X-Customer-Id": "oa-nobody"}, proxyErr{401, "CUSTOMER_NOT_AUTHORIZED", "F"}},
		{"the status of an unknown customer", "GET", "/tokenproxy/customers/oa-nobody", adminOne, "get", ``, nil, proxyErr{404, "CUSTOMER_NOT_AUTHORIZED", "F"}},
		{"a deleted customer's refresh", "POST", "/tokenproxy/customers/oa-del/refresh", adminRef, "post", ``, nil, proxyErr{404, "CUSTOMER_NOT_AUTHORIZED", "F"}},
		{"an unknown admin path", "GET", "/tokenproxy/nothing", "/tokenproxy/{adminPath}", "get", ``, nil, proxyErr{404, "INVALID_API", "F"}},
	} {
		d.expect(t, c.name, c.path, c.op, send(t, c.method, a.url+c.url, c.body, c.hdr), c.want)
	}
	d.expect(t, "CONNECT", anyPath, "other", connect(t, a.url), proxyErr{405, "METHOD_NOT_ALLOWED", "F"})

	// The wallet misbehaves (walletsim faults, one call each).
	for _, c := range []struct{ name, fault string }{
		{"a bad wallet signature", `"badSignatureRate":1`},
		{"an HTML 5xx", `"html5xxRate":1`},
		{"a slow wallet", `"latency":"3s"`},
	} {
		h.fault(`{"path":"` + inquiry + `","count":1,` + c.fault + `}`)
		want := map[string]proxyErr{
			"a bad wallet signature": {502, "INVALID_WALLET_SIGNATURE", "U"},
			"an HTML 5xx":            {502, "WALLET_UNAVAILABLE", "U"},
			"a slow wallet":          {504, "WALLET_TIMEOUT", "U"},
		}[c.name]
		d.expect(t, c.name, inquiry, "post", send(t, "POST", a.url+inquiry, `{}`, cust), want)
		h.clearFaults()
	}

	// A refresh token the wallet refuses: a short-lived exchange whose
	// first refresh is answered INVALID_REFRESH_TOKEN.
	h.fault(`{"path":"` + v1 + `","grantType":"REFRESH_TOKEN","failCode":"INVALID_REFRESH_TOKEN","count":1}`)
	h.exchangeTTL(a, "oa-reauth", "1s")
	waitStatus(t, a, "oa-reauth", 30*time.Second, stateReauth, stateIs(stateReauth), nil)
	h.clearFaults()
	reauth := proxyErr{401, "REAUTHORIZATION_REQUIRED", "F"}
	d.expect(t, "a refused refresh token", inquiry, "post",
		send(t, "POST", a.url+inquiry, `{}`, map[string]string{"X-Customer-Id": "oa-reauth"}), reauth)
	d.expect(t, "a forced refresh of a refused refresh token", adminRef, "post",
		send(t, "POST", a.url+"/tokenproxy/customers/oa-reauth/refresh", ``, nil), reauth)

	t.Run("signed answers and handles", func(t *testing.T) {
		signedAnswers(t, h.in(t), d)
	})

	// The wallet is gone.
	h.sim.Kill()
	d.expect(t, "a stopped wallet", anyPath, "post", send(t, "POST", a.url+"/v1/payments/pay", `{}`, nil), proxyErr{502, "WALLET_UNAVAILABLE", "U"})

	// The store is gone, and the customer is not held in memory.
	h.redis.Stop()
	store := proxyErr{503, "TOKEN_STORE_UNAVAILABLE", "U"}
	d.expect(t, "a stopped store", inquiry, "post", send(t, "POST", a.url+inquiry, `{}`, map[string]string{"X-Customer-Id": "oa-unseen"}), store)
	d.expect(t, "a stopped store (admin)", adminOne, "get", send(t, "GET", a.url+"/tokenproxy/customers/oa-unseen", ``, nil), store)

	documented := sp.documentedErrors()
	for e, where := range documented {
		if len(d.driven[e]) == 0 {
			t.Errorf("the documented error %s (at %v) was not produced by the server", e, where)
		}
	}
	n := 0
	for _, names := range d.driven {
		n += len(names)
	}
	t.Logf("%d documented proxy errors, all produced by the running binary, in %d driven requests", len(documented), n)
}

// signedAnswers runs a second tokenproxy with TOKENPROXY_APP_SIGNING_KEY,
// TOKENPROXY_APP_TOKENS=handles and TOKENPROXY_MAX_INFLIGHT=1: the
// exchange answer with handles, a refresh grant with the refresh handle,
// an unknown handle, a call by handle, and the traffic limit; every answer
// carries the documented signature headers, which verify.
func signedAnswers(t *testing.T, h *harness, d *errorDriver) {
	keyFile := writeRSAKey(t, "app.pem")
	raw, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	key, err := wallet.ParsePrivateKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	b := h.startProxy("TOKENPROXY_APP_SIGNING_KEY_FILE="+keyFile, "TOKENPROXY_APP_TOKENS=handles",
		"TOKENPROXY_MAX_INFLIGHT=1", "TOKENPROXY_UPSTREAM_TIMEOUT=30s")
	verify := func(what, path string, a answer) {
		t.Helper()
		for _, k := range []string{"Client-Id", "Response-Time", "Signature"} {
			if a.hdr.Get(k) == "" {
				t.Errorf("%s: no %s header", what, k)
				return
			}
		}
		sig, err := wallet.ParseSignatureHeader(a.hdr.Get("Signature"))
		if err == nil {
			err = wallet.Verify(&key.PublicKey, wallet.SigningContent("POST", path, a.hdr.Get("Client-Id"), a.hdr.Get("Response-Time"), a.body), sig.Signature)
		}
		if err != nil {
			t.Errorf("%s: the answer's signature does not verify with the app key: %v", what, err)
		}
	}
	const v1 = "/v1/authorizations/applyToken"

	ex := send(t, "POST", b.url+v1, `{"grantType":"AUTHORIZATION_CODE","authCode":"`+h.authCode("ob-cust")+`"}`, nil)
	var handles struct{ AccessToken, RefreshToken string }
	if ex.status != 200 || json.Unmarshal(ex.body, &handles) != nil || handles.AccessToken == "" || handles.RefreshToken == "" {
		t.Fatalf("exchange with handles: %s", ex)
	}
	checkAnswer(t, d.sp, v1, "post", ex)
	verify("exchange", v1, ex)

	rg := send(t, "POST", b.url+v1, `{"grantType":"REFRESH_TOKEN","refreshToken":"`+handles.RefreshToken+`"}`, nil)
	if rg.status != 200 || rg.code() != "SUCCESS" || !strings.Contains(string(rg.body), handles.AccessToken) {
		t.Fatalf("refresh grant with the refresh handle: %s", rg)
	}
	checkAnswer(t, d.sp, v1, "post", rg)
	verify("refresh grant", v1, rg)

	unknown := send(t, "POST", b.url+v1, `{"grantType":"REFRESH_TOKEN","refreshToken":"`+newTestHandle("ob-cust")+`"}`, nil)
	d.expect(t, "an unknown refresh handle", v1, "post", unknown, proxyErr{401, "CUSTOMER_NOT_AUTHORIZED", "F"})
	verify("unknown handle", v1, unknown)

	byHandle := send(t, "POST", b.url+inquiry, `{"accessToken":"`+handles.AccessToken+`"}`, nil)
	if byHandle.status != 200 || byHandle.code() != "SUCCESS" {
		t.Fatalf("a call by handle: %s", byHandle)
	}
	checkAnswer(t, d.sp, inquiry, "post", byHandle)
	verify("call by handle", inquiry, byHandle)

	// One call in flight (held by the wallet), then one more.
	h.fault(`{"path":"` + inquiry + `","latency":"25s","count":1}`)
	defer h.clearFaults()
	matched := h.stats().FaultsMatched
	ctx, cancel := context.WithCancel(context.Background())
	held := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "POST", b.url+inquiry, strings.NewReader(`{}`))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		held <- err
	}()
	waitUntil(t, 30*time.Second, "the held call at the wallet", func() bool { return h.stats().FaultsMatched > matched })
	over := send(t, "POST", b.url+inquiry, `{}`, nil)
	cancel()
	<-held
	d.expect(t, "a call over TOKENPROXY_MAX_INFLIGHT", inquiry, "post", over, proxyErr{503, "REQUEST_TRAFFIC_EXCEED_LIMIT", "F"})
	verify("traffic limit", inquiry, over)
}

// connect sends a CONNECT request to the proxy at base and returns its answer.
func connect(t *testing.T, base string) answer {
	t.Helper()
	addr := strings.TrimPrefix(base, "http://")
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write([]byte("CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: "CONNECT"})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		body.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return answer{resp.StatusCode, []byte(body.String()), resp.Header}
}

// TestOpenAPIRoutes probes the running binary with every method on an
// instance of every documented path and on paths next to them: a request
// the proxy refuses as no route (405 METHOD_NOT_ALLOWED, or 404
// INVALID_API it made itself) must be one the document does not list as
// an operation, and every other must be one it lists. Refusals are checked
// against the document's x-tokenproxy-other-methods and unknown paths; a
// planned route must still be refused (when it is served, the test says
// to drop the planned marker).
func TestOpenAPIRoutes(t *testing.T) {
	sp := loadSpec(t)
	h := newHarness(t)
	p := h.startProxy()
	instance := strings.NewReplacer("{customerId}", "probe-1", "{walletApiPath}", "v1/payments/pay", "{adminPath}", "other")
	probes := []string{"/x", "/tokenproxy/customers/probe-1/other", "/tokenproxy/customers/probe-1/refresh/x", "/tokenproxy/other/x"}
	for _, path := range sortedKeys(mapAt(sp.root, "paths")) {
		probes = append(probes, instance.Replace(path))
	}
	methods := []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
	served, refused := 0, 0
	for _, path := range probes {
		specPath, matched := sp.matchPath(path)
		item := mapAt(sp.root, "paths", specPath)
		for _, method := range methods {
			body := ""
			if method == "POST" || method == "PUT" || method == "PATCH" {
				body = "{}"
			}
			a := send(t, method, p.url+path, body, nil)
			proxyMade := a.hdr.Get("Signature") == "" // walletsim signs every answer
			code := a.code()
			isRefused := proxyMade && (a.status == 405 && (method == "HEAD" || code == "METHOD_NOT_ALLOWED") ||
				a.status == 404 && (method == "HEAD" || code == "INVALID_API"))
			op := strings.ToLower(method)
			documented := matched && mapAt(item, op) != nil && item[extUnknownPath] != true && item[extStatus] != "planned"
			switch {
			case isRefused && documented:
				t.Errorf("%s %s is documented (%s) but the proxy refused it: %s", method, path, specPath, a)
			case !isRefused && !documented && matched && item[extStatus] == "planned" && mapAt(item, op) != nil:
				t.Errorf("%s %s is served now: drop %s: planned from api/openapi.yaml and the planned flag in serverRoutes", method, path, extStatus)
			case !isRefused && !documented:
				t.Errorf("%s %s is served (%s) but not documented (spec path %q)", method, path, a, specPath)
			case isRefused:
				refused++
				if method == "HEAD" || !matched {
					continue
				}
				if item[extUnknownPath] == true || item[extStatus] == "planned" || a.status == 404 {
					if a.status != 404 {
						t.Errorf("%s %s: %s, want 404 INVALID_API", method, path, a)
					}
					checkAnswer(t, sp, "/tokenproxy/{adminPath}", "get", a)
					continue
				}
				checkAnswer(t, sp, specPath, "other", a)
			default:
				served++
			}
		}
	}
	t.Logf("%d probes on %d paths: %d served and documented, %d refused as no route and documented so",
		served+refused, len(probes), served, refused)
}
