// Test-only RSA keys. They are committed in testdata/ and printed in logs
// freely: never use them, or anything signed with them, outside tests.
//
// They were made once with
//
//	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out testdata/merchant_private.pem
//	openssl pkey -in testdata/merchant_private.pem -pubout -out testdata/merchant_public.pem
//
// and the same for wallet_private.pem / wallet_public.pem. The private keys
// are PEM PKCS#8, the public keys PEM PKIX.

package testenv

import (
	_ "embed"
	"os"
	"path/filepath"
	"testing"
)

var (
	//go:embed testdata/merchant_private.pem
	merchantPrivatePEM []byte
	//go:embed testdata/merchant_public.pem
	merchantPublicPEM []byte
	//go:embed testdata/wallet_private.pem
	walletPrivatePEM []byte
	//go:embed testdata/wallet_public.pem
	walletPublicPEM []byte
)

// MerchantPrivateKeyPEM is the merchant's test signing key (the proxy's
// TOKENPROXY key), PEM PKCS#8. Each call returns a fresh copy.
func MerchantPrivateKeyPEM() []byte { return clone(merchantPrivatePEM) }

// MerchantPublicKeyPEM is the public half of MerchantPrivateKeyPEM, PEM PKIX:
// what walletsim verifies requests with.
func MerchantPublicKeyPEM() []byte { return clone(merchantPublicPEM) }

// WalletPrivateKeyPEM is the wallet's test key that signs responses
// (walletsim's key), PEM PKCS#8.
func WalletPrivateKeyPEM() []byte { return clone(walletPrivatePEM) }

// WalletPublicKeyPEM is the public half of WalletPrivateKeyPEM, PEM PKIX:
// what the proxy verifies responses with.
func WalletPublicKeyPEM() []byte { return clone(walletPublicPEM) }

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// KeyFiles are the paths of the four test keys written by WriteKeyFiles.
type KeyFiles struct {
	MerchantPrivate string // merchant_private.pem
	MerchantPublic  string // merchant_public.pem
	WalletPrivate   string // wallet_private.pem
	WalletPublic    string // wallet_public.pem
}

// WriteKeyFiles writes the four test keys into a fresh t.TempDir() (private
// keys mode 0600, public 0644) and returns their paths. The directory goes
// away with the test.
func WriteKeyFiles(t testing.TB) KeyFiles {
	t.Helper()
	dir := t.TempDir()
	kf := KeyFiles{
		MerchantPrivate: filepath.Join(dir, "merchant_private.pem"),
		MerchantPublic:  filepath.Join(dir, "merchant_public.pem"),
		WalletPrivate:   filepath.Join(dir, "wallet_private.pem"),
		WalletPublic:    filepath.Join(dir, "wallet_public.pem"),
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{kf.MerchantPrivate, merchantPrivatePEM, 0o600},
		{kf.MerchantPublic, merchantPublicPEM, 0o644},
		{kf.WalletPrivate, walletPrivatePEM, 0o600},
		{kf.WalletPublic, walletPublicPEM, 0o644},
	} {
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			t.Fatalf("write test key: %v", err)
		}
		if err := os.Chmod(f.path, f.mode); err != nil { // whatever the umask
			t.Fatalf("write test key: %v", err)
		}
	}
	return kf
}
