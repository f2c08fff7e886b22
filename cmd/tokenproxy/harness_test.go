package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
)

// harness runs the real binaries on loopback: walletsim (strict, signing
// its answers with the wallet key), a recording tap between tokenproxy and
// walletsim (so tests can learn every token the wallet issued and prove
// none leaks), a redis-server on a free port, and tokenproxy processes.
type harness struct {
	t      *testing.T
	bins   testenv.Bins
	keys   testenv.KeyFiles
	redis  *testenv.Redis
	sim    *testenv.Process
	simURL string
	tap    *tap
	encKey string
}

type proxyProc struct {
	*testenv.Process
	url, ops string
}

func newHarness(t *testing.T, simEnv ...string) *harness {
	t.Helper()
	h := &harness{t: t, bins: testenv.Binaries(t), keys: testenv.WriteKeyFiles(t)}
	var addr string
	h.sim, addr = startWalletsim(t, h.bins, h.keys, simEnv...)
	h.simURL = "http://" + addr
	testenv.WaitReady(t, h.simURL+"/sim/stats", 20*time.Second, h.sim)
	h.tap = newTap(t, h.simURL)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	h.encKey = base64.StdEncoding.EncodeToString(key)
	return h
}

// startWalletsim starts walletsim on a free loopback port with the test
// keys and client id, plus env; it does not wait for it to serve.
func startWalletsim(t *testing.T, bins testenv.Bins, keys testenv.KeyFiles, env ...string) (*testenv.Process, string) {
	t.Helper()
	addr := testenv.FreeAddr(t)
	return testenv.Start(t, "walletsim", bins.Walletsim, append([]string{
		"WALLETSIM_LISTEN_ADDR=" + addr,
		"WALLETSIM_CLIENT_PUBLIC_KEY_FILE=" + keys.MerchantPublic,
		"WALLETSIM_PRIVATE_KEY_FILE=" + keys.WalletPrivate,
		"WALLETSIM_CLIENT_ID=TEST_CLIENT",
	}, env...)), addr
}

// in returns the harness for use in subtest t: the same processes, with
// failures (and processes started through it) belonging to t.
func (h *harness) in(t *testing.T) *harness {
	c := *h
	c.t = t
	return &c
}

// withRedis starts the redis-server the proxies of this harness share.
func (h *harness) withRedis() *harness {
	h.redis = testenv.StartRedis(h.t)
	return h
}

// startProxy starts a tokenproxy against the tap, on Redis when the
// harness has one, else with the in-memory store; extra overrides.
func (h *harness) startProxy(extra ...string) *proxyProc {
	h.t.Helper()
	p := &proxyProc{url: "http://" + testenv.FreeAddr(h.t), ops: "http://" + testenv.FreeAddr(h.t)}
	env := []string{
		"TOKENPROXY_LISTEN_ADDR=" + strings.TrimPrefix(p.url, "http://"),
		"TOKENPROXY_OPS_ADDR=" + strings.TrimPrefix(p.ops, "http://"),
		"TOKENPROXY_WALLET_URL=" + h.tap.srv.URL,
		"TOKENPROXY_CLIENT_ID=TEST_CLIENT",
		"TOKENPROXY_PRIVATE_KEY_FILE=" + h.keys.MerchantPrivate,
		"TOKENPROXY_WALLET_PUBLIC_KEY_FILE=" + h.keys.WalletPublic,
		"TOKENPROXY_LOG_LEVEL=debug",
	}
	if h.redis != nil {
		env = append(env, "TOKENPROXY_REDIS_URL="+h.redis.URL, "TOKENPROXY_ENCRYPTION_KEYS="+h.encKey)
	}
	p.Process = testenv.Start(h.t, "tokenproxy", h.bins.Tokenproxy, append(env, extra...))
	testenv.WaitReady(h.t, p.ops+"/readyz", 20*time.Second, p.Process)
	return p
}

func (h *harness) authCode(customerID string) string {
	h.t.Helper()
	return h.authCodeTTL(customerID, "")
}

