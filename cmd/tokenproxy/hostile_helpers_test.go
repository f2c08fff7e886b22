package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Helpers of the hostile tests (hostile_test.go, hostile_wallet_test.go,
// tampered_test.go): raw HTTP requests that Go's client would normalise,
// a recorder of what reaches the wallet, and the leak scan.

// rawAnswer is an answer read off the wire.
type rawAnswer struct {
	status int
	header http.Header
	body   []byte
	raw    []byte // every byte read: status line, headers, body
}

func (a rawAnswer) code() string { return resultCode(a.body) }

func (a rawAnswer) resultStatus() string {
	var m struct{ Result struct{ ResultStatus string } }
	_ = json.Unmarshal(a.body, &m)
	return m.Result.ResultStatus
}

// rawDo writes req, byte for byte, on a new connection to addr (host:port)
// and reads one answer. The write runs beside the read: a server that
// answers before reading everything (413, 431) may close while we write.
func rawDo(t *testing.T, addr, req string) rawAnswer {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		_, _ = io.WriteString(conn, req)
	}()
	var seen bytes.Buffer
	resp, err := http.ReadResponse(bufio.NewReader(io.TeeReader(conn, &seen)), nil)
	if err != nil {
		t.Fatalf("read answer to %.80q: %v (read so far %q)", req, err, seen.Bytes())
	}
	// A server that refused the request before reading it all (431) may
	// reset the connection under the rest of our write: the status line
	// and headers are the answer, a body cut short is kept as read.
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil && resp.StatusCode < 400 {
		t.Fatalf("read body of answer to %.80q: %v", req, err)
	}
	conn.Close() // ends a write still blocked on a server that stopped reading
	<-wrote
	return rawAnswer{status: resp.StatusCode, header: resp.Header, body: body, raw: seen.Bytes()}
}

// hreq is a request written by hand.
type hreq struct {
	method string // POST when empty
	target string // the request-target, exactly as sent
	// header lines ("Name: value"), sent as they are; the customer header
	// is added (X-Customer-Id: <default customer>) unless one of them
	// names it or noCustomer is set.
	headers    []string
	noCustomer bool
	body       string
	chunked    bool
}

func (r hreq) build(host, customer string) string {
	method := r.method
	if method == "" {
		method = http.MethodPost
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nContent-Type: application/json\r\n", method, r.target, host)
	hasCustomer := r.noCustomer
	for _, h := range r.headers {
		if strings.HasPrefix(strings.ToLower(h), "x-customer-id:") {
			hasCustomer = true
		}
		b.WriteString(h + "\r\n")
	}
	if !hasCustomer {
		b.WriteString("X-Customer-Id: " + customer + "\r\n")
	}
	if !r.chunked {
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(r.body), r.body)
		return b.String()
	}
	b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
	for rest := r.body; rest != ""; {
		n := min(len(rest), 1000)
		fmt.Fprintf(&b, "%x\r\n%s\r\n", n, rest[:n])
		rest = rest[n:]
	}
	b.WriteString("0\r\n\r\n")
	return b.String()
}

// walletCall is one request that reached the recorder in front of the
// wallet.
type walletCall struct {
	uri    string
	header http.Header
	body   []byte
}

// recorder sits in front of the wallet (the harness's tap, or any other
// server) and records every request that reaches it, whatever its path.
// walletsim counts only the paths it serves; the recorder counts all.
type recorder struct {
	srv   *httptest.Server
	mu    sync.Mutex
	calls []walletCall
}

func newRecorder(t *testing.T, target string) *recorder {
	rc := &recorder{}
	client := &http.Client{Timeout: time.Minute}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.calls = append(rc.calls, walletCall{uri: r.RequestURI, header: r.Header.Clone(), body: body})
		rc.mu.Unlock()
		req, err := http.NewRequestWithContext(r.Context(), r.Method, target+r.RequestURI, bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		req.Header = r.Header.Clone()
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		rb, _ := io.ReadAll(resp.Body)
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(rb)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *recorder) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.calls)
}

func (rc *recorder) since(n int) []walletCall {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]walletCall(nil), rc.calls[n:]...)
}

// requests is how many requests the harness's tap forwarded so far.
func (tp *tap) requests() int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return len(tp.bodies)
}

// requestsSince returns the request bodies the tap forwarded after the
// first n.
func (tp *tap) requestsSince(n int) []string {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return append([]string(nil), tp.bodies[n:]...)
}

// leakForms are the forms in which a token must never reach the app, a
// log or /metrics: encodings() (raw, base64 in four variants, hex), hex in
// upper case, URL-encoded, and JSON-escaped (the default escaping, every
// byte as \u00XX, and / as \/).
func leakForms(tok string) []string {
	forms := encodings(tok)
	forms = append(forms, strings.ToUpper(fmt.Sprintf("%x", tok)), url.QueryEscape(tok), url.PathEscape(tok))
	esc, _ := json.Marshal(tok) // a string always marshals
	forms = append(forms, string(esc[1:len(esc)-1]), strings.ReplaceAll(tok, "/", `\/`), unicodeEscaped(tok))
	seen := map[string]bool{}
	out := forms[:0]
	for _, f := range forms {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	return out
}

// unicodeEscaped writes every byte of s as a JSON \u00XX escape.
func unicodeEscaped(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, `\u%04x`, s[i])
	}
	return b.String()
}

// leakIn returns a description of the first form of any token found in
// data, "" when none is. Tokens shorter than 12 bytes are refused: a scan
// for them would prove nothing.
func leakIn(t *testing.T, data []byte, tokens []string) string {
	t.Helper()
	for _, tok := range tokens {
		if len(tok) < 12 {
			t.Fatalf("a token of %d bytes is too short to scan for", len(tok))
		}
		for i, f := range leakForms(tok) {
			if bytes.Contains(data, []byte(f)) {
				return fmt.Sprintf("form %d of a token (%.6s...)", i, tok)
			}
		}
	}
	return ""
}

// headerBytes renders an answer's headers for a leak scan.
func headerBytes(h http.Header) []byte {
	var b bytes.Buffer
	_ = h.Write(&b)
	return b.Bytes()
}

// scanEverything fails the test if any token is in the answers the app
// received, in a process's logs or in its /metrics.
func scanEverything(t *testing.T, tokens []string, answers [][]byte, procs ...*proxyProc) {
	t.Helper()
	if len(tokens) == 0 {
		t.Fatal("no tokens to scan for: the scan would prove nothing")
	}
	for i, a := range answers {
		if leak := leakIn(t, a, tokens); leak != "" {
			t.Errorf("answer %d to the app holds %s", i, leak)
		}
	}
	for _, p := range procs {
		if leak := leakIn(t, p.Logs(), tokens); leak != "" {
			t.Errorf("the logs of %s hold %s", p.url, leak)
		}
		status, metrics, _ := do(t, "GET", p.ops+"/metrics", "", nil)
		if status != 200 || !bytes.Contains(metrics, []byte("tokenproxy_redactions_total")) {
			t.Fatalf("metrics of %s: %d", p.ops, status)
		}
		if leak := leakIn(t, metrics, tokens); leak != "" {
			t.Errorf("the /metrics of %s hold %s", p.ops, leak)
		}
	}
}
