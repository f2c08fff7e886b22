package wallet_test

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

const testClientID = "TEST_5X00000000000000"

// requestTime is the fixed clock of test clients: Request-Time is
// "2019-05-28T12:12:12.000+08:00".
var requestTime = time.Date(2019, 5, 28, 12, 12, 12, 0, time.FixedZone("", 8*3600))

// seenRequest is what the in-process wallet received.
type seenRequest struct {
	URI    string
	Header http.Header
	Body   []byte
	// SigErr is the outcome of verifying the request signature with the
	// merchant's public key for the announced keyVersion.
	SigErr error
}

// fakeWallet is an in-process wallet: it verifies every request signature
// with the wallet package and answers through answer, which signs (or
// spoils) its response as a case needs.
type fakeWallet struct {
	srv *httptest.Server
	// merchant holds the merchant's public keys by keyVersion.
	merchant map[string]*rsa.PublicKey
	key      *rsa.PrivateKey // the wallet's key, signs responses
	wrongKey *rsa.PrivateKey // the merchant's key, to sign a response wrongly

	mu     sync.Mutex
	seen   []seenRequest
	answer func(w http.ResponseWriter, r *http.Request, body []byte)
}

func newFakeWallet(t *testing.T, answer func(fw *fakeWallet, w http.ResponseWriter, r *http.Request, body []byte)) *fakeWallet {
	t.Helper()
	fw := &fakeWallet{
		merchant: map[string]*rsa.PublicKey{"1": publicKey(t, "merchant_public.pem")},
		key:      privateKey(t, "wallet_pkcs8.pem"),
		wrongKey: privateKey(t, "merchant_pkcs8.pem"),
	}
	if answer == nil {
		answer = func(fw *fakeWallet, w http.ResponseWriter, r *http.Request, _ []byte) {
			fw.reply(w, r, http.StatusOK, wallet.Envelope("S", "SUCCESS", "success"), signGood)
		}
	}
	fw.answer = func(w http.ResponseWriter, r *http.Request, body []byte) { answer(fw, w, r, body) }
	fw.srv = httptest.NewServer(http.HandlerFunc(fw.serve))
	t.Cleanup(fw.srv.Close)
	return fw
}

func (fw *fakeWallet) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	seen := seenRequest{URI: r.URL.RequestURI(), Header: r.Header.Clone(), Body: body}
	seen.SigErr = fw.verifyRequest(r, body)
	fw.mu.Lock()
	fw.seen = append(fw.seen, seen)
	fw.mu.Unlock()
	fw.answer(w, r, body)
}

func (fw *fakeWallet) verifyRequest(r *http.Request, body []byte) error {
	sh, err := wallet.ParseSignatureHeader(r.Header.Get(wallet.HeaderSignature))
	if err != nil {
		return err
	}
	pub := fw.merchant[sh.KeyVersion]
	if pub == nil {
		return fmt.Errorf("no merchant key version %q", sh.KeyVersion)
	}
	content := wallet.SigningContent(r.Method, r.URL.RequestURI(), r.Header.Get(wallet.HeaderClientID), r.Header.Get(wallet.HeaderRequestTime), body)
	return wallet.Verify(pub, content, sh.Signature)
}

func (fw *fakeWallet) requests() []seenRequest {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return append([]seenRequest(nil), fw.seen...)
}

// How a fake wallet signs a response.
type signMode int

const (
	signGood           signMode = iota
	signNone                    // no Signature header
	signNoTime                  // no Response-Time header
	signOtherBody               // a valid signature over another body
	signOtherURI                // signed over the path without prefix and query
	signWrongKey                // signed with the merchant's key, not the wallet's
	signGarbageHeader           // a Signature header that does not parse
	signGarbageValue            // a parseable header with a signature that is not base64
	signOtherAlgorithm          // algorithm=RSA512
)

