package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
)

const sdkPrefix = "/ams/api"

// dropIn is a harness for apps built on the wallet's SDK: walletsim under
// the SDK's path prefix, a tokenproxy that signs its answers with an app
// key, and an SDK-shaped client configured only with the gateway URL,
// tokenproxy's public key (from `tokenproxy app-key`) and a throwaway
// private key of its own.
type dropIn struct {
	*harness
	p   *proxyProc
	sdk *sdkClient
}

func newDropIn(t *testing.T, appTokens string) *dropIn {
	t.Helper()
	h := newHarness(t, "WALLETSIM_PATH_PREFIX="+sdkPrefix).withRedis()
	appKey := writeRSAKey(t, "app_signing.pem")
	p := h.startProxy(
		"TOKENPROXY_WALLET_URL="+h.tap.srv.URL+sdkPrefix,
		"TOKENPROXY_APP_SIGNING_KEY_FILE="+appKey,
		"TOKENPROXY_APP_TOKENS="+appTokens,
	)
	code, pub, stderr := testenv.RunCommand(t, h.bins.Tokenproxy, []string{"TOKENPROXY_APP_SIGNING_KEY_FILE=" + appKey}, "app-key")
	if code != 0 || strings.TrimSpace(pub) == "" {
		t.Fatalf("tokenproxy app-key: exit %d, %s", code, stderr)
	}
	throwaway, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &dropIn{harness: h, p: p, sdk: &sdkClient{
		gatewayURL: p.url, clientID: "TEST_CLIENT", merchant: throwaway, walletKey: strings.TrimSpace(pub),
	}}
}

