package wallet

import "testing"

func TestKeptResult(t *testing.T) {
	request := []byte(`{"grantType":"REFRESH_TOKEN","refreshToken":"RT_0123456789ABCDEF","note":"INVALID_CODE"}`)
	tests := []struct {
		in, want Result
	}{
		{Result{ResultStatus: "S", ResultCode: "SUCCESS"}, Result{ResultStatus: "S", ResultCode: "SUCCESS"}},
		{Result{}, Result{}},
		{Result{ResultStatus: "F", ResultCode: "INSUFFICIENT_BALANCE"}, Result{ResultStatus: "F", ResultCode: "INSUFFICIENT_BALANCE"}},
		// The protocol's codes are kept even when the request holds them.
		{Result{ResultStatus: "F", ResultCode: "INVALID_CODE"}, Result{ResultStatus: "F", ResultCode: "INVALID_CODE"}},
		// Echoes of the request and codes of another shape are not.
		{Result{ResultStatus: "F", ResultCode: "RT_0123456789ABCDEF"}, Result{ResultStatus: "F", ResultCode: CodeOther}},
		{Result{ResultStatus: "U", ResultCode: "rt: RT_0123456789ABCDEF"}, Result{ResultStatus: "U", ResultCode: CodeOther}},
		{Result{ResultStatus: "RT_0123456789ABCDEF", ResultCode: "UNKNOWN_EXCEPTION"}, Result{ResultStatus: "U", ResultCode: "UNKNOWN_EXCEPTION"}},
	}
	for _, tt := range tests {
		if got := keptResult(tt.in, request); got != tt.want {
			t.Errorf("keptResult(%+v) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}