// reply writes body with status, signed over the request's URI as mode says.
func (fw *fakeWallet) reply(w http.ResponseWriter, r *http.Request, status int, body []byte, mode signMode) {
	rt := "2019-05-28T12:12:13.123+08:00"
	uri := r.URL.RequestURI()
	key := fw.key
	signed := body
	switch mode {
	case signOtherBody:
		signed = append(bytes.Clone(body), ' ')
	case signOtherURI:
		uri = r.URL.Path[strings.Index(r.URL.Path, "/v"):]
	case signWrongKey:
		key = fw.wrongKey
	}
	sig, err := wallet.Sign(key, wallet.SigningContent(http.MethodPost, uri, r.Header.Get(wallet.HeaderClientID), rt, signed))
	if err != nil {
		panic(err)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=UTF-8")
	if mode != signNoTime {
		h.Set(wallet.HeaderResponseTime, rt)
	}
	switch mode {
	case signNone:
	case signGarbageHeader:
		h.Set(wallet.HeaderSignature, "garbage")
	case signGarbageValue:
		h.Set(wallet.HeaderSignature, wallet.FormatSignatureHeader("1", "not*base64!"))
	case signOtherAlgorithm:
		h.Set(wallet.HeaderSignature, "algorithm=RSA512,keyVersion=1,signature="+sig)
	default:
		h.Set(wallet.HeaderSignature, wallet.FormatSignatureHeader("1", sig))
	}
	w.WriteHeader(status)
	w.Write(body)
}

// newClient returns a client of fw signing with the merchant key, version 1,
// and verifying answers with the wallet's public key.
func newClient(t *testing.T, fw *fakeWallet, prefix string) *wallet.Client {
	t.Helper()
	base, err := url.Parse(fw.srv.URL + prefix)
	if err != nil {
		t.Fatal(err)
	}
	return &wallet.Client{
		BaseURL:   base,
		ClientID:  testClientID,
		Keys:      wallet.StaticKey{Key: privateKey(t, "merchant_pkcs8.pem"), Version: "1"},
		WalletKey: publicKey(t, "wallet_public.pem"),
		Timeout:   10 * time.Second,
		Now:       func() time.Time { return requestTime },
	}
}

func TestClientURI(t *testing.T) {
	tests := []struct {
		base, path, query, want string
	}{
		{"https://w.example", "/v1/a", "", "/v1/a"},
		{"https://w.example/", "/v1/a", "", "/v1/a"},
		{"https://w.example/api", "/v1/a", "", "/api/v1/a"},
		{"https://w.example/api/", "/v1/a", "", "/api/v1/a"},
		{"https://w.example/open%20api/", "/v1/a", "", "/open%20api/v1/a"},
		{"https://w.example/openapi", "/v1/a", "x=1&y=%2F", "/openapi/v1/a?x=1&y=%2F"},
	}
	for _, tt := range tests {
		t.Run(tt.base+tt.path+"?"+tt.query, func(t *testing.T) {
			u, err := url.Parse(tt.base)
			if err != nil {
				t.Fatal(err)
			}
			c := &wallet.Client{BaseURL: u}
			if got := c.URI(tt.path, tt.query); got != tt.want {
				t.Errorf("URI = %q, want %q", got, tt.want)
			}
		})
	}
}

// The request carries the protocol headers and a signature that verifies
// over the URI the wallet sees, prefix and query included.
func TestClientCallSignsRequest(t *testing.T) {
	tests := []struct {
		name, prefix, path, query string
		body                      string
		wantURI                   string
	}{
		{"plain", "", "/v1/authorizations/applyToken", "", `{"grantType":"AUTHORIZATION_CODE","authCode":"abc"}`, "/v1/authorizations/applyToken"},
		{"prefix", "/openapi", "/v1/users/inquiryUserInfo", "", `{"accessToken":"at"}`, "/openapi/v1/users/inquiryUserInfo"},
		{"prefix with slash", "/api/", "/v1/users/inquiryUserInfo", "", `{}`, "/api/v1/users/inquiryUserInfo"},
		{"prefix and query", "/openapi", "/v1/users/inquiryUserInfo", "lang=en&region=TH&x=%2F%20", `{"accessToken":"at"}`, "/openapi/v1/users/inquiryUserInfo?lang=en&region=TH&x=%2F%20"},
		{"utf-8 body", "", "/v2/authorizations/applyToken", "", `{"extendInfo":"用户 Grüße"}`, "/v2/authorizations/applyToken"},
		{"empty body", "", "/v1/ping", "", ``, "/v1/ping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw := newFakeWallet(t, nil)
			c := newClient(t, fw, tt.prefix)
			resp, err := c.Call(context.Background(), tt.path, tt.query, []byte(tt.body), nil)
			if err != nil {
				t.Fatalf("Call: %v", err)
			}
			reqs := fw.requests()
			if len(reqs) != 1 {
				t.Fatalf("wallet saw %d requests, want 1", len(reqs))
			}
			got := reqs[0]
			if got.URI != tt.wantURI {
				t.Errorf("URI = %q, want %q", got.URI, tt.wantURI)
			}
			if c.URI(tt.path, tt.query) != tt.wantURI {
				t.Errorf("Client.URI = %q, want %q", c.URI(tt.path, tt.query), tt.wantURI)
			}
			if got.SigErr != nil {
				t.Errorf("request signature: %v", got.SigErr)
			}
			if string(got.Body) != tt.body {
				t.Errorf("body = %q, want %q", got.Body, tt.body)
			}
			wantHeaders := map[string]string{
				"Content-Type":  "application/json; charset=UTF-8",
				"Client-Id":     testClientID,
				"Request-Time":  "2019-05-28T12:12:12.000+08:00",
				"Key-Version":   "1",
				"Cookie":        "",
				"Authorization": "",
			}
			for h, want := range wantHeaders {
				if v := got.Header.Get(h); v != want {
					t.Errorf("header %s = %q, want %q", h, v, want)
				}
			}
			sh, err := wallet.ParseSignatureHeader(got.Header.Get("Signature"))
			if err != nil || sh.KeyVersion != "1" || sh.Algorithm != "RSA256" {
				t.Errorf("Signature header %q: %+v, %v", got.Header.Get("Signature"), sh, err)
			}
			if strings.ContainsAny(sh.Signature, "+/=") {
				t.Errorf("signature %q is not URL-encoded", sh.Signature)
			}

			if resp.StatusCode != 200 || resp.Result.ResultStatus != "S" || resp.Result.ResultCode != "SUCCESS" {
				t.Errorf("response = %d %+v", resp.StatusCode, resp.Result)
			}
			for _, h := range []string{"Content-Type", "Response-Time", "Signature"} {
				if resp.Header.Get(h) == "" {
					t.Errorf("response header %s missing", h)
				}
			}
		})
	}
}

