package proxy

import (
	"errors"
	"strings"
	"testing"
)

func nested(depth int) string {
	return strings.Repeat(`{"a":`, depth-1) + `{}` + strings.Repeat(`}`, depth-1)
}

func TestParseObject(t *testing.T) {
	tests := []struct {
		name string
		body string
		ok   bool
	}{
		{"empty object", `{}`, true},
		{"members", `{"a":1,"b":"x","c":[1,{"d":null}]}`, true},
		{"whitespace", " \n{ \"a\" : 1 }\n", true},
		{"empty body", ``, false},
		{"array", `[1,2]`, false},
		{"string", `"x"`, false},
		{"number", `1`, false},
		{"null", `null`, false},
		{"truncated", `{"a":`, false},
		{"trailing data", `{"a":1} {"b":2}`, false},
		{"trailing garbage", `{"a":1}x`, false},
		{"duplicate key", `{"a":1,"a":2}`, false},
		{"duplicate nested key", `{"a":{"b":1,"b":2}}`, false},
		{"same key in sibling objects", `{"a":{"b":1},"c":{"b":2}}`, true},
		{"same key in array objects", `{"a":[{"b":1},{"b":2}]}`, true},
		{"key equal to a value", `{"a":"b","b":"a"}`, true},
		{"invalid UTF-8", "{\"a\":\"\xff\"}", false},
		{"depth 64", nested(64), true},
		{"depth 65", nested(65), false},
		{"depth 65 through arrays", `{"a":` + strings.Repeat(`[`, 64) + strings.Repeat(`]`, 64) + `}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseObject([]byte(tt.body))
			if (err == nil) != tt.ok {
				t.Fatalf("parseObject(%.40q) err = %v, want ok=%v", tt.body, err, tt.ok)
			}
			if err != nil && !errors.Is(err, errBody) {
				t.Fatalf("error %v does not wrap errBody", err)
			}
		})
	}
}

func TestObjectWith(t *testing.T) {
	tests := []struct {
		name  string
		body  string
		field string
		want  string
		fail  bool
	}{
		{"top level added", `{"a":1}`, "accessToken", `{"a":1,"accessToken":"T"}`, false},
		{"top level overwritten in place", `{"accessToken":"mine","a":1}`, "accessToken", `{"accessToken":"T","a":1}`, false},
		{"nested created", `{"a":1}`, "paymentMethod.paymentMethodId", `{"a":1,"paymentMethod":{"paymentMethodId":"T"}}`, false},
		{"nested kept siblings", `{"paymentMethod":{"type":"WALLET","paymentMethodId":"x"}}`, "paymentMethod.paymentMethodId", `{"paymentMethod":{"type":"WALLET","paymentMethodId":"T"}}`, false},
		{"raw values preserved", `{"amount":1.50e2,"big":12345678901234567890,"s":"\u00e9"}`, "accessToken", `{"amount":1.50e2,"big":12345678901234567890,"s":"\u00e9","accessToken":"T"}`, false},
		{"string in the way", `{"paymentMethod":"x"}`, "paymentMethod.paymentMethodId", "", true},
		{"array in the way", `{"paymentMethod":[]}`, "paymentMethod.paymentMethodId", "", true},
		{"null in the way", `{"paymentMethod":null}`, "paymentMethod.paymentMethodId", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj, err := parseObject([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			got, err := obj.with(strings.Split(tt.field, "."), "T")
			if tt.fail {
				if err == nil || !errors.Is(err, errBody) {
					t.Fatalf("with() err = %v, want a body error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := string(got.marshal()); s != tt.want {
				t.Fatalf("got  %s\nwant %s", s, tt.want)
			}
			if _, err := parseObject(got.marshal()); err != nil {
				t.Fatalf("result does not parse: %v", err)
			}
		})
	}
}

func TestObjectWithout(t *testing.T) {
	obj, err := parseObject([]byte(`{"accessToken":"a","x":1,"refreshToken":"r"}`))
	if err != nil {
		t.Fatal(err)
	}
	cased, err := parseObject([]byte(`{"AccessToken":"a","x":1,"REFRESHTOKEN":"r","accesstokens":2}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(cased.withoutTokenFields().marshal()); got != `{"x":1,"accesstokens":2}` {
		t.Fatalf("cased token fields: got %s", got)
	}
	if got := string(obj.withoutTokenFields().marshal()); got != `{"x":1}` {
		t.Fatalf("got %s", got)
	}
	if got := string(obj.marshal()); got != `{"accessToken":"a","x":1,"refreshToken":"r"}` {
		t.Fatalf("without changed the original: %s", got)
	}
}

func TestParseInject(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
		fail bool
	}{
		{"", map[string]string{}, false},
		{"/v1/payments/pay=paymentMethod.paymentMethodId", map[string]string{"/v1/payments/pay": "paymentMethod.paymentMethodId"}, false},
		{" /a=x , /b=y.z ", map[string]string{"/a": "x", "/b": "y.z"}, false},
		{"a=x", nil, true},
		{"/a", nil, true},
		{"/a=", nil, true},
		{"/a=x..y", nil, true},
		{"/a=x,/a=y", nil, true},
	}
	for _, tt := range tests {
		got, err := ParseInject(tt.in)
		if (err != nil) != tt.fail {
			t.Fatalf("ParseInject(%q) err = %v, want fail=%v", tt.in, err, tt.fail)
		}
		if tt.fail {
			continue
		}
		if len(got) != len(tt.want) {
			t.Fatalf("ParseInject(%q) = %v", tt.in, got)
		}
		for p, f := range tt.want {
			if strings.Join(got[p], ".") != f {
				t.Fatalf("ParseInject(%q)[%s] = %v, want %s", tt.in, p, got[p], f)
			}
		}
	}
}
