// Package secret is the one type for a token in the clear, shared by the
// packages that hold tokens (wallet issues them, tokencache stores them).
package secret

import (
	"fmt"
	"io"
	"log/slog"
)

// Secret is a token (access or refresh) in the clear. It cannot print
// itself: String, GoString, MarshalJSON, LogValue and every fmt verb
// redact, so a token that reaches a log line, an error, a panic or a JSON
// body by mistake shows as [redacted]. Reveal gives the raw value to the
// places that need it: sealing, hashing and the outbound wallet request.
type Secret string

const redacted = "[redacted]"

func (Secret) String() string               { return redacted }
func (Secret) GoString() string             { return redacted }
func (Secret) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// Reveal returns the token itself.
func (s Secret) Reveal() string { return string(s) }

// Format redacts under every verb, also the ones fmt would otherwise use to
// report a bad verb with the raw value (%d on a string).
func (Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, redacted) }
