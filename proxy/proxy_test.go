package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenproxy/tokenproxy/refresher"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// fakeWallet records calls and answers from a queue (default: S).
type fakeWallet struct {
	mu      sync.Mutex
	calls   []fakeCall
	answers []*wallet.Response
}

type fakeCall struct {
	path, query string
	body        map[string]any
	header      http.Header
}

func (f *fakeWallet) Call(_ context.Context, path, rawQuery string, body []byte, h http.Header) (*wallet.Response, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		panic("proxy sent a body that is not JSON: " + err.Error())
	}
	f.calls = append(f.calls, fakeCall{path: path, query: rawQuery, body: m, header: h.Clone()})
	if len(f.answers) > 0 {
		a := f.answers[0]
		f.answers = f.answers[1:]
		return a, nil
	}
	return okResponse(`{"result":{"resultStatus":"S","resultCode":"SUCCESS"}}`), nil
}

func okResponse(body string) *wallet.Response {
	r := &wallet.Response{StatusCode: 200, Header: http.Header{}, Body: []byte(body)}
	r.Header.Set("Content-Type", "application/json; charset=UTF-8")
	r.Header.Set("Signature", "algorithm=RSA256,keyVersion=1,signature=x")
	r.Header.Set("Response-Time", "2026-01-01T00:00:00.000Z")
	_ = json.Unmarshal(r.Body, &struct {
		Result *wallet.Result `json:"result"`
	}{&r.Result})
	return r
}

// fakeTokens serves a fixed token for customer "c1" and rotates on Rejected.
type fakeTokens struct {
	mu        sync.Mutex
	current   string
	rejected  int
	installed []refresher.Exchange
}

func (f *fakeTokens) Token(_ context.Context, id string) (refresher.Token, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id != "c1" {
		return refresher.Token{}, refresher.ErrNotAuthorized
	}
	return refresher.Token{CustomerID: id, Value: wallet.Secret(f.current), Generation: 1}, nil
}

func (f *fakeTokens) Rejected(_ context.Context, tok refresher.Token) (refresher.Token, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rejected++
	f.current = "tok-2"
	return refresher.Token{CustomerID: tok.CustomerID, Value: "tok-2", Generation: 2}, nil
}

func (f *fakeTokens) Install(_ context.Context, ex refresher.Exchange) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.installed = append(f.installed, ex)
	return nil
}

func (f *fakeTokens) Status(_ context.Context, id string) (refresher.Status, error) {
	if id != "c1" {
		return refresher.Status{}, refresher.ErrNotAuthorized
	}
	return refresher.Status{CustomerID: id, State: refresher.StateValid}, nil
}

func (f *fakeTokens) Forget(context.Context, string) error { return nil }

func (f *fakeTokens) Handles(context.Context, string) (refresher.Handles, error) {
	return refresher.Handles{}, refresher.ErrNotAuthorized
}

func (f *fakeTokens) Refresh(ctx context.Context, id string) (refresher.Status, error) {
	return f.Status(ctx, id)
}

// List answers one fixed page, and ErrBadList for the cursor "bad".
func (f *fakeTokens) List(_ context.Context, state refresher.State, cursor string, limit int) (refresher.ListPage, error) {
	if cursor == "bad" {
		return refresher.ListPage{}, refresher.ErrBadList
	}
	next := fmt.Sprintf("%s/%d", state, limit)
	return refresher.ListPage{Customers: []refresher.ListedCustomer{{CustomerID: "c1", State: state}}, NextCursor: &next}, nil
}

type fixture struct {
	srv    *httptest.Server
	wallet *fakeWallet
	tokens *fakeTokens
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{wallet: &fakeWallet{}, tokens: &fakeTokens{current: "tok-1"}}
	h := New(Config{
		Tokens:       f.tokens,
		Wallet:       f.wallet,
		Inject:       map[string][]string{"/v1/payments/pay": {"paymentMethod", "paymentMethodId"}},
		TokenPaths:   []string{"/v1/authorizations/applyToken", "/v2/authorizations/applyToken"},
		MaxBodyBytes: 1024,
		Metrics:      NewMetrics(prometheus.NewRegistry()),
	})
	f.srv = httptest.NewServer(h)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) do(t *testing.T, method, path, body string, hdr map[string]string) (int, map[string]any, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("answer is not JSON: %q", raw)
		}
	}
	return resp.StatusCode, m, resp.Header
}

