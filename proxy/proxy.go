// Package proxy is the app-facing HTTP handler: it exchanges authorization
// codes and keeps the tokens out of the app's hands, forwards the app's
// wallet calls with the customer's access token written into the body,
// signed, and serves the token administration API under /tokenproxy/.
package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/bodyread"
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
	// Handles returns the app's handles of a customer and the expiry
	// times, without calling the wallet.
	Handles(ctx context.Context, customerID string) (refresher.Handles, error)
	// List returns one page of the customers in a state
	// (refresher.ErrBadList for a bad state, limit or cursor).
	List(ctx context.Context, state refresher.State, cursor string, limit int) (refresher.ListPage, error)
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
	// PathPrefix is the wallet base URL's path prefix ("" or "/ams/api"):
	// an app may send paths with or without it.
	PathPrefix string
	// MaxBodyBytes refuses larger request bodies with 413.
	MaxBodyBytes int64
	// Limiter bounds calls in flight and the bytes of their bodies; nil
	// limits nothing.
	Limiter *Limiter
	// Signer, when set, signs every answer to the app (see AppSigner).
	Signer *AppSigner
	// Handles gives the app handles instead of no token fields
	// (TOKENPROXY_APP_TOKENS=handles): see handles.go.
	Handles bool
	Metrics *Metrics
	Logger  *slog.Logger
}

// Handler serves the app-facing API. Safe for concurrent use.
type Handler struct {
	cfg        Config
	log        *slog.Logger
	tokenPaths map[string]bool
	prefix     string
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
	h := &Handler{cfg: cfg, log: cfg.Logger, tokenPaths: make(map[string]bool),
		prefix: strings.TrimRight(cfg.PathPrefix, "/")}
	for _, p := range cfg.TokenPaths {
		h.tokenPaths[p] = true
	}
	return h
}

const adminPrefix = "/tokenproxy/"

// call is one app request as the handler sees it once its target is read.
type call struct {
	r      *http.Request
	target target
	// pass holds the tracing headers that pass on to the wallet (nil: none).
	pass   http.Header
	budget callBudget
	// out is the answer's writer, kept here so that a call is one allocation.
	out statusWriter
}

// ServeHTTP admits a request within the limits, reads its target once, and
// routes it: the admin API under /tokenproxy/, token exchanges on the token
// paths, every other path a wallet API call.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if h.cfg.Signer != nil {
		sw := &signingWriter{ResponseWriter: w}
		defer sw.flush(h.cfg.Signer, r)
		w = sw
	}
	c := &call{r: r, pass: passThrough(r.Header), budget: callBudget{l: h.cfg.Limiter}, out: statusWriter{ResponseWriter: w}}
	rw := &c.out
	route, err := h.admit(rw, c)
	if err != nil {
		pe := classify(err)
		level := slog.LevelInfo
		if pe.status >= 500 {
			level = slog.LevelWarn
		}
		attrs := append([]any{"route", route, "path", c.target.path, "status", pe.status, "code", pe.code, "err", err}, logIDs(c.pass)...)
		h.log.Log(r.Context(), level, "request refused", attrs...)
		writeEnvelope(rw, pe)
		// Read what the app is still sending (without keeping it, and
		// without holding a call slot), so that it gets this answer rather
		// than a reset connection mid-body.
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, h.cfg.MaxBodyBytes+1))
	}
	h.cfg.Metrics.observe(route, rw.status(), time.Since(start))
}

// admit serves the call within a call slot and its memory budget, both
// given back when it returns.
func (h *Handler) admit(w http.ResponseWriter, c *call) (string, error) {
	switch {
	case c.r.Method == http.MethodConnect:
		return routeAPI, failF(http.StatusMethodNotAllowed, wallet.CodeMethodNotAllowed, "CONNECT is not allowed")
	case !h.cfg.Limiter.admit():
		return routeAPI, overLimit("too many calls in flight")
	}
	defer h.cfg.Limiter.done()
	defer c.budget.release()
	return h.route(w, c)
}

func (h *Handler) route(w http.ResponseWriter, c *call) (string, error) {
	t, err := parseTarget(c.r, h.prefix)
	if err != nil {
		return routeAPI, err
	}
	c.target = t
	if t.admin {
		return routeAdmin, h.serveAdmin(w, c)
	}
	if c.r.Method != http.MethodPost {
		return routeAPI, failF(http.StatusMethodNotAllowed, wallet.CodeMethodNotAllowed, "wallet APIs take POST only")
	}
	if h.tokenPaths[t.path] {
		return routeExchange, h.serveExchange(w, c)
	}
	return routeAPI, h.serveAPI(w, c)
}

