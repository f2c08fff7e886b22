package wallet

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/tokenproxy/tokenproxy/internal/bodyread"
)

// Budget is the memory a caller may still spend on a wallet answer's body.
// Grow asks for n more bytes and reports whether they were granted; the
// caller releases everything it granted when its request ends. A Client
// reading an answer asks before every buffer it allocates, so a burst of
// large answers is refused (ErrUnavailable) instead of growing the process
// without bound.
type Budget interface {
	Grow(n int64) bool
}

type budgetKey struct{}

// WithBudget returns ctx carrying b: calls made with it read their answers
// within b.
func WithBudget(ctx context.Context, b Budget) context.Context {
	return context.WithValue(ctx, budgetKey{}, b)
}

// readBody reads at most limit bytes of an answer within ctx's budget. A
// body over the limit or the budget, or unlike its Content-Length, is
// ErrUnavailable; a failed read is returned as it is.
func readBody(ctx context.Context, r io.Reader, declared, limit int64) ([]byte, error) {
	var grow func(int64) bool
	if b, ok := ctx.Value(budgetKey{}).(Budget); ok {
		grow = b.Grow
	}
	raw, err := bodyread.Read(r, declared, limit, grow)
	switch {
	case errors.Is(err, bodyread.ErrTooLarge):
		return nil, fmt.Errorf("%w: response over %d bytes", ErrUnavailable, limit)
	case errors.Is(err, bodyread.ErrOverBudget), errors.Is(err, bodyread.ErrLength):
		return nil, fmt.Errorf("%w: response %v", ErrUnavailable, err)
	}
	return raw, err
}
