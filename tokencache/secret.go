package tokencache

import "github.com/tokenproxy/tokenproxy/internal/secret"

// Secret is a token in the clear; it redacts itself everywhere but Reveal
// (see secret.Secret, the one type wallet shares).
type Secret = secret.Secret
