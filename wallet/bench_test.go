package wallet_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"testing"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// The hot-path pieces of a proxied call on the wallet side: the merchant
// signature over the request, the verification of the wallet's answer,
// and a whole Call against an in-process wallet (a RoundTripper answering a
// pre-signed body, so only the client's own work is measured).

var benchBody = []byte(`{"customerId":"c-000042","accessToken":"AT_0123456789abcdef0123456789abcdef","extendInfo":{"channel":"app","locale":"en_US"},"paymentRequestId":"pr-20260101-000001","order":{"amount":{"currency":"USD","value":"1000"},"items":[{"sku":"a","qty":1},{"sku":"b","qty":2}]}}`)

func BenchmarkSign(b *testing.B) {
	key := privateKey(b, "merchant_pkcs8.pem")
	content := wallet.SigningContent(http.MethodPost, "/v1/users/inquiryUserInfo", "CLIENT", "2026-01-01T00:00:00.000Z", benchBody)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := wallet.Sign(key, content); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	key := privateKey(b, "merchant_pkcs8.pem")
	content := wallet.SigningContent(http.MethodPost, "/v1/users/inquiryUserInfo", "CLIENT", "2026-01-01T00:00:00.000Z", benchBody)
	sig, err := wallet.Sign(key, content)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := wallet.Verify(&key.PublicKey, content, sig); err != nil {
			b.Fatal(err)
		}
	}
}

// signedAnswer is a RoundTripper that answers every request with the same
// wallet answer, signed once for uri.
type signedAnswer struct {
	body   []byte
	header http.Header
}

func newSignedAnswer(tb testing.TB, uri, clientID string, body []byte) *signedAnswer {
	tb.Helper()
	wk := privateKey(tb, "wallet_pkcs8.pem")
	rt := "2026-01-01T00:00:00.000Z"
	sig, err := wallet.Sign(wk, wallet.SigningContent(http.MethodPost, uri, clientID, rt, body))
	if err != nil {
		tb.Fatal(err)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json; charset=UTF-8")
	h.Set(wallet.HeaderClientID, clientID)
	h.Set(wallet.HeaderResponseTime, rt)
	h.Set(wallet.HeaderSignature, wallet.FormatSignatureHeader("1", sig))
	h.Set("Content-Length", strconv.Itoa(len(body)))
	return &signedAnswer{body: body, header: h}
}

func (s *signedAnswer) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return &http.Response{
		StatusCode:    http.StatusOK,
		Header:        s.header.Clone(), // a transport hands out a fresh map per answer
		Body:          io.NopCloser(bytes.NewReader(s.body)),
		ContentLength: int64(len(s.body)),
		Request:       r,
	}, nil
}

func BenchmarkCall(b *testing.B) {
	base, _ := url.Parse("http://wallet.invalid/api")
	key := privateKey(b, "merchant_pkcs8.pem")
	answer := []byte(`{"result":{"resultStatus":"S","resultCode":"SUCCESS","resultMessage":"success"},"userInfo":{"userId":"u-1","nickName":"n"}}`)
	c := &wallet.Client{
		BaseURL:   base,
		ClientID:  "CLIENT",
		Keys:      wallet.StaticKey{Key: key, Version: "1"},
		WalletKey: publicKey(b, "wallet_public.pem"),
		HTTP:      &http.Client{Transport: newSignedAnswer(b, "/api/v1/users/inquiryUserInfo", "CLIENT", answer)},
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		resp, err := c.Call(ctx, "/v1/users/inquiryUserInfo", "", benchBody, nil)
		if err != nil {
			b.Fatal(err)
		}
		if resp.Result.ResultStatus != wallet.StatusSuccess {
			b.Fatal(resp.Result)
		}
	}
}