func resultCode(m map[string]any) string {
	r, _ := m["result"].(map[string]any)
	s, _ := r["resultCode"].(string)
	return s
}

func TestRefusedBeforeTheWallet(t *testing.T) {
	cust := map[string]string{"X-Customer-Id": "c1"}
	tests := []struct {
		name, method, path, body string
		hdr                      map[string]string
		status                   int
		code                     string
	}{
		{"GET on a wallet path", "GET", "/v1/users/inquiryUserInfo", "", cust, 405, "METHOD_NOT_ALLOWED"},
		{"PUT on the exchange path", "PUT", "/v1/authorizations/applyToken", "{}", nil, 405, "METHOD_NOT_ALLOWED"},
		{"dot-dot path", "POST", "/v1/../admin", "{}", cust, 400, "PARAM_ILLEGAL"},
		{"encoded slash", "POST", "/v1%2Fusers", "{}", cust, 400, "PARAM_ILLEGAL"},
		{"array body", "POST", "/v1/users/inquiryUserInfo", "[]", cust, 400, "PARAM_ILLEGAL"},
		{"duplicate keys", "POST", "/v1/users/inquiryUserInfo", `{"a":1,"a":2}`, cust, 400, "PARAM_ILLEGAL"},
		{"body too large", "POST", "/v1/users/inquiryUserInfo", `{"a":"` + strings.Repeat("x", 2000) + `"}`, cust, 413, "PARAM_ILLEGAL"},
		{"empty customer header", "POST", "/v1/users/inquiryUserInfo", `{}`, map[string]string{"X-Customer-Id": ""}, 400, "PARAM_ILLEGAL"},
		{"customer id with slash", "POST", "/v1/users/inquiryUserInfo", `{}`, map[string]string{"X-Customer-Id": "a/b"}, 400, "PARAM_ILLEGAL"},
		{"customer id too long", "POST", "/v1/users/inquiryUserInfo", `{}`, map[string]string{"X-Customer-Id": strings.Repeat("a", 65)}, 400, "PARAM_ILLEGAL"},
		{"unknown customer", "POST", "/v1/users/inquiryUserInfo", `{}`, map[string]string{"X-Customer-Id": "nobody"}, 401, "CUSTOMER_NOT_AUTHORIZED"},
		{"token in the way of injection", "POST", "/v1/payments/pay", `{"paymentMethod":"x"}`, cust, 400, "PARAM_ILLEGAL"},
		{"refresh grant from the app", "POST", "/v1/authorizations/applyToken", `{"grantType":"REFRESH_TOKEN","refreshToken":"r"}`, nil, 400, "PARAM_ILLEGAL"},
		{"no grant", "POST", "/v1/authorizations/applyToken", `{"authCode":"a"}`, nil, 400, "PARAM_ILLEGAL"},
		{"other grant", "POST", "/v2/authorizations/applyToken", `{"grantType":"PASSWORD","authCode":"a"}`, nil, 400, "AUTH_CLIENT_UNSUPPORTED_GRANT_TYPE"},
		{"no authCode", "POST", "/v1/authorizations/applyToken", `{"grantType":"AUTHORIZATION_CODE"}`, nil, 400, "PARAM_ILLEGAL"},
		{"authCode too long", "POST", "/v1/authorizations/applyToken", `{"grantType":"AUTHORIZATION_CODE","authCode":"` + strings.Repeat("a", 65) + `"}`, nil, 400, "PARAM_ILLEGAL"},
		{"authCode with #", "POST", "/v1/authorizations/applyToken", `{"grantType":"AUTHORIZATION_CODE","authCode":"a#b"}`, nil, 400, "PARAM_ILLEGAL"},
		{"authCode not a string", "POST", "/v1/authorizations/applyToken", `{"grantType":"AUTHORIZATION_CODE","authCode":5}`, nil, 400, "PARAM_ILLEGAL"},
		{"admin unknown customer", "GET", "/tokenproxy/customers/nobody", "", nil, 404, "CUSTOMER_NOT_AUTHORIZED"},
		{"admin wrong method", "PUT", "/tokenproxy/customers/c1", "", nil, 405, "METHOD_NOT_ALLOWED"},
		{"admin refresh wrong method", "GET", "/tokenproxy/customers/c1/refresh", "", nil, 405, "METHOD_NOT_ALLOWED"},
		{"admin unknown path", "GET", "/tokenproxy/other", "", nil, 404, "INVALID_API"},
		{"admin bad customer id", "GET", "/tokenproxy/customers/a%40b", "", nil, 400, "PARAM_ILLEGAL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			status, m, hdr := f.do(t, tt.method, tt.path, tt.body, tt.hdr)
			if status != tt.status || resultCode(m) != tt.code {
				t.Fatalf("got %d %s, want %d %s (%v)", status, resultCode(m), tt.status, tt.code, m)
			}
			if ct := hdr.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q", ct)
			}
			if len(f.wallet.calls) != 0 {
				t.Fatalf("the wallet was called %d times", len(f.wallet.calls))
			}
		})
	}
}

