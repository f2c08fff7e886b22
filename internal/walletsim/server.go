// Package walletsim is a strict, in-memory wallet that speaks the wallet
// OpenAPI protocol (docs/wallet-protocol.md) for the quick start, the demo,
// the tests and the benchmarks.
//
// A Server is an http.Handler: tests run it in process with httptest,
// cmd/walletsim runs it as a process. It serves, under Config.PathPrefix:
//
//	POST /v1/authorizations/applyToken
//	POST /v2/authorizations/applyToken
//	POST /v1/users/inquiryUserInfo
//
// verifying every request signature and signing every answer, and, always at
// /sim/ (and also under the prefix), unsigned endpoints for tests and demos:
//
//	POST   /sim/authcodes  {"customerId","accessTtl","refreshTtl","codeTtl"} -> {"authCode"}
//	POST   /sim/seed       {"count","accessTtl","refreshTtl","prefix","start","refreshedAccessTtl"} -> NDJSON token pairs
//	POST   /sim/faults     one fault rule (see Fault);  GET lists them; DELETE clears them
//	GET    /sim/stats      counters (see Stats);        DELETE zeroes them
//	GET    /sim/ledger     the exactly-once ledger (see Ledger)
//	GET    /sim/publickey  the wallet public key, PEM
//
// State lives in memory and is safe for heavy concurrent use. Tokens are
// never logged.
package walletsim

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// Wallet paths, relative to Config.PathPrefix.
const (
	PathApplyTokenV1    = "/v1/authorizations/applyToken"
	PathApplyTokenV2    = "/v2/authorizations/applyToken"
	PathInquiryUserInfo = "/v1/users/inquiryUserInfo"
)

const (
	// MaxBodyBytes bounds every request body; larger ones get 413.
	MaxBodyBytes = 1 << 20
	// MaxClockSkew is how far Request-Time may be from the simulator's clock.
	MaxClockSkew = 10 * time.Minute
	// ResponseKeyVersion is the keyVersion of every response Signature.
	ResponseKeyVersion = "1"
)

// Defaults for the zero fields of Config.
const (
	DefaultAccessTTL  = 2 * time.Hour
	DefaultRefreshTTL = 720 * time.Hour
	DefaultCodeTTL    = 5 * time.Minute
)

// Grant types of applyToken.
const (
	GrantAuthorizationCode = "AUTHORIZATION_CODE"
	GrantRefreshToken      = "REFRESH_TOKEN"
)

// Config is what a Server needs. Only ClientPublicKey is required.
type Config struct {
	// ClientPublicKey verifies every request signature (the merchant's key).
	ClientPublicKey *rsa.PublicKey
	// PrivateKey signs every response. Nil: New generates an RSA-2048 key.
	PrivateKey *rsa.PrivateKey
	// ClientID, when set, is the only Client-Id accepted (others: INVALID_CLIENT).
	ClientID string
	// KeyVersion, when set, is the only request keyVersion accepted (others: KEY_NOT_FOUND).
	KeyVersion string
	// AccessTTL, RefreshTTL and CodeTTL are the default lifetimes of access
	// tokens, refresh tokens and authorization codes (zero: the defaults above).
	// /sim/authcodes and /sim/seed may set other lifetimes per token chain.
	AccessTTL, RefreshTTL, CodeTTL time.Duration
	// PathPrefix is put before every wallet path ("/api" serves
	// /api/v1/authorizations/applyToken). Empty: none.
	PathPrefix string
	// Now is the clock for token lifetimes, Request-Time checks,
	// Response-Time and rate-limit faults (default time.Now). Fault latency
	// sleeps in real time.
	Now func() time.Time
	// Logger receives one debug line per wallet call and never a token
	// (default: discard).
	Logger *slog.Logger
}

// ConfigError names the Config field New refused.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string { return "walletsim: " + e.Field + ": " + e.Reason }

// Server is the simulated wallet. Build it with New; it is safe for
// concurrent use.
type Server struct {
	cfg    Config
	key    *rsa.PrivateKey
	pubPEM []byte
	prefix string
	now    func() time.Time
	log    *slog.Logger

	tokens tokenStore
	faults faultSet
	stats  statsRecorder
	ledger ledger
}

