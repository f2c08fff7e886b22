package testenv

import (
	"bytes"
	"os"
	"testing"

	"github.com/tokenproxy/tokenproxy/wallet"
)

func TestKeys(t *testing.T) {
	pairs := []struct {
		name        string
		private     []byte
		public      []byte
		otherPublic []byte
	}{
		{"merchant", MerchantPrivateKeyPEM(), MerchantPublicKeyPEM(), WalletPublicKeyPEM()},
		{"wallet", WalletPrivateKeyPEM(), WalletPublicKeyPEM(), MerchantPublicKeyPEM()},
	}
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			if !bytes.HasPrefix(p.private, []byte("-----BEGIN PRIVATE KEY-----")) || !bytes.HasPrefix(p.public, []byte("-----BEGIN PUBLIC KEY-----")) {
				t.Fatal("keys are not PEM PKCS#8 / PKIX")
			}
			priv, err := wallet.ParsePrivateKey(p.private)
			if err != nil {
				t.Fatal(err)
			}
			if n := priv.N.BitLen(); n != 2048 {
				t.Errorf("key has %d bits, want 2048", n)
			}
			pub, err := wallet.ParsePublicKey(p.public)
			if err != nil {
				t.Fatal(err)
			}
			if !priv.PublicKey.Equal(pub) {
				t.Error("the public key is not the private key's half")
			}
			other, err := wallet.ParsePublicKey(p.otherPublic)
			if err != nil {
				t.Fatal(err)
			}
			if pub.Equal(other) {
				t.Error("the merchant and the wallet share a key")
			}
			content := []byte("POST /v1/x\nC.1.{}")
			sig, err := wallet.Sign(priv, content)
			if err != nil {
				t.Fatal(err)
			}
			if err := wallet.Verify(pub, content, sig); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

func TestKeyGettersReturnCopies(t *testing.T) {
	k := MerchantPrivateKeyPEM()
	k[0] = 'X'
	if MerchantPrivateKeyPEM()[0] != '-' {
		t.Error("changing a returned key changed the embedded one")
	}
}

func TestWriteKeyFiles(t *testing.T) {
	kf := WriteKeyFiles(t)
	files := []struct {
		path string
		want []byte
		mode os.FileMode
	}{
		{kf.MerchantPrivate, MerchantPrivateKeyPEM(), 0o600},
		{kf.MerchantPublic, MerchantPublicKeyPEM(), 0o644},
		{kf.WalletPrivate, WalletPrivateKeyPEM(), 0o600},
		{kf.WalletPublic, WalletPublicKeyPEM(), 0o644},
	}
	for _, f := range files {
		got, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, f.want) {
			t.Errorf("%s does not hold its key", f.path)
		}
		st, err := os.Stat(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != f.mode {
			t.Errorf("%s has mode %v, want %v", f.path, st.Mode().Perm(), f.mode)
		}
	}
	// The files are in the shapes a FileKey and the key settings read.
	fk := &wallet.FileKey{KeyPath: kf.MerchantPrivate, Version: "1"}
	if err := fk.Load(); err != nil {
		t.Errorf("FileKey.Load(%s): %v", kf.MerchantPrivate, err)
	}
}
