package wallet

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Transport failures. A call that ends in one of these has an unknown
// outcome: the wallet may or may not have processed it.
var (
	// ErrTimeout: the wallet did not answer within the call's deadline.
	ErrTimeout = errors.New("wallet: timed out")
	// ErrUnavailable: connection refused or reset, a body that is not a JSON
	// object (an HTML 5xx from a gateway), or a body over the size limit.
	ErrUnavailable = errors.New("wallet: unavailable")
)

// ErrMalformed: an S answer that lacks what it must carry.
var ErrMalformed = errors.New("wallet: malformed success answer")

// Client signs and sends requests to one wallet base URL. It never follows
// redirects and never dials anything but BaseURL's host. Safe for concurrent
// use once built.
type Client struct {
	// BaseURL is scheme, host and an optional path prefix (/api, /openapi).
	BaseURL *url.URL
	// ClientID is sent as Client-Id and signed.
	ClientID string
	// Keys yields the merchant signing key for each request.
	Keys KeySource
	// WalletKey, when set, must verify every JSON response.
	WalletKey *rsa.PublicKey
	// HTTP is the client used; nil means a default that does not follow redirects.
	HTTP *http.Client
	// Timeout bounds one call (default 10s); the caller's ctx may end it sooner.
	Timeout time.Duration
	// MaxResponseBytes refuses larger bodies with ErrUnavailable (default 8 MiB).
	MaxResponseBytes int64
	// Now is the clock for Request-Time (default time.Now).
	Now func() time.Time
	// Metrics, when set, counts every call.
	Metrics *Metrics
}

// maxResponseHeaderBytes bounds the headers of one wallet answer.
const maxResponseHeaderBytes = 64 << 10

// Keep-alive pool of NewHTTPClient. Go's default keeps 2 idle connections
// per host: under steady load every call beyond two in flight would open a
// connection (a TLS handshake to an HTTPS wallet) and close it again.
const (
	// maxIdlePerHost is above the calls a sidecar has in flight at once
	// (TOKENPROXY_MAX_INFLIGHT is derived from the memory limit, 256 at
	// the default).
	maxIdlePerHost = 256
	// idleConnTimeout closes a connection left unused this long: below
	// the 60 s idle timeout common in front of HTTPS APIs (AWS ALB's
	// default), so that this side closes an idle connection first and no
	// call is sent into one the other side is closing.
	idleConnTimeout = 55 * time.Second
)

// NewHTTPClient returns an http.Client for the wallet: no redirects, no
// cookie jar, a keep-alive pool sized so that steady load opens no new
// connection, and HTTP/2 when the wallet offers it (ALPN), which carries
// every concurrent call over one connection. The wallet's certificate is
// checked against the system roots; SSL_CERT_FILE / SSL_CERT_DIR name
// other ones (a private CA, a test wallet's certificate).
func NewHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 2 * maxIdlePerHost
	tr.MaxIdleConnsPerHost = maxIdlePerHost
	tr.IdleConnTimeout = idleConnTimeout
	tr.ForceAttemptHTTP2 = true
	tr.ResponseHeaderTimeout = 0 // the call's context bounds it
	// Go's default lets each answer hold 10 MB of headers, outside the
	// memory budget of bodies: every call in flight could hold that much.
	// The wallet's headers are a few hundred bytes.
	tr.MaxResponseHeaderBytes = maxResponseHeaderBytes
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// Response is a wallet answer that is a JSON object.
type Response struct {
	StatusCode int
	// Header holds the headers worth returning to the app:
	// Content-Type, Client-Id, Response-Time, Signature.
	Header http.Header
	Body   []byte
	// Result is the body's result object (zero when it has none).
	Result Result
}

// URI is the path the wallet sees for path+query: the base URL's prefix,
// the path, and the raw query if any. It is what gets signed.
func (c *Client) URI(path, rawQuery string) string {
	uri := strings.TrimRight(c.BaseURL.EscapedPath(), "/") + path
	if rawQuery != "" {
		uri += "?" + rawQuery
	}
	return uri
}

