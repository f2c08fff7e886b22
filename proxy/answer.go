package proxy

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// answerFields are the members of a wallet exchange answer the app may
// see, in this order: the answer is rebuilt from them, never by deleting
// known token fields, so a field the proxy does not know never reaches the
// app.
var answerFields = []string{"result", "customerId", "accessTokenExpiryTime", "refreshTokenExpiryTime", "extendInfo"}

// exchangeAnswer is the one reading of a wallet applyToken answer: what is
// stored and what the app receives both come from it.
type exchangeAnswer struct {
	result wallet.Result
	// pair is set for an S answer that holds everything a pair needs.
	pair *wallet.TokenResponse
	// app is the answer for the app: the allow-listed members, the result
	// rebuilt from its three fields.
	app object
	// tokens are the values of every token field of the answer (any letter
	// case, any depth), the pair's among them: whatever the outcome, F and
	// U included, the answer sent to the app is scrubbed of them, as an
	// allow-listed member (extendInfo) may echo one.
	tokens []wallet.Secret
}

// forms are the forms of the answer's tokens, to scrub from what the app
// receives.
func (a *exchangeAnswer) forms() secretForms { return formsOf(a.tokens...) }

// tokenValues returns the string values of the token fields of a body
// parseObject accepted (so its keys are unique and decoding loses nothing).
func tokenValues(body []byte) []wallet.Secret {
	var v any
	if json.Unmarshal(body, &v) != nil {
		return nil
	}
	var out []wallet.Secret
	var walk func(any)
	walk = func(v any) {
		switch t := v.(type) {
		case map[string]any:
			for k, val := range t {
				if s, ok := val.(string); ok && s != "" && isTokenField(k) {
					out = append(out, wallet.Secret(s))
				}
				walk(val)
			}
		case []any:
			for _, e := range t {
				walk(e)
			}
		}
	}
	walk(v)
	return out
}

// readExchangeAnswer parses body strictly (one JSON object, no duplicate
// key anywhere, exact field names) and splits it into the pair to store
// and the answer for the app. A malformed body, or an S answer without a
// valid customerId, accessToken, refreshToken and accessTokenExpiryTime
// (or with an unparseable refreshTokenExpiryTime), is wallet.ErrMalformed.
func readExchangeAnswer(body []byte) (*exchangeAnswer, error) {
	obj, err := parseObject(body)
	if err != nil {
		return nil, fmt.Errorf("%w: exchange answer: %v", wallet.ErrMalformed, bodyReason(err))
	}
	a := &exchangeAnswer{tokens: tokenValues(body)}
	if raw, ok := obj.get("result"); ok {
		var res wallet.Result
		if err := json.Unmarshal(raw, &res); err != nil {
			return nil, fmt.Errorf("%w: exchange answer: result is not an object of strings", wallet.ErrMalformed)
		}
		a.result = res
	}
	resultRaw, _ := json.Marshal(a.result) // strings always marshal
	a.app = object{{key: "result", raw: resultRaw}}
	for _, k := range answerFields[1:] {
		if raw, ok := obj.get(k); ok {
			a.app = append(a.app, member{key: k, raw: raw})
		}
	}
	if a.result.ResultStatus != wallet.StatusSuccess {
		return a, nil
	}
	str := func(k string) (string, error) {
		s, _, err := obj.str(k)
		if err != nil {
			return "", fmt.Errorf("%w: exchange answer: %s is not a string", wallet.ErrMalformed, k)
		}
		return s, nil
	}
	var f [5]string
	for i, k := range []string{"customerId", "accessToken", "refreshToken", "accessTokenExpiryTime", "refreshTokenExpiryTime"} {
		if f[i], err = str(k); err != nil {
			return nil, err
		}
	}
	if wallet.ValidCustomerID(f[0]) != nil {
		return nil, fmt.Errorf("%w: customerId missing or invalid", wallet.ErrMalformed)
	}
	if f[1] == "" || f[2] == "" {
		return nil, fmt.Errorf("%w: token missing", wallet.ErrMalformed)
	}
	// The customer id goes into log lines, Redis key names and admin
	// paths: one that holds a token would carry it there.
	if strings.Contains(f[0], f[1]) || strings.Contains(f[0], f[2]) {
		return nil, fmt.Errorf("%w: customerId holds a token", wallet.ErrMalformed)
	}
	pair := &wallet.TokenResponse{CustomerID: f[0], AccessToken: wallet.Secret(f[1]), RefreshToken: wallet.Secret(f[2])}
	if pair.AccessTokenExpiry, err = wallet.ParseDateTime(f[3]); err != nil {
		return nil, fmt.Errorf("%w: accessTokenExpiryTime: %v", wallet.ErrMalformed, err)
	}
	if f[4] != "" {
		if pair.RefreshTokenExpiry, err = wallet.ParseDateTime(f[4]); err != nil {
			return nil, fmt.Errorf("%w: refreshTokenExpiryTime: %v", wallet.ErrMalformed, err)
		}
	}
	a.pair = pair
	return a, nil
}

// withHandles returns the answer with the app's handles where the wallet's
// answer had the tokens.
func (o object) withHandles(access, refresh wallet.Secret) object {
	out := append(object(nil), o...)
	for _, m := range []struct {
		key string
		v   wallet.Secret
	}{{"accessToken", access}, {"refreshToken", refresh}} {
		raw, _ := json.Marshal(m.v.Reveal()) // a string always marshals
		out = append(out, member{key: m.key, raw: raw})
	}
	return out
}
