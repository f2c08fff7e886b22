package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
)

const (
	applyV1  = "/v1/authorizations/applyToken"
	inquiry  = "/v1/users/inquiryUserInfo"
	grantAC  = "AUTHORIZATION_CODE"
	grantRT  = "REFRESH_TOKEN"
	noGrant  = "-"
	customer = "cust-1"
)

// TestEndToEnd drives the real binaries over their HTTP listeners, with
// walletsim and a real redis-server, through the contract's main paths; at
// the end every Redis key and every log line is scanned for the tokens the
// wallet issued.
func TestEndToEnd(t *testing.T) {
	h := newHarness(t).withRedis()
	p := h.startProxy()
	cust := map[string]string{"X-Customer-Id": customer}

	t.Run("exchange answers without tokens", func(t *testing.T) {
		status, body, hdr := do(t, "POST", p.url+applyV1,
			`{"grantType":"AUTHORIZATION_CODE","authCode":"`+h.authCode(customer)+`","extendInfo":"{\"memo\":\"m\"}"}`, nil)
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil || status != 200 {
			t.Fatalf("%d %s", status, body)
		}
		for _, k := range []string{"accessToken", "refreshToken"} {
			if _, ok := m[k]; ok {
				t.Fatalf("the app's answer holds %s", k)
			}
		}
		for _, k := range []string{"result", "customerId", "accessTokenExpiryTime", "refreshTokenExpiryTime"} {
			if _, ok := m[k]; !ok {
				t.Fatalf("the app's answer lacks %s: %s", k, body)
			}
		}
		if hdr.Get("Signature") != "" || hdr.Get("Response-Time") != "" {
			t.Fatal("exchange answer carries the wallet's signature headers")
		}
	})

	t.Run("proxied call carries the token, signed", func(t *testing.T) {
		before := h.stats()
		status, body, hdr := do(t, "POST", p.url+inquiry, `{"extendInfo":"x"}`, cust)
		if status != 200 || resultCode(body) != "SUCCESS" {
			t.Fatalf("%d %s", status, body)
		}
		if hdr.Get("Signature") == "" || hdr.Get("Response-Time") == "" {
			t.Fatal("the wallet's signature headers were not returned")
		}
		sent := h.tap.lastRequest()
		if tok, _ := sent["accessToken"].(string); tok == "" || sent["extendInfo"] != "x" {
			t.Fatalf("forwarded body %v", sent)
		}
		after := h.stats()
		if after.BadSignatures != before.BadSignatures || after.calls(inquiry, noGrant) != before.calls(inquiry, noGrant)+1 {
			t.Fatalf("wallet stats before %+v after %+v", before, after)
		}
	})

	t.Run("the app's own token is overwritten", func(t *testing.T) {
		status, body, _ := do(t, "POST", p.url+inquiry, `{"accessToken":"app-chosen-token"}`, cust)
		if status != 200 || resultCode(body) != "SUCCESS" {
			t.Fatalf("%d %s", status, body)
		}
		if h.tap.lastRequest()["accessToken"] == "app-chosen-token" {
			t.Fatal("the app chose the token")
		}
	})

	t.Run("unknown customer is 401 without a wallet call", func(t *testing.T) {
		before := h.stats().total()
		status, body, _ := do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": "nobody"})
		if status != 401 || resultCode(body) != "CUSTOMER_NOT_AUTHORIZED" {
			t.Fatalf("%d %s", status, body)
		}
		if after := h.stats().total(); after != before {
			t.Fatalf("the wallet was called (%d -> %d)", before, after)
		}
	})

	t.Run("refresh grant from the app refused without a wallet call", func(t *testing.T) {
		before := h.stats().total()
		status, body, _ := do(t, "POST", p.url+applyV1, `{"grantType":"REFRESH_TOKEN","refreshToken":"abc"}`, nil)
		if status != 400 || resultCode(body) != "PARAM_ILLEGAL" {
			t.Fatalf("%d %s", status, body)
		}
		if after := h.stats().total(); after != before {
			t.Fatalf("the wallet was called (%d -> %d)", before, after)
		}
	})

	t.Run("code errors pass through", func(t *testing.T) {
		code := h.authCode("cust-codes")
		h.exchange(p, "cust-codes-other") // unrelated, keeps the code unused
		body := `{"grantType":"AUTHORIZATION_CODE","authCode":"` + code + `"}`
		if status, b, _ := do(t, "POST", p.url+applyV1, body, nil); status != 200 || resultCode(b) != "SUCCESS" {
			t.Fatalf("first use: %d %s", status, b)
		}
		for name, tc := range map[string]struct{ body, code string }{
			"used":    {body, "USED_CODE"},
			"invalid": {`{"grantType":"AUTHORIZATION_CODE","authCode":"nosuchcode"}`, "INVALID_CODE"},
		} {
			status, b, _ := do(t, "POST", p.url+applyV1, tc.body, nil)
			if status != 200 || resultCode(b) != tc.code || !strings.Contains(string(b), `"resultStatus":"F"`) {
				t.Fatalf("%s: %d %s", name, status, b)
			}
		}
		var out struct{ AuthCode string }
		_, raw, _ := do(t, "POST", h.simURL+"/sim/authcodes", `{"customerId":"cust-late","codeTtl":"1ms"}`, nil)
		_ = json.Unmarshal(raw, &out)
		time.Sleep(5 * time.Millisecond) // the code's own one-millisecond life, not synchronisation
		status, b, _ := do(t, "POST", p.url+applyV1, `{"grantType":"AUTHORIZATION_CODE","authCode":"`+out.AuthCode+`"}`, nil)
		if status != 200 || resultCode(b) != "EXPIRED_CODE" {
			t.Fatalf("expired: %d %s", status, b)
		}
	})

	t.Run("EXPIRED_ACCESS_TOKEN: exactly one refresh and one retry", func(t *testing.T) {
		h.exchange(p, "cust-exp")
		before := h.stats()
		h.fault(`{"path":"` + inquiry + `","failCode":"EXPIRED_ACCESS_TOKEN","count":1}`)
		status, body, _ := do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": "cust-exp"})
		if status != 200 || resultCode(body) != "SUCCESS" {
			t.Fatalf("%d %s", status, body)
		}
		after := h.stats()
		if d := after.calls(applyV1, grantRT) - before.calls(applyV1, grantRT); d != 1 {
			t.Fatalf("%d refresh calls, want 1", d)
		}
		if d := after.calls(inquiry, noGrant) - before.calls(inquiry, noGrant); d != 2 {
			t.Fatalf("%d inquiry calls, want 2 (the rejected one and the retry)", d)
		}
		if after.RefreshTokensReused != 0 {
			t.Fatalf("%d refresh tokens reused", after.RefreshTokensReused)
		}
	})

	t.Run("badly signed wallet answer is 502 INVALID_WALLET_SIGNATURE", func(t *testing.T) {
		h.fault(`{"path":"` + inquiry + `","badSignatureRate":1,"count":1}`)
		status, body, _ := do(t, "POST", p.url+inquiry, `{}`, cust)
		if status != 502 || resultCode(body) != "INVALID_WALLET_SIGNATURE" {
			t.Fatalf("%d %s", status, body)
		}
	})

	t.Run("status and delete", func(t *testing.T) {
		status, body, _ := do(t, "GET", p.url+"/tokenproxy/customers/"+customer, "", nil)
		var st map[string]any
		if status != 200 || json.Unmarshal(body, &st) != nil || st["state"] != "valid" || st["customerId"] != customer {
			t.Fatalf("%d %s", status, body)
		}
		for _, k := range []string{"accessTokenExpiryTime", "refreshTokenExpiryTime", "nextRefreshTime", "lastRefreshTime", "lastError"} {
			if _, ok := st[k]; !ok {
				t.Fatalf("status lacks %s", k)
			}
		}
		if status, _, _ := do(t, "DELETE", p.url+"/tokenproxy/customers/cust-codes-other", "", nil); status != 204 {
			t.Fatalf("delete: %d", status)
		}
		if status, _, _ := do(t, "DELETE", p.url+"/tokenproxy/customers/never-seen", "", nil); status != 204 {
			t.Fatalf("delete unknown: %d", status)
		}
		if status, b, _ := do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": "cust-codes-other"}); status != 401 {
			t.Fatalf("after delete: %d %s", status, b)
		}
		if status, _, _ := do(t, "GET", p.url+"/tokenproxy/customers/cust-codes-other", "", nil); status != 404 {
			t.Fatalf("status after delete: %d", status)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		_, body, _ := do(t, "GET", p.ops+"/metrics", "", nil)
		for _, want := range []string{
			`tokenproxy_requests_total{code="200",route="exchange"}`,
			`tokenproxy_upstream_requests_total{path="/v1/users/inquiryUserInfo",result_code="SUCCESS",result_status="S"}`,
			`tokenproxy_refreshes_total{code="SUCCESS",result="success",trigger="retry"} 1`,
			`tokenproxy_store_up 1`,
		} {
			if !bytes.Contains(body, []byte(want)) {
				t.Fatalf("metrics lack %s", want)
			}
		}
		if bytes.Contains(body, []byte(customer)) {
			t.Fatal("a customer id is a metric label")
		}
	})

	// Every token the wallet issued, in every encoding, is absent from
	// Redis and from the logs.
	tokens := h.tap.allTokens()
	if len(tokens) < 6 {
		t.Fatalf("the tap saw only %d tokens", len(tokens))
	}
	dump := h.redis.Dump(t)
	if len(dump) == 0 {
		t.Fatal("Redis is empty")
	}
	logs := p.Logs()
	for _, tok := range tokens {
		for _, enc := range encodings(tok) {
			for _, kv := range dump {
				if bytes.Contains([]byte(kv.Key), []byte(enc)) {
					t.Fatalf("a token is in a Redis key name")
				}
				for _, v := range kv.Values {
					if bytes.Contains(v, []byte(enc)) {
						t.Fatalf("a token is in Redis in plaintext or base64, key %s", kv.Key)
					}
				}
			}
			if bytes.Contains(logs, []byte(enc)) {
				t.Fatalf("a token is in the logs")
			}
		}
	}
}

