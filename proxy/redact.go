package proxy

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// redacted replaces a token found in an answer to the app.
const redacted = "[redacted]"

// handlePrefix marks the opaque handles of TOKENPROXY_APP_TOKENS=handles,
// the only non-empty values a token field of an answer to the app holds
// (the proxy's own, never one a wallet answer carried).
const handlePrefix = "tph_"

// secretForms are the encodings of one token a wallet answer could carry:
// raw, JSON-escaped, URL-encoded, base64 (standard and URL, padded or not)
// and hex. Each is searched for in the raw body, in every JSON string once
// unescaped, and in every header returned.
type secretForms [][]byte

func formsOf(tokens ...wallet.Secret) secretForms {
	// Every form of every token goes into one buffer (each form a
	// sub-slice of it), so a call pays two allocations, not one per form.
	n := 0
	for _, t := range tokens {
		n += 12*len(t.Reveal()) + 16 // the forms' usual total; escapes may grow it
	}
	buf := make([]byte, 0, n)
	out := make(secretForms, 0, 9*len(tokens))
	// add keeps buf[start:] as a form unless it is empty or already known
	// (its bytes stay in buf: an encoder may still be reading them).
	add := func(start int) {
		f := buf[start:len(buf):len(buf)]
		if len(f) == 0 {
			return
		}
		for _, g := range out {
			if bytes.Equal(f, g) {
				return
			}
		}
		out = append(out, f)
	}
	for _, t := range tokens {
		raw := t.Reveal()
		if raw == "" {
			continue
		}
		start := len(buf)
		buf = append(buf, raw...)
		src := buf[start:len(buf):len(buf)] // the bytes of raw, for the encoders
		add(start)
		start = len(buf)
		buf = appendJSONString(buf, raw) // "...": keep what is between the quotes
		copy(buf[start:], buf[start+1:len(buf)-1])
		buf = buf[:len(buf)-2]
		add(start)
		start = len(buf)
		buf = append(buf, url.QueryEscape(raw)...)
		add(start)
		start = len(buf)
		buf = append(buf, url.PathEscape(raw)...)
		add(start)
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			start = len(buf)
			buf = enc.AppendEncode(buf, src)
			add(start)
		}
		start = len(buf)
		buf = hex.AppendEncode(buf, src)
		add(start)
	}
	return out
}

func (fs secretForms) in(b []byte) bool {
	for _, f := range fs {
		if bytes.Contains(b, f) {
			return true
		}
	}
	return false
}

// inString is in for a string, without converting it (the comparison
// below does not allocate).
func (fs secretForms) inString(s string) bool {
	for _, f := range fs {
		for i := 0; i+len(f) <= len(s); i++ {
			j := strings.IndexByte(s[i:len(s)-len(f)+1], f[0])
			if j < 0 {
				break
			}
			if i += j; s[i:i+len(f)] == string(f) {
				return true
			}
		}
	}
	return false
}

func (fs secretForms) replace(s string) (string, bool) {
	hit := false
	for _, f := range fs {
		if strings.Contains(s, string(f)) {
			s = strings.ReplaceAll(s, string(f), redacted)
			hit = true
		}
	}
	return s, hit
}

