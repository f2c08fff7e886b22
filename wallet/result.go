package wallet

import (
	"encoding/json"
	"fmt"
)

// Result statuses.
const (
	StatusSuccess = "S"
	StatusFailed  = "F"
	StatusUnknown = "U"
)

// Result codes of wallet-protocol.md, plus the ones the proxy makes itself.
const (
	CodeSuccess                 = "SUCCESS"
	CodeProcessFail             = "PROCESS_FAIL"
	CodeParamIllegal            = "PARAM_ILLEGAL"
	CodeInvalidAPI              = "INVALID_API"
	CodeAccessDenied            = "ACCESS_DENIED"
	CodeTrafficExceedLimit      = "REQUEST_TRAFFIC_EXCEED_LIMIT"
	CodeExpiredAccessToken      = "EXPIRED_ACCESS_TOKEN"
	CodeInvalidAccessToken      = "INVALID_ACCESS_TOKEN"
	CodeInvalidSignature        = "INVALID_SIGNATURE"
	CodeKeyNotFound             = "KEY_NOT_FOUND"
	CodeInvalidClient           = "INVALID_CLIENT"
	CodeUnknownException        = "UNKNOWN_EXCEPTION"
	CodeUnsupportedGrantType    = "AUTH_CLIENT_UNSUPPORTED_GRANT_TYPE"
	CodeInvalidRefreshToken     = "INVALID_REFRESH_TOKEN"
	CodeExpiredRefreshToken     = "EXPIRED_REFRESH_TOKEN"
	CodeUsedRefreshToken        = "USED_REFRESH_TOKEN"
	CodeInvalidCode             = "INVALID_CODE"
	CodeUsedCode                = "USED_CODE"
	CodeExpiredCode             = "EXPIRED_CODE"
	CodeMethodNotAllowed        = "METHOD_NOT_ALLOWED"
	CodeCustomerNotAuthorized   = "CUSTOMER_NOT_AUTHORIZED"
	CodeReauthorizationRequired = "REAUTHORIZATION_REQUIRED"
	CodeInvalidWalletSignature  = "INVALID_WALLET_SIGNATURE"
	CodeWalletTimeout           = "WALLET_TIMEOUT"
	CodeWalletUnavailable       = "WALLET_UNAVAILABLE"
	CodeTokenStoreUnavailable   = "TOKEN_STORE_UNAVAILABLE"
	// CodeOther stands for a wallet code the proxy does not keep (see
	// keptResult).
	CodeOther = "OTHER"
)

// protocolCodes are the codes above: never taken for an echo of the
// request.
var protocolCodes = map[string]bool{}

func init() {
	for _, c := range []string{CodeSuccess, CodeProcessFail, CodeParamIllegal, CodeInvalidAPI, CodeAccessDenied,
		CodeTrafficExceedLimit, CodeExpiredAccessToken, CodeInvalidAccessToken, CodeInvalidSignature, CodeKeyNotFound,
		CodeInvalidClient, CodeUnknownException, CodeUnsupportedGrantType, CodeInvalidRefreshToken, CodeExpiredRefreshToken,
		CodeUsedRefreshToken, CodeInvalidCode, CodeUsedCode, CodeExpiredCode, CodeMethodNotAllowed, CodeCustomerNotAuthorized,
		CodeReauthorizationRequired, CodeInvalidWalletSignature, CodeWalletTimeout, CodeWalletUnavailable, CodeTokenStoreUnavailable} {
		protocolCodes[c] = true
	}
}

// Result is the envelope's result object.
type Result struct {
	ResultStatus  string `json:"resultStatus"`
	ResultCode    string `json:"resultCode"`
	ResultMessage string `json:"resultMessage,omitempty"`
}

// IsRefreshTokenRejection reports the three F codes that end a refresh
// token for good: only these make a customer reauthorization_required.
func IsRefreshTokenRejection(code string) bool {
	switch code {
	case CodeInvalidRefreshToken, CodeExpiredRefreshToken, CodeUsedRefreshToken:
		return true
	}
	return false
}

// IsAccessTokenRejection reports the codes that say the access token the
// call carried is no longer good.
func IsAccessTokenRejection(code string) bool {
	return code == CodeExpiredAccessToken || code == CodeInvalidAccessToken
}

// Envelope renders {"result":{...}} with the given status, code and message.
func Envelope(status, code, message string) []byte {
	b, err := json.Marshal(struct {
		Result Result `json:"result"`
	}{Result{ResultStatus: status, ResultCode: code, ResultMessage: message}})
	if err != nil { // cannot happen for strings
		panic(fmt.Sprintf("envelope: %v", err))
	}
	return b
}

// Error is a wallet answer with status F or U: the call reached the wallet
// and was refused (F) or has an unknown outcome (U). It carries no token.
type Error struct {
	HTTPStatus int
	Result
}

func (e *Error) Error() string {
	return fmt.Sprintf("wallet answered %s %s (HTTP %d)", e.ResultStatus, e.ResultCode, e.HTTPStatus)
}
