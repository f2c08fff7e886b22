package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// maxDepth is the deepest nesting a body may have; the outer object is level 1.
const maxDepth = 64

// object is a JSON object's members in their original order, each value
// kept as the exact bytes the app sent, so that what the proxy forwards
// differs from what it received only where it must (the token field).
type object []member

type member struct {
	key string
	raw json.RawMessage
}

// errBody is the cause of every body the proxy refuses with PARAM_ILLEGAL.
var errBody = errors.New("body")

// parseObject checks that body is one JSON object in valid UTF-8, without
// duplicate keys and no deeper than maxDepth, and returns its members.
func parseObject(body []byte) (object, error) {
	if !utf8.Valid(body) {
		return nil, fmt.Errorf("%w: not valid UTF-8", errBody)
	}
	if err := checkStructure(body); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil { // '{', checked above
		return nil, fmt.Errorf("%w: %v", errBody, err)
	}
	var obj object
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errBody, err)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%w: %v", errBody, err)
		}
		obj = append(obj, member{key: t.(string), raw: raw})
	}
	return obj, nil
}

// checkStructure walks the tokens of body once: exactly one top-level
// object, no duplicate key in any object, nesting at most maxDepth.
func checkStructure(body []byte) error {
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
			if first {
				return fmt.Errorf("%w: empty", errBody)
			}
			if len(stack) > 0 { // Token reports a plain EOF inside an unclosed object
				return fmt.Errorf("%w: not JSON (truncated)", errBody)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: not JSON", errBody)
		}
		if first {
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return fmt.Errorf("%w: not a JSON object", errBody)
			}
		} else if len(stack) == 0 {
			return fmt.Errorf("%w: data after the object", errBody)
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
					top.wantKey = true // this value completes a member
				}
				if len(stack) == maxDepth {
					return fmt.Errorf("%w: nested deeper than %d", errBody, maxDepth)
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
					return fmt.Errorf("%w: duplicate key %q", errBody, truncate(key, 32))
				}
				top.keys[key] = struct{}{}
				top.wantKey = false
			} else if top.object {
				top.wantKey = true
			}
		}
	}
}

// truncate shortens a key quoted in an error (and so in a log line); a key
// that is a token handle is never quoted.
func truncate(s string, n int) string {
	if strings.HasPrefix(s, handlePrefix) {
		return handlePrefix + "..."
	}
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func (o object) get(key string) (json.RawMessage, bool) {
	for _, m := range o {
		if m.key == key {
			return m.raw, true
		}
	}
	return nil, false
}

// str returns a string member; ok is false when absent or null, err set
// when present but not a string.
func (o object) str(key string) (s string, ok bool, err error) {
	raw, found := o.get(key)
	if !found || string(raw) == "null" {
		return "", false, nil
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false, fmt.Errorf("%w: %s must be a string", errBody, key)
	}
	return s, true, nil
}

func (o object) without(keys ...string) object {
	out := o[:0:0]
	for _, m := range o {
		drop := false
		for _, k := range keys {
			if m.key == k {
				drop = true
				break
			}
		}
		if !drop {
			out = append(out, m)
		}
	}
	return out
}

// withoutTokenFields returns o without any top-level token field, in any
// letter case: a wallet may read field names without regard to case, so
// "AccessToken" from the app must not reach it beside the injected one.
func (o object) withoutTokenFields() object {
	out := o[:0:0]
	for _, m := range o {
		if !isTokenField(m.key) {
			out = append(out, m)
		}
	}
	return out
}

// with returns o with path (a dotted field, split) set to the JSON string
// value, creating missing objects on the way. A non-object in the way is an
// error.
func (o object) with(path []string, value string) (object, error) {
	out := append(object(nil), o...)
	for i, m := range out {
		if m.key != path[0] {
			continue
		}
		raw, err := setIn(m.raw, path[1:], value)
		if err != nil {
			return nil, err
		}
		out[i].raw = raw
		return out, nil
	}
	raw, err := setIn(nil, path[1:], value)
	if err != nil {
		return nil, err
	}
	return append(out, member{key: path[0], raw: raw}), nil
}

// setIn returns raw with path set to value; raw nil means absent.
func setIn(raw json.RawMessage, path []string, value string) (json.RawMessage, error) {
	if len(path) == 0 {
		return json.Marshal(value)
	}
	var inner object
	if raw != nil {
		trimmed := bytes.TrimSpace(raw)
		if len(trimmed) == 0 || trimmed[0] != '{' {
			return nil, fmt.Errorf("%w: the token field's parent %q is not an object", errBody, path[0])
		}
		var err error
		if inner, err = parseObject(trimmed); err != nil {
			return nil, err
		}
	}
	inner, err := inner.with(path, value)
	if err != nil {
		return nil, err
	}
	return inner.marshal(), nil
}

func (o object) marshal() []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.key) // strings always marshal
		b.Write(k)
		b.WriteByte(':')
		b.Write(m.raw)
	}
	b.WriteByte('}')
	return b.Bytes()
}