// Only tracing headers pass through; nothing the caller sends overrides a
// protocol header, and only protocol headers come back.
func TestClientHeaderPassThrough(t *testing.T) {
	fw := newFakeWallet(t, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request, _ []byte) {
		w.Header().Set("Set-Cookie", "session=1")
		w.Header().Set("X-Internal", "yes")
		fw.reply(w, r, 200, wallet.Envelope("S", "SUCCESS", ""), signGood)
	})
	c := newClient(t, fw, "")
	in := http.Header{}
	in.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	in.Set("X-Request-Id", "req-42")
	in.Set("Authorization", "Bearer app-secret")
	in.Set("Cookie", "a=b")
	in.Set("X-Forwarded-For", "10.0.0.1")
	in.Set("X-Customer-Id", "c1")
	in.Set("Client-Id", "EVIL")
	in.Set("Request-Time", "1")
	in.Set("Signature", "algorithm=RSA256,keyVersion=9,signature=x")
	in.Set("Key-Version", "9")
	in.Set("Content-Type", "text/plain")
	resp, err := c.Call(context.Background(), "/v1/users/inquiryUserInfo", "", []byte(`{}`), in)
	if err != nil {
		t.Fatal(err)
	}
	got := fw.requests()[0]
	want := map[string]string{
		"Traceparent":     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"X-Request-Id":    "req-42",
		"Authorization":   "",
		"Cookie":          "",
		"X-Forwarded-For": "",
		"X-Customer-Id":   "",
		"Client-Id":       testClientID,
		"Request-Time":    "2019-05-28T12:12:12.000+08:00",
		"Key-Version":     "1",
		"Content-Type":    "application/json; charset=UTF-8",
	}
	for h, w := range want {
		if v := got.Header.Get(h); v != w {
			t.Errorf("wallet saw %s = %q, want %q", h, v, w)
		}
	}
	if got.SigErr != nil {
		t.Errorf("request signature: %v", got.SigErr)
	}
	for h := range resp.Header {
		switch h {
		case "Content-Type", "Response-Time", "Signature":
		default:
			t.Errorf("response carries header %s, want only Content-Type, Response-Time, Signature", h)
		}
	}
}

