package wallet_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/tokenproxy/tokenproxy/wallet"
)

func TestEnvelope(t *testing.T) {
	tests := []struct {
		status, code, message string
		want                  string
	}{
		{"S", "SUCCESS", "success", `{"result":{"resultStatus":"S","resultCode":"SUCCESS","resultMessage":"success"}}`},
		{"F", "INVALID_REFRESH_TOKEN", "", `{"result":{"resultStatus":"F","resultCode":"INVALID_REFRESH_TOKEN"}}`},
		{"U", "WALLET_TIMEOUT", `wallet said "<busy>" & é`, `{"result":{"resultStatus":"U","resultCode":"WALLET_TIMEOUT","resultMessage":"wallet said \"\u003cbusy\u003e\" \u0026 é"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			got := wallet.Envelope(tt.status, tt.code, tt.message)
			if string(got) != tt.want {
				t.Errorf("Envelope = %s, want %s", got, tt.want)
			}
			var back struct{ Result wallet.Result }
			if err := json.Unmarshal(got, &back); err != nil {
				t.Fatal(err)
			}
			if want := (wallet.Result{ResultStatus: tt.status, ResultCode: tt.code, ResultMessage: tt.message}); back.Result != want {
				t.Errorf("round trip = %+v, want %+v", back.Result, want)
			}
		})
	}
}

func TestError(t *testing.T) {
	tests := []struct {
		status      string
		code        string
		httpStatus  int
		wantUnknown bool
		wantText    string
	}{
		{"F", "INVALID_REFRESH_TOKEN", 200, false, "wallet answered F INVALID_REFRESH_TOKEN (HTTP 200)"},
		{"U", "UNKNOWN_EXCEPTION", 200, true, "wallet answered U UNKNOWN_EXCEPTION (HTTP 200)"},
		{"", "", 500, true, "wallet answered   (HTTP 500)"}, // a JSON answer with no result: outcome unknown
	}
	for _, tt := range tests {
		t.Run(tt.status+tt.code, func(t *testing.T) {
			var err error = &wallet.Error{HTTPStatus: tt.httpStatus, Result: wallet.Result{ResultStatus: tt.status, ResultCode: tt.code, ResultMessage: "msg"}}
			var we *wallet.Error
			if !errors.As(fmt.Errorf("refresh: %w", err), &we) {
				t.Fatal("errors.As does not find *wallet.Error")
			}
			if unknown := we.ResultStatus != wallet.StatusFailed; unknown != tt.wantUnknown {
				t.Errorf("outcome unknown = %v, want %v", unknown, tt.wantUnknown)
			}
			if err.Error() != tt.wantText {
				t.Errorf("Error() = %q, want %q", err.Error(), tt.wantText)
			}
		})
	}
}

func TestRejectionCodes(t *testing.T) {
	tests := []struct {
		code                string
		refresh, accessCode bool
	}{
		{wallet.CodeInvalidRefreshToken, true, false},
		{wallet.CodeExpiredRefreshToken, true, false},
		{wallet.CodeUsedRefreshToken, true, false},
		{wallet.CodeExpiredAccessToken, false, true},
		{wallet.CodeInvalidAccessToken, false, true},
		{wallet.CodeTrafficExceedLimit, false, false},
		{wallet.CodeInvalidSignature, false, false},
		{wallet.CodeKeyNotFound, false, false},
		{wallet.CodeUnknownException, false, false},
		{wallet.CodeUsedCode, false, false},
		{"", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			if got := wallet.IsRefreshTokenRejection(tt.code); got != tt.refresh {
				t.Errorf("IsRefreshTokenRejection = %v, want %v", got, tt.refresh)
			}
			if got := wallet.IsAccessTokenRejection(tt.code); got != tt.accessCode {
				t.Errorf("IsAccessTokenRejection = %v, want %v", got, tt.accessCode)
			}
		})
	}
}