func TestRawRequests(t *testing.T) {
	f := newFixture(t)
	for _, tt := range []struct {
		name, line string
		status     int
	}{
		{"absolute URI", "POST http://evil.example/v1/users/inquiryUserInfo HTTP/1.1", 400},
		{"CONNECT", "CONNECT evil.example:443 HTTP/1.1", 405},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.DialTimeout("tcp", f.srv.Listener.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.WriteString(conn, tt.line+"\r\nHost: evil.example\r\nContent-Length: 2\r\n\r\n{}")
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
		})
	}
	if len(f.wallet.calls) != 0 {
		t.Fatalf("the wallet was called")
	}
}

func TestInjectOverwritesTheAppsToken(t *testing.T) {
	f := newFixture(t)
	status, _, _ := f.do(t, "POST", "/v1/users/inquiryUserInfo?x=1", `{"accessToken":"app-chosen","refreshToken":"r","extendInfo":"e"}`,
		map[string]string{"X-Customer-Id": "c1", "Signature": "forged", "Client-Id": "other", "traceparent": "00-abc-def-01"})
	if status != 200 {
		t.Fatalf("status %d", status)
	}
	c := f.wallet.calls[0]
	if c.body["accessToken"] != "tok-1" || c.body["extendInfo"] != "e" || c.body["refreshToken"] != nil {
		t.Fatalf("forwarded body %v", c.body)
	}
	if c.query != "x=1" || c.path != "/v1/users/inquiryUserInfo" {
		t.Fatalf("forwarded %s?%s", c.path, c.query)
	}
	status, _, _ = f.do(t, "POST", "/v1/payments/pay", `{"paymentMethod":{"paymentMethodType":"WALLET"}}`, map[string]string{"X-Customer-Id": "c1"})
	if status != 200 {
		t.Fatalf("status %d", status)
	}
	pm := f.wallet.calls[1].body["paymentMethod"].(map[string]any)
	if pm["paymentMethodId"] != "tok-1" || pm["paymentMethodType"] != "WALLET" || f.wallet.calls[1].body["accessToken"] != nil {
		t.Fatalf("forwarded body %v", f.wallet.calls[1].body)
	}
}

func TestNoCustomerStripsTokens(t *testing.T) {
	f := newFixture(t)
	status, _, _ := f.do(t, "POST", "/v1/public/info", `{"accessToken":"a","refreshToken":"r","q":1}`, nil)
	if status != 200 {
		t.Fatalf("status %d", status)
	}
	if b := f.wallet.calls[0].body; len(b) != 1 || b["q"] == nil {
		t.Fatalf("forwarded body %v", b)
	}
}

