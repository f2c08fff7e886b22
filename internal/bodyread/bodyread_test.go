package bodyread

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"testing/iotest"
)

func TestRead(t *testing.T) {
	body := strings.Repeat("x", 100_000)
	tests := []struct {
		name     string
		body     string
		declared int64
		limit    int64
		budget   int64
		want     error
	}{
		{"declared", body, 100_000, 200_000, 1 << 20, nil},
		{"unknown length", body, -1, 200_000, 1 << 20, nil},
		{"empty", "", -1, 10, 1 << 20, nil},
		{"exactly the limit", body, -1, 100_000, 1 << 20, nil},
		{"over the limit", body, -1, 99_999, 1 << 20, ErrTooLarge},
		{"declared over the limit", body, 100_000, 99_999, 1 << 20, ErrTooLarge},
		{"longer than declared", body, 99_000, 200_000, 1 << 20, ErrLength},
		{"shorter than declared", body, 100_001, 200_000, 1 << 20, ErrLength},
		{"over the budget", body, -1, 200_000, 64 << 10, ErrOverBudget},
		{"declared over the budget", body, 100_000, 200_000, 64 << 10, ErrOverBudget},
	}
	for _, tt := range tests {
		granted := int64(0)
		grow := func(n int64) bool {
			if granted+n > tt.budget {
				return false
			}
			granted += n
			return true
		}
		got, err := Read(iotest.HalfReader(strings.NewReader(tt.body)), tt.declared, tt.limit, grow)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: err %v, want %v", tt.name, err, tt.want)
			continue
		}
		if err == nil && !bytes.Equal(got, []byte(tt.body)) {
			t.Errorf("%s: read %d bytes, want %d", tt.name, len(got), len(tt.body))
		}
		if err == nil && int64(cap(got)) > granted {
			t.Errorf("%s: holds %d bytes, granted %d", tt.name, cap(got), granted)
		}
	}
}
