package tokencache

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// KeySize is the length in bytes of every keyring key (AES-256).
const KeySize = 32

// Keyring holds the keys that seal tokens at rest. The first key seals;
// every key opens, so a key can be rotated in by putting it first and
// retired once every record has been written again since (each write seals
// with the first key).
//
// A Keyring is immutable and safe for concurrent use. It cannot print its
// keys: String, GoString and LogValue show only the key count and the
// sealing key's id. Make one with ParseKeyring; the zero Keyring holds no
// key and cannot seal.
type Keyring struct {
	keys []ringKey
}

type ringKey struct {
	id  string
	key []byte
}

// ParseKeyring parses comma- or newline-separated standard base64 keys of
// KeySize bytes each (for example from `openssl rand -base64 32`). Blanks
// around keys and empty entries (a trailing newline) are ignored. Errors name
// the key by its position, starting at 1, never by its value.
func ParseKeyring(s string) (*Keyring, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' })
	kr := &Keyring{}
	seen := make(map[string]int)
	for _, f := range fields {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		pos := len(kr.keys) + 1
		key, err := base64.StdEncoding.DecodeString(f)
		if err != nil {
			// The decoder's error is dropped on purpose: it quotes offsets
			// into the secret.
			return nil, fmt.Errorf("key %d: not valid standard base64", pos)
		}
		if len(key) != KeySize {
			return nil, fmt.Errorf("key %d: not %d bytes", pos, KeySize)
		}
		id := keyID(key)
		if first, ok := seen[id]; ok {
			return nil, fmt.Errorf("key %d: same key id as key %d", pos, first)
		}
		seen[id] = pos
		kr.keys = append(kr.keys, ringKey{id: id, key: key})
	}
	if len(kr.keys) == 0 {
		return nil, errors.New("no keys")
	}
	return kr, nil
}

// keyID names a key without revealing it: the first 8 hex digits of
// SHA-256("tokenproxy-key-id:" + key). The label keeps the id from being a
// plain hash of the key that could be matched against other systems.
func keyID(key []byte) string {
	sum := sha256.Sum256(append([]byte("tokenproxy-key-id:"), key...))
	return hex.EncodeToString(sum[:4])
}

// SealingKeyID is the id of the key that seals (the first one).
func (k *Keyring) SealingKeyID() string { return k.keys[0].id }

// KeyIDs returns the ids of all keys, the sealing one first.
func (k *Keyring) KeyIDs() []string {
	ids := make([]string, len(k.keys))
	for i, rk := range k.keys {
		ids[i] = rk.id
	}
	return ids
}

// String, GoString and LogValue have value receivers so that a dereferenced
// Keyring, printed with %+v, redacts too.
func (k Keyring) String() string {
	if len(k.keys) == 0 {
		return "Keyring(empty)"
	}
	return fmt.Sprintf("Keyring(%d keys, sealing key %s)", len(k.keys), k.keys[0].id)
}

func (k Keyring) GoString() string     { return k.String() }
func (k Keyring) LogValue() slog.Value { return slog.StringValue(k.String()) }

// Seal encrypts plaintext for one field of one customer's record under the
// sealing key and returns that key's id and the sealed value (unpadded
// standard base64 of nonce||ciphertext).
//
// The AES-256-GCM key is derived per customer with HKDF-SHA256 (salt: the
// key id, info: prefix + customerID) and the additional data binds the value
// to prefix, customerID and field: a sealed value copied to another customer,
// another field or another key prefix does not open.
func (k *Keyring) Seal(prefix, customerID, field string, plaintext []byte) (keyID, sealed string, err error) {
	keyID, raw, err := k.sealRaw(prefix, customerID, field, plaintext)
	if err != nil {
		return "", "", err
	}
	return keyID, base64.RawStdEncoding.EncodeToString(raw), nil
}

