package main

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// hostileWallet is a wallet of the test's own that signs every answer with
// the wallet's test key (so tokenproxy's signature check passes) and
// answers what the current scenario says: tokens echoed in every form, in
// headers, in cased or duplicated fields, oversized, slow, with a lying
// Content-Length. Exchanges it answers itself issue random tokens, which
// it remembers: the test scans for every one of them.
type hostileWallet struct {
	t   *testing.T
	key *rsa.PrivateKey
	srv *httptest.Server

	mu       sync.Mutex
	pairs    map[string]tokenPair // customer -> latest pair issued
	prev     map[string]tokenPair // customer -> the pair before it
	byRT     map[string]string    // refresh token -> customer
	all      []string             // every token issued or echoed
	scenario func(w http.ResponseWriter, r *http.Request, c tokenPair)
	calls    []walletCall
}

type tokenPair struct{ customer, at, rt string }

// walletAuthCode is the authorization code the hostile wallet exchanges
// for customer.
func walletAuthCode(customer string) string { return "hc-" + customer }

func newHostileWallet(t *testing.T) *hostileWallet {
	key, err := wallet.ParsePrivateKey(testenv.WalletPrivateKeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	hw := &hostileWallet{t: t, key: key, pairs: map[string]tokenPair{}, prev: map[string]tokenPair{}, byRT: map[string]string{}}
	hw.srv = httptest.NewServer(http.HandlerFunc(hw.serve))
	t.Cleanup(hw.srv.Close)
	return hw
}

// issue makes a new pair for customer. The tokens hold / and + so that
// their JSON-escaped (\/), URL-encoded and base64 forms differ from the
// raw one.
func (hw *hostileWallet) issue(customer string) tokenPair {
	tok := func(kind string) string {
		b := make([]byte, 24)
		_, _ = rand.Read(b)
		if strings.HasPrefix(customer, "hw-codes") {
			// Shaped like a resultCode (A-Z, 0-9, _, at most 64).
			return "HW_" + strings.ToUpper(kind) + "_" + strings.ToUpper(hex.EncodeToString(b))
		}
		return "hw." + kind + "+/" + base64.StdEncoding.EncodeToString(b)
	}
	p := tokenPair{customer: customer, at: tok("at"), rt: tok("rt")}
	hw.mu.Lock()
	defer hw.mu.Unlock()
	hw.prev[customer] = hw.pairs[customer]
	hw.pairs[customer] = p
	hw.byRT[p.rt] = customer
	hw.all = append(hw.all, p.at, p.rt)
	return p
}

func (hw *hostileWallet) pair(customer string) tokenPair {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	return hw.pairs[customer]
}

// remember adds a token the wallet made up to those the test scans for.
func (hw *hostileWallet) remember(tok string) {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	hw.all = append(hw.all, tok)
}

func (hw *hostileWallet) previous(customer string) tokenPair {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	return hw.prev[customer]
}

func (hw *hostileWallet) tokens() []string {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	return append([]string(nil), hw.all...)
}

// answerWith makes f answer every call from now on; nil: plain answers.
func (hw *hostileWallet) answerWith(f func(w http.ResponseWriter, r *http.Request, c tokenPair)) {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	hw.scenario = f
}

func (hw *hostileWallet) callsSince(n int) []walletCall {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	return append([]walletCall(nil), hw.calls[n:]...)
}

func (hw *hostileWallet) callCount() int {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	return len(hw.calls)
}

func (hw *hostileWallet) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return
	}
	var req struct {
		GrantType    string `json:"grantType"`
		AuthCode     string `json:"authCode"`
		RefreshToken string `json:"refreshToken"`
	}
	_ = json.Unmarshal(body, &req)
	hw.mu.Lock()
	hw.calls = append(hw.calls, walletCall{uri: r.RequestURI, header: r.Header.Clone(), body: body})
	scenario := hw.scenario
	hw.mu.Unlock()

	var c tokenPair
	switch {
	case r.URL.Path == applyV1 && req.GrantType == grantAC:
		c = hw.issue(strings.TrimPrefix(req.AuthCode, "hc-"))
	case r.URL.Path == applyV1 && req.GrantType == grantRT:
		// Any refresh token it issued is good to this wallet: refusing
		// is for the scenarios to decide.
		hw.mu.Lock()
		c.customer = hw.byRT[req.RefreshToken]
		hw.mu.Unlock()
		if c.customer == "" {
			hw.reply(w, r, 200, wallet.Envelope("F", "INVALID_REFRESH_TOKEN", "unknown"), nil)
			return
		}
		c = hw.issue(c.customer)
	default:
		var m struct{ AccessToken string }
		_ = json.Unmarshal(body, &m)
		hw.mu.Lock()
		for _, p := range hw.pairs {
			if p.at == m.AccessToken {
				c = p
			}
		}
		hw.mu.Unlock()
	}
	if scenario != nil {
		scenario(w, r, c)
		return
	}
	if r.URL.Path == applyV1 {
		hw.reply(w, r, 200, exchangeS(c, ""), nil)
		return
	}
	hw.reply(w, r, 200, []byte(`{"result":{"resultStatus":"S","resultCode":"SUCCESS","resultMessage":"success."},"data":"nothing secret"}`), nil)
}