func TestClientResponseSignature(t *testing.T) {
	tests := []struct {
		name      string
		mode      signMode
		walletKey bool // the client verifies answers
		wantErr   error
	}{
		{"good signature", signGood, true, nil},
		{"no signature, not verifying", signNone, false, nil},
		{"bad signature, not verifying", signOtherBody, false, nil},
		{"no signature", signNone, true, wallet.ErrBadSignature},
		{"no Response-Time", signNoTime, true, wallet.ErrBadSignature},
		{"signed over another body", signOtherBody, true, wallet.ErrBadSignature},
		{"signed without prefix and query", signOtherURI, true, wallet.ErrBadSignature},
		{"signed with another key", signWrongKey, true, wallet.ErrBadSignature},
		{"Signature header garbage", signGarbageHeader, true, wallet.ErrBadSignature},
		{"signature not base64", signGarbageValue, true, wallet.ErrBadSignature},
		{"other algorithm", signOtherAlgorithm, true, wallet.ErrBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw := newFakeWallet(t, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request, _ []byte) {
				fw.reply(w, r, 200, wallet.Envelope("S", "SUCCESS", "success"), tt.mode)
			})
			c := newClient(t, fw, "/openapi")
			if !tt.walletKey {
				c.WalletKey = nil
			}
			resp, err := c.Call(context.Background(), "/v1/users/inquiryUserInfo", "lang=en", []byte(`{"accessToken":"at"}`), nil)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("Call = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil && resp != nil {
				t.Error("an answer that fails verification was returned")
			}
			if tt.wantErr == nil && resp.Result.ResultStatus != "S" {
				t.Errorf("result = %+v", resp.Result)
			}
		})
	}
}

// bodyOfSize is a JSON object with a result, padded to exactly n bytes.
func bodyOfSize(n int) []byte {
	b := []byte(`{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"pad":""}`)
	pad := n - len(b)
	return []byte(`{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"pad":"` + strings.Repeat("x", pad) + `"}`)
}

func TestClientAnswers(t *testing.T) {
	const limit = 4096
	tests := []struct {
		name       string
		answer     func(fw *fakeWallet, w http.ResponseWriter, r *http.Request)
		wantErr    error
		wantStatus int
	}{
		{
			name: "HTML 502 from a gateway",
			answer: func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(http.StatusBadGateway)
				io.WriteString(w, "<html><body>502 Bad Gateway</body></html>")
			},
			wantErr: wallet.ErrUnavailable,
		},
		{
			name: "HTML 200",
			answer: func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "<html>ok</html>")
			},
			wantErr: wallet.ErrUnavailable,
		},
		{
			name: "empty 503",
			answer: func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusServiceUnavailable)
			},
			wantErr: wallet.ErrUnavailable,
		},
		{
			name: "JSON array",
			answer: func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
				fw.reply(w, r, 200, []byte(`[{"result":{}}]`), signGood)
			},
			wantErr: wallet.ErrUnavailable,
		},
		{
			name: "truncated JSON",
			answer: func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
				fw.reply(w, r, 200, []byte(`{"result":{"resultStatus":"S"`), signGood)
			},
			wantErr: wallet.ErrUnavailable,
		},
		{
			name: "body cut short of its Content-Length",
			answer: func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "1000")
				io.WriteString(w, `{"result":`)
			},
			wantErr: wallet.ErrUnavailable,
		},
		{
			name: "connection closed without an answer",
			answer: func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					conn.Close()
				}
			},
			wantErr: wallet.ErrUnavailable,
		},
		{
			name: "body over MaxResponseBytes",
			answer: func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
				fw.reply(w, r, 200, bodyOfSize(limit+1), signGood)
			},
			wantErr: wallet.ErrUnavailable,
		},
		{
			name: "body of exactly MaxResponseBytes",
			answer: func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
				fw.reply(w, r, 200, bodyOfSize(limit), signGood)
			},
			wantStatus: 200,
		},
		{
			name: "JSON 500 is an answer",
			answer: func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
				fw.reply(w, r, 500, wallet.Envelope("U", "UNKNOWN_EXCEPTION", ""), signGood)
			},
			wantStatus: 500,
		},
		{
			name: "JSON with leading blank space",
			answer: func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
				fw.reply(w, r, 200, append([]byte("\n  "), wallet.Envelope("S", "SUCCESS", "")...), signGood)
			},
			wantStatus: 200,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw := newFakeWallet(t, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request, _ []byte) { tt.answer(fw, w, r) })
			c := newClient(t, fw, "")
			c.MaxResponseBytes = limit
			resp, err := c.Call(context.Background(), "/v1/users/inquiryUserInfo", "", []byte(`{}`), nil)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Call = %v, want %v", err, tt.wantErr)
				}
				for _, other := range []error{wallet.ErrTimeout, wallet.ErrBadSignature, wallet.ErrUnavailable} {
					if other != tt.wantErr && errors.Is(err, other) {
						t.Errorf("Call = %v, also %v", err, other)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Call: %v", err)
			}
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.wantStatus)
			}
		})
	}
}