// Call signs body for path (and rawQuery) and POSTs it. It returns the
// answer when the wallet answered with a JSON object, whatever the HTTP
// status and result; otherwise an error wrapping ErrTimeout, ErrUnavailable
// or ErrBadSignature. header adds pass-through headers (traceparent,
// X-Request-Id); protocol headers in it are ignored.
func (c *Client) Call(ctx context.Context, path, rawQuery string, body []byte, header http.Header) (*Response, error) {
	start := time.Now()
	resp, err := c.call(ctx, path, rawQuery, body, header)
	switch {
	case err == nil:
		c.Metrics.observe(path, true, resp.StatusCode, resp.Result.ResultStatus, resp.Result.ResultCode, time.Since(start))
	case errors.Is(err, ErrTimeout):
		c.Metrics.observe(path, false, 0, StatusUnknown, CodeWalletTimeout, time.Since(start))
	case errors.Is(err, ErrBadSignature):
		c.Metrics.observe(path, false, 0, StatusUnknown, CodeInvalidWalletSignature, time.Since(start))
	case errors.Is(err, ErrUnavailable):
		c.Metrics.observe(path, false, 0, StatusUnknown, CodeWalletUnavailable, time.Since(start))
	}
	return resp, err
}

func (c *Client) call(ctx context.Context, path, rawQuery string, body []byte, header http.Header) (*Response, error) {
	if !strings.HasPrefix(path, "/") {
		// Concatenated to the base URL, anything else could name another host.
		return nil, errors.New("wallet path must begin with /")
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	// A caller's deadline that comes first already bounds the call: a
	// timer and a context of its own per call would change nothing.
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > timeout {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}

	sk, err := c.Keys.SigningKey()
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	uri := c.URI(path, rawQuery)
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	reqTime := FormatTime(now())
	sig, err := Sign(sk.Key, SigningContent(http.MethodPost, uri, c.ClientID, reqTime, body))
	if err != nil {
		return nil, err
	}

	// The wallet's scheme and host, then the signed URI: nothing from the
	// caller can name another host (path begins with /).
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL.Scheme+"://"+c.BaseURL.Host+uri, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("build wallet request: %w", err)
	}
	for _, h := range []string{"Traceparent", "Tracestate", "X-Request-Id"} {
		if v := header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	// The protocol headers' values share one array (canonical keys, one
	// value each): one allocation rather than one per header.
	vals := &[5]string{"application/json; charset=UTF-8", c.ClientID, reqTime, sk.Version, FormatSignatureHeader(sk.Version, sig)}
	for i, k := range [...]string{"Content-Type", HeaderClientID, HeaderRequestTime, HeaderKeyVersion, HeaderSignature} {
		req.Header[k] = vals[i : i+1 : i+1]
	}

	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, transportError(ctx, err)
	}
	defer resp.Body.Close()
	limit := c.MaxResponseBytes
	if limit <= 0 {
		limit = 8 << 20
	}
	raw, err := readBody(ctx, resp.Body, resp.ContentLength, limit)
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			return nil, err
		}
		return nil, transportError(ctx, err)
	}
	result, err := readResult(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: HTTP %d with a body that is not a JSON object", ErrUnavailable, resp.StatusCode)
	}
	out := &Response{
		StatusCode: resp.StatusCode,
		Header:     make(http.Header, len(answerHeaders)),
		Body:       raw,
		Result:     keptResult(result, body),
	}
	// The transport made resp.Header for this answer alone: its first
	// values are shared, not copied.
	for _, h := range answerHeaders {
		if vs := resp.Header[h]; len(vs) > 0 && vs[0] != "" {
			out.Header[h] = vs[:1:1]
		}
	}
	if c.WalletKey != nil {
		if resp.StatusCode >= 500 && resp.Header.Get(HeaderSignature) == "" {
			// An unsigned JSON 5xx is a gateway's, not a forged wallet answer.
			return nil, fmt.Errorf("%w: unsigned HTTP %d", ErrUnavailable, resp.StatusCode)
		}
		if err := c.verify(uri, resp.Header, raw); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// answerHeaders are the headers of an answer a Response keeps, in their
// canonical form.
var answerHeaders = []string{"Content-Type", HeaderClientID, HeaderResponseTime, HeaderSignature}

// keptResult is an answer's result as the proxy keeps it for its own use
// (decisions, metric labels, a stored lastError, log lines), never the
// body returned: a status other than S, F or U is U (an unknown outcome),
// and a code not shaped like one (A-Z, 0-9, _, at most 64), or one that is
// not the protocol's and repeats what the request carried, is CodeOther.
// A wallet or gateway echoing the request's token into its result must not
// put the token where no answer is scrubbed.
func keptResult(r Result, request []byte) Result {
	switch r.ResultStatus {
	case "", StatusSuccess, StatusFailed, StatusUnknown:
	default:
		r.ResultStatus = StatusUnknown
	}
	if c := r.ResultCode; c != "" && (!validCode(c) || !protocolCodes[c] && bytes.Contains(request, []byte(c))) {
		r.ResultCode = CodeOther
	}
	return r
}

func (c *Client) verify(uri string, h http.Header, body []byte) error {
	sh, err := ParseSignatureHeader(h.Get(HeaderSignature))
	if err != nil {
		return fmt.Errorf("verify wallet response: %w", ErrBadSignature)
	}
	rt := h.Get(HeaderResponseTime)
	if rt == "" {
		return fmt.Errorf("verify wallet response: no Response-Time: %w", ErrBadSignature)
	}
	if err := Verify(c.WalletKey, SigningContent(http.MethodPost, uri, c.ClientID, rt, body), sh.Signature); err != nil {
		return fmt.Errorf("verify wallet response: %w", err)
	}
	return nil
}

var defaultHTTP = NewHTTPClient()

func transportError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ErrTimeout, context.Cause(ctx))
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", ErrTimeout, context.DeadlineExceeded)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // drop the URL: nothing secret in it, but no need to repeat it
		if ue.Timeout() {
			return fmt.Errorf("%w: %v", ErrTimeout, err)
		}
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// TokenResponse is an applyToken S answer. Tokens are Secrets.
type TokenResponse struct {
	CustomerID         string
	AccessToken        Secret
	AccessTokenExpiry  time.Time
	RefreshToken       Secret
	RefreshTokenExpiry time.Time // zero: the wallet gave none
}

