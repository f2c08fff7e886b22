package proxy

// Fuzz targets for the proxy's parsers of hostile input: the request
// target, the body rewrite that injects the token, the wallet's exchange
// answer and the redaction of wallet answers. Their seed corpora are under
// testdata/fuzz/<FuzzName>/ and run with every `go test`; `make fuzz` runs
// each target for a bounded time.
//
// Each property is checked against an independent reading (readTree, the
// contract's rules written out again here), not against the code under
// test, so that a fuzzer-found input shows where the two disagree.

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// fuzzPrefix is a wallet base-URL prefix, as "/ams/api" in the protocol.
const fuzzPrefix = "/ams/api"

// FuzzCanonicalPath: whatever the request target, parseTarget either
// refuses it with 400 PARAM_ILLEGAL, or returns the path the contract
// calls canonical ("Canonical paths"), decoded exactly once, which reads
// back to itself, and a query without # or control characters.
func FuzzCanonicalPath(f *testing.F) {
	f.Fuzz(func(t *testing.T, uri string, withPrefix bool) {
		prefix := ""
		if withPrefix {
			prefix = fuzzPrefix
		}
		got, err := parseTarget(&http.Request{RequestURI: uri}, prefix)
		if err != nil {
			if pe := classify(err); pe.status != http.StatusBadRequest || pe.code != wallet.CodeParamIllegal {
				t.Fatalf("%q refused with %d %s, want 400 PARAM_ILLEGAL", uri, pe.status, pe.code)
			}
			return
		}
		rawPath, rawQuery, _ := strings.Cut(uri, "?")
		if got.query != rawQuery {
			t.Fatalf("%q: query %q, want the raw query %q", uri, got.query, rawQuery)
		}
		for i := 0; i < len(got.query); i++ {
			if c := got.query[i]; c <= ' ' || c >= 0x7f || c == '#' {
				t.Fatalf("%q: query %q holds %q", uri, got.query, c)
			}
		}
		if strings.Contains(strings.ToLower(rawPath), "%2f") {
			t.Fatalf("%q: an encoded slash was accepted", uri)
		}
		decoded, derr := url.PathUnescape(rawPath)
		if derr != nil {
			t.Fatalf("%q: accepted a path that does not decode: %v", uri, derr)
		}
		if got.admin {
			checkAdminPath(t, uri, got, decoded)
			return
		}
		if !contractCanonical(got.path) {
			t.Fatalf("%q: accepted path %q is not canonical", uri, got.path)
		}
		want := decoded
		if rest, ok := strings.CutPrefix(decoded, prefix); ok && prefix != "" && strings.HasPrefix(rest, "/") {
			want = rest
		}
		if got.path != want {
			t.Fatalf("%q: path %q, want %q (decoded once, the prefix removed)", uri, got.path, want)
		}
		// Idempotent: the wallet URL is prefix + path + query; read again,
		// it gives the very same target.
		again, err := parseTarget(&http.Request{RequestURI: joinTarget(prefix+got.path, got.query)}, prefix)
		if err != nil || again != got {
			t.Fatalf("%q: %+v reads back as %+v (%v)", uri, got, again, err)
		}
	})
}

// checkAdminPath: an accepted admin path is /tokenproxy/ and segments of
// visible ASCII without # ? \ ; or %, none empty, . or .., decoded once:
// reading it again gives the same path, so no later step can decode it to
// something else.
func checkAdminPath(t *testing.T, uri string, got target, decoded string) {
	t.Helper()
	if got.path != decoded {
		t.Fatalf("%q: admin path %q, want the decoded %q", uri, got.path, decoded)
	}
	rest, ok := strings.CutPrefix(got.path, adminPrefix)
	if !ok {
		t.Fatalf("%q: admin path %q outside %s", uri, got.path, adminPrefix)
	}
	if rest != "" {
		for _, seg := range strings.Split(rest, "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("%q: admin path %q has an empty, . or .. segment", uri, got.path)
			}
			for i := 0; i < len(seg); i++ {
				if c := seg[i]; c <= ' ' || c >= 0x7f || strings.IndexByte("#?\\;%", c) >= 0 {
					t.Fatalf("%q: admin path %q holds %q", uri, got.path, c)
				}
			}
		}
	}
	again, err := parseTarget(&http.Request{RequestURI: joinTarget(got.path, got.query)}, "")
	if err != nil || again != got {
		t.Fatalf("%q: %+v reads back as %+v (%v)", uri, got, again, err)
	}
}

