package walletsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// maxJSONDepth is the deepest nesting accepted; the outer object is level 1.
const maxJSONDepth = 64

type rawField = json.RawMessage

// fieldMap is a request body: a JSON object without duplicate keys.
type fieldMap map[string]rawField

// str reads an optional string field: absent or null is "", anything but a
// string is an error, and a string must pass wallet.ValidField(max).
func (f fieldMap) str(name string, max int) (string, error) {
	raw, ok := f[name]
	if !ok || string(raw) == "null" {
		return "", nil
	}
	var v string
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", fmt.Errorf("%s must be a string", name)
	}
	if err := wallet.ValidField(v, max); err != nil {
		return "", fmt.Errorf("%s: %v", name, err)
	}
	return v, nil
}

// parseObject accepts exactly one JSON object, valid UTF-8, without
// duplicate keys, nested at most maxJSONDepth deep.
func parseObject(body []byte) (fieldMap, error) {
	if !utf8.Valid(body) {
		return nil, errors.New("body is not valid UTF-8")
	}
	if err := checkJSON(body); err != nil {
		return nil, err
	}
	var m fieldMap
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, errors.New("body is not a JSON object")
	}
	return m, nil
}

func checkJSON(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if d, ok := tok.(json.Delim); err != nil || !ok || d != '{' {
		return errors.New("body is not a JSON object")
	}
	if err := walkObject(dec, 1); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("body has data after the JSON object")
	}
	return nil
}

func walkObject(dec *json.Decoder, depth int) error {
	if depth > maxJSONDepth {
		return fmt.Errorf("body nested deeper than %d", maxJSONDepth)
	}
	seen := make(map[string]struct{})
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return errors.New("body is not valid JSON")
		}
		key, _ := tok.(string)
		if _, dup := seen[key]; dup {
			return errors.New("body has a duplicate key")
		}
		seen[key] = struct{}{}
		if err := walkValue(dec, depth); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return errors.New("body is not valid JSON")
	}
	return nil
}

func walkValue(dec *json.Decoder, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return errors.New("body is not valid JSON")
	}
	switch tok {
	case json.Delim('{'):
		return walkObject(dec, depth+1)
	case json.Delim('['):
		if depth+1 > maxJSONDepth {
			return fmt.Errorf("body nested deeper than %d", maxJSONDepth)
		}
		for dec.More() {
			if err := walkValue(dec, depth+1); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil {
			return errors.New("body is not valid JSON")
		}
	}
	return nil
}

// checkRequest applies the protocol's header, signature and body checks in
// this order: Client-Id, Request-Time format, Signature header, keyVersion,
// signature, Request-Time window, Content-Type, body.
func (s *Server) checkRequest(r *http.Request, uri, clientID string, body []byte, parseErr error) (answer, bool) {
	if clientID == "" {
		return fail(wallet.CodeInvalidClient, "Client-Id header missing"), false
	}
	if s.cfg.ClientID != "" && clientID != s.cfg.ClientID {
		return fail(wallet.CodeInvalidClient, "unknown Client-Id"), false
	}
	reqTime := r.Header.Get(wallet.HeaderRequestTime)
	t, err := wallet.ParseTime(reqTime)
	if err != nil {
		return fail(wallet.CodeParamIllegal, "Request-Time missing or not ISO 8601 / Unix ms / Unix ns"), false
	}
	sh, err := wallet.ParseSignatureHeader(r.Header.Get(wallet.HeaderSignature))
	if err != nil {
		s.stats.badSignature()
		return fail(wallet.CodeInvalidSignature, "Signature header missing or malformed"), false
	}
	if want := s.cfg.KeyVersion; want != "" {
		if sh.KeyVersion != want {
			return fail(wallet.CodeKeyNotFound, "no key for this keyVersion"), false
		}
		if kv := r.Header.Get(wallet.HeaderKeyVersion); kv != "" && kv != want {
			return fail(wallet.CodeKeyNotFound, "no key for this Key-Version"), false
		}
	}
	content := wallet.SigningContent(http.MethodPost, uri, clientID, reqTime, body)
	if err := wallet.Verify(s.cfg.ClientPublicKey, content, sh.Signature); err != nil {
		s.stats.badSignature()
		return fail(wallet.CodeInvalidSignature, "signature does not verify"), false
	}
	if skew := s.now().Sub(t); skew > MaxClockSkew || skew < -MaxClockSkew {
		s.stats.badSignature()
		return fail(wallet.CodeInvalidSignature, "Request-Time more than 10 minutes away from the wallet's clock"), false
	}
	if !isJSONContentType(r.Header.Get("Content-Type")) {
		return fail(wallet.CodeParamIllegal, "Content-Type must be application/json"), false
	}
	if parseErr != nil {
		return fail(wallet.CodeParamIllegal, parseErr.Error()), false
	}
	return answer{}, true
}

func isJSONContentType(ct string) bool {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return false
	}
	cs, ok := params["charset"]
	return !ok || strings.EqualFold(cs, "utf-8")
}