// TestMemoryStoreEndToEnd runs the quick-start shape: no Redis at all.
func TestMemoryStoreEndToEnd(t *testing.T) {
	h := newHarness(t)
	p := h.startProxy()
	if !bytes.Contains(p.Logs(), []byte("in-memory token store")) {
		t.Fatal("no warning that the in-memory store is not shared")
	}
	h.exchange(p, customer)
	status, body, _ := do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": customer})
	if status != 200 || resultCode(body) != "SUCCESS" {
		t.Fatalf("%d %s", status, body)
	}
}

// TestConcurrentCallsOneRefresh: many concurrent calls for a customer whose
// access token expired cause exactly one refresh on one replica. Sized for
// two cores with race-built binaries: access tokens live 4 s and are due
// only at expiry, so the 100 calls finish well within the new token's life.
func TestConcurrentCallsOneRefresh(t *testing.T) {
	h := newHarness(t).withRedis()
	p := h.startProxy("TOKENPROXY_REFRESH_BEFORE=0s", "TOKENPROXY_REFRESH_JITTER=0s")
	h.exchangeTTL(p, customer, "4s")
	time.Sleep(4100 * time.Millisecond) // the access token's life, not synchronisation
	const callers = 100
	var wg sync.WaitGroup
	failures := make(chan string, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, body, _ := do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": customer})
			if status != 200 || resultCode(body) != "SUCCESS" {
				failures <- fmt.Sprintf("%d %s", status, body)
			}
		}()
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Fatal(f)
	}
	st := h.stats()
	if n := st.calls(applyV1, grantRT); n != 1 {
		t.Fatalf("%d refresh calls for %d concurrent callers, want 1", n, callers)
	}
	if st.RefreshTokensReused != 0 {
		t.Fatalf("%d reused", st.RefreshTokensReused)
	}
}