// authCodeTTL gets a code whose token chain has access tokens living
// accessTTL (walletsim's default when empty).
func (h *harness) authCodeTTL(customerID, accessTTL string) string {
	h.t.Helper()
	var out struct{ AuthCode string }
	req := `{"customerId":"` + customerID + `"}`
	if accessTTL != "" {
		req = `{"customerId":"` + customerID + `","accessTtl":"` + accessTTL + `"}`
	}
	status, body, _ := do(h.t, "POST", h.simURL+"/sim/authcodes", req, nil)
	if status != 200 || json.Unmarshal(body, &out) != nil || out.AuthCode == "" {
		h.t.Fatalf("authcode: %d %s", status, body)
	}
	return out.AuthCode
}

// exchange links a customer through p and checks the answer holds no token.
func (h *harness) exchange(p *proxyProc, customerID string) {
	h.t.Helper()
	h.exchangeTTL(p, customerID, "")
}

func (h *harness) exchangeTTL(p *proxyProc, customerID, accessTTL string) {
	h.t.Helper()
	status, body, _ := do(h.t, "POST", p.url+"/v1/authorizations/applyToken",
		`{"grantType":"AUTHORIZATION_CODE","authCode":"`+h.authCodeTTL(customerID, accessTTL)+`"}`, nil)
	if status != 200 || resultCode(body) != "SUCCESS" {
		h.t.Fatalf("exchange: %d %s", status, body)
	}
}

// authCodeWith gets a code for the /sim/authcodes request req.
func (h *harness) authCodeWith(req map[string]string) string {
	h.t.Helper()
	raw, _ := json.Marshal(req)
	var out struct{ AuthCode string }
	status, body, _ := do(h.t, "POST", h.simURL+"/sim/authcodes", string(raw), nil)
	if status != 200 || json.Unmarshal(body, &out) != nil || out.AuthCode == "" {
		h.t.Fatalf("authcode: %d %s", status, body)
	}
	return out.AuthCode
}

// authCodeChain is authCodeTTL with the refresh tokens' lifetime too
// (walletsim's defaults for empty values).
func (h *harness) authCodeChain(customerID, accessTTL, refreshTTL string) string {
	h.t.Helper()
	req := map[string]string{"customerId": customerID}
	if accessTTL != "" {
		req["accessTtl"] = accessTTL
	}
	if refreshTTL != "" {
		req["refreshTtl"] = refreshTTL
	}
	raw, _ := json.Marshal(req)
	var out struct{ AuthCode string }
	status, body, _ := do(h.t, "POST", h.simURL+"/sim/authcodes", string(raw), nil)
	if status != 200 || json.Unmarshal(body, &out) != nil || out.AuthCode == "" {
		h.t.Fatalf("authcode: %d %s", status, body)
	}
	return out.AuthCode
}

// exchanged is what the app learns from an exchange through the proxy.
type exchanged struct {
	CustomerID             string    `json:"customerId"`
	AccessTokenExpiryTime  time.Time `json:"accessTokenExpiryTime"`
	RefreshTokenExpiryTime time.Time `json:"refreshTokenExpiryTime"`
}

// exchangeChain links a customer through p with the given token lifetimes
// and returns the expiry times the proxy answered.
func (h *harness) exchangeChain(p *proxyProc, customerID, accessTTL, refreshTTL string) exchanged {
	h.t.Helper()
	status, body, _ := do(h.t, "POST", p.url+"/v1/authorizations/applyToken",
		`{"grantType":"AUTHORIZATION_CODE","authCode":"`+h.authCodeChain(customerID, accessTTL, refreshTTL)+`"}`, nil)
	var ex exchanged
	if status != 200 || resultCode(body) != "SUCCESS" || json.Unmarshal(body, &ex) != nil {
		h.t.Fatalf("exchange: %d %s", status, body)
	}
	return ex
}

// clearFaults removes every walletsim fault rule.
func (h *harness) clearFaults() {
	h.t.Helper()
	if status, body, _ := do(h.t, "DELETE", h.simURL+"/sim/faults", "", nil); status != 200 && status != 204 {
		h.t.Fatalf("clear faults: %d %s", status, body)
	}
}

func (h *harness) fault(spec string) {
	h.t.Helper()
	if status, body, _ := do(h.t, "POST", h.simURL+"/sim/faults", spec, nil); status != 200 {
		h.t.Fatalf("fault %s: %d %s", spec, status, body)
	}
}

