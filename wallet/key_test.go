package wallet_test

import (
	"bytes"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// errorQuotes reports the part of input that err repeats, if any: a key
// error must not print the key, nor anything decoded from it.
func errorQuotes(err error, input []byte) string {
	msg := err.Error()
	var pieces []string
	for _, f := range strings.Fields(string(input)) {
		pieces = append(pieces, f)
		if der, err := base64.StdEncoding.DecodeString(f); err == nil {
			pieces = append(pieces, string(der))
		}
	}
	if block, _ := pem.Decode(input); block != nil {
		pieces = append(pieces, string(block.Bytes))
	}
	for _, p := range pieces {
		// Short pieces ("-----BEGIN", "KEY") may appear innocently.
		if len(p) >= 12 && strings.Contains(msg, p) {
			return p
		}
	}
	return ""
}

func TestParsePrivateKey(t *testing.T) {
	want := publicKey(t, "merchant_public.pem")
	pkcs8PEM := testdata(t, "merchant_pkcs8.pem")
	pkcs1PEM := testdata(t, "merchant_pkcs1.pem")
	pkcs1Block, _ := pem.Decode(pkcs1PEM)
	b64 := testdata(t, "merchant_pkcs8.b64")

	tests := []struct {
		name    string
		in      []byte
		wantErr bool
	}{
		{name: "PEM PKCS#8", in: pkcs8PEM},
		{name: "PEM PKCS#1", in: pkcs1PEM},
		{name: "bare base64 PKCS#8, one line", in: b64},
		{name: "bare base64 PKCS#8, wrapped", in: testdata(t, "merchant_pkcs8_wrapped.b64")},
		{name: "bare base64 PKCS#8, no padding", in: bytes.TrimRight(bytes.TrimSpace(b64), "=")},
		{name: "bare base64 PKCS#1", in: []byte(base64.StdEncoding.EncodeToString(pkcs1Block.Bytes))},
		{name: "PEM with CRLF line ends", in: bytes.ReplaceAll(pkcs8PEM, []byte("\n"), []byte("\r\n"))},
		{name: "surrounding blank space", in: append(append([]byte("\n\t  "), pkcs8PEM...), "\n\n  "...)},

		{name: "empty", in: nil, wantErr: true},
		{name: "blank", in: []byte(" \n\t "), wantErr: true},
		{name: "garbage text", in: []byte("this-is-not-a-key-but-a-secret-value"), wantErr: true},
		{name: "base64 of text", in: []byte(base64.StdEncoding.EncodeToString([]byte("secret-token-value-1234567890"))), wantErr: true},
		{name: "PEM armour around garbage", in: []byte("-----BEGIN PRIVATE KEY-----\nbm90LWEta2V5LWJ1dC1hLXNlY3JldA==\n-----END PRIVATE KEY-----\n"), wantErr: true},
		{name: "PEM armour, no end line", in: []byte("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcw\n"), wantErr: true},
		{name: "PEM cut in half", in: pkcs8PEM[:len(pkcs8PEM)/2], wantErr: true},
		{name: "base64 cut in half", in: b64[:len(b64)/2], wantErr: true},
		{name: "public key", in: testdata(t, "merchant_public.pem"), wantErr: true},
		{name: "EC private key", in: testdata(t, "ec_pkcs8.pem"), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := wallet.ParsePrivateKey(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatal("ParsePrivateKey succeeded, want an error")
				}
				if q := errorQuotes(err, tt.in); q != "" {
					t.Errorf("error %q quotes the input (%q)", err, q)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePrivateKey: %v", err)
			}
			if !k.PublicKey.Equal(want) {
				t.Error("parsed key is not the merchant key")
			}
			if err := k.Validate(); err != nil {
				t.Errorf("parsed key does not validate: %v", err)
			}
		})
	}
}