// New checks cfg and returns a Server with empty state. It generates the
// wallet key when cfg.PrivateKey is nil (read it back with PublicKeyPEM).
// Errors are *ConfigError.
func New(cfg Config) (*Server, error) {
	if cfg.ClientPublicKey == nil {
		return nil, &ConfigError{"ClientPublicKey", "required"}
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"AccessTTL", &cfg.AccessTTL, DefaultAccessTTL},
		{"RefreshTTL", &cfg.RefreshTTL, DefaultRefreshTTL},
		{"CodeTTL", &cfg.CodeTTL, DefaultCodeTTL},
	} {
		if *d.v < 0 {
			return nil, &ConfigError{d.name, "must be positive"}
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if cfg.KeyVersion != "" {
		if err := wallet.ValidKeyVersion(cfg.KeyVersion); err != nil {
			return nil, &ConfigError{"KeyVersion", err.Error()}
		}
	}
	if strings.ContainsAny(cfg.ClientID, "\r\n\x00") {
		return nil, &ConfigError{"ClientID", "must not contain control characters"}
	}
	prefix, err := cleanPrefix(cfg.PathPrefix)
	if err != nil {
		return nil, &ConfigError{"PathPrefix", err.Error()}
	}
	key := cfg.PrivateKey
	if key == nil {
		if key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			return nil, &ConfigError{"PrivateKey", "generate: " + err.Error()}
		}
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, &ConfigError{"PrivateKey", "marshal public half: " + err.Error()}
	}
	s := &Server{
		cfg:    cfg,
		key:    key,
		pubPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		prefix: prefix,
		now:    cfg.Now,
		log:    cfg.Logger,
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s.tokens.init()
	s.stats.reset()
	return s, nil
}

func cleanPrefix(p string) (string, error) {
	p = strings.TrimRight(p, "/")
	if p == "" {
		return "", nil
	}
	if !strings.HasPrefix(p, "/") {
		return "", errors.New("must start with /")
	}
	if strings.ContainsAny(p, "?#% \t\r\n") || strings.Contains(p, "//") || strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") {
		return "", errors.New("must be a plain path such as /api")
	}
	if p == "/sim" || strings.HasPrefix(p, "/sim/") {
		return "", errors.New("must not be under /sim")
	}
	return p, nil
}

// PublicKeyPEM is the wallet's public key (PKIX, PEM "PUBLIC KEY"), what a
// client needs to verify responses.
func (s *Server) PublicKeyPEM() []byte { return append([]byte(nil), s.pubPEM...) }

// PathPrefix is the prefix the wallet paths are served under ("" or "/api").
func (s *Server) PathPrefix() string { return s.prefix }

func isWalletPath(p string) bool {
	switch p {
	case PathApplyTokenV1, PathApplyTokenV2, PathInquiryUserInfo:
		return true
	}
	return false
}

func isApplyToken(p string) bool { return p == PathApplyTokenV1 || p == PathApplyTokenV2 }

// ServeHTTP routes /sim/ to the test endpoints and everything else to the wallet.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if rest, ok := strings.CutPrefix(p, "/sim/"); ok {
		s.serveSim(w, r, rest)
		return
	}
	if s.prefix != "" {
		if rest, ok := strings.CutPrefix(p, s.prefix+"/sim/"); ok {
			s.serveSim(w, r, rest)
			return
		}
	}
	rel, ok := strings.CutPrefix(p, s.prefix)
	if !ok || !isWalletPath(rel) {
		s.reply(w, signedURI(r), r.Header.Get(wallet.HeaderClientID),
			answer{http.StatusNotFound, wallet.StatusFailed, wallet.CodeInvalidAPI, "no such API"}, false)
		return
	}
	s.serveWallet(w, r, rel)
}

// answer is a wallet envelope answer before it is rendered and signed.
type answer struct {
	httpStatus int
	status     string
	code       string
	message    string
}

// bodyAnswer is an answer with its rendered body (an S answer carries
// more than the envelope).
type bodyAnswer struct {
	answer
	body []byte
}

func fail(code, message string) answer {
	return answer{http.StatusOK, wallet.StatusFailed, code, message}
}

func (a answer) render() []byte { return wallet.Envelope(a.status, a.code, a.message) }

// signedURI is the request-target as the client sent and signed it: the
// full path (prefix included) and the query string.
func signedURI(r *http.Request) string {
	if strings.HasPrefix(r.RequestURI, "/") {
		return r.RequestURI
	}
	u := r.URL.EscapedPath()
	if r.URL.RawQuery != "" {
		u += "?" + r.URL.RawQuery
	}
	return u
}