// serveAPI is the hot path: lookup -> inject -> sign and forward -> verify
// -> answer, with one transparent refresh-and-retry when the wallet
// rejects the access token.
func (h *Handler) serveAPI(w http.ResponseWriter, c *call) error {
	customerID, hasCustomer, err := h.customer(c.r)
	if err != nil {
		return err
	}
	obj, err := h.readObject(w, c)
	if err != nil {
		return err
	}
	for _, k := range []string{"authCode", "grantType"} {
		if _, ok := obj.get(k); ok {
			return badRequest(k + " is only taken on a token path")
		}
	}
	field := h.field(c.target.path)
	var handle wallet.Secret
	if h.cfg.Handles {
		if hd, ok := handleAt(obj, field); ok {
			id, ok := handleCustomer(hd.Reveal())
			switch {
			case !ok:
				return unknownHandle()
			case hasCustomer && id != customerID:
				return badRequest("the customer header names another customer than the token handle")
			}
			customerID, hasCustomer, handle = id, true, hd
		}
	}
	obj = obj.withoutTokenFields()
	if !hasCustomer {
		obj = obj.without(field[0])
		resp, err := h.call(c, obj.marshal())
		if err != nil {
			return err
		}
		h.writeWalletResponse(w, c, resp, nil)
		return nil
	}

	tok, err := h.cfg.Tokens.Token(c.r.Context(), customerID)
	if err != nil {
		return err
	}
	if handle != "" && !sameHandle(tok.AccessHandle, handle) {
		return unknownHandle() // superseded by a new exchange
	}
	used := []wallet.Secret{tok.Value, tok.Refresh}
	resp, err := h.forward(c, obj, field, tok)
	if err != nil {
		return err
	}
	if wallet.IsAccessTokenRejection(resp.Result.ResultCode) && resp.Result.ResultStatus == wallet.StatusFailed {
		if tok, err = h.cfg.Tokens.Rejected(c.r.Context(), tok); err != nil {
			return err
		}
		used = append(used, tok.Value, tok.Refresh)
		if resp, err = h.forward(c, obj, field, tok); err != nil {
			return err
		}
	}
	h.writeWalletResponse(w, c, resp, formsOf(used...))
	return nil
}

// call signs and sends body to the wallet for the call's path and query,
// reading the answer within the call's budget.
func (h *Handler) call(c *call, body []byte) (*wallet.Response, error) {
	ctx := wallet.WithBudget(c.r.Context(), &c.budget)
	return h.cfg.Wallet.Call(ctx, c.target.path, c.target.query, body, c.pass)
}

func (h *Handler) forward(c *call, obj object, field []string, tok refresher.Token) (*wallet.Response, error) {
	withToken, err := obj.with(field, tok.Value.Reveal())
	if err != nil {
		return nil, err
	}
	return h.call(c, withToken.marshal())
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

// readObject reads the body within the size limit and the call's memory
// budget (requestCopies of every byte buffered, granted before it is
// allocated), and parses it. A body declared larger than the limit is
// refused before it is read; one the budget cannot hold is 503 at once.
func (h *Handler) readObject(w http.ResponseWriter, c *call) (object, error) {
	body, err := bodyread.Read(http.MaxBytesReader(w, c.r.Body, h.cfg.MaxBodyBytes),
		c.r.ContentLength, h.cfg.MaxBodyBytes, func(n int64) bool { return c.budget.take(n * requestCopies) })
	switch {
	case err == nil:
		return parseObject(body)
	case errors.Is(err, bodyread.ErrTooLarge), isMaxBytes(err):
		return nil, failF(http.StatusRequestEntityTooLarge, wallet.CodeParamIllegal,
			fmt.Sprintf("body over %d bytes", h.cfg.MaxBodyBytes))
	case errors.Is(err, bodyread.ErrOverBudget):
		return nil, overLimit("request bodies in flight over the memory budget")
	default:
		return nil, badRequest("could not read the body")
	}
}

func isMaxBytes(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}

// writeWalletResponse returns the wallet's answer: status, body,
// Content-Type, Response-Time and Signature. No token reaches the app: the
// answer is scrubbed of every form of the tokens the call used (forms) and
// of every token field; when anything was redacted the signature headers,
// which no longer match, are dropped and tokenproxy_redactions_total counts
// it.
//
// handles, on an exchange answer of TOKENPROXY_APP_TOKENS=handles, are the
// app's new handles, added after the scrub: a wallet answer itself never
// carries a token field with a value, a handle-shaped one included.
func (h *Handler) writeWalletResponse(w http.ResponseWriter, c *call, resp *wallet.Response, forms secretForms, handles ...wallet.Secret) {
	hdr := w.Header()
	for _, k := range answerHeaders {
		if vs := resp.Header[k]; len(vs) > 0 && vs[0] != "" {
			hdr[k] = vs[:1:1] // the first value, as Get reads it; not copied
		}
	}
	body, hit := scrub(resp.Body, hdr, forms)
	if len(handles) == 2 {
		if obj, err := parseObject(body); err == nil { // scrub keeps a JSON object one
			body = obj.withHandles(handles[0], handles[1]).marshal()
		}
	}
	if hit {
		hdr.Del(wallet.HeaderSignature)
		hdr.Del(wallet.HeaderResponseTime)
		h.cfg.Metrics.redactions.Inc()
		h.log.Warn("a token in the wallet's answer was redacted", append([]any{"path", c.target.path}, logIDs(c.pass)...)...)
	}
	if hdr.Get("Content-Type") == "" {
		hdr.Set("Content-Type", "application/json")
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
}

// answerHeaders are the wallet's headers an answer to the app carries, in
// their canonical form.
var answerHeaders = []string{"Content-Type", wallet.HeaderClientID, wallet.HeaderResponseTime, wallet.HeaderSignature}

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
