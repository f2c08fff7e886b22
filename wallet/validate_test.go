package wallet_test

import (
	"strings"
	"testing"

	"github.com/tokenproxy/tokenproxy/wallet"
)

func TestValidCustomerID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"a", true},
		{"1000001119398804xxxx", true},
		{strings.Repeat("x", 64), true},
		{"user_123-ABC.x:y+z=~!$^&*()[]{}|;'\"<>,`\\", true},
		{"", false},
		{strings.Repeat("x", 65), false},
		{"a b", false},
		{" a", false},
		{"a@b", false},
		{"a#b", false},
		{"a?b", false},
		{"a/b", false},
		{"a%b", false},
		{"a\tb", false},
		{"a\nb", false},
		{"a\x00", false},
		{"a\x7f", false},
		{"é", false},
		{"用户", false},
		{"a\x80", false},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			if err := wallet.ValidCustomerID(tt.id); (err == nil) != tt.want {
				t.Errorf("ValidCustomerID(%q) = %v, want ok=%v", tt.id, err, tt.want)
			}
		})
	}
}

func TestValidField(t *testing.T) {
	tests := []struct {
		s    string
		max  int
		want bool
	}{
		{"", 0, true},
		{"", 64, true},
		{"abc", 3, true},
		{"abcd", 3, false},
		{"ééé", 3, true}, // characters, not bytes
		{"éééé", 3, false},
		{"用户 Grüße", 64, true},
		{"a/b%c&d=e+f", 64, true},
		{`{"k":"v"}`, 64, true},
		{"a@b", 64, false},
		{"a#b", 64, false},
		{"a?b", 64, false},
		{"a\nb", 64, false},
		{"a\tb", 64, false},
		{"a\x00b", 64, false},
		{"a\x7fb", 64, false},
	}
	for _, tt := range tests {
		t.Run(tt.s, func(t *testing.T) {
			if err := wallet.ValidField(tt.s, tt.max); (err == nil) != tt.want {
				t.Errorf("ValidField(%q, %d) = %v, want ok=%v", tt.s, tt.max, err, tt.want)
			}
		})
	}
}
