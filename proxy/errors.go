package proxy

import (
	"errors"
	"net/http"

	"github.com/tokenproxy/tokenproxy/refresher"
	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// proxyError is an answer the proxy makes itself, in the wallet's envelope.
type proxyError struct {
	status  int
	code    string
	result  string // F or U
	message string
}

func (e *proxyError) Error() string { return e.code + ": " + e.message }

func failF(status int, code, message string) *proxyError {
	return &proxyError{status: status, code: code, result: wallet.StatusFailed, message: message}
}

func failU(status int, code, message string) *proxyError {
	return &proxyError{status: status, code: code, result: wallet.StatusUnknown, message: message}
}

func badRequest(message string) *proxyError {
	return failF(http.StatusBadRequest, wallet.CodeParamIllegal, message)
}

// classify maps an error of the token source or the wallet client to the
// contract's error table. Messages are fixed strings: an error's own text
// never reaches the app.
func classify(err error) *proxyError {
	var pe *proxyError
	var se *tokencache.SealError
	switch {
	case errors.As(err, &pe):
		return pe
	case errors.Is(err, errBody):
		return badRequest("request body rejected: " + bodyReason(err))
	case errors.Is(err, refresher.ErrNotAuthorized):
		return failF(http.StatusUnauthorized, wallet.CodeCustomerNotAuthorized, "no tokens are stored for this customer")
	case errors.Is(err, refresher.ErrReauthorizationRequired):
		return failF(http.StatusUnauthorized, wallet.CodeReauthorizationRequired, "the customer must authorize again")
	case errors.As(err, &se), errors.Is(err, tokencache.ErrUnavailable), errors.Is(err, tokencache.ErrCorrupt):
		return failU(http.StatusServiceUnavailable, wallet.CodeTokenStoreUnavailable, "the token store is unavailable")
	case errors.Is(err, wallet.ErrBadSignature):
		return failU(http.StatusBadGateway, wallet.CodeInvalidWalletSignature, "the wallet response failed signature verification")
	case errors.Is(err, wallet.ErrTimeout):
		return failU(http.StatusGatewayTimeout, wallet.CodeWalletTimeout, "the wallet did not answer in time")
	default: // wallet.ErrUnavailable, wallet.ErrMalformed, *wallet.Error of a refresh, anything else
		return failU(http.StatusBadGateway, wallet.CodeWalletUnavailable, "the wallet is unavailable")
	}
}

// bodyReason is the part of a body error after "body: ", which names the
// rule broken and never quotes values beyond a truncated key.
func bodyReason(err error) string {
	msg := err.Error()
	const p = "body: "
	for i := 0; i+len(p) <= len(msg); i++ {
		if msg[i:i+len(p)] == p {
			return msg[i+len(p):]
		}
	}
	return msg
}
