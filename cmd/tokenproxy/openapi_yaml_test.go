package main

// A reader for the plain YAML subset api/openapi.yaml is written in, so
// that the OpenAPI test needs nothing outside the standard library (the
// sidecar's go.mod admits no YAML package). It is strict: anything outside
// the subset is an error naming the line, never a silent misreading.
//
// The subset: block mappings and block sequences indented with spaces;
// keys plain or quoted; values plain, 'single-' or "double-quoted" (JSON
// escapes) scalars, flow sequences of scalars ([a, 'b', null]), {} and [],
// and | or > block scalars (with an optional - chomping indicator);
// comments on their own line or after a plain value. No anchors, aliases,
// tags, flow mappings, multi-line flow or quoted scalars, or documents.
// Plain scalars resolve as JSON would: null and ~, true and false,
// numbers (float64), anything else a string. The result holds
// map[string]any, []any, string, float64, bool and nil, like
// encoding/json's.

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

type yamlLine struct {
	no      int // 1-based, for errors
	indent  int
	content string // without the indentation; "" for a blank or comment line
	raw     string // the whole line, for block scalars
}

type yamlReader struct {
	lines []yamlLine
	i     int
}

// parseYAML reads one YAML document of the subset.
func parseYAML(src []byte) (any, error) {
	r := &yamlReader{}
	for n, raw := range strings.Split(strings.ReplaceAll(string(src), "\r\n", "\n"), "\n") {
		ind := 0
		for ind < len(raw) && raw[ind] == ' ' {
			ind++
		}
		content := raw[ind:]
		if strings.HasPrefix(content, "\t") {
			return nil, fmt.Errorf("line %d: a tab in the indentation", n+1)
		}
		if strings.HasPrefix(content, "#") {
			content = ""
		}
		if content == "---" || content == "..." {
			return nil, fmt.Errorf("line %d: document markers are outside the subset", n+1)
		}
		r.lines = append(r.lines, yamlLine{no: n + 1, indent: ind, content: strings.TrimRight(content, " "), raw: raw})
	}
	r.skipBlank()
	if r.i == len(r.lines) {
		return nil, fmt.Errorf("empty document")
	}
	if r.lines[r.i].indent != 0 {
		return nil, fmt.Errorf("line %d: the document must start at column 0", r.lines[r.i].no)
	}
	v, err := r.node(0)
	if err != nil {
		return nil, err
	}
	r.skipBlank()
	if r.i < len(r.lines) {
		return nil, fmt.Errorf("line %d: unexpected indentation", r.lines[r.i].no)
	}
	return v, nil
}

func (r *yamlReader) skipBlank() {
	for r.i < len(r.lines) && r.lines[r.i].content == "" {
		r.i++
	}
}

// node reads the block node whose first line (the current one) is at indent.
func (r *yamlReader) node(indent int) (any, error) {
	if isSeqItem(r.lines[r.i].content) {
		return r.sequence(indent)
	}
	return r.mapping(indent)
}

func isSeqItem(s string) bool { return s == "-" || strings.HasPrefix(s, "- ") }

func (r *yamlReader) mapping(indent int) (any, error) {
	m := map[string]any{}
	for {
		r.skipBlank()
		if r.i == len(r.lines) || r.lines[r.i].indent < indent {
			return m, nil
		}
		ln := r.lines[r.i]
		if ln.indent > indent {
			return nil, fmt.Errorf("line %d: unexpected indentation", ln.no)
		}
		if isSeqItem(ln.content) {
			return nil, fmt.Errorf("line %d: a sequence item inside a mapping", ln.no)
		}
		key, rest, err := splitKey(ln.content)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", ln.no, err)
		}
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("line %d: duplicate key %q", ln.no, key)
		}
		r.i++
		v, err := r.value(indent, rest, ln.no)
		if err != nil {
			return nil, err
		}
		m[key] = v
	}
}

func (r *yamlReader) sequence(indent int) (any, error) {
	s := []any{}
	for {
		r.skipBlank()
		if r.i == len(r.lines) || r.lines[r.i].indent < indent {
			return s, nil
		}
		ln := r.lines[r.i]
		if ln.indent > indent {
			return nil, fmt.Errorf("line %d: unexpected indentation", ln.no)
		}
		if !isSeqItem(ln.content) {
			return s, nil // a mapping key at the same indent ends the sequence
		}
		rest := strings.TrimPrefix(strings.TrimPrefix(ln.content, "-"), " ")
		off := len(ln.content) - len(rest)
		for strings.HasPrefix(rest, " ") {
			rest, off = rest[1:], off+1
		}
		if _, _, err := splitKey(rest); err == nil && rest != "" && !strings.HasPrefix(rest, "[") {
			// "- key: value": a mapping whose keys sit at the column of key.
			r.lines[r.i] = yamlLine{no: ln.no, indent: indent + off, content: rest, raw: ln.raw}
			v, err := r.mapping(indent + off)
			if err != nil {
				return nil, err
			}
			s = append(s, v)
			continue
		}
		r.i++
		v, err := r.value(indent, rest, ln.no)
		if err != nil {
			return nil, err
		}
		s = append(s, v)
	}
}

