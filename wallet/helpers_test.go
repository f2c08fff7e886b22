package wallet_test

import (
	"bytes"
	"crypto/rsa"
	"os"
	"path/filepath"
	"testing"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// testdata reads a file under testdata/ (see testdata/gen.sh for what each is).
func testdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", filepath.FromSlash(name)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testdataLine reads a one-line file under testdata/ without its line end.
func testdataLine(t testing.TB, name string) string {
	t.Helper()
	return string(bytes.TrimSpace(testdata(t, name)))
}

func privateKey(t testing.TB, name string) *rsa.PrivateKey {
	t.Helper()
	k, err := wallet.ParsePrivateKey(testdata(t, name))
	if err != nil {
		t.Fatalf("parse %s: %v", name, err)
	}
	return k
}

func publicKey(t testing.TB, name string) *rsa.PublicKey {
	t.Helper()
	k, err := wallet.ParsePublicKey(testdata(t, name))
	if err != nil {
		t.Fatalf("parse %s: %v", name, err)
	}
	return k
}