// blockingWallet answers nothing until the test ends (or the client hangs up).
func blockingWallet(t *testing.T) *fakeWallet {
	release := make(chan struct{})
	fw := newFakeWallet(t, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request, _ []byte) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	// Cleanups run last-in first-out: release the handler before the server closes.
	t.Cleanup(func() { close(release) })
	return fw
}

func TestClientTimeout(t *testing.T) {
	t.Run("Timeout", func(t *testing.T) {
		c := newClient(t, blockingWallet(t), "")
		c.Timeout = 50 * time.Millisecond
		_, err := c.Call(context.Background(), "/v1/users/inquiryUserInfo", "", []byte(`{}`), nil)
		if !errors.Is(err, wallet.ErrTimeout) {
			t.Fatalf("Call = %v, want ErrTimeout", err)
		}
		if errors.Is(err, wallet.ErrUnavailable) {
			t.Errorf("Call = %v, also ErrUnavailable", err)
		}
	})
	t.Run("caller deadline sooner than Timeout", func(t *testing.T) {
		c := newClient(t, blockingWallet(t), "")
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := c.Call(ctx, "/v1/users/inquiryUserInfo", "", []byte(`{}`), nil)
		if !errors.Is(err, wallet.ErrTimeout) {
			t.Fatalf("Call = %v, want ErrTimeout", err)
		}
	})
	t.Run("headers sent, body stalls", func(t *testing.T) {
		release := make(chan struct{})
		fw := newFakeWallet(t, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request, _ []byte) {
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, `{"result":`)
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		t.Cleanup(func() { close(release) })
		c := newClient(t, fw, "")
		c.Timeout = 50 * time.Millisecond
		_, err := c.Call(context.Background(), "/v1/users/inquiryUserInfo", "", []byte(`{}`), nil)
		if !errors.Is(err, wallet.ErrTimeout) {
			t.Fatalf("Call = %v, want ErrTimeout", err)
		}
	})
}

func TestClientConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := &wallet.Client{
		BaseURL:  &url.URL{Scheme: "http", Host: addr},
		ClientID: testClientID,
		Keys:     wallet.StaticKey{Key: privateKey(t, "merchant_pkcs8.pem"), Version: "1"},
		Timeout:  5 * time.Second,
	}
	_, err = c.Call(context.Background(), "/v1/users/inquiryUserInfo", "", []byte(`{}`), nil)
	if !errors.Is(err, wallet.ErrUnavailable) {
		t.Fatalf("Call = %v, want ErrUnavailable", err)
	}
	if errors.Is(err, wallet.ErrTimeout) {
		t.Errorf("Call = %v, also ErrTimeout", err)
	}
}

func TestClientDoesNotFollowRedirects(t *testing.T) {
	for _, status := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			fw := newFakeWallet(t, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request, _ []byte) {
				if r.URL.Path == "/elsewhere" {
					fw.reply(w, r, 200, wallet.Envelope("S", "SUCCESS", "followed"), signGood)
					return
				}
				w.Header().Set("Location", "/elsewhere")
				fw.reply(w, r, status, wallet.Envelope("F", "MOVED", ""), signGood)
			})
			c := newClient(t, fw, "")
			resp, err := c.Call(context.Background(), "/v1/users/inquiryUserInfo", "", []byte(`{}`), nil)
			if err != nil {
				t.Fatalf("Call: %v", err)
			}
			if resp.StatusCode != status {
				t.Errorf("status %d, want %d (not followed)", resp.StatusCode, status)
			}
			for _, r := range fw.requests() {
				if r.URI == "/elsewhere" {
					t.Error("the redirect was followed")
				}
			}
		})
	}
}

