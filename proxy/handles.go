package proxy

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// Handles (TOKENPROXY_APP_TOKENS=handles) stand in for the tokens in the
// hands of an app built on the wallet's SDK, which keeps the accessToken
// of an applyToken answer and puts it into later calls. A handle is
// "tph_" + base64url(16 random bytes + the customer id): it names its
// customer, so a call carrying one needs no customer header, and it is
// derived from no token. It is only valid while the customer's record
// holds it (sealed beside the tokens): a new exchange or a DELETE ends it.
const handleRandomBytes = 16

// newHandle returns a fresh handle for customerID.
func newHandle(customerID string) wallet.Secret {
	b := make([]byte, handleRandomBytes, handleRandomBytes+len(customerID))
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return wallet.Secret(handlePrefix + base64.RawURLEncoding.EncodeToString(append(b, customerID...)))
}

// handleCustomer returns the customer a handle names, ok false when h is
// not a well-formed handle.
func handleCustomer(h string) (string, bool) {
	rest, ok := strings.CutPrefix(h, handlePrefix)
	if !ok || len(rest) > 200 {
		return "", false
	}
	raw, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(raw) <= handleRandomBytes {
		return "", false
	}
	id := string(raw[handleRandomBytes:])
	if wallet.ValidCustomerID(id) != nil {
		return "", false
	}
	return id, true
}

// sameHandle compares a presented handle with the stored one in constant
// time; an empty stored handle matches nothing.
func sameHandle(stored, presented wallet.Secret) bool {
	s, p := stored.Reveal(), presented.Reveal()
	return s != "" && subtle.ConstantTimeCompare([]byte(s), []byte(p)) == 1
}

func unknownHandle() *proxyError {
	return failF(http.StatusUnauthorized, wallet.CodeCustomerNotAuthorized, "unknown token handle")
}

// handleAt returns the handle the body holds where the token goes, if any.
func handleAt(obj object, field []string) (wallet.Secret, bool) {
	raw, ok := obj.get(field[0])
	for _, k := range field[1:] {
		if !ok {
			return "", false
		}
		inner, err := parseObject(raw)
		if err != nil {
			return "", false
		}
		raw, ok = inner.get(k)
	}
	var s string
	if !ok || json.Unmarshal(raw, &s) != nil || !strings.HasPrefix(s, handlePrefix) {
		return "", false
	}
	return wallet.Secret(s), true
}
