package wallet

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"
)

// ParsePrivateKey reads an RSA private key in any shape the wallet hands out:
// PEM PKCS#8 ("PRIVATE KEY"), PEM PKCS#1 ("RSA PRIVATE KEY"), or the bare
// base64 body of a PKCS#8 key with no armour. Errors never quote the input.
func ParsePrivateKey(data []byte) (*rsa.PrivateKey, error) {
	der, err := keyDER(data)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, errors.New("private key: not an RSA key")
		}
		return rk, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	return nil, errors.New("private key: neither PKCS#8 nor PKCS#1 RSA")
}

// ParsePublicKey reads an RSA public key: PEM or bare base64 of the PKIX
// (SubjectPublicKeyInfo) DER, or PEM PKCS#1 ("RSA PUBLIC KEY").
func ParsePublicKey(data []byte) (*rsa.PublicKey, error) {
	der, err := keyDER(data)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	if k, err := x509.ParsePKIXPublicKey(der); err == nil {
		rk, ok := k.(*rsa.PublicKey)
		if !ok {
			return nil, errors.New("public key: not an RSA key")
		}
		return rk, nil
	}
	if k, err := x509.ParsePKCS1PublicKey(der); err == nil {
		return k, nil
	}
	return nil, errors.New("public key: neither PKIX nor PKCS#1 RSA")
}

func keyDER(data []byte) ([]byte, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil, errors.New("empty")
	}
	if bytes.Contains(data, []byte("-----BEGIN")) {
		block, _ := pem.Decode(data)
		if block == nil {
			return nil, errors.New("malformed PEM")
		}
		return block.Bytes, nil
	}
	// Bare base64, possibly wrapped over several lines.
	clean := strings.Join(strings.Fields(string(data)), "")
	der, err := base64.StdEncoding.DecodeString(clean)
	if err != nil {
		if der, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(clean, "=")); err != nil {
			return nil, errors.New("neither PEM nor base64")
		}
	}
	return der, nil
}

// SigningKey is the merchant key in force and the keyVersion announced with it.
type SigningKey struct {
	Key     *rsa.PrivateKey
	Version string
}

// String redacts: a key never prints itself.
func (SigningKey) String() string               { return "SigningKey(redacted)" }
func (SigningKey) GoString() string             { return "SigningKey(redacted)" }
func (SigningKey) LogValue() slog.Value         { return slog.StringValue("SigningKey(redacted)") }
func (SigningKey) MarshalJSON() ([]byte, error) { return []byte(`"SigningKey(redacted)"`), nil }

// KeySource yields the signing key to use now. Implementations are safe for
// concurrent use.
type KeySource interface {
	SigningKey() (SigningKey, error)
}

// StaticKey is a KeySource that never changes.
type StaticKey SigningKey

func (k StaticKey) SigningKey() (SigningKey, error) { return SigningKey(k), nil }
func (StaticKey) String() string                    { return "StaticKey(redacted)" }
func (StaticKey) GoString() string                  { return "StaticKey(redacted)" }
func (StaticKey) LogValue() slog.Value              { return slog.StringValue("StaticKey(redacted)") }
func (StaticKey) MarshalJSON() ([]byte, error)      { return []byte(`"StaticKey(redacted)"`), nil }

// FileKey is a KeySource that re-reads its key file (and, when set, its
// version file) when either changes on disk, so a rotated key and its version
// change together, as a Kubernetes Secret volume update delivers them. Files
// are checked at most once per CheckEvery (default 1s); a file that fails to
// parse (a half-written rotation) keeps the previous key in force; with no
// key loaded yet the error is returned.
type FileKey struct {
	KeyPath     string
	VersionPath string // empty: Version is fixed
	Version     string // used when VersionPath is empty
	CheckEvery  time.Duration

	mu      sync.Mutex
	cur     SigningKey
	stamp   string
	checked time.Time
}

func (*FileKey) String() string   { return "FileKey(redacted)" }
func (*FileKey) GoString() string { return "FileKey(redacted)" }

// Load reads the files now; use it at start to fail fast.
func (f *FileKey) Load() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reload(true)
}

func (f *FileKey) SigningKey() (SigningKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	every := f.CheckEvery
	if every <= 0 {
		every = time.Second
	}
	if f.cur.Key == nil || time.Since(f.checked) >= every {
		if err := f.reload(false); err != nil && f.cur.Key == nil {
			return SigningKey{}, err
		}
	}
	return f.cur, nil
}

func (f *FileKey) reload(force bool) error {
	f.checked = time.Now()
	stamp, err := fileStamp(f.KeyPath, f.VersionPath)
	if err != nil {
		return err
	}
	if !force && stamp == f.stamp && f.cur.Key != nil {
		return nil
	}
	raw, err := os.ReadFile(f.KeyPath)
	if err != nil {
		return fmt.Errorf("read key file: %w", err)
	}
	key, err := ParsePrivateKey(raw)
	if err != nil {
		return err
	}
	version := f.Version
	if f.VersionPath == "" {
		if err := ValidKeyVersion(version); err != nil {
			return err
		}
	} else {
		v, err := os.ReadFile(f.VersionPath)
		if err != nil {
			return fmt.Errorf("read key version file: %w", err)
		}
		version = strings.TrimSpace(string(v))
		if err := ValidKeyVersion(version); err != nil {
			return err
		}
	}
	f.cur = SigningKey{Key: key, Version: version}
	f.stamp = stamp
	return nil
}

func fileStamp(paths ...string) (string, error) {
	var b strings.Builder
	for _, p := range paths {
		if p == "" {
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("stat key file: %w", err)
		}
		fmt.Fprintf(&b, "%s:%d:%d;", p, st.Size(), st.ModTime().UnixNano())
	}
	return b.String(), nil
}

// ValidKeyVersion accepts what can stand in a Signature header value.
func ValidKeyVersion(v string) error {
	if v == "" || len(v) > 32 {
		return errors.New("key version must be 1 to 32 characters")
	}
	for _, r := range v {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '-' || r == '_' || r == '.') {
			return errors.New("key version may hold only letters, digits, '-', '_' and '.'")
		}
	}
	return nil
}