func TestParsePublicKey(t *testing.T) {
	want := &privateKey(t, "merchant_pkcs8.pem").PublicKey
	pemPKIX := testdata(t, "merchant_public.pem")
	b64 := testdata(t, "merchant_public.b64")

	tests := []struct {
		name    string
		in      []byte
		wantErr bool
	}{
		{name: "PEM PKIX", in: pemPKIX},
		{name: "bare base64 PKIX", in: b64},
		{name: "PEM PKCS#1", in: testdata(t, "merchant_public_pkcs1.pem")},
		{name: "PEM with CRLF line ends", in: bytes.ReplaceAll(pemPKIX, []byte("\n"), []byte("\r\n"))},
		{name: "bare base64 wrapped at 64", in: wrap(bytes.TrimSpace(b64), 64)},

		{name: "empty", in: nil, wantErr: true},
		{name: "garbage text", in: []byte("this-is-not-a-key-but-a-secret-value"), wantErr: true},
		{name: "base64 of text", in: []byte(base64.StdEncoding.EncodeToString([]byte("secret-token-value-1234567890"))), wantErr: true},
		{name: "PEM cut in half", in: pemPKIX[:len(pemPKIX)/2], wantErr: true},
		{name: "private key PKCS#8", in: testdata(t, "merchant_pkcs8.pem"), wantErr: true},
		{name: "private key PKCS#1", in: testdata(t, "merchant_pkcs1.pem"), wantErr: true},
		{name: "EC public key", in: testdata(t, "ec_public.pem"), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := wallet.ParsePublicKey(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatal("ParsePublicKey succeeded, want an error")
				}
				if q := errorQuotes(err, tt.in); q != "" {
					t.Errorf("error %q quotes the input (%q)", err, q)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePublicKey: %v", err)
			}
			if !k.Equal(want) {
				t.Error("parsed key is not the merchant public key")
			}
		})
	}
}

func wrap(b []byte, width int) []byte {
	var out []byte
	for len(b) > width {
		out = append(append(out, b[:width]...), '\n')
		b = b[width:]
	}
	return append(append(out, b...), '\n')
}

func TestValidKeyVersion(t *testing.T) {
	tests := []struct {
		v    string
		want bool
	}{
		{"1", true},
		{"2024-06.v_2", true},
		{strings.Repeat("a", 32), true},
		{"", false},
		{strings.Repeat("a", 33), false},
		{"1,signature=x", false}, // would forge a Signature header field
		{"1 2", false},
		{"v=1", false},
		{"é", false},
	}
	for _, tt := range tests {
		t.Run(tt.v, func(t *testing.T) {
			if err := wallet.ValidKeyVersion(tt.v); (err == nil) != tt.want {
				t.Errorf("ValidKeyVersion(%q) = %v, want ok=%v", tt.v, err, tt.want)
			}
		})
	}
}

// Keys must not print themselves whatever the verb.
func TestKeyTypesRedact(t *testing.T) {
	k := privateKey(t, "merchant_pkcs8.pem")
	secretDigits := k.D.String()[:40]
	modulus := k.N.String()[:40]
	values := map[string]any{
		"SigningKey":          wallet.SigningKey{Key: k, Version: "1"},
		"*SigningKey":         &wallet.SigningKey{Key: k, Version: "1"},
		"StaticKey":           wallet.StaticKey{Key: k, Version: "1"},
		"*FileKey":            &wallet.FileKey{KeyPath: "/k"},
		"struct{SigningKey}":  struct{ Key wallet.SigningKey }{wallet.SigningKey{Key: k}},
		"struct{KeySource}":   struct{ Keys wallet.KeySource }{wallet.StaticKey{Key: k}},
		"[]wallet.SigningKey": []wallet.SigningKey{{Key: k}},
	}
	for name, v := range values {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
			t.Run(name+"/"+verb, func(t *testing.T) {
				out := fmt.Sprintf(verb, v)
				if strings.Contains(out, secretDigits) || strings.Contains(out, modulus) {
					t.Errorf("%s prints the key: %.200s", verb, out)
				}
				if !strings.Contains(out, "redacted") {
					t.Errorf("%s = %.200s, want it to say redacted", verb, out)
				}
			})
		}
	}
}

// json.Marshal and slog's JSON handler do not use String: a key type needs
// MarshalJSON (and LogValue) of its own, or they print D and the primes.
func TestKeyTypesRedactJSON(t *testing.T) {
	for _, v := range []any{wallet.SigningKey{}, wallet.StaticKey{}} {
		if _, ok := v.(json.Marshaler); !ok {
			t.Fatalf("%T has no MarshalJSON: json.Marshal and slog's JSON handler would print the private key", v)
		}
	}
	k := privateKey(t, "merchant_pkcs8.pem")
	secretDigits := k.D.String()[:40]
	values := map[string]any{
		"SigningKey":         wallet.SigningKey{Key: k, Version: "1"},
		"StaticKey":          wallet.StaticKey{Key: k, Version: "1"},
		"struct{SigningKey}": struct{ Key wallet.SigningKey }{wallet.SigningKey{Key: k}},
	}
	for name, v := range values {
		t.Run(name, func(t *testing.T) {
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), secretDigits) {
				t.Errorf("json.Marshal prints the key: %.200s", b)
			}
			var buf bytes.Buffer
			slog.New(slog.NewJSONHandler(&buf, nil)).Info("key", "key", v)
			if strings.Contains(buf.String(), secretDigits) {
				t.Errorf("slog prints the key: %.200s", buf.String())
			}
		})
	}
}

