package tokencache_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

func newKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, tokencache.KeySize)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func mustKeyring(t *testing.T, keys ...string) *tokencache.Keyring {
	t.Helper()
	kr, err := tokencache.ParseKeyring(strings.Join(keys, ","))
	if err != nil {
		t.Fatalf("ParseKeyring: %v", err)
	}
	return kr
}

func wantKeyID(t *testing.T, b64 string) string {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(append([]byte("tokenproxy-key-id:"), raw...))
	return hex.EncodeToString(sum[:])[:8]
}

func TestParseKeyring(t *testing.T) {
	a, b, c := newKey(t), newKey(t), newKey(t)
	short := base64.StdEncoding.EncodeToString(make([]byte, 16))
	long := base64.StdEncoding.EncodeToString(make([]byte, 33))
	tests := []struct {
		name    string
		in      string
		wantIDs []string // nil: an error is expected
		wantErr string
		secrets []string // must not appear in the error
	}{
		{name: "one key", in: a, wantIDs: []string{wantKeyID(t, a)}},
		{name: "comma separated, order kept", in: b + "," + a, wantIDs: []string{wantKeyID(t, b), wantKeyID(t, a)}},
		{name: "newline separated with blanks", in: " " + c + "\r\n" + a + "\n\n" + b + "\n", wantIDs: []string{wantKeyID(t, c), wantKeyID(t, a), wantKeyID(t, b)}},
		{name: "mixed separators", in: a + ",\n" + b, wantIDs: []string{wantKeyID(t, a), wantKeyID(t, b)}},
		{name: "empty", in: "", wantErr: "no keys"},
		{name: "only separators", in: " ,\n, ", wantErr: "no keys"},
		{name: "bad base64", in: a + "," + "not*base64!" + strings.Repeat("x", 20), wantErr: "key 2: not valid", secrets: []string{"not*base64!"}},
		{name: "url alphabet is not standard", in: strings.NewReplacer("+", "-", "/", "_").Replace(a) + "-_", wantErr: "key 1: not valid"},
		{name: "too short", in: short, wantErr: "key 1: not 32 bytes", secrets: []string{short}},
		{name: "too long", in: a + "," + b + "," + long, wantErr: "key 3: not 32 bytes", secrets: []string{long}},
		{name: "duplicate", in: a + "," + b + "," + a, wantErr: "key 3: same key id as key 1", secrets: []string{a}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kr, err := tokencache.ParseKeyring(tc.in)
			if tc.wantIDs == nil {
				if err == nil {
					t.Fatalf("ParseKeyring succeeded, want error %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %q, want it to say %q", err, tc.wantErr)
				}
				for _, s := range append(tc.secrets, a, b, c) {
					if strings.Contains(err.Error(), s) {
						t.Fatalf("error %q echoes a key", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseKeyring: %v", err)
			}
			if got := kr.KeyIDs(); fmt.Sprint(got) != fmt.Sprint(tc.wantIDs) {
				t.Fatalf("key ids %v, want %v", got, tc.wantIDs)
			}
			if kr.SealingKeyID() != tc.wantIDs[0] {
				t.Fatalf("sealing key %s, want the first, %s", kr.SealingKeyID(), tc.wantIDs[0])
			}
		})
	}
}

func TestKeyringRedacts(t *testing.T) {
	key := newKey(t)
	raw, _ := base64.StdEncoding.DecodeString(key)
	kr := mustKeyring(t, key)
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("k", "keyring", kr, "value", *kr)
	js, _ := json.Marshal(kr)
	outputs := []string{
		fmt.Sprintf("%v %+v %#v %s", kr, kr, kr, kr),
		fmt.Sprintf("%v %+v %#v %s", *kr, *kr, *kr, *kr),
		logged.String(),
		string(js),
	}
	for _, out := range outputs {
		if strings.Contains(out, key) || bytes.Contains([]byte(out), raw) ||
			strings.Contains(out, fmt.Sprint(raw)) || strings.Contains(out, hex.EncodeToString(raw)) {
			t.Fatalf("keyring printed its key: %q", out)
		}
	}
	if !strings.Contains(outputs[0], kr.SealingKeyID()) {
		t.Fatalf("keyring print %q does not name its sealing key id", outputs[0])
	}
}

func TestSecretRedacts(t *testing.T) {
	s := tokencache.Secret("tok-123-secret")
	rec := tokencache.Record{CustomerID: "c", AccessToken: s, RefreshToken: s}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "token", s, "record", rec)
	js, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{
		fmt.Sprintf("%v %+v %#v %s %q", s, s, s, s, s),
		fmt.Sprintf("%v %+v %#v", rec, rec, &rec),
		logged.String(),
		string(js),
		fmt.Sprint(errors.New("x: " + s.String())),
	} {
		if strings.Contains(out, "tok-123") {
			t.Fatalf("secret printed: %q", out)
		}
	}
	if s.Reveal() != "tok-123-secret" {
		t.Fatal("Reveal does not give the token")
	}
}

func TestSealOpen(t *testing.T) {
	kr := mustKeyring(t, newKey(t))
	const prefix, customer, field = "tokenproxy:", "cust-1", "at"
	plain := []byte("the-access-token")

	kid, sealed, err := kr.Seal(prefix, customer, field, plain)
	if err != nil {
		t.Fatal(err)
	}
	if kid != kr.SealingKeyID() {
		t.Fatalf("Seal used key %s, want the sealing key %s", kid, kr.SealingKeyID())
	}
	raw, err := base64.RawStdEncoding.DecodeString(sealed)
	if err != nil {
		t.Fatalf("sealed value is not unpadded standard base64: %v", err)
	}
	if want := 12 + len(plain) + 16; len(raw) != want {
		t.Fatalf("sealed length %d, want nonce+ciphertext+tag = %d", len(raw), want)
	}
	got, err := kr.Open(prefix, customer, field, kid, sealed)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open = %q, %v", got, err)
	}

	// Same plaintext twice: different nonces, different ciphertexts.
	_, again, err := kr.Seal(prefix, customer, field, plain)
	if err != nil {
		t.Fatal(err)
	}
	if again == sealed {
		t.Fatal("two seals of the same token are equal: nonce reused")
	}

	// The empty plaintext round-trips too.
	kid0, sealed0, err := kr.Seal(prefix, customer, field, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := kr.Open(prefix, customer, field, kid0, sealed0); err != nil || len(got) != 0 {
		t.Fatalf("Open(empty) = %q, %v", got, err)
	}

	flipped := []byte(raw)
	flipped[len(flipped)/2] ^= 1
	other := mustKeyring(t, newKey(t))
	_, otherSealed, err := other.Seal(prefix, customer, field, plain)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                            string
		kr                              *tokencache.Keyring
		prefix, customer, field, kid, v string
	}{
		{"another customer", kr, prefix, "cust-2", field, kid, sealed},
		{"customer id shifted into prefix", kr, prefix + "c", "ust-1", field, kid, sealed},
		{"another field", kr, prefix, customer, "rt", kid, sealed},
		{"another prefix", kr, "other:", customer, field, kid, sealed},
		{"unknown key id", kr, prefix, customer, field, "00000000", sealed},
		{"empty key id", kr, prefix, customer, field, "", sealed},
		{"sealed by a key with a different id", kr, prefix, customer, field, kid, otherSealed},
		{"bit flipped", kr, prefix, customer, field, kid, base64.RawStdEncoding.EncodeToString(flipped)},
		{"truncated", kr, prefix, customer, field, kid, sealed[:20]},
		{"not base64", kr, prefix, customer, field, kid, "!!!" + sealed},
		{"empty", kr, prefix, customer, field, kid, ""},
		{"keyring without the key", other, prefix, customer, field, kid, sealed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.kr.Open(tc.prefix, tc.customer, tc.field, tc.kid, tc.v)
			var se *tokencache.SealError
			if !errors.As(err, &se) {
				t.Fatalf("Open = %q, %v; want *SealError", got, err)
			}
			if se.KeyID != tc.kid {
				t.Fatalf("SealError.KeyID = %q, want %q", se.KeyID, tc.kid)
			}
			if strings.Contains(err.Error(), string(plain)) || strings.Contains(err.Error(), tc.v) && tc.v != "" {
				t.Fatalf("error %q shows data", err)
			}
		})
	}
}

func TestSealRotation(t *testing.T) {
	a, b := newKey(t), newKey(t)
	ringA, ringBA := mustKeyring(t, a), mustKeyring(t, b, a)
	kid, sealed, err := ringA.Seal("p:", "c", "rt", []byte("refresh"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ringBA.Open("p:", "c", "rt", kid, sealed); err != nil || string(got) != "refresh" {
		t.Fatalf("keyring B,A cannot open what A sealed: %v", err)
	}
	kid2, _, err := ringBA.Seal("p:", "c", "rt", []byte("refresh"))
	if err != nil {
		t.Fatal(err)
	}
	if kid2 != wantKeyID(t, b) {
		t.Fatalf("keyring B,A sealed with %s, want B's id %s", kid2, wantKeyID(t, b))
	}
}
