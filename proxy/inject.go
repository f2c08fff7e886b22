package proxy

import (
	"fmt"
	"strings"
)

// ParseInject reads TOKENPROXY_INJECT: comma-separated PATH=FIELD pairs,
// FIELD a dotted JSON path (/v1/payments/pay=paymentMethod.paymentMethodId).
func ParseInject(s string) (map[string][]string, error) {
	out := make(map[string][]string)
	for _, pair := range strings.Split(s, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		path, field, ok := strings.Cut(pair, "=")
		if !ok || !strings.HasPrefix(path, "/") || field == "" {
			return nil, fmt.Errorf("%q: want PATH=FIELD with PATH starting with /", pair)
		}
		parts := strings.Split(field, ".")
		for _, p := range parts {
			if p == "" {
				return nil, fmt.Errorf("%q: empty field name in %q", pair, field)
			}
		}
		if _, dup := out[path]; dup {
			return nil, fmt.Errorf("%q: path given twice", path)
		}
		out[path] = parts
	}
	return out, nil
}