// fileKeyDir holds a key file and a version file whose mtimes the test sets
// explicitly, so a rewrite is seen however coarse the file system's clock.
type fileKeyDir struct {
	t       *testing.T
	key     string
	version string
	mtime   time.Time
}

func newFileKeyDir(t *testing.T) *fileKeyDir {
	dir := t.TempDir()
	return &fileKeyDir{
		t:       t,
		key:     filepath.Join(dir, "key.pem"),
		version: filepath.Join(dir, "key-version"),
		mtime:   time.Now().Add(-time.Hour).Truncate(time.Second),
	}
}

func (d *fileKeyDir) write(path string, content []byte) {
	d.t.Helper()
	if err := os.WriteFile(path, content, 0o600); err != nil {
		d.t.Fatal(err)
	}
	d.mtime = d.mtime.Add(time.Second)
	if err := os.Chtimes(path, d.mtime, d.mtime); err != nil {
		d.t.Fatal(err)
	}
}

func TestFileKey(t *testing.T) {
	merchantPEM := testdata(t, "merchant_pkcs8.pem")
	otherPEM := testdata(t, "wallet_pkcs8.pem")
	merchant := publicKey(t, "merchant_public.pem")
	other := publicKey(t, "wallet_public.pem")

	type step struct {
		key, version []byte // written before the step when non-nil
		wantKey      *rsa.PublicKey
		wantVersion  string
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"rotation: key and version change together", []step{
			{key: merchantPEM, version: []byte("1\n"), wantKey: merchant, wantVersion: "1"},
			{key: otherPEM, version: []byte("2\n"), wantKey: other, wantVersion: "2"},
		}},
		{"version file alone changes", []step{
			{key: merchantPEM, version: []byte("1"), wantKey: merchant, wantVersion: "1"},
			{version: []byte("1b"), wantKey: merchant, wantVersion: "1b"},
		}},
		{"same content rewritten", []step{
			{key: merchantPEM, version: []byte("1"), wantKey: merchant, wantVersion: "1"},
			{key: merchantPEM, wantKey: merchant, wantVersion: "1"},
		}},
		{"garbage key file keeps the old key", []step{
			{key: merchantPEM, version: []byte("1"), wantKey: merchant, wantVersion: "1"},
			{key: []byte("-----BEGIN PRIVATE KEY-----\nhalf a ke"), version: []byte("2"), wantKey: merchant, wantVersion: "1"},
			{key: otherPEM, wantKey: other, wantVersion: "2"},
		}},
		{"empty key file keeps the old key", []step{
			{key: merchantPEM, version: []byte("1"), wantKey: merchant, wantVersion: "1"},
			{key: []byte{}, wantKey: merchant, wantVersion: "1"},
		}},
		{"invalid version keeps the old key", []step{
			{key: merchantPEM, version: []byte("1"), wantKey: merchant, wantVersion: "1"},
			{key: otherPEM, version: []byte("2,signature=x"), wantKey: merchant, wantVersion: "1"},
			{version: []byte("2"), wantKey: other, wantVersion: "2"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newFileKeyDir(t)
			fk := &wallet.FileKey{KeyPath: d.key, VersionPath: d.version, CheckEvery: time.Nanosecond}
			for i, s := range tt.steps {
				if s.key != nil {
					d.write(d.key, s.key)
				}
				if s.version != nil {
					d.write(d.version, s.version)
				}
				if i == 0 {
					if err := fk.Load(); err != nil {
						t.Fatalf("Load: %v", err)
					}
				}
				sk, err := fk.SigningKey()
				if err != nil {
					t.Fatalf("step %d: SigningKey: %v", i, err)
				}
				if !sk.Key.PublicKey.Equal(s.wantKey) {
					t.Errorf("step %d: not the expected key", i)
				}
				if sk.Version != s.wantVersion {
					t.Errorf("step %d: version %q, want %q", i, sk.Version, s.wantVersion)
				}
			}
		})
	}
}