type failingKeys struct{}

func (failingKeys) SigningKey() (wallet.SigningKey, error) {
	return wallet.SigningKey{}, errors.New("key file unreadable")
}

func TestClientKeySourceError(t *testing.T) {
	fw := newFakeWallet(t, nil)
	c := newClient(t, fw, "")
	c.Keys = failingKeys{}
	_, err := c.Call(context.Background(), "/v1/users/inquiryUserInfo", "", []byte(`{}`), nil)
	if err == nil || !strings.Contains(err.Error(), "key file unreadable") {
		t.Fatalf("Call = %v, want the key source's error", err)
	}
	if n := len(fw.requests()); n != 0 {
		t.Errorf("wallet saw %d requests, want none", n)
	}
}

// A rotated key file is used for the next call, with its version.
func TestClientFileKeyRotation(t *testing.T) {
	fw := newFakeWallet(t, nil)
	fw.merchant["2"] = publicKey(t, "wallet_public.pem") // the second key pair plays the rotated merchant key
	d := newFileKeyDir(t)
	d.write(d.key, testdata(t, "merchant_pkcs8.pem"))
	d.write(d.version, []byte("1\n"))
	fk := &wallet.FileKey{KeyPath: d.key, VersionPath: d.version, CheckEvery: time.Nanosecond}
	if err := fk.Load(); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, fw, "")
	c.Keys = fk

	call := func(wantVersion string) {
		t.Helper()
		if _, err := c.Call(context.Background(), "/v1/users/inquiryUserInfo", "", []byte(`{}`), nil); err != nil {
			t.Fatalf("Call: %v", err)
		}
		reqs := fw.requests()
		last := reqs[len(reqs)-1]
		if v := last.Header.Get("Key-Version"); v != wantVersion {
			t.Errorf("Key-Version %q, want %q", v, wantVersion)
		}
		if last.SigErr != nil {
			t.Errorf("signature with key version %s: %v", wantVersion, last.SigErr)
		}
	}
	call("1")
	d.write(d.key, testdata(t, "wallet_pkcs8.pem"))
	d.write(d.version, []byte("2\n"))
	call("2")
	d.write(d.key, []byte("garbage"))
	call("2")
}

