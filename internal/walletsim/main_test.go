package walletsim

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// Keys are generated once per test binary: RSA-2048 generation is slow.
var (
	clientKey *rsa.PrivateKey // the merchant's
	walletKey *rsa.PrivateKey // the simulator's
	otherKey  *rsa.PrivateKey // a key nobody trusts
)

func TestMain(m *testing.M) {
	for _, k := range []**rsa.PrivateKey{&clientKey, &walletKey, &otherKey} {
		var err error
		if *k, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			fmt.Fprintln(os.Stderr, "generate test key:", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

const testClientID = "TEST_5X00000000000000"

// clock is a settable clock for Config.Now and the test client.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// harness is one simulator behind an httptest server, and a wallet.Client
// that signs like the proxy does and verifies every response signature.
type harness struct {
	t      *testing.T
	srv    *Server
	ts     *httptest.Server
	clk    *clock
	client *wallet.Client
	hc     *http.Client
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	clk := newClock()
	cfg := Config{ClientPublicKey: &clientKey.PublicKey, PrivateKey: walletKey, Now: clk.Now}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	pub, err := wallet.ParsePublicKey(srv.PublicKeyPEM())
	if err != nil {
		t.Fatalf("PublicKeyPEM does not parse: %v", err)
	}
	base, _ := url.Parse(ts.URL + srv.PathPrefix())
	hc := wallet.NewHTTPClient()
	t.Cleanup(hc.CloseIdleConnections)
	return &harness{
		t: t, srv: srv, ts: ts, clk: clk, hc: hc,
		client: &wallet.Client{
			BaseURL:   base,
			ClientID:  testClientID,
			Keys:      wallet.StaticKey{Key: clientKey, Version: "1"},
			WalletKey: pub,
			HTTP:      hc,
			Now:       clk.Now,
			Timeout:   20 * time.Second,
		},
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// call sends body (marshalled unless []byte) through the verifying client.
func (h *harness) call(path string, body any) (*wallet.Response, error) {
	b, ok := body.([]byte)
	if !ok {
		b = mustJSON(h.t, body)
	}
	return h.client.Call(context.Background(), path, "", b, nil)
}

func (h *harness) mustCall(path string, body any) *wallet.Response {
	h.t.Helper()
	resp, err := h.call(path, body)
	if err != nil {
		h.t.Fatalf("call %s: %v", path, err)
	}
	return resp
}

// outcome is "S SUCCESS", "F USED_CODE", ...
func outcome(r *wallet.Response) string { return r.Result.ResultStatus + " " + r.Result.ResultCode }

func (h *harness) want(path string, body any, want string) *wallet.Response {
	h.t.Helper()
	resp := h.mustCall(path, body)
	if got := outcome(resp); got != want {
		h.t.Fatalf("%s: got %s (%s), want %s", path, got, resp.Result.ResultMessage, want)
	}
	if resp.StatusCode != http.StatusOK {
		h.t.Fatalf("%s: HTTP %d, want 200", path, resp.StatusCode)
	}
	return resp
}

// sim calls a /sim/ endpoint and decodes the JSON answer into out (if non-nil).
func (h *harness) sim(method, path string, body any, out any) int {
	h.t.Helper()
	var rd io.Reader
	if body != nil {
		b, ok := body.([]byte)
		if !ok {
			b = mustJSON(h.t, body)
		}
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, h.ts.URL+path, rd)
	resp, err := h.hc.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(raw, out); err != nil {
			h.t.Fatalf("%s %s: %v in %s", method, path, err, raw)
		}
	}
	return resp.StatusCode
}

func (h *harness) addFault(f map[string]any) {
	h.t.Helper()
	var ok map[string]bool
	if code := h.sim(http.MethodPost, "/sim/faults", f, &ok); code != http.StatusOK || !ok["ok"] {
		h.t.Fatalf("POST /sim/faults %v: HTTP %d %v", f, code, ok)
	}
}

func (h *harness) authCode(req map[string]any) string {
	h.t.Helper()
	var out struct {
		AuthCode string `json:"authCode"`
	}
	if code := h.sim(http.MethodPost, "/sim/authcodes", req, &out); code != http.StatusOK || out.AuthCode == "" {
		h.t.Fatalf("POST /sim/authcodes: HTTP %d", code)
	}
	return out.AuthCode
}

// tokenBody is an applyToken S answer.
type tokenBody struct {
	AccessToken            string          `json:"accessToken"`
	AccessTokenExpiryTime  string          `json:"accessTokenExpiryTime"`
	RefreshToken           string          `json:"refreshToken"`
	RefreshTokenExpiryTime string          `json:"refreshTokenExpiryTime"`
	CustomerID             string          `json:"customerId"`
	ExtendInfo             json.RawMessage `json:"extendInfo"`
	AppID                  string          `json:"appId"`
}

func (h *harness) tokens(resp *wallet.Response) tokenBody {
	h.t.Helper()
	var tb tokenBody
	if err := json.Unmarshal(resp.Body, &tb); err != nil {
		h.t.Fatal(err)
	}
	if _, err := wallet.ParseTokenResponse(resp.Body); err != nil {
		h.t.Fatalf("S answer does not satisfy wallet.ParseTokenResponse: %v", err)
	}
	return tb
}

// login makes a code for customerID and exchanges it.
func (h *harness) login(customerID string) tokenBody {
	h.t.Helper()
	code := h.authCode(map[string]any{"customerId": customerID})
	return h.tokens(h.want(PathApplyTokenV1, map[string]string{"grantType": GrantAuthorizationCode, "authCode": code}, "S SUCCESS"))
}

func refreshBody(rt string) map[string]string {
	return map[string]string{"grantType": GrantRefreshToken, "refreshToken": rt}
}

func inquiryBody(at string) map[string]string { return map[string]string{"accessToken": at} }

// raw sends a hand-made request: body as given, signed correctly for uri
// unless edit changes it afterwards. It checks the answer's signature
// verifies with the request's Client-Id, and returns status and result.
func (h *harness) raw(method, uri string, body []byte, edit func(*http.Request)) (int, wallet.Result) {
	h.t.Helper()
	req, _ := http.NewRequest(method, h.ts.URL+uri, bytes.NewReader(body))
	rt := wallet.FormatTime(h.clk.Now())
	sig, err := wallet.Sign(clientKey, wallet.SigningContent(http.MethodPost, uri, testClientID, rt, body))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json; charset=UTF-8")
	req.Header.Set(wallet.HeaderClientID, testClientID)
	req.Header.Set(wallet.HeaderRequestTime, rt)
	req.Header.Set(wallet.HeaderSignature, wallet.FormatSignatureHeader("1", sig))
	if edit != nil {
		edit(req)
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, uri, err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	h.verifyResponse(uri, req.Header.Get(wallet.HeaderClientID), resp, got)
	var env struct{ Result wallet.Result }
	if err := json.Unmarshal(got, &env); err != nil {
		h.t.Fatalf("answer is not JSON: %s", got)
	}
	return resp.StatusCode, env.Result
}

func (h *harness) verifyResponse(uri, clientID string, resp *http.Response, body []byte) {
	h.t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=UTF-8" {
		h.t.Errorf("Content-Type %q", ct)
	}
	sh, err := wallet.ParseSignatureHeader(resp.Header.Get(wallet.HeaderSignature))
	if err != nil || sh.KeyVersion != ResponseKeyVersion {
		h.t.Fatalf("response Signature header %q: %v", resp.Header.Get(wallet.HeaderSignature), err)
	}
	rt := resp.Header.Get(wallet.HeaderResponseTime)
	if _, err := wallet.ParseDateTime(rt); err != nil {
		h.t.Errorf("Response-Time %q: %v", rt, err)
	}
	pub, _ := wallet.ParsePublicKey(h.srv.PublicKeyPEM())
	if err := wallet.Verify(pub, wallet.SigningContent(http.MethodPost, uri, clientID, rt, body), sh.Signature); err != nil {
		h.t.Fatalf("response signature does not verify for %s: %v", uri, err)
	}
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
