package proxy

import (
	"encoding/json"
	"net/http"

	"github.com/tokenproxy/tokenproxy/refresher"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// Field limits of the applyToken request (wallet-protocol.md).
const (
	maxAuthCode   = 64
	maxExtendInfo = 4096
)

// notReplayed are the exchange request fields a refresh must not repeat.
var notReplayed = []string{"grantType", "authCode", "refreshToken", "accessToken"}

// serveExchange exchanges an authorization code: validate, sign, call the
// wallet, store the pair, and answer with the allow-listed fields of the
// wallet's answer, read once (readExchangeAnswer).
func (h *Handler) serveExchange(w http.ResponseWriter, c *call) error {
	obj, err := h.readObject(w, c)
	if err != nil {
		return err
	}
	if err := checkExchange(obj); err != nil {
		return err
	}
	obj = obj.without("accessToken", "refreshToken")
	resp, err := h.call(c, obj.marshal())
	if err != nil {
		return err
	}
	answer, err := readExchangeAnswer(resp.Body)
	if err != nil {
		return err // malformed: 502, nothing stored
	}
	// The exchange answer never carries the wallet's Response-Time and
	// Signature: its body is no longer the one the wallet signed.
	resp.Header.Del(wallet.HeaderResponseTime)
	resp.Header.Del(wallet.HeaderSignature)
	resp.Body = answer.app.marshal()
	if answer.pair == nil { // F or U: the wallet's status, the rebuilt body
		h.writeWalletResponse(w, resp, formsOf(answer.carried...))
		return nil
	}
	pair := answer.pair
	replay := make(map[string]json.RawMessage)
	for _, m := range obj.without(notReplayed...) {
		replay[m.key] = m.raw
	}
	if err := h.cfg.Tokens.Install(c.r.Context(), refresher.Exchange{Path: c.target.path, Replay: replay, Pair: pair}); err != nil {
		return err
	}
	h.log.Info("authorization code exchanged", append([]any{"customer", pair.CustomerID, "access_token_expiry", pair.AccessTokenExpiry}, logIDs(c.pass)...)...)
	h.writeWalletResponse(w, resp, formsOf(pair.AccessToken, pair.RefreshToken))
	return nil
}

// checkExchange applies the applyToken request rules before anything
// reaches the wallet.
func checkExchange(obj object) error {
	grant, ok, err := obj.str("grantType")
	switch {
	case err != nil:
		return err
	case !ok || grant == "":
		return badRequest("grantType is required")
	case grant == "REFRESH_TOKEN":
		return badRequest("refresh tokens never leave the proxy; it refreshes by itself")
	case grant != "AUTHORIZATION_CODE":
		return failF(http.StatusBadRequest, wallet.CodeUnsupportedGrantType, "grantType must be AUTHORIZATION_CODE")
	}
	code, ok, err := obj.str("authCode")
	if err != nil {
		return err
	}
	if !ok || code == "" {
		return badRequest("authCode is required")
	}
	if err := wallet.ValidField(code, maxAuthCode); err != nil {
		return badRequest("authCode: " + err.Error())
	}
	if info, ok, err := obj.str("extendInfo"); err != nil {
		return err
	} else if ok {
		if err := wallet.ValidField(info, maxExtendInfo); err != nil {
			return badRequest("extendInfo: " + err.Error())
		}
	}
	return nil
}