func joinTarget(path, query string) string {
	if query == "" {
		return path
	}
	return path + "?" + query
}

// contractCanonical is the contract's rule, written out again: starts with
// /, only ASCII letters, digits and - . _ ~ / :, no empty, . or .. segment.
func contractCanonical(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	for _, seg := range strings.Split(p[1:], "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		for _, c := range []byte(seg) {
			letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
			if !letter && !(c >= '0' && c <= '9') && strings.IndexByte("-._~:", c) < 0 {
				return false
			}
		}
	}
	return true
}

// rewriteFields are inject fields as TOKENPROXY_INJECT gives them.
var rewriteFields = [][]string{
	{"accessToken"},
	{"paymentMethod", "paymentMethodId"},
	{"a", "b", "c"},
	{"extendInfo"},
	{"data", "auth", "token"},
	{"x"},
}

// FuzzBodyRewrite: the body the proxy forwards is the app's body with the
// token written at the inject field and nothing else changed. A body is
// refused (400 PARAM_ILLEGAL) exactly when the contract says so: not one
// JSON object in valid UTF-8, a duplicate key, nesting deeper than 64, or
// a non-object on the way to the field.
func FuzzBodyRewrite(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte, fieldIndex uint8, token string) {
		if token == "" || !utf8.ValidString(token) {
			return // tokens come from a decoded JSON answer: never empty, always UTF-8
		}
		field := rewriteFields[int(fieldIndex)%len(rewriteFields)]
		in, depth, inErr := readTree(body)
		valid := inErr == nil && utf8.Valid(body) && in.kind == '{' && depth <= maxDepth
		wantOK := valid && parentsAreObjects(in, field)

		var out []byte
		obj, err := parseObject(body)
		if err == nil {
			var with object
			if with, err = obj.with(field, token); err == nil {
				out = with.marshal()
			}
		}
		if err != nil {
			if pe := classify(err); pe.status != http.StatusBadRequest || pe.code != wallet.CodeParamIllegal {
				t.Fatalf("refused with %d %s, want 400 PARAM_ILLEGAL", pe.status, pe.code)
			}
			if wantOK {
				t.Fatalf("refused a body the contract accepts for field %v: %v", field, err)
			}
			return
		}
		if !wantOK {
			t.Fatalf("accepted a body the contract refuses for field %v (valid %v, %v)", field, valid, inErr)
		}
		got, _, err := readTree(out)
		if err != nil {
			t.Fatalf("output %q is not JSON without duplicate keys: %v", out, err)
		}
		if want := in.set(field, token); !got.equal(want) {
			t.Fatalf("output %s is not the input with %v set", out, field)
		}
		sameOtherMembers(t, body, out, field)
		if n, m := got.count(token), in.without(field).count(token); n != m+1 {
			t.Fatalf("token in %d strings of the output, want %d (once, at %v)", n, m+1, field)
		}
	})
}

// parentsAreObjects reports whether every member on the way to field that
// exists is an object (missing ones are created).
func parentsAreObjects(n *jtree, field []string) bool {
	for _, k := range field[:len(field)-1] {
		c := n.get(k)
		if c == nil {
			return true
		}
		if c.kind != '{' {
			return false
		}
		n = c
	}
	return true
}