func TestFileKeyLoadErrors(t *testing.T) {
	tests := []struct {
		name    string
		key     []byte // nil: no key file
		version []byte // nil: no version file
	}{
		{"no key file", nil, []byte("1")},
		{"garbage key file", []byte("not a key at all, but a secret"), []byte("1")},
		{"no version file", testdata(t, "merchant_pkcs8.pem"), nil},
		{"empty version file", testdata(t, "merchant_pkcs8.pem"), []byte("\n")},
		{"invalid version", testdata(t, "merchant_pkcs8.pem"), []byte("1 2")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newFileKeyDir(t)
			if tt.key != nil {
				d.write(d.key, tt.key)
			}
			if tt.version != nil {
				d.write(d.version, tt.version)
			}
			fk := &wallet.FileKey{KeyPath: d.key, VersionPath: d.version, CheckEvery: time.Nanosecond}
			if err := fk.Load(); err == nil {
				t.Error("Load succeeded, want an error")
			} else if tt.key != nil && errorQuotes(err, tt.key) != "" {
				t.Errorf("Load error %q quotes the key file", err)
			}
			if _, err := fk.SigningKey(); err == nil {
				t.Error("SigningKey succeeded with no key ever loaded, want an error")
			}
		})
	}
}

func TestFileKeyFixedVersion(t *testing.T) {
	d := newFileKeyDir(t)
	d.write(d.key, testdata(t, "merchant_pkcs8.pem"))
	fk := &wallet.FileKey{KeyPath: d.key, Version: "7", CheckEvery: time.Nanosecond}
	sk, err := fk.SigningKey() // no Load: the first use loads
	if err != nil {
		t.Fatal(err)
	}
	if sk.Version != "7" || !sk.Key.PublicKey.Equal(publicKey(t, "merchant_public.pem")) {
		t.Errorf("got version %q and another key, want version 7 and the merchant key", sk.Version)
	}
}

// Between checks the file is not looked at: a rewrite shows only after
// CheckEvery has passed.
func TestFileKeyChecksAtMostOncePerInterval(t *testing.T) {
	d := newFileKeyDir(t)
	d.write(d.key, testdata(t, "merchant_pkcs8.pem"))
	fk := &wallet.FileKey{KeyPath: d.key, Version: "1", CheckEvery: time.Hour}
	if err := fk.Load(); err != nil {
		t.Fatal(err)
	}
	d.write(d.key, testdata(t, "wallet_pkcs8.pem"))
	sk, err := fk.SigningKey()
	if err != nil {
		t.Fatal(err)
	}
	if !sk.Key.PublicKey.Equal(publicKey(t, "merchant_public.pem")) {
		t.Error("the new file was read before CheckEvery passed")
	}
	// Load forces a read.
	if err := fk.Load(); err != nil {
		t.Fatal(err)
	}
	if sk, _ := fk.SigningKey(); !sk.Key.PublicKey.Equal(publicKey(t, "wallet_public.pem")) {
		t.Error("Load did not pick up the new file")
	}
}

func TestFileKeyKeyFileRemovedKeepsKey(t *testing.T) {
	d := newFileKeyDir(t)
	d.write(d.key, testdata(t, "merchant_pkcs8.pem"))
	fk := &wallet.FileKey{KeyPath: d.key, Version: "1", CheckEvery: time.Nanosecond}
	if err := fk.Load(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(d.key); err != nil {
		t.Fatal(err)
	}
	sk, err := fk.SigningKey()
	if err != nil {
		t.Fatalf("SigningKey after the file went away: %v", err)
	}
	if sk.Key == nil {
		t.Fatal("no key")
	}
	if err := fk.Load(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load = %v, want a not-exist error", err)
	}
}

func TestStaticKey(t *testing.T) {
	k := privateKey(t, "merchant_pkcs8.pem")
	var src wallet.KeySource = wallet.StaticKey{Key: k, Version: "3"}
	sk, err := src.SigningKey()
	if err != nil || sk.Key != k || sk.Version != "3" {
		t.Errorf("SigningKey = %v, %q, %v", sk.Key == k, sk.Version, err)
	}
}
