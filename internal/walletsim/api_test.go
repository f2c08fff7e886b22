package walletsim

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

var tokenShape = regexp.MustCompile(`^[A-Za-z0-9]{40}$`)

func TestExchangeSuccess(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AccessTTL = time.Hour; c.RefreshTTL = 48 * time.Hour })
	code := h.authCode(map[string]any{"customerId": "cust-1"})
	resp := h.want(PathApplyTokenV1, map[string]any{
		"grantType": GrantAuthorizationCode, "authCode": code, "extendInfo": `{"memo":"memo"}`,
	}, "S SUCCESS")
	tb := h.tokens(resp)
	if tb.CustomerID != "cust-1" {
		t.Errorf("customerId %q", tb.CustomerID)
	}
	if !tokenShape.MatchString(tb.AccessToken) || !tokenShape.MatchString(tb.RefreshToken) || tb.AccessToken == tb.RefreshToken {
		t.Errorf("tokens not 40 distinct alphanumerics: %d/%d chars", len(tb.AccessToken), len(tb.RefreshToken))
	}
	if string(tb.ExtendInfo) != `"{\"memo\":\"memo\"}"` {
		t.Errorf("extendInfo not echoed: %s", tb.ExtendInfo)
	}
	for _, c := range []struct {
		name, v string
		ttl     time.Duration
	}{{"access", tb.AccessTokenExpiryTime, time.Hour}, {"refresh", tb.RefreshTokenExpiryTime, 48 * time.Hour}} {
		at, err := time.Parse(time.RFC3339, c.v)
		if err != nil {
			t.Fatalf("%s expiry %q: %v", c.name, c.v, err)
		}
		if want := h.clk.Now().Add(c.ttl); !at.Equal(want) {
			t.Errorf("%s expiry %s, want %s", c.name, at, want)
		}
	}
	if resp.Header.Get(wallet.HeaderSignature) == "" || resp.Header.Get(wallet.HeaderResponseTime) == "" {
		t.Error("answer not signed")
	}
	// The access token works.
	info := h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "S SUCCESS")
	var ui struct {
		UserInfo struct{ UserID, NickName string } `json:"userInfo"`
	}
	if err := json.Unmarshal(info.Body, &ui); err != nil || ui.UserInfo.UserID != "cust-1" || ui.UserInfo.NickName == "" {
		t.Errorf("userInfo %+v (%v)", ui, err)
	}
	st := h.srv.Stats()
	if st.Exchanges != 1 || st.Calls[PathApplyTokenV1][GrantAuthorizationCode] != 1 || st.Calls[PathInquiryUserInfo]["-"] != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestExchangeV2EchoesFields(t *testing.T) {
	h := newHarness(t, nil)
	code := h.authCode(map[string]any{"customerId": "cust-v2"})
	resp := h.want(PathApplyTokenV2, map[string]any{
		"grantType": GrantAuthorizationCode, "authCode": code, "appId": "app-1", "authClientId": "ac-1", "customerBelongsTo": "WALLET",
	}, "S SUCCESS")
	var m map[string]any
	_ = json.Unmarshal(resp.Body, &m)
	if m["appId"] != "app-1" || m["authClientId"] != "ac-1" || m["customerBelongsTo"] != "WALLET" || m["customerId"] != "cust-v2" {
		t.Errorf("v2 answer %v", m)
	}
	if h.srv.Stats().Calls[PathApplyTokenV2][GrantAuthorizationCode] != 1 {
		t.Error("v2 call not counted")
	}
}