// sameOtherMembers checks that every member of out (at the top level and
// on the way to field) other than the one on the field's path holds the
// exact bytes of the input's member, in the input's order.
func sameOtherMembers(t *testing.T, in, out []byte, field []string) {
	t.Helper()
	ik, iv := rawMembers(t, in)
	ok, ov := rawMembers(t, out)
	want := ik
	if !containsString(ik, field[0]) {
		want = append(append([]string(nil), ik...), field[0])
	}
	if fmt.Sprint(ok) != fmt.Sprint(want) {
		t.Fatalf("output members %q, want %q", ok, want)
	}
	for j, k := range ok {
		if k != field[0] {
			if !bytes.Equal(ov[j], iv[j]) {
				t.Fatalf("member %q changed: %s, was %s", k, ov[j], iv[j])
			}
			continue
		}
		if len(field) > 1 {
			var inner []byte
			if j < len(iv) {
				inner = iv[j]
			}
			sameOtherMembers(t, inner, ov[j], field[1:])
		}
	}
}

func rawMembers(t *testing.T, b []byte) ([]string, []json.RawMessage) {
	t.Helper()
	if b == nil {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil {
		t.Fatalf("members of %s: %v", b, err)
	}
	var keys []string
	var vals []json.RawMessage
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatalf("members of %s: %v", b, err)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			t.Fatalf("members of %s: %v", b, err)
		}
		keys = append(keys, k.(string))
		vals = append(vals, raw)
	}
	return keys, vals
}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// FuzzExchangeAnswer: whatever the wallet answers an applyToken with, the
// proxy never panics; the app's answer is JSON rebuilt from the allow-list
// only, and what the app finally receives (after the redaction
// serveExchange applies) holds no token field and no value of any token
// field of the wallet's answer; an accepted S answer gives a pair with a
// valid customer id and the answer's exact, non-empty tokens; a malformed
// answer (not one JSON object, duplicate key, bad S) is 502 with nothing
// stored.
func FuzzExchangeAnswer(f *testing.F) {
	allowed := map[string]bool{}
	for _, k := range answerFields {
		allowed[k] = true
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		tree, depth, treeErr := readTree(body)
		wellFormed := treeErr == nil && utf8.Valid(body) && tree.kind == '{' && depth <= maxDepth
		var secrets []string // the string values of every token field, any case, any depth
		if treeErr == nil {
			tree.walk(func(key string, v *jtree) {
				if isTokenField(key) && v.kind == 's' && v.text != "" {
					secrets = append(secrets, v.text)
				}
			})
		}

		a, err := readExchangeAnswer(body)
		if err != nil {
			if !errors.Is(err, wallet.ErrMalformed) {
				t.Fatalf("error %v is not wallet.ErrMalformed", err)
			}
			if pe := classify(err); pe.status != http.StatusBadGateway || pe.code != wallet.CodeWalletUnavailable {
				t.Fatalf("malformed answer gives %d %s, want 502 WALLET_UNAVAILABLE", pe.status, pe.code)
			}
			for _, s := range secrets {
				if len(s) >= 12 && strings.Contains(err.Error(), s) {
					t.Fatalf("error %q quotes a token", err)
				}
			}
			return
		}
		if !wellFormed {
			t.Fatalf("accepted an answer that is not one JSON object without duplicate keys (%v)", treeErr)
		}

		app := a.app.marshal()
		appTree, _, err := readTree(app)
		if err != nil || appTree.kind != '{' {
			t.Fatalf("app answer %q is not a JSON object without duplicate keys: %v", app, err)
		}
		for _, k := range appTree.keys {
			if !allowed[k] {
				t.Fatalf("app answer %s holds %q, not in the allow-list", app, k)
			}
		}
		if r := appTree.get("result"); r == nil || r.kind != '{' {
			t.Fatalf("app answer %s has no result object", app)
		}

		// What the app receives: the rebuilt answer, scrubbed as
		// serveExchange does.
		hdr := http.Header{}
		sent, _ := scrub(app, hdr, a.forms())
		sentTree, _, err := readTree(sent)
		if err != nil {
			t.Fatalf("answer sent %q is not JSON: %v", sent, err)
		}
		sentTree.walk(func(key string, v *jtree) {
			if isTokenField(key) && !(v.kind == 's' && (v.text == "" || v.text == redacted || strings.HasPrefix(v.text, handlePrefix))) {
				t.Fatalf("answer sent %s holds token field %q", sent, key)
			}
		})
		for _, s := range secrets {
			if realisticToken(s) {
				noForm(t, sent, sentTree, formsOf(wallet.Secret(s)))
			}
		}

		if a.result.ResultStatus != wallet.StatusSuccess {
			if a.pair != nil {
				t.Fatalf("a %q answer gave a pair to store", a.result.ResultStatus)
			}
			return
		}
		p := a.pair
		if p == nil {
			t.Fatal("an accepted S answer gave no pair")
		}
		if wallet.ValidCustomerID(p.CustomerID) != nil || p.AccessToken == "" || p.RefreshToken == "" {
			t.Fatalf("S answer stored an invalid pair (customer %q)", p.CustomerID)
		}
		for name, got := range map[string]string{"customerId": p.CustomerID, "accessToken": p.AccessToken.Reveal(), "refreshToken": p.RefreshToken.Reveal()} {
			if m := tree.get(name); m == nil || m.kind != 's' || m.text != got {
				t.Fatalf("stored %s is not the answer's %s member", name, name)
			}
		}
	})
}

