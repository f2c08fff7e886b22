// Package keygen makes throwaway merchant key pairs for the demo, the
// benchmark and the soak: programs that start walletsim and tokenproxy and
// need a key the wallet trusts. Tests use the fixed keys of internal/testenv.
package keygen

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
)

// WriteKeyPair generates an RSA-2048 key and writes it into dir as
// merchant.key (PEM PKCS#8, mode 0600) and merchant.pub (PEM PKIX).
func WriteKeyPair(dir string) (keyFile, pubFile string, err error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", "", err
	}
	keyFile, pubFile = filepath.Join(dir, "merchant.key"), filepath.Join(dir, "merchant.pub")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	return keyFile, pubFile, os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}
