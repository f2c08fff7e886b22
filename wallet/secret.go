package wallet

import (
	"fmt"
	"io"
	"log/slog"
)

// Secret is a token as the wallet issued it. It cannot print itself: String,
// GoString, MarshalJSON and LogValue all redact, so a token put in a log line,
// an error or a response by mistake shows as [redacted]. Reveal is for the
// one place that needs the raw value: the outbound request body.
type Secret string

const redacted = "[redacted]"

func (Secret) String() string               { return redacted }
func (Secret) GoString() string             { return redacted }
func (Secret) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }
func (s Secret) Reveal() string             { return string(s) }

// Format redacts under every verb, also the ones fmt would otherwise use to
// report a bad verb with the raw value (%d on a string).
func (Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, redacted) }
