package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
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
	// quoted is the key as it is written out, quotes included, when the
	// bytes the app sent are already what json.Marshal(key) gives; nil:
	// marshal the key.
	quoted []byte
}

// errBody is the cause of every body the proxy refuses with PARAM_ILLEGAL.
var errBody = errors.New("body")

// parseObject checks that body is one JSON object in valid UTF-8, without
// duplicate keys at any depth and no deeper than maxDepth, and returns its
// members. It reads body in one pass and copies nothing of it: the values
// are sub-slices of body, which must not change while the object is used.
func parseObject(body []byte) (object, error) {
	if !utf8.Valid(body) {
		return nil, fmt.Errorf("%w: not valid UTF-8", errBody)
	}
	s := scanners.Get().(*scanner)
	defer func() { *s = scanner{}; scanners.Put(s) }() // keep no body alive
	s.data, s.keys = body, s.keyBuf[:0]
	s.space()
	switch {
	case s.pos == len(s.data):
		return nil, fmt.Errorf("%w: empty", errBody)
	case s.data[s.pos] != '{':
		if err := s.value(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: not a JSON object", errBody)
	}
	members := s.topBuf[:0]
	if err := s.object(&members); err != nil {
		return nil, err
	}
	s.space()
	if s.pos != len(s.data) {
		return nil, fmt.Errorf("%w: data after the object", errBody)
	}
	return s.members(members), nil
}

// span is a top-level member as the scanner found it: where its key and
// value are in the body, and the key decoded when it held an escape.
type span struct {
	keyStart, keyEnd int // the key's bytes, quotes included
	valStart, valEnd int
	decoded          []byte // nil: the key has no escape
}

// members builds the object of the top-level spans, with all the keys in
// one string (one allocation, whatever the number of members).
func (s *scanner) members(spans []span) object {
	n := 0
	for _, m := range spans {
		if m.decoded != nil {
			n += len(m.decoded)
		} else {
			n += m.keyEnd - m.keyStart - 2
		}
	}
	var keys strings.Builder
	keys.Grow(n)
	for _, m := range spans {
		if m.decoded != nil {
			keys.Write(m.decoded)
		} else {
			keys.Write(s.data[m.keyStart+1 : m.keyEnd-1])
		}
	}
	all := keys.String()
	obj := make(object, len(spans))
	at := 0
	for i, m := range spans {
		kn := m.keyEnd - m.keyStart - 2
		if m.decoded != nil {
			kn = len(m.decoded)
		}
		obj[i] = member{key: all[at : at+kn], raw: s.data[m.valStart:m.valEnd]}
		if m.decoded == nil && plainKey(s.data[m.keyStart+1:m.keyEnd-1]) {
			obj[i].quoted = s.data[m.keyStart:m.keyEnd]
		}
		at += kn
	}
	return obj
}

// plainKey reports whether an unescaped key is written out by
// json.Marshal exactly as it came: it holds none of the characters
// encoding/json escapes (<, >, &, U+2028, U+2029; quotes, backslashes and
// control characters cannot appear unescaped in a valid key).
func plainKey(k []byte) bool {
	for i, c := range k {
		switch {
		case c == '<' || c == '>' || c == '&':
			return false
		case c == 0xE2 && i+2 < len(k) && k[i+1] == 0x80 && (k[i+2] == 0xA8 || k[i+2] == 0xA9):
			return false
		}
	}
	return true
}

// scanners are reused: a scanner is large (room for the keys of a usual
// body) and every call parses a body.
var scanners = sync.Pool{New: func() any { return new(scanner) }}

// scanner reads a JSON text once, checking its syntax, the depth and the
// uniqueness of the keys of every object.
type scanner struct {
	data  []byte
	pos   int
	depth int
	// keys are the keys read so far of the objects open, innermost last:
	// an object's keys start where they stood when it opened.
	keys [][]byte
	// Room for the usual body's keys and members without allocating.
	keyBuf [32][]byte
	topBuf [16]span
}

// dupIndexAt is the number of keys past which an object's keys are looked
// up in a map rather than compared one by one (a body of many keys must not
// cost quadratic time).
const dupIndexAt = 16

func (s *scanner) syntax() error {
	if s.pos >= len(s.data) {
		return fmt.Errorf("%w: not JSON (truncated)", errBody)
	}
	return fmt.Errorf("%w: not JSON", errBody)
}

func (s *scanner) space() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// value reads one value at s.pos (after any space).
func (s *scanner) value() error {
	if s.pos >= len(s.data) {
		return s.syntax()
	}
	switch c := s.data[s.pos]; {
	case c == '{':
		return s.object(nil)
	case c == '[':
		return s.array()
	case c == '"':
		_, _, err := s.str()
		return err
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	}
	return s.syntax()
}

func (s *scanner) open() error {
	if s.depth == maxDepth {
		return fmt.Errorf("%w: nested deeper than %d", errBody, maxDepth)
	}
	s.depth++
	s.pos++
	return nil
}

// object reads an object; top, when set, receives its members.
func (s *scanner) object(top *[]span) error {
	if err := s.open(); err != nil {
		return err
	}
	mark := len(s.keys)
	defer func() { s.keys = s.keys[:mark]; s.depth-- }()
	var index map[string]struct{}
	s.space()
	if s.pos < len(s.data) && s.data[s.pos] == '}' {
		s.pos++
		return nil
	}
	for {
		s.space()
		if s.pos >= len(s.data) || s.data[s.pos] != '"' {
			return s.syntax()
		}
		keyStart := s.pos
		key, escaped, err := s.str()
		if err != nil {
			return err
		}
		var decoded []byte
		if escaped {
			var k string
			if json.Unmarshal(s.data[keyStart:s.pos], &k) != nil {
				return s.syntax() // cannot happen: str checked it
			}
			decoded = []byte(k)
			key = decoded
		}
		// Duplicates: the decoded keys of this object, compared one by
		// one while they are few, through a map past that.
		own := s.keys[mark:]
		if index == nil && len(own) >= dupIndexAt {
			index = make(map[string]struct{}, 2*len(own))
			for _, k := range own {
				index[string(k)] = struct{}{}
			}
		}
		dup := false
		if index != nil {
			_, dup = index[string(key)]
			index[string(key)] = struct{}{}
		} else {
			for _, k := range own {
				if bytes.Equal(k, key) {
					dup = true
					break
				}
			}
		}
		if dup {
			return fmt.Errorf("%w: duplicate key %q", errBody, truncate(string(key), 32))
		}
		s.keys = append(s.keys, key)
		keyEnd := s.pos

		s.space()
		if s.pos >= len(s.data) || s.data[s.pos] != ':' {
			return s.syntax()
		}
		s.pos++
		s.space()
		valStart := s.pos
		if err := s.value(); err != nil {
			return err
		}
		if top != nil {
			*top = append(*top, span{keyStart: keyStart, keyEnd: keyEnd, valStart: valStart, valEnd: s.pos, decoded: decoded})
		}
		if done, err := s.separator('}'); err != nil || done {
			return err
		}
	}
}

func (s *scanner) array() error {
	if err := s.open(); err != nil {
		return err
	}
	defer func() { s.depth-- }()
	s.space()
	if s.pos < len(s.data) && s.data[s.pos] == ']' {
		s.pos++
		return nil
	}
	for {
		s.space()
		if err := s.value(); err != nil {
			return err
		}
		if done, err := s.separator(']'); err != nil || done {
			return err
		}
	}
}

// separator reads what follows a member or an element: ',' (more follow)
// or closing (the object or array ends: done).
func (s *scanner) separator(closing byte) (done bool, err error) {
	s.space()
	if s.pos >= len(s.data) {
		return false, s.syntax()
	}
	switch s.data[s.pos] {
	case ',':
		s.pos++
		return false, nil
	case closing:
		s.pos++
		return true, nil
	}
	return false, s.syntax()
}

// str reads a string at s.pos (the opening quote) and returns its bytes
// between the quotes, and whether it holds an escape (then those bytes
// are not its value).
func (s *scanner) str() ([]byte, bool, error) {
	s.pos++
	start := s.pos
	escaped := false
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		switch {
		case c == '"':
			s.pos++
			return s.data[start : s.pos-1], escaped, nil
		case c < 0x20:
			return nil, false, s.syntax()
		case c == '\\':
			escaped = true
			s.pos++
			if s.pos >= len(s.data) {
				return nil, false, s.syntax()
			}
			switch s.data[s.pos] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.pos++
			case 'u':
				if s.pos+4 >= len(s.data) {
					s.pos = len(s.data)
					return nil, false, s.syntax()
				}
				for _, h := range s.data[s.pos+1 : s.pos+5] {
					if !isHex(h) {
						return nil, false, s.syntax()
					}
				}
				s.pos += 5
			default:
				return nil, false, s.syntax()
			}
		default:
			s.pos++
		}
	}
	return nil, false, s.syntax()
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func (s *scanner) literal(lit string) error {
	if !bytes.HasPrefix(s.data[s.pos:], []byte(lit)) {
		if len(s.data)-s.pos < len(lit) && bytes.HasPrefix([]byte(lit), s.data[s.pos:]) {
			s.pos = len(s.data)
		}
		return s.syntax()
	}
	s.pos += len(lit)
	return nil
}