// reply signs body with the wallet key as the wallet does, over the
// Response-Time in hdr if it sets one, and writes it with hdr.
func (hw *hostileWallet) reply(w http.ResponseWriter, r *http.Request, status int, body []byte, hdr map[string]string) {
	for k, v := range hw.signed(r, body, hdr) {
		w.Header()[k] = v
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func (hw *hostileWallet) signed(r *http.Request, body []byte, hdr map[string]string) http.Header {
	out := http.Header{}
	out.Set("Content-Type", "application/json; charset=UTF-8")
	out.Set(wallet.HeaderResponseTime, wallet.FormatTime(time.Now()))
	out.Set(wallet.HeaderClientID, "TEST_CLIENT")
	for k, v := range hdr {
		out.Set(k, v)
	}
	sig, err := wallet.Sign(hw.key, wallet.SigningContent(http.MethodPost, r.RequestURI, "TEST_CLIENT", out.Get(wallet.HeaderResponseTime), body))
	if err != nil {
		panic(err) // the test key always signs
	}
	out.Set(wallet.HeaderSignature, wallet.FormatSignatureHeader("1", sig))
	return out
}

// rawReply hijacks the connection and writes a signed answer whose
// Content-Length is declared, whatever the body's true length.
func (hw *hostileWallet) rawReply(w http.ResponseWriter, r *http.Request, body []byte, declared int) {
	hdr := hw.signed(r, body, nil)
	conn, buf, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n", declared)
	_ = hdr.Write(buf)
	buf.WriteString("\r\n")
	_, _ = buf.Write(body)
	_ = buf.Flush()
}

// exchangeS is an S answer to an exchange issuing c, with extra members
// (JSON text, starting with a comma) before the closing brace.
func exchangeS(c tokenPair, extra string) []byte {
	now := time.Now().UTC()
	return []byte(`{"result":{"resultStatus":"S","resultCode":"SUCCESS","resultMessage":"success."},` +
		`"customerId":"` + c.customer + `","accessToken":"` + c.at + `","refreshToken":"` + c.rt + `",` +
		`"accessTokenExpiryTime":"` + now.Add(2*time.Hour).Format(time.RFC3339) + `",` +
		`"refreshTokenExpiryTime":"` + now.Add(720*time.Hour).Format(time.RFC3339) + `"` + extra + `}`)
}

// apiS is an S answer to an API call with extra members.
func apiS(extra string) []byte {
	return []byte(`{"result":{"resultStatus":"S","resultCode":"SUCCESS","resultMessage":"success."}` + extra + `}`)
}

// walletScenario is one hostile wallet answer and what the app must get.
type walletScenario struct {
	name string
	// exchange: the answer is to the exchange of a new customer (c is the
	// pair just issued); else to an API call for customer hw-a (c is its
	// pair).
	exchange bool
	answer   func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair)
	status   int
	code     string
	// redacted: tokenproxy must find a token (or a token field) in the
	// answer, redact it, drop the signature headers, and count it.
	redacted bool
	// stored, for an exchange: whether the pair must be stored (and which
	// access token then reaches the wallet on the next call).
	stored bool
	// calls the wallet receives for the app's request (0: one).
	calls int
	// customer of an API call (hw-a when empty).
	customer string
}

// TestHostileWallet puts a wallet of the test's own, signing with the
// wallet key, behind a real tokenproxy, and makes it answer in every
// hostile way the issue lists. The app must get the contract's answer and
// no token the wallet issued, in any encoding, in the body or a header;
// redactions must drop the signature headers and count in
// tokenproxy_redactions_total; the logs and /metrics hold no token either.
func TestHostileWallet(t *testing.T) {
	keys := testenv.WriteKeyFiles(t)
	bins := testenv.Binaries(t)
	hw := newHostileWallet(t)
	p := &proxyProc{url: "http://" + testenv.FreeAddr(t), ops: "http://" + testenv.FreeAddr(t)}
	p.Process = testenv.Start(t, "tokenproxy", bins.Tokenproxy, []string{
		"TOKENPROXY_LISTEN_ADDR=" + strings.TrimPrefix(p.url, "http://"),
		"TOKENPROXY_OPS_ADDR=" + strings.TrimPrefix(p.ops, "http://"),
		"TOKENPROXY_WALLET_URL=" + hw.srv.URL,
		"TOKENPROXY_CLIENT_ID=TEST_CLIENT",
		"TOKENPROXY_PRIVATE_KEY_FILE=" + keys.MerchantPrivate,
		"TOKENPROXY_WALLET_PUBLIC_KEY_FILE=" + keys.WalletPublic,
		"TOKENPROXY_LOG_LEVEL=debug",
		"TOKENPROXY_MAX_RESPONSE_BYTES=65536",
		// Generous for race-built binaries on a loaded machine; the slow
		// answer waits far longer.
		"TOKENPROXY_UPSTREAM_TIMEOUT=5s",
	})
	testenv.WaitReady(t, p.ops+"/readyz", 20*time.Second, p.Process)

	exchange := func(t *testing.T, customer string) (int, []byte, http.Header) {
		return do(t, "POST", p.url+applyV1, `{"grantType":"AUTHORIZATION_CODE","authCode":"`+walletAuthCode(customer)+`"}`, nil)
	}
	for _, c := range []string{"hw-a", "hw-b", "hw-codes"} {
		if status, body, _ := exchange(t, c); status != 200 || resultCode(body) != "SUCCESS" {
			t.Fatalf("exchange %s: %d %s", c, status, body)
		}
	}
	other := hw.pair("hw-b")

	signedAPI := func(extra string) func(*hostileWallet, http.ResponseWriter, *http.Request, tokenPair) {
		return func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, apiS(strings.ReplaceAll(extra, "$AT", c.at)), nil)
		}
	}
	// echo puts a form of the access token, made by f, in a note field.
	echo := func(f func(string) string) func(*hostileWallet, http.ResponseWriter, *http.Request, tokenPair) {
		return func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, apiS(`,"note":"echo `+f(c.at)+` end"`), nil)
		}
	}
	oversized := func(c tokenPair) []byte {
		return apiS(`,"pad":"` + strings.Repeat("p", 70<<10) + `","note":"` + c.at + `"`)
	}
	const (
		unavailable = "WALLET_UNAVAILABLE"
		badSig      = "INVALID_WALLET_SIGNATURE"
	)
	scenarios := []walletScenario{
		{name: "clean answer (control: nothing redacted, signature kept)", answer: signedAPI(`,"data":"nothing secret"`), status: 200, code: "SUCCESS"},
		{name: "access token echoed raw", answer: echo(func(s string) string { return s }), status: 200, code: "SUCCESS", redacted: true},
		{name: `access token JSON-escaped \u00XX`, answer: echo(unicodeEscaped), status: 200, code: "SUCCESS", redacted: true},
		{name: `access token JSON-escaped \/`, answer: echo(func(s string) string { return strings.ReplaceAll(s, "/", `\/`) }), status: 200, code: "SUCCESS", redacted: true},
		{name: "access token base64", answer: echo(func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }), status: 200, code: "SUCCESS", redacted: true},
		{name: "access token base64url unpadded", answer: echo(func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }), status: 200, code: "SUCCESS", redacted: true},
		{name: "access token hex", answer: echo(func(s string) string { return hex.EncodeToString([]byte(s)) }), status: 200, code: "SUCCESS", redacted: true},
		{name: "access token URL-encoded", answer: echo(url.QueryEscape), status: 200, code: "SUCCESS", redacted: true},
		{name: "access token deep in objects and arrays", answer: signedAPI(`,"data":{"list":[1,{"deep":{"v":["x","pre $AT post"]}}]}`), status: 200, code: "SUCCESS", redacted: true},
		{name: "access token as a key", answer: signedAPI(`,"data":{"$AT":true}`), status: 200, code: "SUCCESS", redacted: true},
		{name: "access token in Content-Type", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, apiS(""), map[string]string{"Content-Type": "application/json; t=" + c.at})
		}, status: 200, code: "SUCCESS", redacted: true},
		{name: "access token as the signed Response-Time", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, apiS(""), map[string]string{wallet.HeaderResponseTime: c.at})
		}, status: 200, code: "SUCCESS", redacted: true},
		{name: "access token in a header tokenproxy does not return", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, apiS(""), map[string]string{"X-Debug-Token": c.at, "Set-Cookie": "t=" + c.at})
		}, status: 200, code: "SUCCESS"},
		{name: "another customer's token in accessToken", answer: signedAPI(`,"accessToken":"` + other.at + `"`), status: 200, code: "SUCCESS", redacted: true},
		{name: "another customer's tokens in ACCESSTOKEN and Refreshtoken", answer: signedAPI(`,"data":{"ACCESSTOKEN":"` + other.at + `","Refreshtoken":"` + other.rt + `"}`), status: 200, code: "SUCCESS", redacted: true},
		{name: `duplicated key: the token \u-escaped first, a clean value last`, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, apiS(`,"note":"`+unicodeEscaped(c.at)+`","note":"clean"`), nil)
		}, status: 200, code: "SUCCESS", redacted: true},
		{name: `duplicated key: the token \/-escaped first, a clean value last`, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, apiS(`,"data":{"note":"`+strings.ReplaceAll(c.at, "/", `\/`)+`","note":"clean"}`), nil)
		}, status: 200, code: "SUCCESS", redacted: true},
		{name: "duplicated accessToken: another customer's token first, empty last", answer: signedAPI(`,"accessToken":"` + other.at + `","accessToken":""`), status: 200, code: "SUCCESS", redacted: true},
		{name: "another customer's token posing as a handle (tph_)", answer: signedAPI(`,"accessToken":"tph_` + other.at + `"`), status: 200, code: "SUCCESS", redacted: true},
		{name: "access token in the Signature header", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			body := apiS("")
			hdr := hw.signed(r, body, nil)
			hdr.Set(wallet.HeaderSignature, hdr.Get(wallet.HeaderSignature)+",note="+c.at)
			for k, v := range hdr {
				w.Header()[k] = v
			}
			_, _ = w.Write(body)
		}, status: 200, code: "SUCCESS", redacted: true},
		{name: "EXPIRED_ACCESS_TOKEN echoing the token, then the retry echoing the spent pair", calls: 3, answer: func() func(*hostileWallet, http.ResponseWriter, *http.Request, tokenPair) {
			var apiCalls atomic.Int32
			return func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
				switch {
				case r.URL.Path == applyV1: // tokenproxy's refresh: c is the new pair
					hw.reply(w, r, 200, exchangeS(c, ""), nil)
				case apiCalls.Add(1) == 1:
					hw.reply(w, r, 200, []byte(`{"result":{"resultStatus":"F","resultCode":"EXPIRED_ACCESS_TOKEN","resultMessage":"expired: `+c.at+`"}}`), nil)
				default:
					old := hw.previous(c.customer)
					hw.reply(w, r, 200, apiS(`,"old":["`+old.at+`","`+old.rt+`"]`), nil)
				}
			}
		}(), status: 200, code: "SUCCESS", redacted: true},
		{name: "F answer echoing a code-shaped access token as its resultCode", customer: "hw-codes", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, []byte(`{"result":{"resultStatus":"F","resultCode":"`+c.at+`","resultMessage":"echo"}}`), nil)
		}, status: 200, code: "[redacted]", redacted: true},
		{name: "the customer's refresh token echoed", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, apiS(`,"note":"`+c.rt+`"`), nil)
		}, status: 200, code: "SUCCESS", redacted: true},
		{name: "signed JSON 500 echoing the token", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 500, []byte(`{"result":{"resultStatus":"U","resultCode":"UNKNOWN_EXCEPTION","resultMessage":"`+c.at+`"}}`), nil)
		}, status: 500, code: "UNKNOWN_EXCEPTION", redacted: true},
		{name: "oversized answer with Content-Length", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, oversized(c), nil)
		}, status: 502, code: unavailable},
		{name: "oversized answer chunked", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			body := oversized(c)
			for k, v := range hw.signed(r, body, nil) {
				w.Header()[k] = v
			}
			w.WriteHeader(200)
			for len(body) > 0 {
				n := min(len(body), 8<<10)
				_, _ = w.Write(body[:n])
				w.(http.Flusher).Flush()
				body = body[n:]
			}
		}, status: 502, code: unavailable},
		{name: "answer with 2 MiB of headers", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			for i := range 32 {
				w.Header().Set(fmt.Sprintf("X-Pad-%d", i), strings.Repeat("p", 64<<10))
			}
			w.Header().Set("X-Token", c.at)
			hw.reply(w, r, 200, apiS(`,"note":"`+c.at+`"`), nil)
		}, status: 502, code: unavailable},
		{name: "slow answer past TOKENPROXY_UPSTREAM_TIMEOUT", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			select {
			case <-r.Context().Done(): // tokenproxy gave up and hung up
			case <-time.After(15 * time.Second):
			}
			hw.reply(w, r, 200, apiS(`,"note":"`+c.at+`"`), nil)
		}, status: 504, code: "WALLET_TIMEOUT"},
		{name: "Content-Length shorter than the body", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			body := apiS(`,"note":"` + c.at + `"`)
			hw.rawReply(w, r, body, len(body)/2)
		}, status: 502, code: unavailable},
		{name: "Content-Length longer than the body", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			body := apiS(`,"note":"` + c.at + `"`)
			hw.rawReply(w, r, body, len(body)+64)
		}, status: 502, code: unavailable},
		{name: "non-JSON 200 holding the token", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, []byte("token="+c.at), map[string]string{"Content-Type": "text/plain"})
		}, status: 502, code: unavailable},
		{name: "HTML 502 holding the token", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(502)
			_, _ = io.WriteString(w, "<html><body>Bad Gateway "+c.at+"</body></html>")
		}, status: 502, code: unavailable},
		{name: "unsigned JSON holding the token", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(apiS(`,"note":"` + c.at + `"`))
		}, status: 502, code: badSig},
		{name: "answer signed for another body", answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hdr := hw.signed(r, apiS(""), nil)
			for k, v := range hdr {
				w.Header()[k] = v
			}
			_, _ = w.Write(apiS(`,"note":"` + c.at + `"`))
		}, status: 502, code: badSig},

		// Exchange answers.
		{name: "exchange S with AccessToken and ACCESSTOKEN beside accessToken", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			decoy := hw.issue(c.customer + "-decoy")
			hw.reply(w, r, 200, exchangeS(c, `,"AccessToken":"`+decoy.at+`","ACCESSTOKEN":"`+decoy.at+`","RefreshToken":"`+decoy.rt+`"`), nil)
		}, status: 200, code: "SUCCESS", stored: true},
		{name: "exchange S with only differently-cased token fields", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			body := strings.NewReplacer(`"accessToken"`, `"AccessToken"`, `"refreshToken"`, `"REFRESHTOKEN"`).Replace(string(exchangeS(c, "")))
			hw.reply(w, r, 200, []byte(body), nil)
		}, status: 502, code: unavailable},
		{name: "exchange S with an invalid customerId", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			body := strings.Replace(string(exchangeS(c, "")), `"customerId":"`+c.customer+`"`, `"customerId":"../`+c.customer+`"`, 1)
			hw.reply(w, r, 200, []byte(body), nil)
		}, status: 502, code: unavailable},
		{name: "exchange S naming the customer by its access token", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			// A token a customer id may hold (no /), the id the wallet gives.
			b := make([]byte, 20)
			_, _ = rand.Read(b)
			at := "hwAT-" + hex.EncodeToString(b)
			hw.remember(at)
			named := tokenPair{customer: at, at: at, rt: c.rt}
			hw.reply(w, r, 200, exchangeS(named, ""), nil)
		}, status: 502, code: unavailable},
		{name: "exchange S with a duplicated customerId", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, exchangeS(c, `,"customerId":"hw-victim"`), nil)
		}, status: 502, code: unavailable},
		{name: "exchange S with a duplicated accessToken", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			decoy := hw.issue(c.customer + "-decoy")
			hw.reply(w, r, 200, exchangeS(c, `,"accessToken":"`+decoy.at+`"`), nil)
		}, status: 502, code: unavailable},
		{name: "exchange F carrying token fields", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			body := strings.Replace(string(exchangeS(c, `,"extendInfo":"x"`)), `"resultStatus":"S","resultCode":"SUCCESS"`, `"resultStatus":"F","resultCode":"INVALID_CODE"`, 1)
			hw.reply(w, r, 200, []byte(body), nil)
		}, status: 200, code: "INVALID_CODE"},
		{name: "exchange F carrying token fields, echoed in extendInfo and resultMessage", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			body := strings.Replace(string(exchangeS(c, `,"extendInfo":"{\"t\":\"`+c.at+`\"}"`)), `"resultStatus":"S","resultCode":"SUCCESS","resultMessage":"success."`,
				`"resultStatus":"F","resultCode":"INVALID_CODE","resultMessage":"`+c.rt+`"`, 1)
			hw.reply(w, r, 200, []byte(body), nil)
		}, status: 200, code: "INVALID_CODE", redacted: true},
		{name: "exchange S echoing the token in resultMessage", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			body := strings.Replace(string(exchangeS(c, "")), `"resultMessage":"success."`, `"resultMessage":"issued `+c.at+`"`, 1)
			hw.reply(w, r, 200, []byte(body), nil)
		}, status: 200, code: "SUCCESS", redacted: true, stored: true},
		{name: "exchange U (HTTP 500) carrying token fields", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			body := strings.Replace(string(exchangeS(c, "")), `"resultStatus":"S","resultCode":"SUCCESS"`, `"resultStatus":"U","resultCode":"UNKNOWN_EXCEPTION"`, 1)
			hw.reply(w, r, 500, []byte(body), nil)
		}, status: 500, code: "UNKNOWN_EXCEPTION"},
		{name: "exchange S echoing the token JSON-escaped in extendInfo", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, exchangeS(c, `,"extendInfo":"{\"t\":\"`+unicodeEscaped(c.at)+`\"}"`), nil)
		}, status: 200, code: "SUCCESS", redacted: true, stored: true},
		{name: "exchange S with accessToken inside an extendInfo object", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, exchangeS(c, `,"extendInfo":{"accessToken":"`+c.at+`"}`), nil)
		}, status: 200, code: "SUCCESS", redacted: true, stored: true},
		{name: "exchange S with the refresh token in Content-Type", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, exchangeS(c, ""), map[string]string{"Content-Type": "application/json; r=" + c.rt})
		}, status: 200, code: "SUCCESS", redacted: true, stored: true},
		{name: "exchange S with the token in an unknown field", exchange: true, answer: func(hw *hostileWallet, w http.ResponseWriter, r *http.Request, c tokenPair) {
			hw.reply(w, r, 200, exchangeS(c, `,"debug":"`+unicodeEscaped(c.at)+`"`), nil)
		}, status: 200, code: "SUCCESS", stored: true},
	}
	if len(scenarios) < 15 {
		t.Fatalf("only %d hostile wallet answers", len(scenarios))
	}

	redactions := func(t *testing.T) float64 { return metricSum(t, "tokenproxy_redactions_total", p) }
	var answers [][]byte
	for i, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			hw.answerWith(func(w http.ResponseWriter, r *http.Request, c tokenPair) { sc.answer(hw, w, r, c) })
			defer hw.answerWith(nil)
			before, calls := redactions(t), hw.callCount()
			customer := cmp.Or(sc.customer, "hw-a")
			var (
				status int
				body   []byte
				hdr    http.Header
			)
			if sc.exchange {
				customer = fmt.Sprintf("hx-%02d", i)
				status, body, hdr = exchange(t, customer)
			} else {
				status, body, hdr = do(t, "POST", p.url+inquiry, `{"n":1}`, map[string]string{"X-Customer-Id": customer})
			}
			answers = append(answers, append(headerBytes(hdr), body...))
			if status != sc.status || resultCode(body) != sc.code {
				t.Errorf("HTTP %d %s, want %d %s", status, body, sc.status, sc.code)
			}
			if leak := leakIn(t, append(headerBytes(hdr), body...), hw.tokens()); leak != "" {
				t.Errorf("the app received %s: %s %v", leak, body, hdr)
			}
			if bad := tokenFieldsIn(body); bad != "" {
				t.Errorf("the app's answer has a token field %s: %s", bad, body)
			}
			got := redactions(t) - before
			switch {
			case sc.redacted && got != 1:
				t.Errorf("tokenproxy_redactions_total rose by %v, want 1", got)
			case !sc.redacted && got != 0:
				t.Errorf("tokenproxy_redactions_total rose by %v, want 0", got)
			}
			if sc.redacted && (hdr.Get(wallet.HeaderSignature) != "" || hdr.Get(wallet.HeaderResponseTime) != "") {
				t.Errorf("a redacted answer kept the signature headers: %v", hdr)
			}
			if !sc.exchange && status == 200 && !sc.redacted && hdr.Get(wallet.HeaderSignature) == "" {
				t.Errorf("an answer with nothing to redact lost its signature: %v", hdr)
			}
			if sc.exchange {
				hw.answerWith(nil)
				checkStored(t, p, hw, customer, sc.stored)
			}
			want := max(sc.calls, 1)
			if n := len(hw.callsSince(calls)); sc.exchange && !sc.stored && n != want || !sc.exchange && n != want {
				t.Errorf("%d wallet calls, want %d", n, want)
			}
		})
	}
	// A refresh answer's result code and status go where an API answer's
	// body never does: a metric label, the stored lastError, the admin
	// API, log lines. A wallet echoing the presented refresh token there
	// (code-shaped, as hw-codes' tokens are) must not put it in any.
	for i, result := range []string{
		`{"resultStatus":"F","resultCode":"$RT","resultMessage":"echo"}`,
		`{"resultStatus":"$RT","resultCode":"UNKNOWN_EXCEPTION","resultMessage":"echo"}`,
		`{"resultStatus":"U","resultCode":"hw $RT","resultMessage":"echo"}`,
	} {
		t.Run(fmt.Sprintf("refresh answer echoing the refresh token in its result %d", i), func(t *testing.T) {
			hw.answerWith(func(w http.ResponseWriter, r *http.Request, c tokenPair) {
				if r.URL.Path != applyV1 {
					hw.reply(w, r, 200, apiS(""), nil)
					return
				}
				presented := hw.previous(c.customer).rt // c is the pair issued for this refresh
				hw.reply(w, r, 200, []byte(`{"result":`+strings.ReplaceAll(result, "$RT", presented)+`}`), nil)
			})
			defer hw.answerWith(nil)
			calls := hw.callCount()
			status, body, hdr := do(t, "POST", p.url+"/tokenproxy/customers/hw-codes/refresh", "", nil)
			answers = append(answers, append(headerBytes(hdr), body...))
			if status != 502 || resultCode(body) != unavailable {
				t.Errorf("forced refresh: %d %s, want 502 %s", status, body, unavailable)
			}
			if n := len(hw.callsSince(calls)); n != 1 {
				t.Errorf("%d wallet calls, want 1", n)
			}
			status, body, hdr = do(t, "GET", p.url+"/tokenproxy/customers/hw-codes", "", nil)
			answers = append(answers, append(headerBytes(hdr), body...))
			var st adminStatus
			if status != 200 || json.Unmarshal(body, &st) != nil || st.LastError == nil {
				t.Fatalf("status after the refresh: %d %s", status, body)
			}
			if leak := leakIn(t, body, hw.tokens()); leak != "" {
				t.Errorf("the admin API shows %s as lastError: %s", leak, body)
			}
		})
	}
	t.Run("the duplicated customerId stored nothing under the other id either", func(t *testing.T) {
		if status, body, _ := do(t, "GET", p.url+"/tokenproxy/customers/hw-victim", "", nil); status != 404 {
			t.Fatalf("%d %s", status, body)
		}
	})
	t.Run("every call the wallet received carried the customer's exact token", func(t *testing.T) {
		for _, c := range hw.callsSince(0) {
			if strings.Contains(string(c.body), "authCode") {
				continue
			}
			var m struct{ AccessToken, RefreshToken, GrantType string }
			_ = json.Unmarshal(c.body, &m)
			if m.GrantType == grantRT && (strings.HasPrefix(m.RefreshToken, "hw.rt+/") || strings.HasPrefix(m.RefreshToken, "HW_RT_")) && m.AccessToken == "" {
				continue // a refresh: after EXPIRED_ACCESS_TOKEN, or forced
			}
			if !strings.HasPrefix(m.AccessToken, "hw.at+/") && !strings.HasPrefix(m.AccessToken, "HW_AT_") {
				t.Errorf("the wallet was called at %s with %q", c.uri, c.body)
			}
		}
	})
	if p.Exited() {
		t.Fatal("tokenproxy exited")
	}
	t.Logf("%d hostile wallet answers, %d tokens issued or echoed, scanned for in every answer, the logs and /metrics", len(scenarios), len(hw.tokens()))
	scanEverything(t, hw.tokens(), answers, p)
}

