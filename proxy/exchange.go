package proxy

import (
	"encoding/json"
	"net/http"
	"strings"

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
	if h.cfg.Handles {
		if grant, _, _ := obj.str("grantType"); grant == "REFRESH_TOKEN" {
			return h.serveHandleRefresh(w, c, obj)
		}
	}
	if err := checkExchange(obj); err != nil {
		return err
	}
	obj = obj.withoutTokenFields()
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
	resp.Header.Del(wallet.HeaderClientID)
	resp.Header.Del(wallet.HeaderResponseTime)
	resp.Header.Del(wallet.HeaderSignature)
	resp.Body = answer.app.marshal()
	if answer.pair == nil { // F or U: the wallet's status, the rebuilt body
		h.writeWalletResponse(w, c, resp, answer.forms())
		return nil
	}
	pair := answer.pair
	replay := make(map[string]json.RawMessage)
	for _, m := range obj.without(notReplayed...) {
		replay[m.key] = m.raw
	}
	ex := refresher.Exchange{Path: c.target.path, Replay: replay, Pair: pair}
	var handles []wallet.Secret
	if h.cfg.Handles {
		ex.AccessHandle, ex.RefreshHandle = newHandle(pair.CustomerID), newHandle(pair.CustomerID)
		handles = []wallet.Secret{ex.AccessHandle, ex.RefreshHandle}
	}
	if err := h.cfg.Tokens.Install(c.r.Context(), ex); err != nil {
		return err
	}
	h.log.Info("authorization code exchanged", append([]any{"customer", pair.CustomerID, "access_token_expiry", pair.AccessTokenExpiry}, logIDs(c.pass)...)...)
	h.writeWalletResponse(w, c, resp, answer.forms(), handles...) // the pair's tokens and any other
	return nil
}

// serveHandleRefresh answers an app's REFRESH_TOKEN grant that presents a
// refresh handle: S with the current expiry times and the same handles,
// without calling the wallet (refreshing is the proxy's job; the app's
// handles stay valid across refreshes). Anything but a handle is refused
// as any refresh grant is; an unknown or superseded handle is 401.
func (h *Handler) serveHandleRefresh(w http.ResponseWriter, c *call, obj object) error {
	presented, _, err := obj.str("refreshToken")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(presented, handlePrefix) {
		return badRequest("refresh tokens never leave the proxy; it refreshes by itself")
	}
	id, ok := handleCustomer(presented)
	if !ok {
		return unknownHandle()
	}
	hs, err := h.cfg.Tokens.Handles(c.r.Context(), id)
	if err != nil {
		return err
	}
	if !sameHandle(hs.Refresh, wallet.Secret(presented)) {
		return unknownHandle()
	}
	answer := object{{key: "result", raw: json.RawMessage(`{"resultStatus":"S","resultCode":"SUCCESS","resultMessage":"success"}`)}}
	answer = append(answer, member{key: "customerId", raw: jsonString(id)},
		member{key: "accessTokenExpiryTime", raw: jsonString(wallet.FormatTime(hs.AccessTokenExpiry))})
	if !hs.RefreshTokenExpiry.IsZero() {
		answer = append(answer, member{key: "refreshTokenExpiryTime", raw: jsonString(wallet.FormatTime(hs.RefreshTokenExpiry))})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(answer.withHandles(hs.Access, hs.Refresh).marshal())
	return nil
}

func jsonString(s string) json.RawMessage {
	b, _ := json.Marshal(s) // a string always marshals
	return b
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
