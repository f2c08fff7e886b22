package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"unicode/utf8"
)

// parseObjectReference is parseObject as it was before the one-pass
// scanner: the structure checked by a json.Decoder token walk, then the
// members read by a second json.Decoder (with the truncation fix). The
// scanner must accept and refuse the same bodies and give the same members.
func parseObjectReference(body []byte) (object, bool) {
	if !utf8.Valid(body) || !checkStructureReference(body) {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil {
		return nil, false
	}
	var obj object
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, false
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, false
		}
		obj = append(obj, member{key: t.(string), raw: raw})
	}
	return obj, true
}

func checkStructureReference(body []byte) bool {
	type frame struct {
		object  bool
		wantKey bool
		keys    map[string]struct{}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var stack []*frame
	first := true
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return !first && len(stack) == 0
		}
		if err != nil {
			return false
		}
		if first {
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return false
			}
		} else if len(stack) == 0 {
			return false
		}
		first = false
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{', '[':
				if top != nil && top.object {
					top.wantKey = true
				}
				if len(stack) == maxDepth {
					return false
				}
				stack = append(stack, &frame{object: v == '{', wantKey: true})
			default:
				stack = stack[:len(stack)-1]
			}
		default:
			if top.object && top.wantKey {
				key := v.(string)
				if top.keys == nil {
					top.keys = make(map[string]struct{})
				}
				if _, dup := top.keys[key]; dup {
					return false
				}
				top.keys[key] = struct{}{}
				top.wantKey = false
			} else if top.object {
				top.wantKey = true
			}
		}
	}
}

var parseObjectCases = []string{
	`{}`, ` {} `, `{"a":1}`, `{"a":1,"b":"x","c":[1,{"d":null}]}`, " \n{ \"a\" : 1 }\n",
	``, ` `, `[1,2]`, `"x"`, `1`, `null`, `{"a":`, `{"a":1`, `{"a":1,`, `{"a":1} {"b":2}`, `{"a":1}x`,
	`{"a":1,"a":2}`, `{"a":{"b":1,"b":2}}`, `{"a":{"b":1},"c":{"b":2}}`, `{"a":[{"b":1},{"b":2}]}`,
	`{"a":"b","b":"a"}`, "{\"a\":\"\xff\"}", nested(64), nested(65),
	`{"a":` + strings.Repeat(`[`, 63) + strings.Repeat(`]`, 63) + `}`,
	`{"a":` + strings.Repeat(`[`, 64) + strings.Repeat(`]`, 64) + `}`,
	`{"a":1,"\u0061":2}`, `{"\ud800":1,"\udc00":2}`, `{"a\/b":1,"<k>&":2,"\u2028":3,"` + "\u2028" + `":4}`,
	`{"a":01}`, `{"a":-}`, `{"a":-0.5e-7}`, `{"a":1.}`, `{"a":.5}`, `{"a":1e}`, `{"a":tru}`, `{"a":true}`,
	`{"a":nul}`, `{"a":"\x"}`, `{"a":"\u12"}`, "{\"a\":\"\x01\"}", "{\"a\":\"\x7f\"}", `{"a" 1}`, `{a:1}`,
	`{"a":1 "b":2}`, `{"a":[1,]}`, `{"a":[,1]}`, `{,}`, `{"a":1}}`, `{"a":{}}`, `{"a":[]}`,
	"{\"a\":1}\t\r\n", "\ufeff{}", `{"a":"é\"\\\/\b\f\n\r\t\u00e9"}`,
	`{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k17":17,"k3":18}`,
	`{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k17":17,"k18":18}`,
}

func checkSameAsReference(t *testing.T, body []byte) {
	got, err := parseObject(body)
	want, ok := parseObjectReference(body)
	if (err == nil) != ok {
		t.Fatalf("parseObject(%.80q): err %v, the decoder-based parser ok %v", body, err, ok)
	}
	if !ok {
		return
	}
	if len(got) != len(want) {
		t.Fatalf("parseObject(%.80q): %d members, want %d", body, len(got), len(want))
	}
	for i := range want {
		if got[i].key != want[i].key || !bytes.Equal(got[i].raw, want[i].raw) {
			t.Fatalf("parseObject(%.80q) member %d = %q:%s, want %q:%s", body, i, got[i].key, got[i].raw, want[i].key, want[i].raw)
		}
	}
	if g, w := got.marshal(), want.marshal(); !bytes.Equal(g, w) {
		t.Fatalf("parseObject(%.80q).marshal() = %s, want %s", body, g, w)
	}
}

func TestParseObjectMatchesReference(t *testing.T) {
	for _, c := range parseObjectCases {
		checkSameAsReference(t, []byte(c))
	}
	many := `{"a":0`
	for i := range 3000 {
		many += `,"k` + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + `` + strings.Repeat("y", i/182) + `":1`
	}
	checkSameAsReference(t, []byte(many+`}`))
}

func FuzzParseObjectMatchesReference(f *testing.F) {
	for _, c := range parseObjectCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, body []byte) { checkSameAsReference(t, body) })
}