// number reads -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?; what follows
// it is the caller's to check.
func (s *scanner) number() error {
	if s.data[s.pos] == '-' {
		s.pos++
	}
	switch {
	case s.pos < len(s.data) && s.data[s.pos] == '0':
		s.pos++
	case s.digits() == 0:
		return s.syntax()
	}
	if s.pos < len(s.data) && s.data[s.pos] == '.' {
		s.pos++
		if s.digits() == 0 {
			return s.syntax()
		}
	}
	if s.pos < len(s.data) && (s.data[s.pos] == 'e' || s.data[s.pos] == 'E') {
		s.pos++
		if s.pos < len(s.data) && (s.data[s.pos] == '+' || s.data[s.pos] == '-') {
			s.pos++
		}
		if s.digits() == 0 {
			return s.syntax()
		}
	}
	return nil
}

func (s *scanner) digits() int {
	start := s.pos
	for s.pos < len(s.data) && s.data[s.pos] >= '0' && s.data[s.pos] <= '9' {
		s.pos++
	}
	return s.pos - start
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

// without returns o without the members named keys; o itself when it has
// none of them (objects are never changed in place).
func (o object) without(keys ...string) object {
	has := false
	for _, m := range o {
		for _, k := range keys {
			has = has || m.key == k
		}
	}
	if !has {
		return o
	}
	out := make(object, 0, len(o))
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
// It is o itself when there is none (objects are never changed in place).
func (o object) withoutTokenFields() object {
	has := false
	for _, m := range o {
		has = has || isTokenField(m.key)
	}
	if !has {
		return o
	}
	out := make(object, 0, len(o))
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
	out := make(object, len(o), len(o)+1) // room for a new member
	copy(out, o)
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
		return quoteJSON(value), nil
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

// marshal writes the object out: each key as the app sent it when that is
// what encoding/json would write, each value's exact bytes; one allocation.
func (o object) marshal() []byte {
	n := 2
	for _, m := range o {
		n += len(m.raw) + 2 + len(m.key) + 2
	}
	b := make([]byte, 0, n)
	b = append(b, '{')
	for i, m := range o {
		if i > 0 {
			b = append(b, ',')
		}
		if m.quoted != nil {
			b = append(b, m.quoted...)
		} else {
			b = appendJSONString(b, m.key)
		}
		b = append(b, ':')
		b = append(b, m.raw...)
	}
	return append(b, '}')
}

// quoteJSON is s as a JSON string, exactly as json.Marshal writes it.
func quoteJSON(s string) json.RawMessage {
	return appendJSONString(make([]byte, 0, len(s)+2), s)
}

// appendJSONString appends s as json.Marshal writes it: directly when s
// needs no escape (printable ASCII other than the quote, the backslash and
// encoding/json's HTML escapes <, >, &), through json.Marshal otherwise.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