func TestAuthCodeErrors(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.CodeTTL = time.Minute })
	exchange := func(code string) map[string]string {
		return map[string]string{"grantType": GrantAuthorizationCode, "authCode": code}
	}

	code := h.authCode(map[string]any{"customerId": "c1"})
	h.want(PathApplyTokenV1, exchange(code), "S SUCCESS")
	h.want(PathApplyTokenV1, exchange(code), "F USED_CODE")
	h.want(PathApplyTokenV2, exchange(code), "F USED_CODE")
	h.want(PathApplyTokenV1, exchange("nosuchcode"), "F INVALID_CODE")

	// Expired through the per-code TTL.
	short := h.authCode(map[string]any{"customerId": "c2", "codeTtl": "10s"})
	h.clk.Advance(10 * time.Second)
	h.want(PathApplyTokenV1, exchange(short), "F EXPIRED_CODE")

	// Expired through the configured TTL; a second before it is fine.
	c3 := h.authCode(map[string]any{"customerId": "c3"})
	c4 := h.authCode(map[string]any{"customerId": "c4"})
	h.clk.Advance(time.Minute - time.Second)
	h.want(PathApplyTokenV1, exchange(c3), "S SUCCESS")
	h.clk.Advance(time.Second)
	h.want(PathApplyTokenV1, exchange(c4), "F EXPIRED_CODE")

	if st := h.srv.Stats(); st.CodesReused != 2 || st.Exchanges != 2 {
		t.Errorf("codesReused %d exchanges %d, want 2 and 2", st.CodesReused, st.Exchanges)
	}
}

func TestRefreshRotates(t *testing.T) {
	h := newHarness(t, nil)
	first := h.login("cust-r")

	second := h.tokens(h.want(PathApplyTokenV1, refreshBody(first.RefreshToken), "S SUCCESS"))
	if second.CustomerID != "cust-r" || second.AccessToken == first.AccessToken || second.RefreshToken == first.RefreshToken {
		t.Fatalf("refresh did not issue a new pair for the same customer")
	}
	// Single use: the same refresh token again.
	h.want(PathApplyTokenV1, refreshBody(first.RefreshToken), "F USED_REFRESH_TOKEN")
	// The old access token is dead, the new one works.
	h.want(PathInquiryUserInfo, inquiryBody(first.AccessToken), "F INVALID_ACCESS_TOKEN")
	h.want(PathInquiryUserInfo, inquiryBody(second.AccessToken), "S SUCCESS")
	// The chain goes on, through v2 as well.
	third := h.tokens(h.want(PathApplyTokenV2, refreshBody(second.RefreshToken), "S SUCCESS"))
	h.want(PathInquiryUserInfo, inquiryBody(second.AccessToken), "F INVALID_ACCESS_TOKEN")
	h.want(PathInquiryUserInfo, inquiryBody(third.AccessToken), "S SUCCESS")
	h.want(PathApplyTokenV1, refreshBody("unknownRefreshToken"), "F INVALID_REFRESH_TOKEN")

	st := h.srv.Stats()
	if st.RefreshTokensReused != 1 || st.Refreshes != 2 || st.RefreshPresentations != 4 {
		t.Errorf("refreshTokensReused %d refreshes %d presentations %d, want 1, 2, 4", st.RefreshTokensReused, st.Refreshes, st.RefreshPresentations)
	}
	if st.Calls[PathApplyTokenV1][GrantRefreshToken] != 3 || st.Calls[PathApplyTokenV2][GrantRefreshToken] != 1 {
		t.Errorf("calls %v", st.Calls)
	}
}

func TestTokenExpiry(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AccessTTL = 30 * time.Minute; c.RefreshTTL = 2 * time.Hour })
	tb := h.login("cust-e")

	h.clk.Advance(30*time.Minute - time.Millisecond)
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "S SUCCESS")
	h.clk.Advance(time.Millisecond)
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "F EXPIRED_ACCESS_TOKEN")

	// An expired access token can still be refreshed; the new refresh token
	// lives the refresh TTL from now.
	next := h.tokens(h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "S SUCCESS"))
	h.want(PathInquiryUserInfo, inquiryBody(next.AccessToken), "S SUCCESS")

	h.clk.Advance(2 * time.Hour)
	h.want(PathApplyTokenV1, refreshBody(next.RefreshToken), "F EXPIRED_REFRESH_TOKEN")
	h.want(PathInquiryUserInfo, inquiryBody(next.AccessToken), "F EXPIRED_ACCESS_TOKEN")
	if st := h.srv.Stats(); st.RefreshTokensReused != 0 {
		t.Errorf("refreshTokensReused %d", st.RefreshTokensReused)
	}
}