// Calls from many goroutines share one client (run with -race).
func TestClientConcurrentCalls(t *testing.T) {
	fw := newFakeWallet(t, nil)
	d := newFileKeyDir(t)
	d.write(d.key, testdata(t, "merchant_pkcs8.pem"))
	c := newClient(t, fw, "/api")
	c.Keys = &wallet.FileKey{KeyPath: d.key, Version: "1", CheckEvery: time.Nanosecond}
	const workers, calls = 6, 4
	errs := make(chan error, workers*calls)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range calls {
				body := fmt.Sprintf(`{"worker":%d,"call":%d}`, w, i)
				_, err := c.Call(context.Background(), "/v1/users/inquiryUserInfo", "", []byte(body), nil)
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	for _, r := range fw.requests() {
		if r.SigErr != nil {
			t.Errorf("request %s: %v", r.Body, r.SigErr)
		}
	}
	if n := len(fw.requests()); n != workers*calls {
		t.Errorf("wallet saw %d requests, want %d", n, workers*calls)
	}
}

const tokenAnswer = `{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},` +
	`"accessToken":"AT-281010033AB2F588D14B43238637264FCA5AAF35","accessTokenExpiryTime":"2019-06-06T12:12:12+08:00",` +
	`"refreshToken":"RT-2810100334F62CBC577F468AAC87CFC6C9107811","refreshTokenExpiryTime":"2019-06-08T12:12:12+08:00",` +
	`"customerId":"1000001119398804xxxx"}`

func TestApplyToken(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		body        string
		wantErr     error // ErrMalformed, or nil
		wantWallet  string
		wantUnknown bool
	}{
		{name: "S", status: 200, body: tokenAnswer},
		{name: "F", status: 200, body: string(wallet.Envelope("F", "INVALID_REFRESH_TOKEN", "refresh token invalid")), wantWallet: "INVALID_REFRESH_TOKEN"},
		{name: "F used code", status: 200, body: string(wallet.Envelope("F", "USED_CODE", "")), wantWallet: "USED_CODE"},
		{name: "U", status: 200, body: string(wallet.Envelope("U", "UNKNOWN_EXCEPTION", "")), wantWallet: "UNKNOWN_EXCEPTION", wantUnknown: true},
		{name: "JSON 500 without result", status: 500, body: `{"error":"internal"}`, wantWallet: "", wantUnknown: true},
		{name: "S without customerId", status: 200, body: strings.Replace(tokenAnswer, `"customerId":"1000001119398804xxxx"`, `"x":1`, 1), wantErr: wallet.ErrMalformed},
		{name: "S with a bad expiry", status: 200, body: strings.Replace(tokenAnswer, `2019-06-06T12:12:12+08:00`, `soon`, 1), wantErr: wallet.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw := newFakeWallet(t, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request, _ []byte) {
				fw.reply(w, r, tt.status, []byte(tt.body), signGood)
			})
			c := newClient(t, fw, "")
			tr, resp, err := c.ApplyToken(context.Background(), "/v1/authorizations/applyToken",
				[]byte(`{"grantType":"AUTHORIZATION_CODE","authCode":"abc"}`), nil)
			if n := len(fw.requests()); n != 1 || fw.requests()[0].SigErr != nil {
				t.Fatalf("wallet saw %d requests (signature: %v)", n, fw.requests()[0].SigErr)
			}
			if resp == nil || string(resp.Body) != tt.body {
				t.Errorf("raw answer not returned: %v", resp)
			}
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) || tr != nil {
					t.Fatalf("ApplyToken = %v, %v; want %v", tr, err, tt.wantErr)
				}
			case tt.name == "S":
				if err != nil {
					t.Fatalf("ApplyToken: %v", err)
				}
				if tr.CustomerID != "1000001119398804xxxx" || tr.AccessToken.Reveal() != "AT-281010033AB2F588D14B43238637264FCA5AAF35" ||
					tr.RefreshToken.Reveal() != "RT-2810100334F62CBC577F468AAC87CFC6C9107811" ||
					!tr.AccessTokenExpiry.Equal(time.Unix(1559794332, 0)) || !tr.RefreshTokenExpiry.Equal(time.Unix(1559967132, 0)) {
					t.Errorf("TokenResponse = %+v", *tr)
				}
			default:
				var we *wallet.Error
				if !errors.As(err, &we) {
					t.Fatalf("ApplyToken = %v, want *wallet.Error", err)
				}
				if unknown := we.ResultStatus != wallet.StatusFailed; we.ResultCode != tt.wantWallet || unknown != tt.wantUnknown || we.HTTPStatus != tt.status {
					t.Errorf("Error = %+v, unknown %v; want %s, unknown %v", we, unknown, tt.wantWallet, tt.wantUnknown)
				}
				if tr != nil {
					t.Error("a token pair came back with an error")
				}
			}
		})
	}
}

func TestApplyTokenTransportError(t *testing.T) {
	fw := newFakeWallet(t, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request, _ []byte) {
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, "<html>502</html>")
	})
	c := newClient(t, fw, "")
	tr, resp, err := c.ApplyToken(context.Background(), "/v1/authorizations/applyToken", []byte(`{}`), nil)
	if !errors.Is(err, wallet.ErrUnavailable) || tr != nil || resp != nil {
		t.Fatalf("ApplyToken = %v, %v, %v; want nil, nil, ErrUnavailable", tr, resp, err)
	}
	var we *wallet.Error
	if errors.As(err, &we) {
		t.Error("a transport error is a *wallet.Error")
	}
}

