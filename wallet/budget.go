package wallet

import (
	"context"
	"fmt"
	"io"
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

func budgetFrom(ctx context.Context) Budget {
	b, _ := ctx.Value(budgetKey{}).(Budget)
	return b
}

// readChunk is the first buffer of an answer of unknown length and the
// step it grows by at least.
const readChunk = 32 << 10

// readBody reads at most limit bytes of an answer, allocating once when
// its length is declared, and asking b (when set) for every byte it
// buffers. A body longer than limit, longer than it declared, or that b
// does not grant is ErrUnavailable; a short read is the transport error.
func readBody(r io.Reader, declared, limit int64, b Budget) ([]byte, error) {
	if declared > limit {
		return nil, fmt.Errorf("%w: response over %d bytes", ErrUnavailable, limit)
	}
	size := int64(readChunk)
	if declared >= 0 {
		size = declared + 1 // +1 sees a body longer than declared
	}
	size = min(size, limit+1)
	if b != nil && !b.Grow(size) {
		return nil, fmt.Errorf("%w: response over the memory budget", ErrUnavailable)
	}
	buf := make([]byte, 0, size)
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) > limit {
				return nil, fmt.Errorf("%w: response over %d bytes", ErrUnavailable, limit)
			}
			if declared >= 0 {
				return nil, fmt.Errorf("%w: response longer than its Content-Length", ErrUnavailable)
			}
			more := min(int64(cap(buf)), limit+1-int64(cap(buf)))
			more = max(more, 1)
			if b != nil && !b.Grow(more) {
				return nil, fmt.Errorf("%w: response over the memory budget", ErrUnavailable)
			}
			grown := make([]byte, len(buf), int64(cap(buf))+more)
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			if int64(len(buf)) > limit {
				return nil, fmt.Errorf("%w: response over %d bytes", ErrUnavailable, limit)
			}
			if declared >= 0 && int64(len(buf)) != declared {
				return nil, fmt.Errorf("%w: response shorter than its Content-Length", ErrUnavailable)
			}
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}