// ParseTokenResponse reads an applyToken S answer. It returns ErrMalformed
// unless customerId (a valid customer id), accessToken, refreshToken and a
// parseable accessTokenExpiryTime are present, and a present
// refreshTokenExpiryTime parses.
func ParseTokenResponse(body []byte) (*TokenResponse, error) {
	var m struct {
		CustomerID             string `json:"customerId"`
		AccessToken            string `json:"accessToken"`
		AccessTokenExpiryTime  string `json:"accessTokenExpiryTime"`
		RefreshToken           string `json:"refreshToken"`
		RefreshTokenExpiryTime string `json:"refreshTokenExpiryTime"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("%w: not JSON", ErrMalformed)
	}
	if ValidCustomerID(m.CustomerID) != nil {
		return nil, fmt.Errorf("%w: customerId missing or invalid", ErrMalformed)
	}
	if m.AccessToken == "" || m.RefreshToken == "" {
		return nil, fmt.Errorf("%w: token missing", ErrMalformed)
	}
	ate, err := ParseDateTime(m.AccessTokenExpiryTime)
	if err != nil {
		return nil, fmt.Errorf("%w: accessTokenExpiryTime: %v", ErrMalformed, err)
	}
	tr := &TokenResponse{
		CustomerID:        m.CustomerID,
		AccessToken:       Secret(m.AccessToken),
		AccessTokenExpiry: ate,
		RefreshToken:      Secret(m.RefreshToken),
	}
	if m.RefreshTokenExpiryTime != "" {
		if tr.RefreshTokenExpiry, err = ParseDateTime(m.RefreshTokenExpiryTime); err != nil {
			return nil, fmt.Errorf("%w: refreshTokenExpiryTime: %v", ErrMalformed, err)
		}
	}
	return tr, nil
}

// ApplyToken calls an applyToken path with body (already complete, unsigned)
// and returns the parsed pair on S, or *Error for F and U, or a transport
// error (ErrTimeout, ErrUnavailable, ErrBadSignature), or ErrMalformed.
// The raw answer is returned too when there is one.
func (c *Client) ApplyToken(ctx context.Context, path string, body []byte, header http.Header) (*TokenResponse, *Response, error) {
	resp, err := c.Call(ctx, path, "", body, header)
	if err != nil {
		return nil, nil, err
	}
	if resp.Result.ResultStatus != StatusSuccess {
		return nil, resp, &Error{HTTPStatus: resp.StatusCode, Result: resp.Result}
	}
	tr, err := ParseTokenResponse(resp.Body)
	if err != nil {
		return nil, resp, err
	}
	return tr, resp, nil
}

// RefreshBody builds the applyToken body that presents refreshToken,
// replaying the fields kept from the exchange (appId, authClientId,
// customerBelongsTo, extendInfo, ...). grantType and the token fields of
// replay are ignored.
func RefreshBody(refreshToken Secret, replay map[string]json.RawMessage) ([]byte, error) {
	m := make(map[string]any, len(replay)+2)
	for k, v := range replay {
		switch k {
		case "grantType", "authCode", "refreshToken", "accessToken":
			continue
		}
		m[k] = v
	}
	m["grantType"] = "REFRESH_TOKEN"
	m["refreshToken"] = refreshToken.Reveal()
	return json.Marshal(m)
}