func TestParseTokenResponse(t *testing.T) {
	without := func(field string) string {
		var m map[string]any
		if err := json.Unmarshal([]byte(tokenAnswer), &m); err != nil {
			panic(err)
		}
		delete(m, field)
		b, _ := json.Marshal(m)
		return string(b)
	}
	with := func(field string, v any) string {
		var m map[string]any
		if err := json.Unmarshal([]byte(tokenAnswer), &m); err != nil {
			panic(err)
		}
		m[field] = v
		b, _ := json.Marshal(m)
		return string(b)
	}
	tests := []struct {
		name            string
		body            string
		wantErr         bool
		wantRefreshZero bool
	}{
		{name: "complete", body: tokenAnswer},
		{name: "no refreshTokenExpiryTime", body: without("refreshTokenExpiryTime"), wantRefreshZero: true},
		{name: "empty refreshTokenExpiryTime", body: with("refreshTokenExpiryTime", ""), wantRefreshZero: true},
		{name: "unknown fields", body: with("extendInfo", `{"a":1}`)},
		{name: "no customerId", body: without("customerId"), wantErr: true},
		{name: "empty customerId", body: with("customerId", ""), wantErr: true},
		{name: "customerId with a slash", body: with("customerId", "a/b"), wantErr: true},
		{name: "customerId too long", body: with("customerId", strings.Repeat("c", 65)), wantErr: true},
		{name: "no accessToken", body: without("accessToken"), wantErr: true},
		{name: "no refreshToken", body: without("refreshToken"), wantErr: true},
		{name: "no accessTokenExpiryTime", body: without("accessTokenExpiryTime"), wantErr: true},
		{name: "accessTokenExpiryTime without offset", body: with("accessTokenExpiryTime", "2019-06-06T12:12:12"), wantErr: true},
		{name: "accessTokenExpiryTime in ms", body: with("accessTokenExpiryTime", "1559794332000"), wantErr: true},
		{name: "bad refreshTokenExpiryTime", body: with("refreshTokenExpiryTime", "later"), wantErr: true},
		{name: "accessToken a number", body: with("accessToken", 12), wantErr: true},
		{name: "not JSON", body: "<html>", wantErr: true},
		{name: "empty", body: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, err := wallet.ParseTokenResponse([]byte(tt.body))
			if tt.wantErr {
				if !errors.Is(err, wallet.ErrMalformed) {
					t.Fatalf("ParseTokenResponse = %+v, %v; want ErrMalformed", tr, err)
				}
				for _, tok := range []string{"AT-281010033AB2F588D14B43238637264FCA5AAF35", "RT-2810100334F62CBC577F468AAC87CFC6C9107811"} {
					if strings.Contains(err.Error(), tok) {
						t.Errorf("error %q quotes a token", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTokenResponse: %v", err)
			}
			if tr.CustomerID != "1000001119398804xxxx" || tr.AccessToken.Reveal() == "" || tr.RefreshToken.Reveal() == "" {
				t.Errorf("TokenResponse = %+v", *tr)
			}
			if tr.RefreshTokenExpiry.IsZero() != tt.wantRefreshZero {
				t.Errorf("RefreshTokenExpiry = %v, want zero: %v", tr.RefreshTokenExpiry, tt.wantRefreshZero)
			}
		})
	}
}

func TestRefreshBody(t *testing.T) {
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }
	tests := []struct {
		name   string
		replay map[string]json.RawMessage
		want   string
	}{
		{"nothing to replay", nil, `{"grantType":"REFRESH_TOKEN","refreshToken":"RT-new"}`},
		{"v2 fields replayed", map[string]json.RawMessage{
			"appId":             raw(`"app-1"`),
			"authClientId":      raw(`"client-9"`),
			"customerBelongsTo": raw(`"WALLET_X"`),
			"extendInfo":        raw(`"{\"a\":1}"`),
		}, `{"appId":"app-1","authClientId":"client-9","customerBelongsTo":"WALLET_X","extendInfo":"{\"a\":1}","grantType":"REFRESH_TOKEN","refreshToken":"RT-new"}`},
		{"exchange fields ignored", map[string]json.RawMessage{
			"grantType":    raw(`"AUTHORIZATION_CODE"`),
			"authCode":     raw(`"code-1"`),
			"refreshToken": raw(`"RT-old"`),
			"accessToken":  raw(`"AT-old"`),
			"appId":        raw(`"app-1"`),
		}, `{"appId":"app-1","grantType":"REFRESH_TOKEN","refreshToken":"RT-new"}`},
		{"non-string values kept", map[string]json.RawMessage{
			"extra": raw(`{"n":[1,2,null],"b":true}`),
		}, `{"extra":{"n":[1,2,null],"b":true},"grantType":"REFRESH_TOKEN","refreshToken":"RT-new"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := wallet.RefreshBody(wallet.Secret("RT-new"), tt.replay)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("RefreshBody =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}
