package wallet_test

// Fuzz targets for the wallet package's parsers of outside input: the
// Signature header of a wallet answer and the key files. Seed corpora are
// under testdata/fuzz/<FuzzName>/; `make fuzz` runs each for a bounded time.

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// FuzzSignatureHeader: any header parses without a panic; a parsed header
// has algorithm RSA256 and a signature, and written again with
// FormatSignatureHeader it parses to the same values; verifying its
// signature never panics, fails only with ErrBadSignature, and a signature
// that verifies binds the content (one changed byte fails).
func FuzzSignatureHeader(f *testing.F) {
	keys := []*rsa.PublicKey{publicKey(f, "merchant_public.pem"), publicKey(f, "wallet_public.pem")}
	f.Fuzz(func(t *testing.T, header string, content []byte) {
		s, err := wallet.ParseSignatureHeader(header)
		if err != nil {
			if !errors.Is(err, wallet.ErrBadSignature) {
				t.Fatalf("error %v is not ErrBadSignature", err)
			}
			return
		}
		if s.Algorithm != "RSA256" || s.Signature == "" {
			t.Fatalf("accepted %q as %+v", header, s)
		}
		again, err := wallet.ParseSignatureHeader(wallet.FormatSignatureHeader(s.KeyVersion, s.Signature))
		if err != nil || again != s {
			t.Fatalf("%q: %+v formats to a header that parses as %+v (%v)", header, s, again, err)
		}
		for _, k := range keys {
			err := wallet.Verify(k, content, s.Signature)
			if err == nil {
				changed := append([]byte{}, content...)
				if len(changed) == 0 {
					changed = []byte{0}
				} else {
					changed[len(changed)/2] ^= 1
				}
				if wallet.Verify(k, changed, s.Signature) == nil {
					t.Fatalf("signature %q verifies over changed content", s.Signature)
				}
			} else if err != wallet.ErrBadSignature {
				t.Fatalf("Verify failed with %v, want ErrBadSignature", err)
			}
		}
	})
}

// FuzzParseKey: any bytes given as a key file parse without a panic; an
// error never quotes the input (key material must not reach a log); a key
// that parses is a usable RSA key that survives a DER round trip.
func FuzzParseKey(f *testing.F) {
	// The fixed words errors are made of: what a probe of each kind of
	// failure says. A window of the input found in an error is an echo
	// unless these words hold it too.
	var vocabulary strings.Builder
	for _, probe := range []string{"", "x", "-----BEGIN", "QUFBQQ==", "-----BEGIN PUBLIC KEY-----\nQUFBQQ==\n-----END PUBLIC KEY-----\n"} {
		for _, err := range []error{privateErr([]byte(probe)), publicErr([]byte(probe))} {
			if err != nil {
				vocabulary.WriteString(err.Error() + "\n")
			}
		}
	}
	for _, name := range []string{"ec_pkcs8.pem", "ec_public.pem"} {
		b := testdata(f, name)
		for _, err := range []error{privateErr(b), publicErr(b)} {
			if err != nil {
				vocabulary.WriteString(err.Error() + "\n")
			}
		}
	}
	words := vocabulary.String()
	f.Fuzz(func(t *testing.T, data []byte) {
		priv, err := wallet.ParsePrivateKey(data)
		if err != nil {
			noEcho(t, err, data, words)
		} else {
			if err := priv.Validate(); err != nil {
				t.Fatalf("parsed private key does not validate: %v", err)
			}
			der, err := x509.MarshalPKCS8PrivateKey(priv)
			if err != nil {
				t.Fatalf("parsed private key does not marshal: %v", err)
			}
			back, err := x509.ParsePKCS8PrivateKey(der)
			if err != nil || !priv.Equal(back) {
				t.Fatalf("private key round trip: %v", err)
			}
		}
		pub, err := wallet.ParsePublicKey(data)
		if err != nil {
			noEcho(t, err, data, words)
			return
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatalf("parsed public key does not marshal: %v", err)
		}
		back, err := x509.ParsePKIXPublicKey(der)
		if err != nil || !pub.Equal(back) {
			t.Fatalf("public key round trip: %v", err)
		}
	})
}

func privateErr(b []byte) error { _, err := wallet.ParsePrivateKey(b); return err }
func publicErr(b []byte) error  { _, err := wallet.ParsePublicKey(b); return err }

// noEcho fails when the error's text holds 8 or more consecutive bytes of
// the input that are not among the error vocabulary's fixed words.
func noEcho(t *testing.T, err error, data []byte, words string) {
	t.Helper()
	msg := err.Error()
	const n = 8
	for i := 0; i+n <= len(msg); i++ {
		w := msg[i : i+n]
		if bytes.Contains(data, []byte(w)) && !strings.Contains(words, w) {
			t.Fatalf("error %q quotes the input", msg)
		}
	}
}