// FuzzScrub: a token the wallet echoes, in any of the encodings formsOf
// lists and JSON-escaped on top in any mix the fuzzer picks, in the body or
// in a header, never reaches the app: no form of it remains in the body's
// text or in a header, no decoded JSON string of the answer holds one, no
// token field keeps a value, and a JSON answer stays JSON.
func FuzzScrub(f *testing.F) {
	f.Fuzz(func(t *testing.T, token string, before, after []byte, encoding uint8, escapes uint64, inHeader uint8) {
		if !realisticToken(token) {
			return
		}
		forms := formsOf(wallet.Secret(token))
		encoded := echoEncodings[int(encoding)%len(echoEncodings)](token)
		echo := escapeJSON([]byte(encoded), escapes)
		body := append(append(append([]byte(nil), before...), echo...), after...)
		hdr := http.Header{"Content-Type": {"application/json"}, "Response-Time": {"2026-01-01T00:00:00Z"}}
		switch inHeader % 3 {
		case 1:
			hdr.Set("X-Echo", "t="+encoded)
		case 2:
			hdr.Set("Response-Time", string(before)+encoded)
		}
		hadForm := forms.in(escapedOut(body))
		for _, vs := range hdr {
			for _, v := range vs {
				hadForm = hadForm || forms.in([]byte(v))
			}
		}
		if in := readAnyTree(body); in != nil {
			in.walk(func(key string, v *jtree) {
				hadForm = hadForm || forms.in([]byte(key)) || (v.kind == 's' || v.kind == 'n') && forms.in([]byte(v.text))
			})
		}

		out, hit := scrub(body, hdr, forms)
		if hadForm && !hit {
			t.Fatalf("token echoed in %q but not reported as redacted", body)
		}
		if !hit && !bytes.Equal(out, body) {
			t.Fatalf("nothing redacted, but the body changed: %q -> %q", body, out)
		}
		for k, vs := range hdr {
			for _, v := range vs {
				if forms.in([]byte(v)) {
					t.Fatalf("header %s keeps a form of the token: %q", k, v)
				}
			}
		}
		outTree := readAnyTree(out)
		if json.Valid(body) && outTree == nil {
			t.Fatalf("JSON answer %q became %q, not JSON", body, out)
		}
		noForm(t, out, outTree, forms)
		if outTree != nil {
			outTree.walk(func(key string, v *jtree) {
				if isTokenField(key) && !(v.kind == 's' && (v.text == "" || v.text == redacted || strings.HasPrefix(v.text, handlePrefix))) {
					t.Fatalf("answer %s keeps token field %q", out, key)
				}
			})
		}
	})
}

// echoEncodings are the ways a wallet may echo a token that the contract
// says redaction covers, written out here independently of formsOf: raw
// (JSON escapes are added on top by escapeJSON), URL-encoded as a query or
// a path, base64 (standard and URL alphabets, padded or not) and hex; and
// none, for answers that hold no form of the token.
var echoEncodings = []func(string) string{
	func(s string) string { return s },
	url.QueryEscape,
	url.PathEscape,
	func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) },
	func(s string) string { return base64.RawStdEncoding.EncodeToString([]byte(s)) },
	func(s string) string { return base64.URLEncoding.EncodeToString([]byte(s)) },
	func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) },
	func(s string) string { return hex.EncodeToString([]byte(s)) },
	func(string) string { return "" }, // no echo: the answer is searched for token fields only
}