type simStats struct {
	Calls               map[string]map[string]int `json:"calls"`
	RefreshTokensReused int                       `json:"refreshTokensReused"`
	CodesReused         int                       `json:"codesReused"`
	BadSignatures       int                       `json:"badSignatures"`
	// Extras of walletsim (not in the contract).
	Refreshes     int `json:"refreshes"`     // S answers to REFRESH_TOKEN
	Abandoned     int `json:"abandoned"`     // callers that hung up during a latency fault
	FaultsMatched int `json:"faultsMatched"` // calls a fault rule matched
	// Successful refreshes split by whether the access token they replaced
	// was still valid; nil when this walletsim does not report them.
	RefreshesBeforeAccessExpiry *int `json:"refreshesBeforeAccessExpiry"`
	RefreshesAfterAccessExpiry  *int `json:"refreshesAfterAccessExpiry"`
}

func (h *harness) stats() simStats {
	h.t.Helper()
	var s simStats
	status, body, _ := do(h.t, "GET", h.simURL+"/sim/stats", "", nil)
	if status != 200 || json.Unmarshal(body, &s) != nil {
		h.t.Fatalf("stats: %d %s", status, body)
	}
	return s
}

func (s simStats) calls(path, grant string) int { return s.Calls[path][grant] }

func (s simStats) total() int {
	n := 0
	for _, g := range s.Calls {
		for _, c := range g {
			n += c
		}
	}
	return n
}

func do(t testing.TB, method, url, body string, hdr map[string]string) (int, []byte, http.Header) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b, resp.Header
}

// appClient keeps enough idle connections for the load tests' bursts.
var appClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}

// tryDo is do for goroutines other than the test's: it reports a failed
// round trip as an error instead of failing the test.
func tryDo(method, url, body string, hdr map[string]string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return doCtx(ctx, method, url, body, hdr)
}

func resultCode(body []byte) string {
	var m struct{ Result struct{ ResultCode string } }
	_ = json.Unmarshal(body, &m)
	return m.Result.ResultCode
}

// tap forwards every request to the wallet unchanged and records the
// tokens in the wallet's answers and in the requests tokenproxy sent.
type tap struct {
	srv    *httptest.Server
	mu     sync.Mutex
	tokens map[string]bool
	bodies []string // request bodies, in order
}

var tokenField = regexp.MustCompile(`"(accessToken|refreshToken)"\s*:\s*"([^"]+)"`)

func newTap(t *testing.T, target string) *tap {
	tp := &tap{tokens: map[string]bool{}}
	client := &http.Client{Timeout: time.Minute}
	tp.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		tp.record(body, true)
		req, err := http.NewRequestWithContext(r.Context(), r.Method, target+r.URL.RequestURI(), bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		req.Header = r.Header.Clone()
		resp, err := client.Do(req)
		if err != nil {
			// The wallet cut the connection: cut ours too.
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					conn.Close()
					return
				}
			}
			http.Error(w, err.Error(), 502)
			return
		}
		defer resp.Body.Close()
		rb, _ := io.ReadAll(resp.Body)
		tp.record(rb, false)
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(rb)
	}))
	t.Cleanup(tp.srv.Close)
	return tp
}

func (tp *tap) record(body []byte, request bool) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if request {
		tp.bodies = append(tp.bodies, string(body))
	}
	for _, m := range tokenField.FindAllSubmatch(body, -1) {
		tp.tokens[string(m[2])] = true
	}
}

func (tp *tap) allTokens() []string {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	var out []string
	for k := range tp.tokens {
		out = append(out, k)
	}
	return out
}

func (tp *tap) lastRequest() map[string]any {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	var m map[string]any
	_ = json.Unmarshal([]byte(tp.bodies[len(tp.bodies)-1]), &m)
	return m
}

// encodings are the forms a leaked token could take.
func encodings(tok string) []string {
	b := []byte(tok)
	return []string{
		tok,
		base64.StdEncoding.EncodeToString(b),
		base64.RawStdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b),
		base64.RawURLEncoding.EncodeToString(b),
		fmt.Sprintf("%x", b),
	}
}