func TestChainLifetimes(t *testing.T) {
	h := newHarness(t, nil)
	code := h.authCode(map[string]any{"customerId": "cust-c", "accessTtl": "30s", "refreshTtl": "1h"})
	tb := h.tokens(h.want(PathApplyTokenV1, map[string]string{"grantType": GrantAuthorizationCode, "authCode": code}, "S SUCCESS"))
	check := func(tb tokenBody) {
		t.Helper()
		now := h.clk.Now()
		at, _ := wallet.ParseDateTime(tb.AccessTokenExpiryTime)
		rt, _ := wallet.ParseDateTime(tb.RefreshTokenExpiryTime)
		if !at.Equal(now.Add(30*time.Second)) || !rt.Equal(now.Add(time.Hour)) {
			t.Errorf("expiries %s %s, want +30s and +1h from %s", at, rt, now)
		}
	}
	check(tb)
	h.clk.Advance(45 * time.Second)
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "F EXPIRED_ACCESS_TOKEN")
	next := h.tokens(h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "S SUCCESS"))
	check(next)
}

// TestHeaderChecks breaks one protocol header at a time; the body carries an
// unknown code, so a request that passes every check gets INVALID_CODE.
func TestHeaderChecks(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ClientID = testClientID; c.KeyVersion = "1" })
	uri := PathApplyTokenV1
	body := []byte(`{"grantType":"AUTHORIZATION_CODE","authCode":"unknown"}`)
	resign := func(r *http.Request, key *rsa.PrivateKey, clientID, reqTime, signedURI string, signedBody []byte) {
		sig, _ := wallet.Sign(key, wallet.SigningContent(http.MethodPost, signedURI, clientID, reqTime, signedBody))
		r.Header.Set(wallet.HeaderClientID, clientID)
		r.Header.Set(wallet.HeaderRequestTime, reqTime)
		r.Header.Set(wallet.HeaderSignature, wallet.FormatSignatureHeader("1", sig))
	}
	now := func() time.Time { return h.clk.Now() }
	cases := []struct {
		name   string
		edit   func(*http.Request)
		want   string
		badSig bool
	}{
		{"valid", nil, "F INVALID_CODE", false},
		{"no Client-Id", func(r *http.Request) { r.Header.Del(wallet.HeaderClientID) }, "F INVALID_CLIENT", false},
		{"other Client-Id", func(r *http.Request) {
			resign(r, clientKey, "SOMEONE_ELSE", wallet.FormatTime(now()), uri, body)
		}, "F INVALID_CLIENT", false},
		{"no Request-Time", func(r *http.Request) { r.Header.Del(wallet.HeaderRequestTime) }, "F PARAM_ILLEGAL", false},
		{"garbage Request-Time", func(r *http.Request) { r.Header.Set(wallet.HeaderRequestTime, "yesterday") }, "F PARAM_ILLEGAL", false},
		{"Request-Time unix ms", func(r *http.Request) {
			resign(r, clientKey, testClientID, strconv.FormatInt(now().UnixMilli(), 10), uri, body)
		}, "F INVALID_CODE", false},
		{"Request-Time unix ns", func(r *http.Request) {
			resign(r, clientKey, testClientID, strconv.FormatInt(now().UnixNano(), 10), uri, body)
		}, "F INVALID_CODE", false},
		{"Request-Time 9 minutes ahead", func(r *http.Request) {
			resign(r, clientKey, testClientID, wallet.FormatTime(now().Add(9*time.Minute)), uri, body)
		}, "F INVALID_CODE", false},
		{"Request-Time 11 minutes old", func(r *http.Request) {
			resign(r, clientKey, testClientID, wallet.FormatTime(now().Add(-11*time.Minute)), uri, body)
		}, "F INVALID_SIGNATURE", true},
		{"no Signature", func(r *http.Request) { r.Header.Del(wallet.HeaderSignature) }, "F INVALID_SIGNATURE", true},
		{"malformed Signature", func(r *http.Request) { r.Header.Set(wallet.HeaderSignature, "signature") }, "F INVALID_SIGNATURE", true},
		{"other algorithm", func(r *http.Request) {
			r.Header.Set(wallet.HeaderSignature, strings.Replace(r.Header.Get(wallet.HeaderSignature), "RSA256", "HS256", 1))
		}, "F INVALID_SIGNATURE", true},
		{"signed by another key", func(r *http.Request) {
			resign(r, otherKey, testClientID, wallet.FormatTime(now()), uri, body)
		}, "F INVALID_SIGNATURE", true},
		{"signed over another body", func(r *http.Request) {
			resign(r, clientKey, testClientID, wallet.FormatTime(now()), uri, []byte(`{"grantType":"AUTHORIZATION_CODE","authCode":"other"}`))
		}, "F INVALID_SIGNATURE", true},
		{"signed over another path", func(r *http.Request) {
			resign(r, clientKey, testClientID, wallet.FormatTime(now()), PathApplyTokenV2, body)
		}, "F INVALID_SIGNATURE", true},
		{"signed with another Request-Time", func(r *http.Request) {
			r.Header.Set(wallet.HeaderRequestTime, wallet.FormatTime(now().Add(time.Second)))
		}, "F INVALID_SIGNATURE", true},
		{"other keyVersion", func(r *http.Request) {
			r.Header.Set(wallet.HeaderSignature, strings.Replace(r.Header.Get(wallet.HeaderSignature), "keyVersion=1", "keyVersion=2", 1))
		}, "F KEY_NOT_FOUND", false},
		{"other Key-Version header", func(r *http.Request) { r.Header.Set(wallet.HeaderKeyVersion, "7") }, "F KEY_NOT_FOUND", false},
		{"text/plain", func(r *http.Request) { r.Header.Set("Content-Type", "text/plain") }, "F PARAM_ILLEGAL", false},
		{"no Content-Type", func(r *http.Request) { r.Header.Del("Content-Type") }, "F PARAM_ILLEGAL", false},
		{"latin1 charset", func(r *http.Request) { r.Header.Set("Content-Type", "application/json; charset=ISO-8859-1") }, "F PARAM_ILLEGAL", false},
		{"bare application/json", func(r *http.Request) { r.Header.Set("Content-Type", "application/json") }, "F INVALID_CODE", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h.t = t
			before := h.srv.Stats().BadSignatures
			status, res := h.raw(http.MethodPost, uri, body, c.edit)
			if got := res.ResultStatus + " " + res.ResultCode; got != c.want || status != http.StatusOK {
				t.Errorf("HTTP %d %s (%s), want 200 %s", status, got, res.ResultMessage, c.want)
			}
			if d := h.srv.Stats().BadSignatures - before; (d == 1) != c.badSig || d > 1 {
				t.Errorf("badSignatures grew by %d", d)
			}
		})
	}
}