// serveWallet handles one wallet call: read, count, apply a fault rule,
// verify, process, answer signed.
func (s *Server) serveWallet(w http.ResponseWriter, r *http.Request, rel string) {
	uri := signedURI(r)
	clientID := r.Header.Get(wallet.HeaderClientID)
	if r.Method != http.MethodPost {
		s.stats.call(rel, "-")
		w.Header().Set("Allow", http.MethodPost)
		s.reply(w, uri, clientID, answer{http.StatusMethodNotAllowed, wallet.StatusFailed,
			wallet.CodeMethodNotAllowed, "wallet APIs are POST only"}, false)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.stats.call(rel, "-")
			s.reply(w, uri, clientID, answer{http.StatusRequestEntityTooLarge, wallet.StatusFailed,
				wallet.CodeParamIllegal, fmt.Sprintf("body over %d bytes", MaxBodyBytes)}, false)
		}
		return // the client is gone: nobody to answer
	}
	fields, parseErr := parseObject(body)
	grant := grantOf(rel, fields)
	s.stats.call(rel, grant)

	rule := s.faults.match(rel, grant)
	if rule != nil {
		s.stats.faultMatched()
		if s.applyFaultBefore(w, r, rule, uri, clientID) {
			return
		}
	}

	a := s.process(r, rel, uri, clientID, body, fields, parseErr)
	s.log.Debug("wallet call", "path", rel, "grantType", grant, "resultStatus", a.status, "resultCode", a.code, "fault", rule != nil)

	// The ledger: a refresh token looked up answers S or a refresh-token F.
	var presented string
	if grant == GrantRefreshToken && (a.code == wallet.CodeSuccess || wallet.IsRefreshTokenRejection(a.code)) {
		presented, _ = fields.str("refreshToken", maxToken)
		s.ledger.presented(presented, s.tokens.customerOfRefresh(presented), a.code)
	}
	if rule != nil && rule.DropAfterProcessing {
		cutConnection(w, false)
		if presented != "" {
			s.ledger.answered(presented, a.code, false)
		}
		return
	}
	corrupt := rule != nil && hit(rule.BadSignatureRate)
	s.replyBody(w, uri, clientID, a.httpStatus, a.body, corrupt)
	if presented != "" {
		s.ledger.answered(presented, a.code, !corrupt && r.Context().Err() == nil)
	}
}

// grantOf is the stats and fault-matching key of a call: the grantType of
// an applyToken call when it is one of the two known ones, "other" for any
// other grantType, "-" when there is none or the call is not applyToken.
func grantOf(rel string, fields fieldMap) string {
	if !isApplyToken(rel) || fields == nil {
		return "-"
	}
	g, err := fields.str("grantType", 64)
	switch {
	case err != nil || g == "":
		return "-"
	case g == GrantAuthorizationCode || g == GrantRefreshToken:
		return g
	}
	return "other"
}

// process runs the protocol checks and the API itself.
func (s *Server) process(r *http.Request, rel, uri, clientID string, body []byte, fields fieldMap, parseErr error) bodyAnswer {
	if a, ok := s.checkRequest(r, uri, clientID, body, parseErr); !ok {
		return bodyAnswer{a, a.render()}
	}
	switch rel {
	case PathInquiryUserInfo:
		return s.inquiryUserInfo(fields)
	default:
		return s.applyToken(rel, fields)
	}
}

func (s *Server) reply(w http.ResponseWriter, uri, clientID string, a answer, corrupt bool) {
	s.replyBody(w, uri, clientID, a.httpStatus, a.render(), corrupt)
}

// replyBody signs body for uri and clientID with the wallet key and writes
// it. corrupt sends a signature over other content (a badSignature fault).
func (s *Server) replyBody(w http.ResponseWriter, uri, clientID string, status int, body []byte, corrupt bool) {
	rt := wallet.FormatTime(s.now())
	content := wallet.SigningContent(http.MethodPost, uri, clientID, rt, body)
	if corrupt {
		content = append(content, " (corrupted by walletsim)"...)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=UTF-8")
	h.Set(wallet.HeaderResponseTime, rt)
	// The real wallet names the client it signed for, and the wallet's SDKs
	// verify the answer with it.
	if clientID != "" {
		h.Set(wallet.HeaderClientID, clientID)
	}
	if sig, err := wallet.Sign(s.key, content); err == nil {
		h.Set(wallet.HeaderSignature, wallet.FormatSignatureHeader(ResponseKeyVersion, sig))
	} else {
		s.log.Error("sign response", "err", err)
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
