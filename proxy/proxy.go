// Package proxy is the app-facing HTTP handler: it exchanges authorization
// codes and keeps the tokens out of the app's hands, forwards the app's
// wallet calls with the customer's access token written into the body,
// signed, and serves the token administration API under /tokenproxy/.
package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/tokenproxy/tokenproxy/refresher"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// Tokens is the proxy's source of access tokens and keeper of exchanged
// pairs. *refresher.Refresher implements it.
type Tokens interface {
	// Token returns a usable access token for the customer, waiting for a
	// refresh only when the stored one has expired.
	Token(ctx context.Context, customerID string) (refresher.Token, error)
	// Rejected is told that the wallet rejected tok, and returns the token
	// to retry with.
	Rejected(ctx context.Context, tok refresher.Token) (refresher.Token, error)
	// Install stores the pair of a successful exchange.
	Install(ctx context.Context, ex refresher.Exchange) error
	Status(ctx context.Context, customerID string) (refresher.Status, error)
	Forget(ctx context.Context, customerID string) error
	Refresh(ctx context.Context, customerID string) (refresher.Status, error)
}

// Wallet signs, sends and verifies one wallet call. *wallet.Client
// implements it.
type Wallet interface {
	Call(ctx context.Context, path, rawQuery string, body []byte, header http.Header) (*wallet.Response, error)
}

// Config configures a Handler.
type Config struct {
	Tokens Tokens
	Wallet Wallet
	// CustomerHeader names the customer a call is made for (X-Customer-Id).
	CustomerHeader string
	// Inject places the token per path (a dotted field, split); paths not
	// in it get a top-level accessToken.
	Inject map[string][]string
	// TokenPaths are handled as authorization-code exchanges.
	TokenPaths []string
	// MaxBodyBytes refuses larger request bodies with 413.
	MaxBodyBytes int64
	Metrics      *Metrics
	Logger       *slog.Logger
}

// Handler serves the app-facing API. Safe for concurrent use.
type Handler struct {
	cfg        Config
	log        *slog.Logger
	tokenPaths map[string]bool
}

// New returns a Handler.
func New(cfg Config) *Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.CustomerHeader == "" {
		cfg.CustomerHeader = "X-Customer-Id"
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	h := &Handler{cfg: cfg, log: cfg.Logger, tokenPaths: make(map[string]bool)}
	for _, p := range cfg.TokenPaths {
		h.tokenPaths[p] = true
	}
	return h
}

const adminPrefix = "/tokenproxy/"

// ServeHTTP routes a request: the admin API under /tokenproxy/, token
// exchanges on the token paths, every other path a wallet API call.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rw := &statusWriter{ResponseWriter: w}
	route := routeAPI
	var err error
	switch {
	case r.Method == http.MethodConnect:
		err = failF(http.StatusMethodNotAllowed, wallet.CodeMethodNotAllowed, "CONNECT is not allowed")
	case !strings.HasPrefix(r.RequestURI, "/"):
		err = badRequest("absolute-URI requests are not allowed")
	case strings.HasPrefix(r.URL.Path, adminPrefix):
		route = routeAdmin
		err = h.serveAdmin(rw, r)
	default:
		if err = checkPath(r); err != nil {
			break
		}
		if r.Method != http.MethodPost {
			err = failF(http.StatusMethodNotAllowed, wallet.CodeMethodNotAllowed, "wallet APIs take POST only")
			break
		}
		if h.tokenPaths[r.URL.Path] {
			route = routeExchange
			err = h.serveExchange(rw, r)
		} else {
			err = h.serveAPI(rw, r)
		}
	}
	if err != nil {
		pe := classify(err)
		level := slog.LevelInfo
		if pe.status >= 500 {
			level = slog.LevelWarn
		}
		h.log.Log(r.Context(), level, "request refused", "route", route, "path", r.URL.Path,
			"status", pe.status, "code", pe.code, "err", err)
		writeEnvelope(rw, pe)
	}
	h.cfg.Metrics.requests.WithLabelValues(route, fmt.Sprint(rw.status())).Inc()
	h.cfg.Metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
}

// checkPath refuses paths that could address anything but the wallet API
// they name.
func checkPath(r *http.Request) error {
	raw := r.URL.EscapedPath()
	if !strings.HasPrefix(raw, "/") || strings.Contains(r.URL.Path, "..") ||
		strings.Contains(strings.ToLower(raw), "%2f") || strings.Contains(r.URL.Path, "\\") {
		return badRequest("path not allowed")
	}
	return nil
}