// value reads what follows "key:" or "- " on line no, whose parent is at
// indent: an inline value, a block scalar, or a nested block node.
func (r *yamlReader) value(indent int, rest string, no int) (any, error) {
	switch {
	case rest == "":
		r.skipBlank()
		if r.i < len(r.lines) && r.lines[r.i].indent > indent {
			return r.node(r.lines[r.i].indent)
		}
		return nil, nil
	case rest[0] == '|' || rest[0] == '>':
		return r.blockScalar(indent, rest, no)
	}
	v, err := inlineValue(rest)
	if err != nil {
		return nil, fmt.Errorf("line %d: %v", no, err)
	}
	return v, nil
}

func (r *yamlReader) blockScalar(indent int, header string, no int) (any, error) {
	folded := header[0] == '>'
	switch header[1:] {
	case "", "-":
	default:
		return nil, fmt.Errorf("line %d: block scalar header %q is outside the subset", no, header)
	}
	strip := strings.HasSuffix(header, "-")
	var body []string
	contentIndent := -1
	for r.i < len(r.lines) {
		ln := r.lines[r.i]
		blank := strings.TrimSpace(ln.raw) == ""
		if !blank {
			if ln.indent <= indent {
				break
			}
			if contentIndent < 0 {
				contentIndent = ln.indent
			}
			if ln.indent < contentIndent {
				return nil, fmt.Errorf("line %d: less indented than the block scalar's first line", ln.no)
			}
			body = append(body, ln.raw[contentIndent:])
		} else {
			body = append(body, "")
		}
		r.i++
	}
	for len(body) > 0 && body[len(body)-1] == "" {
		body = body[:len(body)-1]
	}
	var text string
	if folded {
		var b strings.Builder
		// A line break becomes a space, except around blank lines, each of
		// which is one line break (more-indented lines are not used).
		for k, l := range body {
			if k > 0 {
				if l == "" {
					b.WriteString("\n")
					continue
				}
				if body[k-1] != "" {
					b.WriteString(" ")
				}
			}
			b.WriteString(l)
		}
		text = b.String()
	} else {
		text = strings.Join(body, "\n")
	}
	if !strip && text != "" {
		text += "\n"
	}
	return text, nil
}

// splitKey splits "key: rest" (or "key:") into the key and the rest.
func splitKey(s string) (key, rest string, err error) {
	if s == "" {
		return "", "", fmt.Errorf("no key")
	}
	if s[0] == '"' || s[0] == '\'' {
		q, n, err := quoted(s)
		if err != nil {
			return "", "", err
		}
		after := s[n:]
		if after != ":" && !strings.HasPrefix(after, ": ") {
			return "", "", fmt.Errorf("a quoted key must be followed by ':'")
		}
		return q, strings.TrimSpace(after[1:]), nil
	}
	if strings.HasSuffix(s, ":") && !strings.Contains(s[:len(s)-1], ": ") {
		key = s[:len(s)-1]
	} else if k, v, ok := strings.Cut(s, ": "); ok {
		key, rest = k, strings.TrimSpace(v)
	} else {
		return "", "", fmt.Errorf("expected 'key: value'")
	}
	if key == "" || strings.ContainsAny(key[:1], "&*!|>%@`{[],#?-") || strings.HasSuffix(key, " ") {
		return "", "", fmt.Errorf("key %q is outside the subset", key)
	}
	return key, rest, nil
}

// quoted reads the quoted scalar at the start of s and returns it and the
// number of bytes it took.
func quoted(s string) (string, int, error) {
	if s[0] == '\'' {
		var b strings.Builder
		for i := 1; i < len(s); i++ {
			if s[i] == '\'' {
				if i+1 < len(s) && s[i+1] == '\'' {
					b.WriteByte('\'')
					i++
					continue
				}
				return b.String(), i + 1, nil
			}
			b.WriteByte(s[i])
		}
		return "", 0, fmt.Errorf("unterminated single-quoted scalar")
	}
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			var v string
			if err := json.Unmarshal([]byte(s[:i+1]), &v); err != nil {
				return "", 0, fmt.Errorf("double-quoted scalar: %v", err)
			}
			return v, i + 1, nil
		}
	}
	return "", 0, fmt.Errorf("unterminated double-quoted scalar")
}

// inlineValue reads a value on the rest of a line: quoted, a flow
// sequence, {} or [], or a plain scalar with an optional comment.
func inlineValue(s string) (any, error) {
	switch s[0] {
	case '"', '\'':
		v, n, err := quoted(s)
		if err != nil {
			return nil, err
		}
		if tail := strings.TrimSpace(s[n:]); tail != "" && !strings.HasPrefix(tail, "#") {
			return nil, fmt.Errorf("text after a quoted scalar: %q", tail)
		}
		return v, nil
	case '[':
		return flowSequence(s)
	case '{':
		if strings.TrimSpace(stripComment(s)) == "{}" {
			return map[string]any{}, nil
		}
		return nil, fmt.Errorf("flow mappings are outside the subset")
	}
	return plainScalar(stripComment(s))
}

