package proxy

import (
	"bytes"
	"context"
	"crypto/rsa"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenproxy/tokenproxy/refresher"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// The hot-path pieces of a proxied call on the proxy side (the token
// lookup is the refresher's, measured there): the body rewrite (parse,
// inject, marshal) and the whole handler, with a fake token source and
// either a fake Wallet (the proxy's own work only) or a real wallet.Client
// whose transport is an in-process wallet answering a pre-signed body (the
// call as production makes it, signing and verification included, minus
// the network).

var benchBody = []byte(`{"customerId":"c-000042","accessToken":"app-chosen","extendInfo":{"channel":"app","locale":"en_US"},"paymentRequestId":"pr-20260101-000001","order":{"amount":{"currency":"USD","value":"1000"},"items":[{"sku":"a","qty":1},{"sku":"b","qty":2}]}}`)

const benchToken = "AT_0123456789abcdef0123456789abcdef"

func BenchmarkBodyRewrite(b *testing.B) {
	for _, bc := range []struct {
		name  string
		field []string
	}{
		{"top-level", []string{"accessToken"}},
		{"nested", []string{"order", "payment", "token"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(benchBody)))
			for b.Loop() {
				obj, err := parseObject(benchBody)
				if err != nil {
					b.Fatal(err)
				}
				obj = obj.withoutTokenFields()
				obj, err = obj.with(bc.field, benchToken)
				if err != nil {
					b.Fatal(err)
				}
				if len(obj.marshal()) == 0 {
					b.Fatal("empty")
				}
			}
		})
	}
}

// benchTokens always has the same token for every customer.
type benchTokens struct{ fakeTokens }

func (*benchTokens) Token(_ context.Context, id string) (refresher.Token, error) {
	return refresher.Token{CustomerID: id, Value: benchToken, Generation: 1}, nil
}

// benchWallet answers every call with the same response, as a fresh copy
// (the client hands out a new Response per call).
type benchWallet struct{ resp *wallet.Response }

func (w benchWallet) Call(_ context.Context, _, _ string, body []byte, _ http.Header) (*wallet.Response, error) {
	r := *w.resp
	return &r, nil
}

const benchAnswer = `{"result":{"resultStatus":"S","resultCode":"SUCCESS","resultMessage":"success"},"userInfo":{"userId":"u-1","nickName":"n"}}`

func benchHandler(b *testing.B, w Wallet) {
	h := New(Config{
		Tokens:       &benchTokens{},
		Wallet:       w,
		TokenPaths:   []string{"/v1/authorizations/applyToken"},
		MaxBodyBytes: 1 << 20,
		Limiter:      NewLimiter(256, 64<<20),
		Metrics:      NewMetrics(prometheus.NewRegistry()),
	})
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v1/users/inquiryUserInfo", bytes.NewReader(benchBody))
		req.Header.Set("X-Customer-Id", "c-000042")
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("HTTP %d: %s", rec.Code, rec.Body)
		}
	}
}

func BenchmarkHandler(b *testing.B) {
	b.Run("fake-wallet", func(b *testing.B) {
		resp := okResponse(benchAnswer)
		benchHandler(b, benchWallet{resp})
	})
	b.Run("wallet-client", func(b *testing.B) {
		mk := benchKey(b, "merchant_pkcs8.pem")
		wk := benchKey(b, "wallet_pkcs8.pem")
		base, _ := url.Parse("http://wallet.invalid")
		rt := "2026-01-01T00:00:00.000Z"
		sig, err := wallet.Sign(wk, wallet.SigningContent(http.MethodPost, "/v1/users/inquiryUserInfo", "CLIENT", rt, []byte(benchAnswer)))
		if err != nil {
			b.Fatal(err)
		}
		hdr := http.Header{}
		hdr.Set("Content-Type", "application/json; charset=UTF-8")
		hdr.Set(wallet.HeaderClientID, "CLIENT")
		hdr.Set(wallet.HeaderResponseTime, rt)
		hdr.Set(wallet.HeaderSignature, wallet.FormatSignatureHeader("1", sig))
		hdr.Set("Content-Length", strconv.Itoa(len(benchAnswer)))
		benchHandler(b, &wallet.Client{
			BaseURL:   base,
			ClientID:  "CLIENT",
			Keys:      wallet.StaticKey{Key: mk, Version: "1"},
			WalletKey: &wk.PublicKey,
			HTTP:      &http.Client{Transport: answerTransport{hdr}},
		})
	})
}

// answerTransport is an in-process wallet: every request gets the same
// pre-signed answer.
type answerTransport struct{ hdr http.Header }

func (t answerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return &http.Response{
		StatusCode:    http.StatusOK,
		Header:        t.hdr.Clone(), // a transport hands out a fresh map per answer
		Body:          io.NopCloser(bytes.NewReader([]byte(benchAnswer))),
		ContentLength: int64(len(benchAnswer)),
		Request:       r,
	}, nil
}

func benchKey(b *testing.B, name string) *rsa.PrivateKey {
	b.Helper()
	raw, err := os.ReadFile("../wallet/testdata/" + name)
	if err != nil {
		b.Fatal(err)
	}
	k, err := wallet.ParsePrivateKey(raw)
	if err != nil {
		b.Fatal(err)
	}
	return k
}
