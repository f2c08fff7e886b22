package wallet_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

func TestSigningContent(t *testing.T) {
	tests := []struct {
		name                        string
		method, uri, client, tstamp string
		body                        string
		want                        string
	}{
		{
			name: "documented example", method: "POST", uri: "/v1/authorizations/applyToken",
			client: "TEST_CLIENT", tstamp: "2019-05-28T12:12:12.000+08:00",
			body: `{"grantType":"AUTHORIZATION_CODE","authCode":"abc"}`,
			want: "POST /v1/authorizations/applyToken\nTEST_CLIENT.2019-05-28T12:12:12.000+08:00." + `{"grantType":"AUTHORIZATION_CODE","authCode":"abc"}`,
		},
		{
			name: "prefix and query", method: "POST", uri: "/api/v1/x?a=1&b=%2F",
			client: "C", tstamp: "1716890000123", body: "{}",
			want: "POST /api/v1/x?a=1&b=%2F\nC.1716890000123.{}",
		},
		{
			name: "empty body", method: "POST", uri: "/v1/x", client: "C", tstamp: "1",
			want: "POST /v1/x\nC.1.",
		},
		{
			name: "body bytes kept as they are", method: "POST", uri: "/v1/x", client: "C", tstamp: "1",
			body: "{\n \"a\": \"é\\u00e9\" }\n",
			want: "POST /v1/x\nC.1.{\n \"a\": \"é\\u00e9\" }\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := wallet.SigningContent(tt.method, tt.uri, tt.client, tt.tstamp, []byte(tt.body))
			if string(got) != tt.want {
				t.Errorf("SigningContent =\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	k := privateKey(t, "merchant_pkcs8.pem")
	for _, content := range []string{"", "x", "POST /v1/x\nC.1.{}", strings.Repeat("é", 10000)} {
		sig, err := wallet.Sign(k, []byte(content))
		if err != nil {
			t.Fatal(err)
		}
		if strings.ContainsAny(sig, "+/=") {
			t.Errorf("Sign = %q, want it URL-encoded", sig)
		}
		raw, err := url.QueryUnescape(sig)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{sig, raw} {
			if err := wallet.Verify(&k.PublicKey, []byte(content), s); err != nil {
				t.Errorf("Verify(%.20q...): %v", s, err)
			}
		}
		if err := wallet.Verify(&k.PublicKey, []byte(content+" "), sig); !errors.Is(err, wallet.ErrBadSignature) {
			t.Errorf("Verify of changed content = %v, want ErrBadSignature", err)
		}
	}
}

func TestParseSignatureHeader(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    wallet.SignatureHeader
		wantErr bool
	}{
		{
			name: "as sent",
			in:   "algorithm=RSA256,keyVersion=1,signature=KEFt%2B%2Fx%3D",
			want: wallet.SignatureHeader{Algorithm: "RSA256", KeyVersion: "1", Signature: "KEFt%2B%2Fx%3D"},
		},
		{
			name: "spaces and another order",
			in:   " signature=abc , keyVersion=2 ,algorithm=RSA256 ",
			want: wallet.SignatureHeader{Algorithm: "RSA256", KeyVersion: "2", Signature: "abc"},
		},
		{
			name: "unencoded base64 keeps its padding",
			in:   "algorithm=RSA256,keyVersion=1,signature=ab+/cd==",
			want: wallet.SignatureHeader{Algorithm: "RSA256", KeyVersion: "1", Signature: "ab+/cd=="},
		},
		{
			name: "no keyVersion",
			in:   "algorithm=RSA256,signature=abc",
			want: wallet.SignatureHeader{Algorithm: "RSA256", Signature: "abc"},
		},
		{
			name: "unknown field ignored",
			in:   "algorithm=RSA256,keyVersion=1,signature=abc,extra=1",
			want: wallet.SignatureHeader{Algorithm: "RSA256", KeyVersion: "1", Signature: "abc"},
		},
		{name: "empty", in: "", wantErr: true},
		{name: "garbage", in: "garbage", wantErr: true},
		{name: "bare signature", in: "S0VGdA==", wantErr: true},
		{name: "no algorithm", in: "keyVersion=1,signature=abc", wantErr: true},
		{name: "other algorithm", in: "algorithm=RSA512,keyVersion=1,signature=abc", wantErr: true},
		{name: "algorithm in lower case", in: "algorithm=rsa256,keyVersion=1,signature=abc", wantErr: true},
		{name: "no signature", in: "algorithm=RSA256,keyVersion=1", wantErr: true},
		{name: "empty signature", in: "algorithm=RSA256,keyVersion=1,signature=", wantErr: true},
		{name: "part without =", in: "algorithm=RSA256,keyVersion,signature=abc", wantErr: true},
		{name: "trailing comma", in: "algorithm=RSA256,keyVersion=1,signature=abc,", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := wallet.ParseSignatureHeader(tt.in)
			if tt.wantErr {
				if !errors.Is(err, wallet.ErrBadSignature) {
					t.Errorf("ParseSignatureHeader(%q) = %+v, %v; want ErrBadSignature", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseSignatureHeader(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFormatSignatureHeaderRoundTrip(t *testing.T) {
	h := wallet.FormatSignatureHeader("2024.1", "ab%2Bcd%3D")
	if want := "algorithm=RSA256,keyVersion=2024.1,signature=ab%2Bcd%3D"; h != want {
		t.Errorf("FormatSignatureHeader = %q, want %q", h, want)
	}
	got, err := wallet.ParseSignatureHeader(h)
	want := wallet.SignatureHeader{Algorithm: "RSA256", KeyVersion: "2024.1", Signature: "ab%2Bcd%3D"}
	if err != nil || got != want {
		t.Errorf("ParseSignatureHeader(FormatSignatureHeader) = %+v, %v", got, err)
	}
}

func TestFormatTime(t *testing.T) {
	tests := []struct {
		in   time.Time
		want string
	}{
		{time.Date(2019, 5, 28, 12, 12, 12, 0, time.FixedZone("", 8*3600)), "2019-05-28T12:12:12.000+08:00"},
		{time.Date(2019, 5, 28, 12, 12, 12, 123456789, time.FixedZone("", 8*3600)), "2019-05-28T12:12:12.123+08:00"},
		{time.Date(2024, 2, 29, 23, 59, 59, 999999999, time.FixedZone("", -(3*3600+1800))), "2024-02-29T23:59:59.999-03:30"},
		{time.Date(2019, 5, 28, 4, 12, 12, 5e6, time.UTC), "2019-05-28T04:12:12.005Z"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := wallet.FormatTime(tt.in); got != tt.want {
				t.Errorf("FormatTime = %q, want %q", got, tt.want)
			}
		})
	}
}

// 2019-05-28T04:12:12Z.
var refInstant = time.Unix(1559016732, 0)

func TestParseTime(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{in: "2019-05-28T12:12:12+08:00", want: refInstant},
		{in: "2019-05-28T12:12:12.000+08:00", want: refInstant},
		{in: "2019-05-28T12:12:12.123+08:00", want: refInstant.Add(123 * time.Millisecond)},
		{in: "2019-05-28T04:12:12Z", want: refInstant},
		{in: "2019-05-27T23:42:12.5-04:30", want: refInstant.Add(500 * time.Millisecond)},
		{in: "1559016732000", want: refInstant},                                        // Unix ms
		{in: "1559016732123", want: refInstant.Add(123 * time.Millisecond)},            // Unix ms
		{in: "1559016732000000000", want: refInstant},                                  // Unix ns
		{in: "1559016732123456789", want: refInstant.Add(123456789 * time.Nanosecond)}, // Unix ns

		{in: "", wantErr: true},
		{in: "garbage", wantErr: true},
		{in: "0", wantErr: true},
		{in: "-1559016732000", wantErr: true},
		{in: "99999999999999999999", wantErr: true}, // over int64
		{in: "1559016732.5", wantErr: true},
		{in: "2019-05-28T12:12:12", wantErr: true}, // no offset
		{in: "2019-05-28", wantErr: true},
		{in: "12:12:12+08:00", wantErr: true},
		{in: "2019-13-28T12:12:12+08:00", wantErr: true},
		{in: "2019-05-28T12:12:12+08:00 ", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := wallet.ParseTime(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Errorf("ParseTime(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil || !got.Equal(tt.want) {
				t.Errorf("ParseTime(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseDateTime(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{in: "2019-06-06T12:12:12+08:00", want: time.Unix(1559794332, 0)},
		{in: "2019-06-06T04:12:12Z", want: time.Unix(1559794332, 0)},
		{in: "2019-06-06T12:12:12.250+08:00", want: time.Unix(1559794332, 250e6)},
		{in: "", wantErr: true},
		{in: "1559794332000", wantErr: true}, // not a date-time
		{in: "2019-06-06T12:12:12", wantErr: true},
		{in: "2019-06-06 12:12:12+08:00", wantErr: true},
		{in: "tomorrow", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := wallet.ParseDateTime(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Errorf("ParseDateTime(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil || !got.Equal(tt.want) {
				t.Errorf("ParseDateTime(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

// What the proxy sends, a verifier reads back to the millisecond.
func TestFormatTimeParseTimeRoundTrip(t *testing.T) {
	zones := []*time.Location{time.UTC, time.FixedZone("", 8*3600), time.FixedZone("", -(9*3600 + 30*60))}
	for i, z := range zones {
		in := time.Unix(1716890000, int64(i)*123456789+987654).In(z)
		got, err := wallet.ParseTime(wallet.FormatTime(in))
		if err != nil {
			t.Fatal(err)
		}
		if want := in.Truncate(time.Millisecond); !got.Equal(want) {
			t.Errorf("ParseTime(FormatTime(%v)) = %v, want %v", in, got, want)
		}
	}
}
