package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// sdkClient behaves as the wallet's official Go SDK
// (github.com/alipay/global-open-sdk-go, DefaultAlipayClient) does, written
// here from its public behaviour: it signs each request with its own
// merchant key over "POST <path>\n<clientId>.<reqTime>.<body>" (reqTime in
// Unix nanoseconds, signature URL-encoded base64, keyVersion before
// signature), sends Content-Type, Request-Time, Client-Id, Key-Version and
// Signature, and verifies EVERY answer with the answer's own Client-Id and
// Response-Time headers and its configured wallet public key (bare base64
// PKIX), over the request URL's path; it has no switch to skip that. Its
// applyToken answer type keeps accessToken and refreshToken, not
// customerId, and the app puts that accessToken into later requests.
type sdkClient struct {
	gatewayURL string
	clientID   string
	merchant   *rsa.PrivateKey // the SDK app's own key: tokenproxy ignores its signature
	walletKey  string          // bare base64 PKIX, as the SDK is configured
	http       *http.Client
}

// sdkAnswer is one answer the SDK accepted (its signature verified).
type sdkAnswer struct {
	status int
	body   []byte
	header http.Header
	fields map[string]any
}

func (a *sdkAnswer) code() string {
	r, _ := a.fields["result"].(map[string]any)
	s, _ := r["resultCode"].(string)
	return s
}

func (a *sdkAnswer) str(k string) string {
	s, _ := a.fields[k].(string)
	return s
}

var errSDKSignature = errors.New("sdk: check signature fail")

// execute is the SDK's Execute: sign, POST gatewayURL+path, verify.
func (c *sdkClient) execute(path string, param any) (*sdkAnswer, error) {
	return c.executeWith(path, param, nil)
}

// executeWith is execute with extra request headers (an app that adds
// X-Customer-Id around the SDK).
func (c *sdkClient) executeWith(path string, param any, extra map[string]string) (*sdkAnswer, error) {
	payload, err := json.Marshal(param)
	if err != nil {
		return nil, err
	}
	reqTime := strconv.FormatInt(time.Now().UnixNano(), 10)
	sig, err := sdkSign(c.merchant, "POST "+path+"\n"+c.clientID+"."+reqTime+"."+string(payload))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", c.gatewayURL+path, bytes.NewReader(payload))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json; charset=UTF-8")
	req.Header.Set("Request-Time", reqTime)
	req.Header.Set("Client-Id", c.clientID)
	req.Header.Set("Key-Version", "1")
	req.Header.Set("Signature", "algorithm=RSA256,keyVersion=1,signature="+sig)
	for k, v := range extra {
		req.Header.Set(k, v)
	}
	hc := c.http
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	a := &sdkAnswer{status: resp.StatusCode, body: body, header: resp.Header}
	if err := c.verify(req.URL.Path, resp.Header, body); err != nil {
		return a, err
	}
	if err := json.Unmarshal(body, &a.fields); err != nil {
		return a, fmt.Errorf("sdk: json.Unmarshal is fail: %w", err)
	}
	return a, nil
}

// verify is the SDK's checkRspSign: the answer's Client-Id and
// Response-Time, the part after "signature=" of its Signature header.
func (c *sdkClient) verify(path string, h http.Header, body []byte) error {
	signature := h.Get("Signature")
	if signature == "" {
		return fmt.Errorf("%w: empty signature", errSDKSignature)
	}
	parts := strings.Split(signature, "signature=")
	if len(parts) < 2 {
		return errSDKSignature
	}
	content := "POST " + path + "\n" + h.Get("Client-id") + "." + h.Get("response-time") + "." + string(body)
	raw, err := url.QueryUnescape(parts[1])
	if err != nil {
		return errSDKSignature
	}
	sig, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		return errSDKSignature
	}
	der, err := base64.StdEncoding.DecodeString(c.walletKey)
	if err != nil {
		return err
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(content))
	if rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, sum[:], sig) != nil {
		return errSDKSignature
	}
	return nil
}

func sdkSign(key *rsa.PrivateKey, content string) (string, error) {
	sum := sha256.Sum256([]byte(content))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return url.QueryEscape(base64.StdEncoding.EncodeToString(sig)), nil
}

// publicKeyBase64 returns a PEM public key file's key as bare base64.
func publicKeyBase64(pemBytes []byte) string {
	b, _ := pem.Decode(pemBytes)
	if b == nil {
		return ""
	}
	return base64.StdEncoding.EncodeToString(b.Bytes)
}

// newTestHandle forges a handle of the right shape for customerID, as an
// attacker who knows the format would.
func newTestHandle(customerID string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "tph_" + base64.RawURLEncoding.EncodeToString(append(b, customerID...))
}
