package wallet_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/tokenproxy/tokenproxy/wallet"
)

const secretValue = "AT-secret-281010033AB2F588D14B"

func TestSecretFmt(t *testing.T) {
	s := wallet.Secret(secretValue)
	type holder struct {
		Access  wallet.Secret
		Refresh *wallet.Secret
	}
	values := map[string]any{
		"value":             s,
		"pointer":           &s,
		"struct":            holder{Access: s, Refresh: &s},
		"pointer to struct": &holder{Access: s},
		"slice":             []wallet.Secret{s, s},
		"map":               map[string]wallet.Secret{"k": s},
		"TokenResponse":     wallet.TokenResponse{CustomerID: "c1", AccessToken: s, RefreshToken: s},
		"error":             fmt.Errorf("refresh: %v", s),
		"wrapped error":     fmt.Errorf("outer: %w", fmt.Errorf("inner %s", s)),
	}
	for name, v := range values {
		for _, verb := range []string{"%v", "%s", "%q", "%+v", "%#v", "%x"} {
			t.Run(name+"/"+verb, func(t *testing.T) {
				out := fmt.Sprintf(verb, v)
				if strings.Contains(out, secretValue) || strings.Contains(out, fmt.Sprintf("%x", secretValue)) {
					t.Errorf("%s prints the secret: %s", verb, out)
				}
			})
		}
		for _, verb := range []string{"%v", "%s", "%+v", "%#v"} {
			if out := fmt.Sprintf(verb, v); !strings.Contains(out, "[redacted]") {
				t.Errorf("%s/%s = %s, want it to show [redacted]", name, verb, out)
			}
		}
	}
	if got := fmt.Sprint(s); got != "[redacted]" {
		t.Errorf("Sprint = %q", got)
	}
	if got := s.Reveal(); got != secretValue {
		t.Errorf("Reveal = %q, want the raw value", got)
	}
	if err := fmt.Errorf("x: %v", s); !strings.Contains(err.Error(), "[redacted]") || errors.Unwrap(err) != nil {
		t.Errorf("error = %v", err)
	}
}

// A verb that does not suit a string (%d, %t) makes fmt report a bad verb,
// and fmt prints the operand's raw value in that report, bypassing String:
// Printf("%d %s", secret, id) with the arguments swapped would log the token.
// Only a Format method (fmt.Formatter) closes this. (%p is beyond any
// method: fmt reports it as a bad verb before it looks for one.)
func TestSecretBadVerb(t *testing.T) {
	if _, ok := any(wallet.Secret("")).(fmt.Formatter); !ok {
		t.Fatal("wallet.Secret does not implement fmt.Formatter, so bad verbs print the raw value")
	}
	s := wallet.Secret(secretValue)
	for _, v := range []any{s, &s, []wallet.Secret{s}, struct{ T wallet.Secret }{s}} {
		for _, verb := range []string{"%d", "%t", "%e", "%U", "%c"} {
			if out := fmt.Sprintf(verb, v); strings.Contains(out, secretValue) {
				t.Errorf("%s on %T prints the secret: %s", verb, v, out)
			}
		}
	}
}

func TestSecretJSON(t *testing.T) {
	s := wallet.Secret(secretValue)
	tests := []struct {
		name string
		v    any
		want string
	}{
		{"value", s, `"[redacted]"`},
		{"struct", struct {
			Token wallet.Secret  `json:"token"`
			Ptr   *wallet.Secret `json:"ptr"`
		}{s, &s}, `{"token":"[redacted]","ptr":"[redacted]"}`},
		{"map", map[string]wallet.Secret{"t": s}, `{"t":"[redacted]"}`},
		{"TokenResponse", wallet.TokenResponse{CustomerID: "c1", AccessToken: s, RefreshToken: s}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, []byte(secretValue)) {
				t.Errorf("json.Marshal prints the secret: %s", b)
			}
			if tt.want != "" && string(b) != tt.want {
				t.Errorf("json.Marshal = %s, want %s", b, tt.want)
			}
			if !bytes.Contains(b, []byte("[redacted]")) {
				t.Errorf("json.Marshal = %s, want [redacted]", b)
			}
		})
	}
}

func TestSecretSlog(t *testing.T) {
	s := wallet.Secret(secretValue)
	handlers := map[string]func(*bytes.Buffer) slog.Handler{
		"json": func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		"text": func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	}
	attrs := map[string][]any{
		"Any":       {slog.Any("token", s)},
		"key-value": {"token", s},
		"pointer":   {"token", &s},
		"group":     {slog.Group("customer", slog.String("id", "c1"), slog.Any("token", s))},
		"struct":    {"pair", wallet.TokenResponse{CustomerID: "c1", AccessToken: s, RefreshToken: s}},
		"error":     {"err", fmt.Errorf("refresh failed for %v", s)},
	}
	for hname, mk := range handlers {
		for aname, args := range attrs {
			t.Run(hname+"/"+aname, func(t *testing.T) {
				var buf bytes.Buffer
				slog.New(mk(&buf)).Info("refreshed", args...)
				if strings.Contains(buf.String(), secretValue) {
					t.Errorf("log line prints the secret: %s", buf.String())
				}
				if !strings.Contains(buf.String(), "[redacted]") {
					t.Errorf("log line = %s, want [redacted]", buf.String())
				}
			})
		}
	}
}