// checkStored checks what an exchange left in the store: when stored, an
// API call for the customer reaches the wallet with the pair's exact
// accessToken (never a differently-cased decoy); when not, the customer is
// unknown (admin 404, API 401, no wallet call).
func checkStored(t *testing.T, p *proxyProc, hw *hostileWallet, customer string, stored bool) {
	t.Helper()
	status, body, _ := do(t, "GET", p.url+"/tokenproxy/customers/"+customer, "", nil)
	if !stored {
		if status != 404 || resultCode(body) != "CUSTOMER_NOT_AUTHORIZED" {
			t.Errorf("a malformed or failed exchange stored the customer: %d %s", status, body)
		}
		n := hw.callCount()
		if status, body, _ := do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": customer}); status != 401 || hw.callCount() != n {
			t.Errorf("API call for an unstored customer: %d %s, %d wallet calls", status, body, hw.callCount()-n)
		}
		return
	}
	if status != 200 {
		t.Errorf("the exchanged customer is not stored: %d %s", status, body)
		return
	}
	n := hw.callCount()
	if status, body, _ := do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": customer}); status != 200 || resultCode(body) != "SUCCESS" {
		t.Errorf("API call after the exchange: %d %s", status, body)
	}
	calls := hw.callsSince(n)
	var m struct{ AccessToken string }
	if len(calls) != 1 || json.Unmarshal(calls[0].body, &m) != nil || m.AccessToken != hw.pair(customer).at {
		t.Errorf("the wallet did not get the exchanged accessToken: %d calls", len(calls))
	}
}

// tokenFieldsIn returns the name of a token field (accessToken or
// refreshToken, in any letter case, at any depth) holding anything but ""
// or "[redacted]" in a JSON answer, "" when there is none.
func tokenFieldsIn(body []byte) string {
	var v any
	dec := json.NewDecoder(bytes.NewReader(body))
	if dec.Decode(&v) != nil {
		return ""
	}
	var walk func(v any) string
	walk = func(v any) string {
		switch t := v.(type) {
		case map[string]any:
			for k, val := range t {
				if strings.EqualFold(k, "accessToken") || strings.EqualFold(k, "refreshToken") {
					if s, ok := val.(string); !ok || s != "" && s != "[redacted]" {
						return k
					}
				}
				if f := walk(val); f != "" {
					return f
				}
			}
		case []any:
			for _, e := range t {
				if f := walk(e); f != "" {
					return f
				}
			}
		}
		return ""
	}
	return walk(v)
}
