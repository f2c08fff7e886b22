package walletsim

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// Field limits of wallet-protocol.md.
const (
	maxAuthCode     = 64
	maxToken        = 128
	maxExtendInfo   = 4096
	maxV2Field      = 128
	successMessage  = "success"
	nickNamePrefix  = "Sim User "
	maxGrantTypeLen = 64
)

var successResult = wallet.Result{ResultStatus: wallet.StatusSuccess, ResultCode: wallet.CodeSuccess, ResultMessage: successMessage}

// tokenAnswer is the body of an applyToken S answer.
type tokenAnswer struct {
	Result                 wallet.Result   `json:"result"`
	AccessToken            string          `json:"accessToken"`
	AccessTokenExpiryTime  string          `json:"accessTokenExpiryTime"`
	RefreshToken           string          `json:"refreshToken"`
	RefreshTokenExpiryTime string          `json:"refreshTokenExpiryTime"`
	CustomerID             string          `json:"customerId"`
	ExtendInfo             json.RawMessage `json:"extendInfo,omitempty"`
	AppID                  string          `json:"appId,omitempty"`
	AuthClientID           string          `json:"authClientId,omitempty"`
	CustomerBelongsTo      string          `json:"customerBelongsTo,omitempty"`
}

// formatExpiry renders an expiry time as ISO 8601 with milliseconds and offset.
func formatExpiry(t time.Time) string { return wallet.FormatTime(t) }

func paramIllegal(msg string) bodyAnswer {
	a := fail(wallet.CodeParamIllegal, msg)
	return bodyAnswer{a, a.render()}
}

func failBody(code, msg string) bodyAnswer {
	a := fail(code, msg)
	return bodyAnswer{a, a.render()}
}

// extendInfo returns the raw extendInfo to echo: a string passing the field
// rule, or any other JSON value, at most maxExtendInfo long.
func extendInfo(f fieldMap) (json.RawMessage, string) {
	raw, ok := f["extendInfo"]
	if !ok || string(raw) == "null" {
		return nil, ""
	}
	if len(raw) > 0 && raw[0] == '"' {
		if _, err := f.str("extendInfo", maxExtendInfo); err != nil {
			return nil, err.Error()
		}
		return raw, ""
	}
	if len(raw) > maxExtendInfo {
		return nil, "extendInfo: too long"
	}
	return raw, ""
}

func (s *Server) applyToken(rel string, f fieldMap) bodyAnswer {
	grant, err := f.str("grantType", maxGrantTypeLen)
	if err != nil {
		return paramIllegal(err.Error())
	}
	if grant == "" {
		return paramIllegal("grantType is required")
	}
	ext, msg := extendInfo(f)
	if msg != "" {
		return paramIllegal(msg)
	}
	ans := tokenAnswer{Result: successResult, ExtendInfo: ext}
	if rel == PathApplyTokenV2 {
		for _, v := range []struct {
			name string
			dst  *string
		}{
			{"appId", &ans.AppID},
			{"authClientId", &ans.AuthClientID},
			{"customerBelongsTo", &ans.CustomerBelongsTo},
		} {
			if *v.dst, err = f.str(v.name, maxV2Field); err != nil {
				return paramIllegal(err.Error())
			}
		}
	}

	var (
		p    pair
		code string
		now  = s.now()
	)
	switch grant {
	case GrantAuthorizationCode:
		authCode, err := f.str("authCode", maxAuthCode)
		if err != nil {
			return paramIllegal(err.Error())
		}
		if authCode == "" {
			return paramIllegal("authCode is required for AUTHORIZATION_CODE")
		}
		if p, code = s.tokens.exchange(authCode, now); code == wallet.CodeUsedCode {
			s.stats.codeReused()
		}
	case GrantRefreshToken:
		rt, err := f.str("refreshToken", maxToken)
		if err != nil {
			return paramIllegal(err.Error())
		}
		if rt == "" {
			return paramIllegal("refreshToken is required for REFRESH_TOKEN")
		}
		s.stats.refreshPresented()
		var replacedExpiry time.Time
		p, replacedExpiry, code = s.tokens.rotate(rt, now)
		switch code {
		case "":
			s.stats.refreshed(now, replacedExpiry)
		case wallet.CodeUsedRefreshToken:
			s.stats.refreshTokenReused()
		}
	default:
		return failBody(wallet.CodeUnsupportedGrantType, "grantType must be AUTHORIZATION_CODE or REFRESH_TOKEN")
	}
	if code != "" {
		return failBody(code, codeMessages[code])
	}
	s.stats.issued(grant)
	ans.AccessToken = p.access
	ans.AccessTokenExpiryTime = formatExpiry(p.accessExpiry)
	ans.RefreshToken = p.refresh
	ans.RefreshTokenExpiryTime = formatExpiry(p.refreshExpiry)
	ans.CustomerID = p.customerID
	return success(ans)
}

var codeMessages = map[string]string{
	wallet.CodeInvalidCode:         "The authorization code is invalid.",
	wallet.CodeUsedCode:            "The authorization code has been used.",
	wallet.CodeExpiredCode:         "The authorization code is expired.",
	wallet.CodeInvalidRefreshToken: "The refresh token is invalid.",
	wallet.CodeUsedRefreshToken:    "The refresh token has been used.",
	wallet.CodeExpiredRefreshToken: "The refresh token is expired.",
	wallet.CodeInvalidAccessToken:  "The access token is invalid.",
	wallet.CodeExpiredAccessToken:  "The access token is expired.",
}

func success(v any) bodyAnswer {
	b, err := json.Marshal(v)
	if err != nil { // only strings and raw JSON already checked
		a := answer{http.StatusOK, wallet.StatusUnknown, wallet.CodeUnknownException, "render answer"}
		return bodyAnswer{a, a.render()}
	}
	return bodyAnswer{answer{http.StatusOK, wallet.StatusSuccess, wallet.CodeSuccess, successMessage}, b}
}

// userInfo is what inquiryUserInfo tells about a customer.
type userInfo struct {
	UserID   string `json:"userId"`
	NickName string `json:"nickName"`
	Status   string `json:"status"`
}

func (s *Server) inquiryUserInfo(f fieldMap) bodyAnswer {
	token, err := f.str("accessToken", maxToken)
	if err != nil {
		return paramIllegal(err.Error())
	}
	if token == "" {
		return paramIllegal("accessToken is required")
	}
	ext, msg := extendInfo(f)
	if msg != "" {
		return paramIllegal(msg)
	}
	customerID, code := s.tokens.customerOf(token, s.now())
	if code != "" {
		return failBody(code, codeMessages[code])
	}
	return success(struct {
		Result     wallet.Result   `json:"result"`
		UserInfo   userInfo        `json:"userInfo"`
		ExtendInfo json.RawMessage `json:"extendInfo,omitempty"`
	}{successResult, userInfo{UserID: customerID, NickName: nickNamePrefix + customerID, Status: "ACTIVE"}, ext})
}