// scrub makes a wallet answer safe to return to the app: no form of the
// given tokens in the body (raw or JSON-unescaped) or in the headers, and
// no token field (accessToken, refreshToken, in any letter case, at any
// depth) holding a value (the proxy adds the app's handles itself, after).
// It returns the body to send and whether anything was redacted; on a hit
// the caller drops the signature headers, which no longer match. A body
// that is not JSON is searched raw.
func scrub(body []byte, hdr http.Header, forms secretForms) ([]byte, bool) {
	hit := false
	for k, vs := range hdr {
		for _, v := range vs {
			if forms.inString(v) {
				delete(hdr, k)
				hit = true
				break
			}
		}
	}
	// The fast path: no escapes, no form of a token, no token field name.
	// Then no JSON string can hold a token either.
	if bytes.IndexByte(body, '\\') < 0 && !forms.in(body) && !hasTokenField(body) {
		return body, hit
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	// More is false before a stray } or ]: only EOF after the value says
	// the body is one JSON value.
	if err := dec.Decode(&v); err != nil || !atEOF(dec) {
		if forms.in(body) {
			for _, f := range forms {
				body = bytes.ReplaceAll(body, f, []byte(redacted))
			}
			return body, true
		}
		return body, hit
	}
	v, changed := scrubValue(v, forms)
	// Decoding keeps the last of a duplicated key: a token in a member it
	// dropped is in no decoded value but still in the body, and is only
	// gone once the body is re-encoded from what was decoded.
	if !changed && !forms.in(body) && !duplicateKey(body) {
		return body, hit
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil { // cannot happen for decoded JSON
		return []byte(`{"result":{"resultStatus":"U","resultCode":"UNKNOWN_EXCEPTION","resultMessage":"answer withheld"}}`), true
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), true
}

func atEOF(dec *json.Decoder) bool {
	_, err := dec.Token()
	return err == io.EOF
}

// duplicateKey reports whether an object of the JSON text body holds a key
// twice.
func duplicateKey(body []byte) bool {
	type frame struct {
		object  bool
		wantKey bool
		keys    map[string]bool
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if d, ok := tok.(json.Delim); ok {
			if d == '}' || d == ']' {
				stack = stack[:len(stack)-1]
				continue
			}
			if top != nil && top.object {
				top.wantKey = true // this value completes a member
			}
			stack = append(stack, &frame{object: d == '{', wantKey: true, keys: map[string]bool{}})
			continue
		}
		switch {
		case top == nil || !top.object:
		case top.wantKey:
			k := tok.(string)
			if top.keys[k] {
				return true
			}
			top.keys[k] = true
			top.wantKey = false
		default:
			top.wantKey = true
		}
	}
}

// scrubValue redacts tokens in a decoded JSON value, in place.
func scrubValue(v any, forms secretForms) (any, bool) {
	switch t := v.(type) {
	case string:
		s, hit := forms.replace(t)
		return s, hit
	case json.Number: // a token of digits echoed as a number
		if forms.in([]byte(t)) {
			return redacted, true
		}
		return t, false
	case []any:
		changed := false
		for i := range t {
			var c bool
			t[i], c = scrubValue(t[i], forms)
			changed = changed || c
		}
		return t, changed
	case map[string]any:
		changed := false
		for k, val := range t {
			if nk, hit := forms.replace(k); hit {
				delete(t, k)
				k = nk
				t[k] = val
				changed = true
			}
			if isTokenField(k) {
				if s, ok := val.(string); ok && s == "" {
					continue
				}
				t[k] = redacted
				changed = true
				continue
			}
			var c bool
			t[k], c = scrubValue(val, forms)
			changed = changed || c
		}
		return t, changed
	}
	return v, false
}

func isTokenField(k string) bool {
	return strings.EqualFold(k, "accessToken") || strings.EqualFold(k, "refreshToken")
}

// hasTokenField reports whether body may name a token field: "accesstoken"
// or "refreshtoken" in any letter case (escaped names take the slow path
// through the backslash test). isTokenField folds case as strings.EqualFold
// does, where ſ (U+017F) is an s and K (U+212A) a k, as Go's encoding/json
// matches field names too: a body holding either may name one.
func hasTokenField(body []byte) bool {
	if bytes.Contains(body, []byte("\u017f")) || bytes.Contains(body, []byte("\u212a")) {
		return true
	}
	for i := 0; i+len("accesstoken") <= len(body); i++ {
		c := body[i] | 0x20
		if c == 'a' && i+11 <= len(body) && bytes.EqualFold(body[i:i+11], []byte("accesstoken")) {
			return true
		}
		if c == 'r' && i+12 <= len(body) && bytes.EqualFold(body[i:i+12], []byte("refreshtoken")) {
			return true
		}
	}
	return false
}