// noForm fails if a form of the token is in body's text (outside JSON
// escape sequences: a form that only appears across one, as the 1234 of
// "\u1234", is a split, which the contract leaves aside) or in a decoded
// string or number of tree (nil when body is not JSON; every member of
// it, duplicates too).
func noForm(t *testing.T, body []byte, tree *jtree, forms secretForms) {
	t.Helper()
	if forms.in(escapedOut(body)) {
		t.Fatalf("a form of the token is left in %q", body)
	}
	if tree == nil {
		return
	}
	tree.walk(func(key string, v *jtree) {
		if forms.in([]byte(key)) || (v.kind == 's' || v.kind == 'n') && forms.in([]byte(v.text)) {
			t.Fatalf("a form of the token is left in a JSON member %q of %q", key, body)
		}
	})
}

// escapedOut replaces each backslash escape (\uXXXX, \n, ...) of b by a NUL,
// which no form of a realistic token holds.
func escapedOut(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' {
			out = append(out, b[i])
			continue
		}
		out = append(out, 0)
		if i+1 < len(b) && b[i+1] == 'u' {
			i += min(5, len(b)-1-i)
		} else {
			i++
		}
	}
	return out
}

// escapeJSON writes s as it could stand inside a JSON string: each byte
// whose bit is set in mask (byte i uses bit i%64) as \u00XX (upper or
// lower hex digits by the next bit), a / as \/.
func escapeJSON(s []byte, mask uint64) []byte {
	const hexUpper, hexLower = "0123456789ABCDEF", "0123456789abcdef"
	var out []byte
	for i, c := range s {
		bit := mask>>(uint(i)%64)&1 == 1
		switch {
		case bit && c == '/' && mask>>((uint(i)+1)%64)&1 == 1:
			out = append(out, '\\', '/')
		case bit:
			digits := hexUpper
			if mask>>((uint(i)+1)%64)&1 == 1 {
				digits = hexLower
			}
			out = append(out, '\\', 'u', '0', '0', digits[c>>4], digits[c&0xf])
		default:
			out = append(out, c)
		}
	}
	return out
}

// realisticToken: 4 to 128 characters an opaque token is made of (letters,
// digits and - . _ ~ + / =: base64, base64url, JWT, hex, UUID), and not a
// piece of the redaction placeholder or of a JSON literal: such a token
// would be found again in "[redacted]" or in true, false, null, which is
// no leak. Tokens with JSON punctuation could match across the structure
// of an answer: a split, which the contract leaves aside.
func realisticToken(s string) bool {
	if len(s) < 4 || len(s) > 128 {
		return false
	}
	for _, c := range []byte(s) {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && !(c >= '0' && c <= '9') && strings.IndexByte("-._~+/=", c) < 0 {
			return false
		}
	}
	for _, f := range formsOf(wallet.Secret(s)) {
		for _, w := range []string{redacted, "true", "false", "null"} {
			if strings.Contains(w, string(f)) {
				return false
			}
		}
	}
	return true
}

// jtree is an independent strict reading of a JSON text: members in their
// order, strings decoded, numbers and literals as written.
type jtree struct {
	kind byte // '{', '[', 's' string, 'n' number, 'l' true/false/null
	keys []string
	vals []*jtree
	text string
}

var errDupKey = errors.New("duplicate key")

// readTree reads b as exactly one JSON value without duplicate keys; depth
// is its nesting (an outer object is level 1).
func readTree(b []byte) (*jtree, int, error) { return readJSON(b, false) }

// readAnyTree reads b as exactly one JSON value, duplicate keys kept as
// they come: every member a parser could see.
func readAnyTree(b []byte) *jtree {
	n, _, _ := readJSON(b, true)
	return n
}