func TestBadSignatureCounted(t *testing.T) {
	h := newHarness(t, nil)
	body := []byte(`{"accessToken":"x"}`)
	status, res := h.raw(http.MethodPost, PathInquiryUserInfo, body, func(r *http.Request) {
		sig, _ := wallet.Sign(otherKey, wallet.SigningContent(http.MethodPost, PathInquiryUserInfo, testClientID, r.Header.Get(wallet.HeaderRequestTime), body))
		r.Header.Set(wallet.HeaderSignature, wallet.FormatSignatureHeader("1", sig))
	})
	if status != http.StatusOK || res.ResultCode != wallet.CodeInvalidSignature || res.ResultStatus != wallet.StatusFailed {
		t.Fatalf("HTTP %d %+v", status, res)
	}
	if st := h.srv.Stats(); st.BadSignatures != 1 || st.Calls[PathInquiryUserInfo]["-"] != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestBodyChecks(t *testing.T) {
	h := newHarness(t, nil)
	tb := h.login("cust-b")
	long := strings.Repeat("a", 65)
	cases := []struct {
		name, path, body, want string
	}{
		{"array", PathApplyTokenV1, `[]`, "F PARAM_ILLEGAL"},
		{"string", PathApplyTokenV1, `"x"`, "F PARAM_ILLEGAL"},
		{"empty", PathApplyTokenV1, ``, "F PARAM_ILLEGAL"},
		{"truncated", PathApplyTokenV1, `{"grantType":`, "F PARAM_ILLEGAL"},
		{"trailing data", PathApplyTokenV1, `{"grantType":"REFRESH_TOKEN","refreshToken":"x"} {}`, "F PARAM_ILLEGAL"},
		{"invalid UTF-8", PathApplyTokenV1, "{\"grantType\":\"REFRESH_TOKEN\",\"refreshToken\":\"x\xff\"}", "F PARAM_ILLEGAL"},
		{"duplicate key", PathApplyTokenV1, `{"grantType":"REFRESH_TOKEN","refreshToken":"a","refreshToken":"b"}`, "F PARAM_ILLEGAL"},
		{"too deep", PathApplyTokenV1, `{"grantType":"REFRESH_TOKEN","refreshToken":"a","x":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `}`, "F PARAM_ILLEGAL"},
		{"deep but fine", PathApplyTokenV1, `{"grantType":"REFRESH_TOKEN","refreshToken":"nosuch","x":` + strings.Repeat("[", 63) + strings.Repeat("]", 63) + `}`, "F INVALID_REFRESH_TOKEN"},
		{"no grantType", PathApplyTokenV1, `{"authCode":"x"}`, "F PARAM_ILLEGAL"},
		{"null grantType", PathApplyTokenV1, `{"grantType":null,"authCode":"x"}`, "F PARAM_ILLEGAL"},
		{"numeric grantType", PathApplyTokenV1, `{"grantType":1}`, "F PARAM_ILLEGAL"},
		{"other grantType", PathApplyTokenV1, `{"grantType":"CLIENT_CREDENTIALS"}`, "F AUTH_CLIENT_UNSUPPORTED_GRANT_TYPE"},
		{"no authCode", PathApplyTokenV1, `{"grantType":"AUTHORIZATION_CODE"}`, "F PARAM_ILLEGAL"},
		{"empty authCode", PathApplyTokenV1, `{"grantType":"AUTHORIZATION_CODE","authCode":""}`, "F PARAM_ILLEGAL"},
		{"authCode too long", PathApplyTokenV1, `{"grantType":"AUTHORIZATION_CODE","authCode":"` + long + `"}`, "F PARAM_ILLEGAL"},
		{"authCode with #", PathApplyTokenV1, `{"grantType":"AUTHORIZATION_CODE","authCode":"a#b"}`, "F PARAM_ILLEGAL"},
		{"no refreshToken", PathApplyTokenV2, `{"grantType":"REFRESH_TOKEN"}`, "F PARAM_ILLEGAL"},
		{"refreshToken too long", PathApplyTokenV1, `{"grantType":"REFRESH_TOKEN","refreshToken":"` + strings.Repeat("r", 129) + `"}`, "F PARAM_ILLEGAL"},
		{"refreshToken with ?", PathApplyTokenV1, `{"grantType":"REFRESH_TOKEN","refreshToken":"a?b"}`, "F PARAM_ILLEGAL"},
		{"extendInfo too long", PathApplyTokenV1, `{"grantType":"REFRESH_TOKEN","refreshToken":"x","extendInfo":"` + strings.Repeat("e", 4097) + `"}`, "F PARAM_ILLEGAL"},
		{"extendInfo object too long", PathApplyTokenV1, `{"grantType":"REFRESH_TOKEN","refreshToken":"x","extendInfo":{"m":"` + strings.Repeat("e", 4096) + `"}}`, "F PARAM_ILLEGAL"},
		{"extendInfo at limit", PathApplyTokenV1, `{"grantType":"REFRESH_TOKEN","refreshToken":"x","extendInfo":"` + strings.Repeat("e", 4096) + `"}`, "F INVALID_REFRESH_TOKEN"},
		{"v2 appId not a string", PathApplyTokenV2, `{"grantType":"REFRESH_TOKEN","refreshToken":"x","appId":5}`, "F PARAM_ILLEGAL"},
		{"no accessToken", PathInquiryUserInfo, `{}`, "F PARAM_ILLEGAL"},
		{"accessToken not a string", PathInquiryUserInfo, `{"accessToken":true}`, "F PARAM_ILLEGAL"},
		{"unknown accessToken", PathInquiryUserInfo, `{"accessToken":"nosuch"}`, "F INVALID_ACCESS_TOKEN"},
		{"valid with extra fields", PathInquiryUserInfo, `{"accessToken":"` + tb.AccessToken + `","extendInfo":"x","authClientId":"y"}`, "S SUCCESS"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h.t = t
			status, res := h.raw(http.MethodPost, c.path, []byte(c.body), nil)
			if got := res.ResultStatus + " " + res.ResultCode; got != c.want || status != http.StatusOK {
				t.Errorf("HTTP %d %s (%s), want 200 %s", status, got, res.ResultMessage, c.want)
			}
		})
	}
	h.t = t
	st := h.srv.Stats()
	if st.RefreshTokensReused != 0 || st.BadSignatures != 0 {
		t.Errorf("stats %+v", st)
	}
	if st.Calls[PathApplyTokenV1]["other"] != 1 || st.Calls[PathApplyTokenV1]["-"] < 5 {
		t.Errorf("calls %v", st.Calls)
	}
}

func TestMethodPathAndSize(t *testing.T) {
	h := newHarness(t, nil)
	status, res := h.raw(http.MethodGet, PathApplyTokenV1, nil, nil)
	if status != http.StatusMethodNotAllowed || res.ResultStatus != "F" || res.ResultCode != wallet.CodeMethodNotAllowed {
		t.Errorf("GET: HTTP %d %+v", status, res)
	}
	status, res = h.raw(http.MethodPost, "/v1/payments/pay", []byte(`{}`), nil)
	if status != http.StatusNotFound || res.ResultCode != wallet.CodeInvalidAPI {
		t.Errorf("unknown path: HTTP %d %+v", status, res)
	}
	big := []byte(`{"accessToken":"x","pad":"` + strings.Repeat("p", MaxBodyBytes) + `"}`)
	status, res = h.raw(http.MethodPost, PathInquiryUserInfo, big, nil)
	if status != http.StatusRequestEntityTooLarge || res.ResultCode != wallet.CodeParamIllegal {
		t.Errorf("big body: HTTP %d %+v", status, res)
	}
	if got := h.srv.Stats().Calls; got[PathApplyTokenV1]["-"] != 1 || got[PathInquiryUserInfo]["-"] != 1 || len(got) != 2 {
		t.Errorf("calls %v", got)
	}
}

func TestPathPrefix(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.PathPrefix = "/api/" })
	if h.srv.PathPrefix() != "/api" {
		t.Fatalf("prefix %q", h.srv.PathPrefix())
	}
	tb := h.login("cust-p") // through the client, whose base URL ends in /api
	// The query string is part of what is signed, both ways.
	resp, err := h.client.Call(context.Background(), PathInquiryUserInfo, "trace=1&x=%2F", mustJSON(t, inquiryBody(tb.AccessToken)), nil)
	if err != nil || outcome(resp) != "S SUCCESS" {
		t.Fatalf("call with query: %v %v", err, resp)
	}
	// Without the prefix: no such API.
	status, res := h.raw(http.MethodPost, PathInquiryUserInfo, mustJSON(t, inquiryBody(tb.AccessToken)), nil)
	if status != http.StatusNotFound || res.ResultCode != wallet.CodeInvalidAPI {
		t.Errorf("unprefixed: HTTP %d %+v", status, res)
	}
	// A signature over the unprefixed path does not verify at the prefixed one.
	status, res = h.raw(http.MethodPost, "/api"+PathInquiryUserInfo, mustJSON(t, inquiryBody(tb.AccessToken)), func(r *http.Request) {
		body := mustJSON(t, inquiryBody(tb.AccessToken))
		sig, _ := wallet.Sign(clientKey, wallet.SigningContent(http.MethodPost, PathInquiryUserInfo, testClientID, r.Header.Get(wallet.HeaderRequestTime), body))
		r.Header.Set(wallet.HeaderSignature, wallet.FormatSignatureHeader("1", sig))
	})
	if status != http.StatusOK || res.ResultCode != wallet.CodeInvalidSignature {
		t.Errorf("signed without prefix: HTTP %d %+v", status, res)
	}
	// Stats name paths without the prefix (the unprefixed call above was no
	// wallet call and is not counted); /sim/ answers under the prefix too;
	// a fault path may carry the prefix.
	var st Stats
	if code := h.sim(http.MethodGet, "/api/sim/stats", nil, &st); code != http.StatusOK {
		t.Fatalf("GET /api/sim/stats: %d", code)
	}
	if st.Calls[PathInquiryUserInfo]["-"] != 2 || st.Calls[PathApplyTokenV1][GrantAuthorizationCode] != 1 {
		t.Errorf("calls %v", st.Calls)
	}
	h.addFault(map[string]any{"path": "/api" + PathInquiryUserInfo, "failCode": "ACCESS_DENIED"})
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "F ACCESS_DENIED")
}

func TestConcurrentRefreshIsSingleUse(t *testing.T) {
	h := newHarness(t, nil)
	const racers = 40
	tb := h.login("cust-race")
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		codes = map[string]int{}
	)
	for range racers {
		wg.Go(func() {
			resp, err := h.call(PathApplyTokenV1, refreshBody(tb.RefreshToken))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				codes[err.Error()]++
				return
			}
			codes[outcome(resp)]++
		})
	}
	wg.Wait()
	if codes["S SUCCESS"] != 1 || codes["F USED_REFRESH_TOKEN"] != racers-1 {
		t.Errorf("outcomes %v", codes)
	}
	if st := h.srv.Stats(); st.RefreshTokensReused != racers-1 || st.Refreshes != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestConcurrentCustomers(t *testing.T) {
	h := newHarness(t, nil)
	const customers = 60
	var wg sync.WaitGroup
	errs := make(chan error, customers)
	for i := range customers {
		wg.Go(func() {
			id := "cc-" + strconv.Itoa(i)
			code, err := h.srv.NewAuthCode(id, 0, 0, 0)
			if err != nil {
				errs <- err
				return
			}
			resp, err := h.call(PathApplyTokenV1, map[string]string{"grantType": GrantAuthorizationCode, "authCode": code})
			if err != nil || outcome(resp) != "S SUCCESS" {
				errs <- errors.New(id + ": exchange failed")
				return
			}
			tr, _ := wallet.ParseTokenResponse(resp.Body)
			resp, err = h.call(PathApplyTokenV2, refreshBody(tr.RefreshToken.Reveal()))
			if err != nil || outcome(resp) != "S SUCCESS" {
				errs <- errors.New(id + ": refresh failed")
				return
			}
			tr, _ = wallet.ParseTokenResponse(resp.Body)
			resp, err = h.call(PathInquiryUserInfo, inquiryBody(tr.AccessToken.Reveal()))
			if err != nil || outcome(resp) != "S SUCCESS" || !strings.Contains(string(resp.Body), `"userId":"`+id+`"`) {
				errs <- errors.New(id + ": inquiry failed")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := h.srv.Stats(); st.Exchanges != customers || st.Refreshes != customers {
		t.Errorf("stats %+v", st)
	}
}