// TestWalletUnreachable: connection refused is 502 WALLET_UNAVAILABLE and
// a slow wallet 504 WALLET_TIMEOUT; the process stays up.
func TestWalletFailures(t *testing.T) {
	h := newHarness(t)
	p := h.startProxy("TOKENPROXY_UPSTREAM_TIMEOUT=300ms")
	h.exchange(p, customer)
	cust := map[string]string{"X-Customer-Id": customer}

	h.fault(`{"path":"` + inquiry + `","latency":"2s","count":1}`)
	if status, body, _ := do(t, "POST", p.url+inquiry, `{}`, cust); status != 504 || resultCode(body) != "WALLET_TIMEOUT" {
		t.Fatalf("slow wallet: %d %s", status, body)
	}
	h.fault(`{"path":"` + inquiry + `","html5xxRate":1,"count":1}`)
	if status, body, _ := do(t, "POST", p.url+inquiry, `{}`, cust); status != 502 || resultCode(body) != "WALLET_UNAVAILABLE" {
		t.Fatalf("html 5xx: %d %s", status, body)
	}
	h.fault(`{"path":"` + inquiry + `","resetRate":1,"count":1}`)
	if status, body, _ := do(t, "POST", p.url+inquiry, `{}`, cust); status != 502 || resultCode(body) != "WALLET_UNAVAILABLE" {
		t.Fatalf("reset: %d %s", status, body)
	}
	h.sim.Kill()
	if status, body, _ := do(t, "POST", p.url+inquiry, `{}`, cust); status != 502 || resultCode(body) != "WALLET_UNAVAILABLE" {
		t.Fatalf("refused: %d %s", status, body)
	}
	if p.Exited() {
		t.Fatal("tokenproxy exited")
	}
}

// TestShutdownDrains: SIGTERM while a call is in flight; the call completes,
// readiness turns 503 meanwhile, and the process exits 0.
func TestShutdownDrains(t *testing.T) {
	h := newHarness(t)
	p := h.startProxy()
	h.exchange(p, customer)
	h.fault(`{"path":"` + inquiry + `","latency":"1500ms","count":1}`)
	result := make(chan string, 1)
	go func() {
		status, body, _ := do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": customer})
		result <- fmt.Sprintf("%d %s", status, resultCode(body))
	}()
	deadline := time.Now().Add(10 * time.Second)
	for h.stats().calls(inquiry, noGrant) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got := <-result; got != "200 SUCCESS" {
		t.Fatalf("in-flight call: %s", got)
	}
	code, err := p.Wait(30 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
	if !bytes.Contains(p.Logs(), []byte("draining")) {
		t.Fatal("no drain logged")
	}
}

// TestConfigErrorExitsProcess checks the binary itself, not only run().
func TestConfigErrorExitsProcess(t *testing.T) {
	bins := testenv.Binaries(t)
	code, stdout, stderr := testenv.RunCommand(t, bins.Tokenproxy, []string{"TOKENPROXY_CLIENT_ID=x"})
	if code != 2 || !strings.Contains(stderr, "TOKENPROXY_WALLET_URL") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