func TestRejectedTokenRetriedOnce(t *testing.T) {
	f := newFixture(t)
	rejected := `{"result":{"resultStatus":"F","resultCode":"INVALID_ACCESS_TOKEN"}}`
	f.wallet.answers = []*wallet.Response{okResponse(rejected), okResponse(rejected)}
	status, m, _ := f.do(t, "POST", "/v1/users/inquiryUserInfo", `{}`, map[string]string{"X-Customer-Id": "c1"})
	if status != 200 || resultCode(m) != "INVALID_ACCESS_TOKEN" {
		t.Fatalf("got %d %v, want the retry's answer", status, m)
	}
	if len(f.wallet.calls) != 2 || f.tokens.rejected != 1 {
		t.Fatalf("%d wallet calls, %d rejections; want 2 and 1", len(f.wallet.calls), f.tokens.rejected)
	}
	if f.wallet.calls[0].body["accessToken"] != "tok-1" || f.wallet.calls[1].body["accessToken"] != "tok-2" {
		t.Fatalf("tokens sent: %v then %v", f.wallet.calls[0].body["accessToken"], f.wallet.calls[1].body["accessToken"])
	}
}

func TestEchoedTokenIsCut(t *testing.T) {
	f := newFixture(t)
	f.wallet.answers = []*wallet.Response{okResponse(`{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"echo":"tok-1"}`)}
	_, m, hdr := f.do(t, "POST", "/v1/users/inquiryUserInfo", `{}`, map[string]string{"X-Customer-Id": "c1"})
	if m["echo"] != "[redacted]" || hdr.Get("Signature") != "" {
		t.Fatalf("answer %v, Signature %q", m, hdr.Get("Signature"))
	}
}

func TestExchangeStripsTokensAndStores(t *testing.T) {
	f := newFixture(t)
	f.wallet.answers = []*wallet.Response{okResponse(`{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"accessToken":"AT","accessTokenExpiryTime":"2030-01-01T00:00:00+08:00","refreshToken":"RT","customerId":"c9","extendInfo":"x"}`)}
	status, m, hdr := f.do(t, "POST", "/v2/authorizations/applyToken", `{"grantType":"AUTHORIZATION_CODE","authCode":"abc","appId":"app","extendInfo":"x"}`, nil)
	if status != 200 || m["accessToken"] != nil || m["refreshToken"] != nil || m["customerId"] != "c9" || m["accessTokenExpiryTime"] == nil {
		t.Fatalf("got %d %v", status, m)
	}
	if hdr.Get("Signature") != "" || hdr.Get("Response-Time") != "" {
		t.Fatalf("exchange answer carries the wallet's signature headers")
	}
	ex := f.tokens.installed[0]
	if ex.Path != "/v2/authorizations/applyToken" || string(ex.Replay["appId"]) != `"app"` || ex.Replay["authCode"] != nil || ex.Replay["grantType"] != nil {
		t.Fatalf("installed %+v", ex)
	}
	if ex.Pair.AccessToken.Reveal() != "AT" || ex.Pair.RefreshToken.Reveal() != "RT" {
		t.Fatalf("installed pair wrong")
	}
}

func TestExchangeMalformedSuccessNotStored(t *testing.T) {
	for _, body := range []string{
		`{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"accessToken":"AT","refreshToken":"RT","customerId":"c9"}`,
		`{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"accessToken":"AT","accessTokenExpiryTime":"2030-01-01T00:00:00+08:00","refreshToken":"RT"}`,
		`{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"accessTokenExpiryTime":"2030-01-01T00:00:00+08:00","refreshToken":"RT","customerId":"c9"}`,
		`{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"accessToken":"AT","accessTokenExpiryTime":"2030-01-01T00:00:00+08:00","refreshToken":"RT","customerId":"c9","refreshTokenExpiryTime":"soon"}`,
	} {
		f := newFixture(t)
		f.wallet.answers = []*wallet.Response{okResponse(body)}
		status, m, _ := f.do(t, "POST", "/v1/authorizations/applyToken", `{"grantType":"AUTHORIZATION_CODE","authCode":"abc"}`, nil)
		if status != 502 || resultCode(m) != "WALLET_UNAVAILABLE" || len(f.tokens.installed) != 0 {
			t.Fatalf("body %s: got %d %v, %d installed", body, status, m, len(f.tokens.installed))
		}
	}
}