func writeRSAKey(t *testing.T, name string) string {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// applyToken exchanges a new authCode for customerID the SDK's way.
func (d *dropIn) applyToken(t *testing.T, customerID string) *sdkAnswer {
	t.Helper()
	a, err := d.sdk.execute(sdkPrefix+"/v1/authorizations/applyToken",
		map[string]string{"grantType": "AUTHORIZATION_CODE", "authCode": d.authCode(customerID)})
	if err != nil || a.code() != "SUCCESS" {
		t.Fatalf("SDK applyToken: %v (%d %s)", err, statusOf(a), bodyOf(a))
	}
	return a
}

func statusOf(a *sdkAnswer) int {
	if a == nil {
		return 0
	}
	return a.status
}

func bodyOf(a *sdkAnswer) string {
	if a == nil {
		return ""
	}
	return string(a.body)
}

// TestSDKDropIn: an unmodified SDK-shaped app pointed at tokenproxy (the
// gateway URL and the public key changed, nothing else) exchanges, makes
// five calls with the accessToken it kept (a handle) across a refresh made
// by the proxy, refreshes with its refresh handle without a wallet call,
// and gets 401 after a DELETE. Every answer verifies the SDK's way; the
// wallet sees only real tokens, signed with the merchant key.
func TestSDKDropIn(t *testing.T) {
	d := newDropIn(t, "handles")
	var answers []*sdkAnswer
	ex := d.applyToken(t, "sdk-1")
	answers = append(answers, ex)
	access, refresh := ex.str("accessToken"), ex.str("refreshToken")
	if !strings.HasPrefix(access, "tph_") || !strings.HasPrefix(refresh, "tph_") || access == refresh {
		t.Fatalf("exchange answer handles %q %q", access, refresh)
	}
	call := func(i int) {
		t.Helper()
		a, err := d.sdk.execute(sdkPrefix+"/v1/users/inquiryUserInfo", map[string]string{"accessToken": access})
		if err != nil || a.code() != "SUCCESS" {
			t.Fatalf("call %d: %v (%d %s)", i, err, statusOf(a), bodyOf(a))
		}
		answers = append(answers, a)
	}
	call(1)
	call(2)
	before := d.tap.allTokens()
	status, body, hdr := do(t, "POST", d.p.url+"/tokenproxy/customers/sdk-1/refresh", "", nil)
	if status != 200 {
		t.Fatalf("forced refresh: %d %s", status, body)
	}
	if err := d.sdk.verify("/tokenproxy/customers/sdk-1/refresh", hdr, body); err != nil {
		t.Fatalf("admin answer does not verify: %v", err)
	}
	if len(d.tap.allTokens()) <= len(before) {
		t.Fatal("the forced refresh issued no new tokens")
	}
	call(3)
	call(4)
	call(5)
	if got := d.tap.lastRequest()["accessToken"]; got == access || !contains(d.tap.allTokens(), got) {
		t.Fatalf("the wallet got %v, not a real token", got)
	}

	walletCalls := d.stats().total()
	rf, err := d.sdk.execute(sdkPrefix+"/v1/authorizations/applyToken", map[string]string{"grantType": "REFRESH_TOKEN", "refreshToken": refresh})
	if err != nil || rf.code() != "SUCCESS" || rf.str("accessToken") != access || rf.str("refreshToken") != refresh || rf.str("accessTokenExpiryTime") == "" {
		t.Fatalf("app refresh grant: %v (%d %s)", err, statusOf(rf), bodyOf(rf))
	}
	answers = append(answers, rf)
	if n := d.stats().total(); n != walletCalls {
		t.Fatalf("the app's refresh grant made %d wallet calls, want 0", n-walletCalls)
	}

	status, body, hdr = do(t, "DELETE", d.p.url+"/tokenproxy/customers/sdk-1", "", nil)
	if status != 204 || d.sdk.verify("/tokenproxy/customers/sdk-1", hdr, body) != nil {
		t.Fatalf("delete: %d %s", status, body)
	}
	gone, err := d.sdk.execute(sdkPrefix+"/v1/users/inquiryUserInfo", map[string]string{"accessToken": access})
	if err != nil || gone.status != 401 || gone.code() != "CUSTOMER_NOT_AUTHORIZED" {
		t.Fatalf("after delete: %v (%d %s)", err, statusOf(gone), bodyOf(gone))
	}
	answers = append(answers, gone)
	if n := d.stats().total(); n != walletCalls {
		t.Fatalf("%d wallet calls after the refresh grant, want 0", n-walletCalls)
	}
	s := d.stats()
	if s.BadSignatures != 0 || s.calls("/v1/users/inquiryUserInfo", "-") != 5 {
		t.Fatalf("wallet stats %+v: want 5 inquiries, 0 bad signatures", s)
	}
	d.scanAnswers(t, answers, true)
}

// TestSDKDirectToWalletsim: the same SDK-shaped client pointed straight at
// walletsim verifies walletsim's answers (Client-Id and Response-Time on
// every answer, as the real wallet sends).
func TestSDKDirectToWalletsim(t *testing.T) {
	h := newHarness(t, "WALLETSIM_PATH_PREFIX="+sdkPrefix)
	merchant, err := os.ReadFile(h.keys.MerchantPrivate)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(merchant)
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sdk := &sdkClient{gatewayURL: h.simURL, clientID: "TEST_CLIENT", merchant: k.(*rsa.PrivateKey),
		walletKey: publicKeyBase64(testenv.WalletPublicKeyPEM())}
	ex, err := sdk.execute(sdkPrefix+"/v1/authorizations/applyToken",
		map[string]string{"grantType": "AUTHORIZATION_CODE", "authCode": h.authCode("direct-1")})
	if err != nil || ex.code() != "SUCCESS" || ex.str("accessToken") == "" {
		t.Fatalf("applyToken: %v (%d %s)", err, statusOf(ex), bodyOf(ex))
	}
	a, err := sdk.execute(sdkPrefix+"/v1/users/inquiryUserInfo", map[string]string{"accessToken": ex.str("accessToken")})
	if err != nil || a.code() != "SUCCESS" {
		t.Fatalf("inquiryUserInfo: %v (%d %s)", err, statusOf(a), bodyOf(a))
	}
	bad, err := sdk.execute(sdkPrefix+"/v1/users/inquiryUserInfo", map[string]string{"accessToken": "not-a-token"})
	if err != nil || bad.code() != "INVALID_ACCESS_TOKEN" {
		t.Fatalf("an F answer must verify too: %v (%d %s)", err, statusOf(bad), bodyOf(bad))
	}
}

// TestSDKHandlesNeverReachTheWallet: forged, altered, another customer's,
// deleted and superseded handles are refused before the wallet.
func TestSDKHandlesNeverReachTheWallet(t *testing.T) {
	d := newDropIn(t, "handles")
	a := d.applyToken(t, "cust-a")
	b := d.applyToken(t, "cust-b")
	ha, hb := a.str("accessToken"), b.str("accessToken")
	forged := string(newTestHandle("cust-a"))
	altered := ha[:len(ha)-2] + flip(ha[len(ha)-2:])
	base := d.stats().total()
	inquiry := sdkPrefix + "/v1/users/inquiryUserInfo"
	cases := []struct {
		name   string
		handle string
		header map[string]string
		status int
		code   string
	}{
		{"forged", forged, nil, 401, "CUSTOMER_NOT_AUTHORIZED"},
		{"altered", altered, nil, 401, "CUSTOMER_NOT_AUTHORIZED"},
		{"not base64", "tph_***", nil, 401, "CUSTOMER_NOT_AUTHORIZED"},
		{"refresh handle as access", a.str("refreshToken"), nil, 401, "CUSTOMER_NOT_AUTHORIZED"},
		{"another customer's header", hb, map[string]string{"X-Customer-Id": "cust-a"}, 400, "PARAM_ILLEGAL"},
	}
	for _, c := range cases {
		status, body, hdr := do(t, "POST", d.p.url+inquiry, `{"accessToken":"`+c.handle+`"}`, c.header)
		if status != c.status || resultCode(body) != c.code {
			t.Errorf("%s: %d %s, want %d %s", c.name, status, body, c.status, c.code)
		}
		if err := d.sdk.verify(inquiry, hdr, body); err != nil {
			t.Errorf("%s: the refusal does not verify: %v", c.name, err)
		}
	}
	// Re-exchanging cust-a supersedes its handle; deleting cust-b ends its.
	d.applyToken(t, "cust-a")
	if status, _, _ := do(t, "DELETE", d.p.url+"/tokenproxy/customers/cust-b", "", nil); status != 204 {
		t.Fatal("delete cust-b")
	}
	base += 1 // the re-exchange's applyToken
	for name, hd := range map[string]string{"superseded": ha, "deleted": hb} {
		status, body, _ := do(t, "POST", d.p.url+inquiry, `{"accessToken":"`+hd+`"}`, nil)
		if status != 401 || resultCode(body) != "CUSTOMER_NOT_AUTHORIZED" {
			t.Errorf("%s handle: %d %s", name, status, body)
		}
	}
	status, body, _ := do(t, "POST", d.p.url+sdkPrefix+"/v1/authorizations/applyToken",
		`{"grantType":"REFRESH_TOKEN","refreshToken":"`+a.str("refreshToken")+`"}`, nil)
	if status != 401 || resultCode(body) != "CUSTOMER_NOT_AUTHORIZED" {
		t.Errorf("superseded refresh handle: %d %s", status, body)
	}
	if n := d.stats().total(); n != base {
		t.Fatalf("%d refused handle calls reached the wallet", n-base)
	}
	logs := string(d.p.Logs())
	_, metrics, _ := do(t, "GET", d.p.ops+"/metrics", "", nil)
	for _, hd := range []string{ha, hb, a.str("refreshToken"), b.str("refreshToken"), forged, altered} {
		if strings.Contains(logs, hd) || strings.Contains(string(metrics), hd) {
			t.Errorf("a handle appears in the logs or /metrics")
		}
	}
}

// TestSDKAnswersHoldNoToken: in both TOKENPROXY_APP_TOKENS modes, no answer
// to the app carries a real token; with none, no token field at all.
func TestSDKAnswersHoldNoToken(t *testing.T) {
	for _, mode := range []string{"none", "handles"} {
		t.Run(mode, func(t *testing.T) {
			d := newDropIn(t, mode)
			ex := d.applyToken(t, "scan-"+mode)
			answers := []*sdkAnswer{ex}
			hdr := map[string]string{"X-Customer-Id": "scan-" + mode}
			param := map[string]string{}
			if mode == "handles" {
				hdr, param["accessToken"] = nil, ex.str("accessToken")
			} else if _, ok := ex.fields["accessToken"]; ok {
				t.Fatalf("mode none: the exchange answer has an accessToken field: %s", ex.body)
			}
			for range 3 {
				a, err := d.sdk.executeWith(sdkPrefix+"/v1/users/inquiryUserInfo", param, hdr)
				if err != nil || a.code() != "SUCCESS" {
					t.Fatalf("call: %v (%d %s)", err, statusOf(a), bodyOf(a))
				}
				answers = append(answers, a)
			}
			d.scanAnswers(t, answers, mode == "handles")
		})
	}
}

// scanAnswers fails t if any answer, the logs or /metrics hold a token the
// wallet issued, in any encoding, or (handles) a token field holding
// anything but a handle.
func (d *dropIn) scanAnswers(t *testing.T, answers []*sdkAnswer, handles bool) {
	t.Helper()
	tokens := d.tap.allTokens()
	if len(tokens) == 0 {
		t.Fatal("the tap saw no token: nothing was checked")
	}
	_, metrics, _ := do(t, "GET", d.p.ops+"/metrics", "", nil)
	for _, tok := range tokens {
		for _, enc := range encodings(tok) {
			for i, a := range answers {
				if strings.Contains(string(a.body), enc) || strings.Contains(strings.Join(flatten(a.header), "\n"), enc) {
					t.Errorf("answer %d holds a token", i)
				}
			}
			if strings.Contains(string(d.p.Logs()), enc) || strings.Contains(string(metrics), enc) {
				t.Error("a token appears in the logs or /metrics")
			}
		}
	}
	for i, a := range answers {
		for _, k := range []string{"accessToken", "refreshToken"} {
			if v, ok := a.fields[k]; ok && (!handles || !strings.HasPrefix(v.(string), "tph_")) {
				t.Errorf("answer %d has %s %v", i, k, v)
			}
		}
	}
}

func flatten(h map[string][]string) []string {
	var out []string
	for k, vs := range h {
		out = append(out, k+": "+strings.Join(vs, ","))
	}
	return out
}

func contains(list []string, v any) bool {
	s, _ := v.(string)
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func flip(s string) string {
	b := []byte(s)
	for i := range b {
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
	}
	return string(b)
}
