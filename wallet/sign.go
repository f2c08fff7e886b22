package wallet

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Header names of the wallet protocol.
const (
	HeaderClientID     = "Client-Id"
	HeaderRequestTime  = "Request-Time"
	HeaderResponseTime = "Response-Time"
	HeaderSignature    = "Signature"
	HeaderKeyVersion   = "Key-Version"
)

// ErrBadSignature means a signature did not verify or could not be parsed.
var ErrBadSignature = errors.New("wallet: invalid signature")

// SigningContent is what both sides sign:
// "POST <uri>\n<client-id>.<time>.<body>", the uri being the path the
// wallet sees (with any base-URL prefix and the query string).
func SigningContent(method, uri, clientID, timestamp string, body []byte) []byte {
	b := make([]byte, 0, len(method)+len(uri)+len(clientID)+len(timestamp)+len(body)+4)
	b = append(b, method...)
	b = append(b, ' ')
	b = append(b, uri...)
	b = append(b, '\n')
	b = append(b, clientID...)
	b = append(b, '.')
	b = append(b, timestamp...)
	b = append(b, '.')
	b = append(b, body...)
	return b
}

// Sign returns RSASSA-PKCS1-v1_5/SHA-256 over content, base64 then
// URL-encoded, as it goes in the Signature header's signature= value.
func Sign(key *rsa.PrivateKey, content []byte) (string, error) {
	sum := sha256.Sum256(content)
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	return url.QueryEscape(base64.StdEncoding.EncodeToString(sig)), nil
}

// Verify checks a signature= value (URL-encoded or not) over content.
func Verify(pub *rsa.PublicKey, content []byte, signature string) error {
	raw := signature
	if strings.Contains(raw, "%") {
		u, err := url.QueryUnescape(raw)
		if err != nil {
			return ErrBadSignature
		}
		raw = u
	}
	sig, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		return ErrBadSignature
	}
	sum := sha256.Sum256(content)
	if rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig) != nil {
		return ErrBadSignature
	}
	return nil
}

// FormatSignatureHeader builds "algorithm=RSA256,keyVersion=<v>,signature=<s>".
func FormatSignatureHeader(keyVersion, signature string) string {
	return "algorithm=RSA256,keyVersion=" + keyVersion + ",signature=" + signature
}

// SignatureHeader is a parsed Signature header.
type SignatureHeader struct {
	Algorithm  string
	KeyVersion string
	Signature  string
}

// ParseSignatureHeader splits a Signature header. It requires algorithm
// RSA256 and a signature value.
func ParseSignatureHeader(h string) (SignatureHeader, error) {
	var s SignatureHeader
	for _, part := range strings.Split(h, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return s, ErrBadSignature
		}
		switch k {
		case "algorithm":
			s.Algorithm = v
		case "keyVersion":
			s.KeyVersion = v
		case "signature":
			s.Signature = v
		}
	}
	if s.Algorithm != "RSA256" || s.Signature == "" {
		return s, ErrBadSignature
	}
	return s, nil
}

// FormatTime renders t as the proxy sends Request-Time: ISO 8601 with
// milliseconds and offset.
func FormatTime(t time.Time) string {
	return t.Format("2006-01-02T15:04:05.000Z07:00")
}

// ParseTime reads a Request-Time or Response-Time in any form a verifier
// must accept: ISO 8601 with offset, Unix milliseconds, Unix nanoseconds.
func ParseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("empty time")
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		switch {
		case n <= 0:
			return time.Time{}, errors.New("time not positive")
		case n < 1e15: // milliseconds until the year 33658
			return time.UnixMilli(n), nil
		default:
			return time.Unix(0, n), nil
		}
	}
	t, err := ParseDateTime(s)
	if err != nil {
		return time.Time{}, err
	}
	return t, nil
}

// ParseDateTime reads an ISO 8601 date-time with offset, as the wallet sends
// accessTokenExpiryTime (RFC 3339, with or without fractional seconds).
func ParseDateTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, errors.New("not an ISO 8601 date-time with offset")
	}
	return t, nil
}
