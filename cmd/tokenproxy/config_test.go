package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/sethvargo/go-envconfig"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
)

func baseEnv(t *testing.T) map[string]string {
	keys := testenv.WriteKeyFiles(t)
	return map[string]string{
		"TOKENPROXY_WALLET_URL":       "http://127.0.0.1:1",
		"TOKENPROXY_CLIENT_ID":        "TEST_CLIENT",
		"TOKENPROXY_PRIVATE_KEY_FILE": keys.MerchantPrivate,
		"TOKENPROXY_LISTEN_ADDR":      "127.0.0.1:0",
		"TOKENPROXY_OPS_ADDR":         "127.0.0.1:0",
	}
}

// TestConfigErrorsExit2 runs the command in-process with one bad setting at
// a time: exit 2, one line naming the variable, never the secret value.
func TestConfigErrorsExit2(t *testing.T) {
	const secret = "c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1uZXZlci1wcmludA=="
	tests := []struct {
		variable string
		set      map[string]string
		unset    []string
	}{
		{"TOKENPROXY_WALLET_URL", nil, []string{"TOKENPROXY_WALLET_URL"}},
		{"TOKENPROXY_WALLET_URL", map[string]string{"TOKENPROXY_WALLET_URL": "ftp://x"}, nil},
		{"TOKENPROXY_CLIENT_ID", nil, []string{"TOKENPROXY_CLIENT_ID"}},
		{"TOKENPROXY_PRIVATE_KEY", nil, []string{"TOKENPROXY_PRIVATE_KEY_FILE"}},
		{"TOKENPROXY_PRIVATE_KEY", map[string]string{"TOKENPROXY_PRIVATE_KEY": secret}, []string{"TOKENPROXY_PRIVATE_KEY_FILE"}},
		{"TOKENPROXY_PRIVATE_KEY_FILE", map[string]string{"TOKENPROXY_PRIVATE_KEY_FILE": "/nonexistent/key.pem"}, nil},
		{"TOKENPROXY_WALLET_PUBLIC_KEY", map[string]string{"TOKENPROXY_WALLET_PUBLIC_KEY": secret}, nil},
		{"TOKENPROXY_REFRESH_BEFORE", map[string]string{"TOKENPROXY_REFRESH_BEFORE": "soon"}, nil},
		{"TOKENPROXY_REFRESH_RATE", map[string]string{"TOKENPROXY_REFRESH_RATE": "0"}, nil},
		{"TOKENPROXY_REFRESH_LEASE", map[string]string{"TOKENPROXY_REFRESH_LEASE": "1ms"}, nil},
		{"TOKENPROXY_MAX_BODY_BYTES", map[string]string{"TOKENPROXY_MAX_BODY_BYTES": "lots"}, nil},
		{"TOKENPROXY_LOG_LEVEL", map[string]string{"TOKENPROXY_LOG_LEVEL": "loud"}, nil},
		{"TOKENPROXY_LOG_FORMAT", map[string]string{"TOKENPROXY_LOG_FORMAT": "xml"}, nil},
		{"TOKENPROXY_INJECT", map[string]string{"TOKENPROXY_INJECT": "nopath"}, nil},
		{"TOKENPROXY_LISTEN_ADDR", map[string]string{"TOKENPROXY_LISTEN_ADDR": "nocolon"}, nil},
		{"TOKENPROXY_ENCRYPTION_KEYS", map[string]string{"TOKENPROXY_REDIS_URL": "redis://127.0.0.1:1"}, nil},
		{"TOKENPROXY_ENCRYPTION_KEYS", map[string]string{"TOKENPROXY_REDIS_URL": "redis://127.0.0.1:1", "TOKENPROXY_ENCRYPTION_KEYS": secret + "x"}, nil},
		{"TOKENPROXY_REDIS_URL", map[string]string{"TOKENPROXY_REDIS_URL": "http://" + secret}, nil},
		{"TOKENPROXY_REDIS_MASTER_NAME", map[string]string{"TOKENPROXY_REDIS_MASTER_NAME": "m"}, nil},
		{"TOKENPROXY_KEY_VERSION", map[string]string{"TOKENPROXY_KEY_VERSION": "a,b"}, nil},
		{"TOKENPROXY_EVENTS_SECRET", map[string]string{"TOKENPROXY_EVENTS_URL": "http://127.0.0.1:1/events"}, nil},
		{"TOKENPROXY_EVENTS_SECRET", map[string]string{"TOKENPROXY_EVENTS_URL": "http://127.0.0.1:1/events", "TOKENPROXY_EVENTS_SECRET": secret, "TOKENPROXY_EVENTS_SECRET_FILE": "/x"}, nil},
		{"TOKENPROXY_EVENTS_SECRET_FILE", map[string]string{"TOKENPROXY_EVENTS_URL": "http://127.0.0.1:1/events", "TOKENPROXY_EVENTS_SECRET_FILE": "/nonexistent/secret"}, nil},
		{"TOKENPROXY_EVENTS_URL", map[string]string{"TOKENPROXY_EVENTS_URL": "ftp://" + secret, "TOKENPROXY_EVENTS_SECRET": secret}, nil},
		{"TOKENPROXY_EVENTS_EXPIRY_HORIZON", map[string]string{"TOKENPROXY_EVENTS_EXPIRY_HORIZON": "0s"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.variable, func(t *testing.T) {
			env := baseEnv(t)
			for _, k := range tt.unset {
				delete(env, k)
			}
			for k, v := range tt.set {
				env[k] = v
			}
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), nil, envconfig.MapLookuper(env), &stdout, &stderr)
			out := strings.TrimSpace(stderr.String())
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr: %s", code, out)
			}
			if strings.Count(out, "\n") != 0 || !strings.Contains(out, tt.variable+":") {
				t.Fatalf("want one line naming %s, got %q", tt.variable, out)
			}
			if strings.Contains(out, secret) || strings.Contains(out, "c2VjcmV0") {
				t.Fatalf("the secret value was printed: %q", out)
			}
		})
	}
}