// sealRaw is Seal without the base64: nonce||ciphertext, as the Redis
// store's record format 2 keeps it (Redis strings are binary-safe).
func (k *Keyring) sealRaw(prefix, customerID, field string, plaintext []byte) (keyID string, sealed []byte, err error) {
	rk := k.keys[0]
	aead, err := rk.aead(prefix, customerID)
	if err != nil {
		return "", nil, fmt.Errorf("seal %s: %w", field, err)
	}
	buf := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(buf); err != nil {
		return "", nil, fmt.Errorf("seal %s: nonce: %w", field, err)
	}
	return rk.id, aead.Seal(buf, buf, plaintext, additionalData(prefix, customerID, field)), nil
}

// Open reverses Seal. Any failure (keyID not in the keyring, a damaged or
// misplaced value) is a *SealError naming keyID.
func (k *Keyring) Open(prefix, customerID, field, keyID, sealed string) ([]byte, error) {
	raw, err := base64.RawStdEncoding.DecodeString(sealed)
	if err != nil {
		return nil, &SealError{KeyID: keyID, reason: "malformed " + field}
	}
	return k.openRaw(prefix, customerID, field, keyID, raw)
}

// openRaw reverses sealRaw, with Open's errors.
func (k *Keyring) openRaw(prefix, customerID, field, keyID string, raw []byte) ([]byte, error) {
	var rk *ringKey
	for i := range k.keys {
		if k.keys[i].id == keyID {
			rk = &k.keys[i]
			break
		}
	}
	if rk == nil {
		return nil, &SealError{KeyID: keyID, reason: "key not in keyring"}
	}
	aead, err := rk.aead(prefix, customerID)
	if err != nil {
		return nil, &SealError{KeyID: keyID, reason: "derive key"}
	}
	if len(raw) < aead.NonceSize()+aead.Overhead() {
		return nil, &SealError{KeyID: keyID, reason: "malformed " + field}
	}
	nonce, ct := raw[:aead.NonceSize()], raw[aead.NonceSize():]
	plain, err := aead.Open(nil, nonce, ct, additionalData(prefix, customerID, field))
	if err != nil {
		return nil, &SealError{KeyID: keyID, reason: field + " does not open"}
	}
	return plain, nil
}

func (rk *ringKey) aead(prefix, customerID string) (cipher.AEAD, error) {
	dk, err := hkdf.Key(sha256.New, rk.key, []byte(rk.id), prefix+customerID, KeySize)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(dk)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// refreshTokenHashInfo is the HKDF info of the key that hashes refresh
// tokens (Record.RefreshTokenHash).
const refreshTokenHashInfo = "tokenproxy refresh token hash"

// refreshTokenHashKeys derives, from every key of the keyring (the sealing
// one first), the HMAC key of RefreshTokenHash. The hash is keyed so that
// a reader of Redis cannot test a guessed token against it.
func (k *Keyring) refreshTokenHashKeys() ([][]byte, error) {
	out := make([][]byte, len(k.keys))
	for i, rk := range k.keys {
		dk, err := hkdf.Key(sha256.New, rk.key, nil, refreshTokenHashInfo, sha256.Size)
		if err != nil {
			return nil, fmt.Errorf("derive refresh token hash key: %w", err)
		}
		out[i] = dk
	}
	return out, nil
}

// refreshTokenHash is the hex of the first 16 bytes of
// HMAC-SHA256(key, prefix NUL customerID NUL token).
func refreshTokenHash(key []byte, prefix, customerID, token string) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(prefix + "\x00" + customerID + "\x00" + token))
	return hex.EncodeToString(mac.Sum(nil)[:16])
}

// additionalData separates its parts with NUL, which neither a key prefix
// nor a customer id contains, so no two (prefix, customer, field) triples
// give the same bytes.
func additionalData(prefix, customerID, field string) []byte {
	return []byte(prefix + "\x00" + customerID + "\x00" + field)
}

// SealError means a stored record cannot be opened with the keyring: its key
// is not in the keyring (retired too early, or the wrong keys configured), or
// the sealed data does not authenticate. The error names the key id, never
// any data.
type SealError struct {
	KeyID  string
	reason string
}

func (e *SealError) Error() string {
	id := e.KeyID
	if id == "" {
		id = "(none)"
	}
	if e.reason == "" {
		return fmt.Sprintf("tokencache: cannot open record sealed with key %s", id)
	}
	return fmt.Sprintf("tokencache: cannot open record sealed with key %s: %s", id, e.reason)
}