func readJSON(b []byte, dupOK bool) (*jtree, int, error) {
	if !json.Valid(b) {
		return nil, 0, errors.New("not JSON")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	n, depth, err := readValue(dec, 0, dupOK)
	if err != nil {
		return nil, 0, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, 0, errors.New("data after the value")
	}
	return n, depth, nil
}

func readValue(dec *json.Decoder, level int, dupOK bool) (*jtree, int, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, 0, err
	}
	switch v := tok.(type) {
	case json.Delim:
		n := &jtree{kind: byte(v)}
		depth := level + 1
		seen := map[string]bool{}
		for dec.More() {
			if v == '{' {
				k, err := dec.Token()
				if err != nil {
					return nil, 0, err
				}
				key := k.(string)
				if seen[key] && !dupOK {
					return nil, 0, errDupKey
				}
				seen[key] = true
				n.keys = append(n.keys, key)
			}
			c, d, err := readValue(dec, level+1, dupOK)
			if err != nil {
				return nil, 0, err
			}
			n.vals = append(n.vals, c)
			depth = max(depth, d)
		}
		if _, err := dec.Token(); err != nil { // the closing delimiter
			return nil, 0, err
		}
		return n, depth, nil
	case string:
		return &jtree{kind: 's', text: v}, level, nil
	case json.Number:
		return &jtree{kind: 'n', text: string(v)}, level, nil
	case bool:
		return &jtree{kind: 'l', text: fmt.Sprint(v)}, level, nil
	default:
		return &jtree{kind: 'l', text: "null"}, level, nil
	}
}

func (n *jtree) get(key string) *jtree {
	if n == nil || n.kind != '{' {
		return nil
	}
	for i, k := range n.keys {
		if k == key {
			return n.vals[i]
		}
	}
	return nil
}

func (n *jtree) equal(m *jtree) bool {
	if n.kind != m.kind || n.text != m.text || len(n.vals) != len(m.vals) || fmt.Sprint(n.keys) != fmt.Sprint(m.keys) {
		return false
	}
	for i := range n.vals {
		if !n.vals[i].equal(m.vals[i]) {
			return false
		}
	}
	return true
}

// set returns a copy of n with the string value at field, creating
// missing objects on the way (the caller checked there is no non-object).
func (n *jtree) set(field []string, value string) *jtree {
	out := &jtree{kind: '{'}
	if n != nil {
		out.keys = append(out.keys, n.keys...)
		out.vals = append(out.vals, n.vals...)
	}
	v := &jtree{kind: 's', text: value}
	if len(field) > 1 {
		v = out.get(field[0]).set(field[1:], value)
	}
	for i, k := range out.keys {
		if k == field[0] {
			out.vals[i] = v
			return out
		}
	}
	out.keys = append(out.keys, field[0])
	out.vals = append(out.vals, v)
	return out
}

// without returns a copy of n without the member at field, if any.
func (n *jtree) without(field []string) *jtree {
	out := &jtree{kind: n.kind, text: n.text}
	for i, k := range n.keys {
		v := n.vals[i]
		if k == field[0] {
			if len(field) == 1 {
				continue
			}
			if v.kind == '{' {
				v = v.without(field[1:])
			}
		}
		out.keys = append(out.keys, k)
		out.vals = append(out.vals, v)
	}
	if n.kind == '[' {
		out.vals = n.vals
	}
	return out
}

// count is the number of string values holding s.
func (n *jtree) count(s string) int {
	c := 0
	n.walk(func(_ string, v *jtree) {
		if v.kind == 's' {
			c += strings.Count(v.text, s)
		}
	})
	return c
}

// walk calls fn for n and every value inside it, with the member's key
// ("" for the root and array elements).
func (n *jtree) walk(fn func(key string, v *jtree)) {
	var rec func(key string, v *jtree)
	rec = func(key string, v *jtree) {
		fn(key, v)
		for i, c := range v.vals {
			k := ""
			if v.kind == '{' {
				k = v.keys[i]
			}
			rec(k, c)
		}
	}
	rec("", n)
}