func TestHelpListsEverySettingWithDefault(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, envconfig.MapLookuper(nil), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, s := range settings() {
		line := regexp.MustCompile(`(?m)^` + s.Name + `\s+(\S+)`).FindStringSubmatch(stdout.String())
		if line == nil {
			t.Fatalf("-h does not list %s", s.Name)
		}
		want := s.Default
		if want == "" {
			want = "-"
		}
		if line[1] != want {
			t.Fatalf("-h shows %s default %q, want %q", s.Name, line[1], want)
		}
	}
	var v bytes.Buffer
	if code := run(context.Background(), []string{"version"}, envconfig.MapLookuper(nil), &v, &stderr); code != 0 || !strings.HasPrefix(v.String(), "tokenproxy ") {
		t.Fatalf("version: exit %d, %q", code, v.String())
	}
}

// TestReadmeConfigTable keeps README.md's configuration table and the
// Config struct in sync: every variable, with its default, in both.
func TestReadmeConfigTable(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	re := regexp.MustCompile("(?m)^\\| `(TOKENPROXY_[A-Z_]+)` \\| ([^|]*) \\|")
	for _, m := range re.FindAllStringSubmatch(string(raw), -1) {
		rows[m[1]] = strings.Trim(strings.TrimSpace(m[2]), "`")
	}
	seen := map[string]bool{}
	for _, s := range settings() {
		seen[s.Name] = true
		def, ok := rows[s.Name]
		if !ok {
			t.Errorf("README configuration table lacks %s", s.Name)
			continue
		}
		want := s.Default
		if want == "" {
			want = "-"
		}
		if def != want {
			t.Errorf("README shows %s default %q, the code %q", s.Name, def, want)
		}
	}
	for name := range rows {
		if !seen[name] {
			t.Errorf("README lists %s, which the code does not read", name)
		}
	}
}