func stripComment(s string) string {
	if i := strings.Index(s, " #"); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

func flowSequence(s string) (any, error) {
	end := strings.LastIndex(s, "]")
	if end < 0 {
		return nil, fmt.Errorf("unterminated flow sequence (multi-line flow is outside the subset)")
	}
	if tail := strings.TrimSpace(s[end+1:]); tail != "" && !strings.HasPrefix(tail, "#") {
		return nil, fmt.Errorf("text after a flow sequence: %q", tail)
	}
	inner := strings.TrimSpace(s[1:end])
	out := []any{}
	for inner != "" {
		var item any
		var n int
		if inner[0] == '"' || inner[0] == '\'' {
			q, k, err := quoted(inner)
			if err != nil {
				return nil, err
			}
			item, n = q, k
		} else {
			n = strings.IndexByte(inner, ',')
			if n < 0 {
				n = len(inner)
			}
			tok := strings.TrimSpace(inner[:n])
			if strings.ContainsAny(tok, "[]{}") {
				return nil, fmt.Errorf("nested flow collections are outside the subset")
			}
			v, err := plainScalar(tok)
			if err != nil {
				return nil, err
			}
			item = v
		}
		out = append(out, item)
		inner = strings.TrimSpace(inner[n:])
		if inner == "" {
			break
		}
		if inner[0] != ',' {
			return nil, fmt.Errorf("expected ',' in a flow sequence")
		}
		inner = strings.TrimSpace(inner[1:])
		if inner == "" {
			return nil, fmt.Errorf("trailing ',' in a flow sequence")
		}
	}
	return out, nil
}

var yamlNumber = regexp.MustCompile(`^[-+]?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$`)

func plainScalar(s string) (any, error) {
	if s == "" {
		return nil, fmt.Errorf("empty plain scalar")
	}
	if strings.ContainsAny(s[:1], "&*!|>%@`{}[],#\"'") || strings.HasPrefix(s, "- ") || strings.HasPrefix(s, "? ") {
		return nil, fmt.Errorf("plain scalar %q starts with an indicator outside the subset", s)
	}
	if strings.Contains(s, ": ") || strings.HasSuffix(s, ":") {
		return nil, fmt.Errorf("plain scalar %q holds ': ' (quote it)", s)
	}
	switch s {
	case "null", "~", "Null", "NULL":
		return nil, nil
	case "true", "True", "TRUE":
		return true, nil
	case "false", "False", "FALSE":
		return false, nil
	case "yes", "no", "on", "off", "Yes", "No", "On", "Off", "y", "n":
		// YAML 1.1 readers take these for booleans: quote them.
		return nil, fmt.Errorf("plain scalar %q is ambiguous between YAML versions (quote it)", s)
	}
	if yamlNumber.MatchString(s) {
		return strconv.ParseFloat(s, 64)
	}
	return s, nil
}

// TestYAMLSubset pins the reader on the constructs the document uses and
// on the ones it must refuse rather than misread.
func TestYAMLSubset(t *testing.T) {
	good := []struct{ src, want string }{
		{"a: 1\nb: x y\nc: 'it''s'\nd: \"q\\n\"\ne: null\nf: true\ng: 1.5.0\n", `{"a":1,"b":"x y","c":"it's","d":"q\n","e":null,"f":true,"g":"1.5.0"}`},
		{"a:\n  - x\n  - k: v\n    l: [1, 'two', null]\n  - []\n", `{"a":["x",{"k":"v","l":[1,"two",null]},[]]}`},
		{"'200':\n  $ref: '#/c'\nb: {}\n", `{"200":{"$ref":"#/c"},"b":{}}`},
		{"a: |\n  one\n\n  two\n    three\nb: >-\n  x\n  y\n\n  z\n", `{"a":"one\n\ntwo\n  three\n","b":"x y\nz"}`},
		{"# c\na: b # comment\nc: d#e\n", `{"a":"b","c":"d#e"}`},
	}
	for _, c := range good {
		v, err := parseYAML([]byte(c.src))
		if err != nil {
			t.Errorf("%q: %v", c.src, err)
			continue
		}
		if b, _ := json.Marshal(v); string(b) != c.want {
			t.Errorf("%q: got %s, want %s", c.src, b, c.want)
		}
	}
	bad := []string{
		"a: &x 1\n",      // anchor
		"a: *x\n",        // alias
		"a: !!str 1\n",   // tag
		"a: {b: 1}\n",    // flow mapping
		"a: b: c\n",      // a value with ': '
		"a: 1\na: 2\n",   // duplicate key
		"a:\n\t- x\n",    // tab indentation
		"a: 1\n  b: 2\n", // bad indentation
		"a: yes\n",       // YAML 1.1 boolean
		"a: [1, [2]]\n",  // nested flow
		"a: 'open\n",     // unterminated quote
		"---\na: 1\n",    // document marker
		"a:\n- x\n",      // sequence at the key's indentation
		"a: |+\n  x\n",   // keep chomping
	}
	for _, src := range bad {
		if v, err := parseYAML([]byte(src)); err == nil {
			t.Errorf("%q: read as %v, want an error", src, v)
		}
	}
}