// serveAPI is the hot path: lookup -> inject -> sign and forward -> verify
// -> answer, with one transparent refresh-and-retry when the wallet
// rejects the access token.
func (h *Handler) serveAPI(w http.ResponseWriter, r *http.Request) error {
	customerID, hasCustomer, err := h.customer(r)
	if err != nil {
		return err
	}
	obj, err := h.readObject(w, r)
	if err != nil {
		return err
	}
	field := h.field(r.URL.Path)
	obj = obj.without("accessToken", "refreshToken")
	if !hasCustomer {
		obj = obj.without(field[0])
		resp, err := h.cfg.Wallet.Call(r.Context(), r.URL.Path, r.URL.RawQuery, obj.marshal(), r.Header)
		if err != nil {
			return err
		}
		writeWalletResponse(w, resp, "")
		return nil
	}

	tok, err := h.cfg.Tokens.Token(r.Context(), customerID)
	if err != nil {
		return err
	}
	resp, err := h.forward(r, obj, field, tok)
	if err != nil {
		return err
	}
	if wallet.IsAccessTokenRejection(resp.Result.ResultCode) && resp.Result.ResultStatus == wallet.StatusFailed {
		if tok, err = h.cfg.Tokens.Rejected(r.Context(), tok); err != nil {
			return err
		}
		if resp, err = h.forward(r, obj, field, tok); err != nil {
			return err
		}
	}
	writeWalletResponse(w, resp, tok.Value)
	return nil
}

func (h *Handler) forward(r *http.Request, obj object, field []string, tok refresher.Token) (*wallet.Response, error) {
	withToken, err := obj.with(field, tok.Value.Reveal())
	if err != nil {
		return nil, err
	}
	return h.cfg.Wallet.Call(r.Context(), r.URL.Path, r.URL.RawQuery, withToken.marshal(), r.Header)
}

func (h *Handler) field(path string) []string {
	if f, ok := h.cfg.Inject[path]; ok {
		return f
	}
	return []string{"accessToken"}
}

// customer reads the customer header: absent is fine (a call that needs no
// token), present must be a valid customer id.
func (h *Handler) customer(r *http.Request) (string, bool, error) {
	vals := r.Header.Values(h.cfg.CustomerHeader)
	switch {
	case len(vals) == 0:
		return "", false, nil
	case len(vals) > 1:
		return "", false, badRequest("more than one " + h.cfg.CustomerHeader + " header")
	}
	if err := wallet.ValidCustomerID(vals[0]); err != nil {
		return "", false, badRequest("bad customer id: " + err.Error())
	}
	return vals[0], true, nil
}

// readObject reads the body within the size limit and parses it.
func (h *Handler) readObject(w http.ResponseWriter, r *http.Request) (object, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, failF(http.StatusRequestEntityTooLarge, wallet.CodeParamIllegal,
				fmt.Sprintf("body over %d bytes", h.cfg.MaxBodyBytes))
		}
		return nil, badRequest("could not read the body")
	}
	return parseObject(body)
}

// writeWalletResponse returns the wallet's answer as it came: status, body,
// Content-Type, Response-Time and Signature. Should the wallet ever echo the
// injected token, it is cut out (and the signature, no longer valid, dropped):
// a token never reaches the app.
func writeWalletResponse(w http.ResponseWriter, resp *wallet.Response, tok wallet.Secret) {
	body := resp.Body
	hdr := w.Header()
	for _, k := range []string{"Content-Type", wallet.HeaderResponseTime, wallet.HeaderSignature} {
		if v := resp.Header.Get(k); v != "" {
			hdr.Set(k, v)
		}
	}
	if raw := tok.Reveal(); raw != "" && bytes.Contains(body, []byte(raw)) {
		body = bytes.ReplaceAll(body, []byte(raw), []byte("[redacted]"))
		hdr.Del(wallet.HeaderSignature)
		hdr.Del(wallet.HeaderResponseTime)
	}
	if hdr.Get("Content-Type") == "" {
		hdr.Set("Content-Type", "application/json")
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
}

func writeEnvelope(w http.ResponseWriter, pe *proxyError) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(pe.status)
	_, _ = w.Write(wallet.Envelope(pe.result, pe.code, pe.message))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeEnvelope(w, failU(http.StatusInternalServerError, wallet.CodeUnknownException, "could not encode the answer"))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// statusWriter remembers the status written, for metrics.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}
