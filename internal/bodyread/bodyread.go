// Package bodyread reads an HTTP body within a size limit and a memory
// budget, allocating as the body arrives rather than up front, so that a
// body's memory is granted before it is held.
package bodyread

import (
	"errors"
	"io"
)

var (
	// ErrTooLarge: the body is longer than the limit.
	ErrTooLarge = errors.New("body over the size limit")
	// ErrOverBudget: the budget did not grant the memory the body needs.
	ErrOverBudget = errors.New("body over the memory budget")
	// ErrLength: the body is longer or shorter than it declared.
	ErrLength = errors.New("body length differs from its Content-Length")
)

// firstChunk is the first buffer of a body of unknown length; it grows by
// doubling.
const firstChunk = 32 << 10

// Read reads r: at most limit bytes, declared bytes when declared >= 0
// (a Content-Length), asking grow for every byte of buffer before
// allocating it (grow nil: no budget). Errors: ErrTooLarge, ErrOverBudget,
// ErrLength, or the reader's own.
func Read(r io.Reader, declared, limit int64, grow func(int64) bool) ([]byte, error) {
	if declared > limit {
		return nil, ErrTooLarge
	}
	size := int64(firstChunk)
	if declared >= 0 {
		size = declared + 1 // +1 sees a body longer than declared
	}
	size = min(size, limit+1)
	if grow != nil && !grow(size) {
		return nil, ErrOverBudget
	}
	buf := make([]byte, 0, size)
	for {
		if len(buf) == cap(buf) {
			switch {
			case int64(len(buf)) > limit:
				return nil, ErrTooLarge
			case declared >= 0:
				return nil, ErrLength
			}
			more := max(1, min(int64(cap(buf)), limit+1-int64(cap(buf))))
			if grow != nil && !grow(more) {
				return nil, ErrOverBudget
			}
			grown := make([]byte, len(buf), int64(cap(buf))+more)
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			switch {
			case int64(len(buf)) > limit:
				return nil, ErrTooLarge
			case declared >= 0 && int64(len(buf)) != declared:
				return nil, ErrLength
			}
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}
