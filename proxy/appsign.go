package proxy

import (
	"bytes"
	"crypto/rsa"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// AppSigner signs every answer to the app in the wallet's own scheme, so
// that an app built on the wallet's SDK, which verifies every answer, can
// trust tokenproxy's answers as it trusted the wallet's: Client-Id,
// Response-Time and Signature (keyVersion 1) over
// "POST <path the app requested>\n<Client-Id>.<Response-Time>.<body>".
// The app configures the key's public half (`tokenproxy app-key`) as its
// wallet public key.
type AppSigner struct {
	Key      *rsa.PrivateKey
	ClientID string
	// Now is the clock of Response-Time (default time.Now).
	Now func() time.Time
}

// signingWriter holds an answer until it is complete, then signs it.
type signingWriter struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (s *signingWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
}

func (s *signingWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.body.Write(b)
}

// flush signs the held answer for the request and sends it. Were signing
// to fail (it cannot with a valid key), the answer goes out unsigned and
// the SDK refuses it, which is the safe side.
func (s *signingWriter) flush(a *AppSigner, r *http.Request) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	hdr := s.Header()
	rt := wallet.FormatTime(now())
	hdr.Del(wallet.HeaderSignature)
	if sig, err := wallet.Sign(a.Key, wallet.SigningContent(http.MethodPost, requestedPath(r), a.ClientID, rt, s.body.Bytes())); err == nil {
		hdr.Set(wallet.HeaderClientID, a.ClientID)
		hdr.Set(wallet.HeaderResponseTime, rt)
		hdr.Set(wallet.HeaderSignature, wallet.FormatSignatureHeader("1", sig))
	}
	s.ResponseWriter.WriteHeader(s.status)
	_, _ = s.ResponseWriter.Write(s.body.Bytes())
}

// requestedPath is the path the app requested, decoded as a client's URL
// library reports it (the SDK verifies over its request URL's Path),
// without the query.
func requestedPath(r *http.Request) string {
	raw, _, _ := strings.Cut(r.RequestURI, "?")
	if p, err := url.PathUnescape(raw); err == nil {
		return p
	}
	return raw
}
