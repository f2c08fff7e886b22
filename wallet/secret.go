package wallet

import "github.com/tokenproxy/tokenproxy/internal/secret"

// Secret is a token as the wallet issued it; it redacts itself everywhere
// but Reveal (see secret.Secret, the one type tokencache shares).
type Secret = secret.Secret
