package wallet_test

import (
	"bytes"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// signatureVector is one signing content of testdata/vectors, signed there by
// openssl (testdata/gen.sh). The parts must match the ones gen.sh prints.
type signatureVector struct {
	name   string
	signer string // "merchant" (requests) or "wallet" (responses)
	method string
	uri    string
	client string
	time   string
	body   string
}

var signatureVectors = []signatureVector{
	{
		name: "apply_token", signer: "merchant",
		method: "POST", uri: "/v1/authorizations/applyToken",
		client: "TEST_CLIENT", time: "2019-05-28T12:12:12.000+08:00",
		body: `{"grantType":"AUTHORIZATION_CODE","authCode":"abc"}`,
	},
	{
		name: "prefix_query", signer: "merchant",
		method: "POST", uri: "/openapi/v1/users/inquiryUserInfo?lang=en&region=TH",
		client: "TEST_5X00000000000000", time: "2024-02-29T23:59:59.999-03:30",
		body: `{"accessToken":"at_123","extendInfo":"{\"k\":\"v\"}"}`,
	},
	{
		name: "unix_ms", signer: "merchant",
		method: "POST", uri: "/v2/authorizations/applyToken",
		client: "TEST_CLIENT", time: "1716890000123",
		body: `{"grantType":"REFRESH_TOKEN","refreshToken":"rt_abc","appId":"app1"}`,
	},
	{
		name: "utf8_body", signer: "merchant",
		method: "POST", uri: "/v1/users/inquiryUserInfo",
		client: "TEST_CLIENT", time: "1716890000123456789",
		body: `{"accessToken":"at_1","extendInfo":"ผู้ใช้ 用户 Grüße €"}`,
	},
	{
		name: "empty_body", signer: "merchant",
		method: "POST", uri: "/v1/ping",
		client: "TEST_CLIENT", time: "2019-05-28T04:12:12.000Z",
		body: "",
	},
	{
		name: "trailing_newline", signer: "merchant",
		method: "POST", uri: "/v1/authorizations/applyToken",
		client: "TEST_CLIENT", time: "2019-05-28T12:12:12.000+08:00",
		body: `{"grantType":"AUTHORIZATION_CODE","authCode":"abc"}` + "\n",
	},
	{
		name: "response_apply_token", signer: "wallet",
		method: "POST", uri: "/v1/authorizations/applyToken",
		client: "TEST_CLIENT", time: "2019-05-28T12:12:13.123+08:00",
		body: `{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"accessToken":"281010033AB2F588D14B43238637264FCA5AAF35xxxx","accessTokenExpiryTime":"2019-06-06T12:12:12+08:00","refreshToken":"2810100334F62CBC577F468AAC87CFC6C9107811xxxx","refreshTokenExpiryTime":"2019-06-08T12:12:12+08:00","customerId":"1000001119398804xxxx"}`,
	},
}

func (v signatureVector) content(t testing.TB) []byte {
	return testdata(t, "vectors/"+v.name+".content")
}

// sig is openssl's signature in standard base64; sigURL the same URL-encoded.
func (v signatureVector) sig(t testing.TB) string { return testdataLine(t, "vectors/"+v.name+".sig") }
func (v signatureVector) sigURL(t testing.TB) string {
	return testdataLine(t, "vectors/"+v.name+".sig.url")
}

// Private keys of each signer, in every shape gen.sh stores.
var privateKeyShapes = map[string][]string{
	"merchant": {"merchant_pkcs8.pem", "merchant_pkcs1.pem", "merchant_pkcs8.b64", "merchant_pkcs8_wrapped.b64"},
	"wallet":   {"wallet_pkcs8.pem"},
}

// Public keys of each signer, in every shape gen.sh stores.
var publicKeyShapes = map[string][]string{
	"merchant": {"merchant_public.pem", "merchant_public.b64", "merchant_public_pkcs1.pem"},
	"wallet":   {"wallet_public.pem"},
}

// The parts gen.sh prints must be what SigningContent builds, byte for byte.
func TestVectorContentIsSigningContent(t *testing.T) {
	for _, v := range signatureVectors {
		t.Run(v.name, func(t *testing.T) {
			got := wallet.SigningContent(v.method, v.uri, v.client, v.time, []byte(v.body))
			if want := v.content(t); !bytes.Equal(got, want) {
				t.Errorf("SigningContent =\n%q\nopenssl signed\n%q", got, want)
			}
		})
	}
}

// RSASSA-PKCS1-v1_5 is deterministic: Sign must give openssl's exact
// signature, URL-encoded, whatever shape the key was read from.
func TestSignReproducesOpenSSL(t *testing.T) {
	for _, v := range signatureVectors {
		for _, shape := range privateKeyShapes[v.signer] {
			t.Run(v.name+"/"+shape, func(t *testing.T) {
				got, err := wallet.Sign(privateKey(t, shape), v.content(t))
				if err != nil {
					t.Fatal(err)
				}
				if want := v.sigURL(t); got != want {
					t.Errorf("Sign =\n%s\nopenssl (URL-encoded):\n%s", got, want)
				}
				raw, err := url.QueryUnescape(got)
				if err != nil {
					t.Fatal(err)
				}
				if want := v.sig(t); raw != want {
					t.Errorf("Sign, unescaped =\n%s\nopenssl:\n%s", raw, want)
				}
			})
		}
	}
}

// Verify accepts openssl's signatures, URL-encoded or not, with the public
// key in any shape and with the public half of the private key.
func TestVerifyAcceptsOpenSSL(t *testing.T) {
	for _, v := range signatureVectors {
		pubs := map[string]*rsa.PublicKey{}
		for _, shape := range publicKeyShapes[v.signer] {
			pubs[shape] = publicKey(t, shape)
		}
		for _, shape := range privateKeyShapes[v.signer] {
			pubs["public half of "+shape] = &privateKey(t, shape).PublicKey
		}
		for keyName, pub := range pubs {
			for form, sig := range map[string]string{"base64": v.sig(t), "url-encoded": v.sigURL(t)} {
				t.Run(v.name+"/"+keyName+"/"+form, func(t *testing.T) {
					if err := wallet.Verify(pub, v.content(t), sig); err != nil {
						t.Errorf("Verify: %v", err)
					}
				})
			}
		}
	}
}

func TestVerifyRejects(t *testing.T) {
	apply := signatureVectors[0]
	content := apply.content(t)
	sig, sigURL := apply.sig(t), apply.sigURL(t)
	merchant := publicKey(t, "merchant_public.pem")
	walletPub := publicKey(t, "wallet_public.pem")
	raw, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(raw)
	flipped[len(flipped)/2] ^= 0x01

	tests := []struct {
		name    string
		pub     *rsa.PublicKey
		content []byte
		sig     string
	}{
		{"tampered body", merchant, bytes.Replace(content, []byte(`"abc"`), []byte(`"abd"`), 1), sig},
		{"token inserted after signing", merchant, bytes.Replace(content, []byte(`{`), []byte(`{"accessToken":"at",`), 1), sigURL},
		{"body with a trailing newline", merchant, append(bytes.Clone(content), '\n'), sig},
		{"tampered time", merchant, bytes.Replace(content, []byte("12:12:12.000"), []byte("12:12:13.000"), 1), sig},
		{"tampered client id", merchant, bytes.Replace(content, []byte("TEST_CLIENT"), []byte("TEST_CLIENU"), 1), sig},
		{"path prefix not signed", merchant, wallet.SigningContent("POST", "/openapi/v1/users/inquiryUserInfo", "TEST_5X00000000000000", "2024-02-29T23:59:59.999-03:30", []byte(`{"accessToken":"at_123","extendInfo":"{\"k\":\"v\"}"}`)), signatureVectors[1].sig(t)},
		{"signature of another vector", merchant, content, signatureVectors[2].sig(t)},
		{"wrong key", walletPub, content, sig},
		{"wrong key, url-encoded", walletPub, content, sigURL},
		{"empty signature", merchant, content, ""},
		{"garbage", merchant, content, "not a signature!"},
		{"bad percent escape", merchant, content, "%zz" + sig},
		{"double url-encoded", merchant, content, url.QueryEscape(sigURL)},
		{"form-decoded: + became space", merchant, content, strings.ReplaceAll(sig, "+", " ")},
		{"truncated", merchant, content, sig[:len(sig)-8]},
		{"one bit flipped", merchant, content, base64.StdEncoding.EncodeToString(flipped)},
		{"base64 of zeros", merchant, content, base64.StdEncoding.EncodeToString(make([]byte, 256))},
		{"url-safe base64 alphabet", merchant, content, base64.URLEncoding.EncodeToString(raw)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.sig == sig {
				// This vector's signature has no + or / to mangle: the case
				// would be the valid signature itself, so it does not apply.
				return
			}
			err := wallet.Verify(tt.pub, tt.content, tt.sig)
			if !errors.Is(err, wallet.ErrBadSignature) {
				t.Errorf("Verify = %v, want ErrBadSignature", err)
			}
		})
	}
}
