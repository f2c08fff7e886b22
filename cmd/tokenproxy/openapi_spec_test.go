package main

// The structural checker of api/openapi.yaml and the JSON Schema subset
// validator the OpenAPI test checks the server's answers with. Both are
// strict on purpose: a schema keyword or format the validator does not
// implement is a problem of the document, so no part of a schema is ever
// silently ignored when an answer is validated.

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

const specFile = "../../api/openapi.yaml"

// spec is the parsed OpenAPI document.
type spec struct {
	root map[string]any
}

func loadSpec(t *testing.T) *spec {
	t.Helper()
	src, err := os.ReadFile(specFile)
	if err != nil {
		t.Fatal(err)
	}
	v, err := parseYAML(src)
	if err != nil {
		t.Fatalf("%s: %v", specFile, err)
	}
	root, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s: not a mapping", specFile)
	}
	return &spec{root: root}
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// Extensions of this document (see its info.description).
const (
	extOtherMethods = "x-tokenproxy-other-methods"
	extAnyPath      = "x-tokenproxy-any-path"
	extUnknownPath  = "x-tokenproxy-unknown-path"
	extStatus       = "x-tokenproxy-status"
)

// resolve follows a local JSON pointer ("#/components/...").
func (s *spec) resolve(ref string) (any, error) {
	p, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, fmt.Errorf("$ref %q is not a local reference", ref)
	}
	var cur any = s.root
	for _, tok := range strings.Split(p, "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("$ref %q: %q is not inside a mapping", ref, tok)
		}
		if cur, ok = m[tok]; !ok {
			return nil, fmt.Errorf("$ref %q: no %q", ref, tok)
		}
	}
	return cur, nil
}

// deref follows a Reference Object (a mapping with $ref) to what it names.
func (s *spec) deref(v any) (map[string]any, error) {
	for range 16 {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("expected a mapping, got %T", v)
		}
		ref, ok := m["$ref"].(string)
		if !ok {
			return m, nil
		}
		var err error
		if v, err = s.resolve(ref); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("$ref chain too long")
}

func mapAt(m map[string]any, keys ...string) map[string]any {
	cur := m
	for _, k := range keys {
		next, ok := cur[k].(map[string]any)
		if !ok {
			return nil
		}
		cur = next
	}
	return cur
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// problems collects what is wrong with the document.
type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

var (
	statusKey     = regexp.MustCompile(`^(default|[1-5]XX|[1-5][0-9]{2})$`)
	templateParam = regexp.MustCompile(`\{([^{}]+)\}`)
	openapi31     = regexp.MustCompile(`^3\.1\.[0-9]+$`)
)

// checkDocument checks that the document is structurally valid OpenAPI
// 3.1 as far as this API uses it, and returns what is wrong.
func (s *spec) checkDocument() problems {
	var p problems
	if v, _ := s.root["openapi"].(string); !openapi31.MatchString(v) {
		p.add("openapi is %q, want 3.1.x", v)
	}
	info := mapAt(s.root, "info")
	for _, k := range []string{"title", "version"} {
		if v, _ := info[k].(string); v == "" {
			p.add("info.%s missing", k)
		}
	}
	for k := range s.root {
		switch k {
		case "openapi", "info", "jsonSchemaDialect", "servers", "paths", "webhooks", "components", "security", "tags", "externalDocs":
		default:
			if !strings.HasPrefix(k, "x-") {
				p.add("unknown top-level field %q", k)
			}
		}
	}
	paths := mapAt(s.root, "paths")
	if len(paths) == 0 {
		p.add("no paths")
	}
	opIDs := map[string]string{}
	for _, path := range sortedKeys(paths) {
		if !strings.HasPrefix(path, "/") {
			p.add("path %q does not start with /", path)
		}
		item, _ := paths[path].(map[string]any)
		var tmpl []string
		for _, m := range templateParam.FindAllStringSubmatch(path, -1) {
			tmpl = append(tmpl, m[1])
		}
		s.checkPathItem(&p, "paths."+path, item, tmpl, opIDs)
	}
	webhooks := mapAt(s.root, "webhooks")
	for _, name := range sortedKeys(webhooks) {
		item, _ := webhooks[name].(map[string]any)
		s.checkPathItem(&p, "webhooks."+name, item, nil, opIDs)
	}
	// Every $ref anywhere resolves, and every component is used.
	used := map[string]bool{}
	walk(s.root, "", func(at string, m map[string]any) {
		if ref, ok := m["$ref"].(string); ok {
			if _, err := s.resolve(ref); err != nil {
				p.add("%s: %v", at, err)
			}
			used[ref] = true
		}
	})
	comps := mapAt(s.root, "components")
	for _, kind := range sortedKeys(comps) {
		for _, name := range sortedKeys(mapAt(comps, kind)) {
			if !used["#/components/"+kind+"/"+name] {
				p.add("components.%s.%s is never referenced", kind, name)
			}
		}
	}
	for _, name := range sortedKeys(mapAt(comps, "schemas")) {
		s.checkSchema(&p, "components.schemas."+name, comps["schemas"].(map[string]any)[name])
	}
	return p
}

// walk calls f on every mapping of the tree, depth first.
func walk(v any, at string, f func(at string, m map[string]any)) {
	switch v := v.(type) {
	case map[string]any:
		f(at, v)
		for _, k := range sortedKeys(v) {
			walk(v[k], at+"."+k, f)
		}
	case []any:
		for i, e := range v {
			walk(e, at+"["+strconv.Itoa(i)+"]", f)
		}
	}
}

func (s *spec) checkPathItem(p *problems, at string, item map[string]any, tmpl []string, opIDs map[string]string) {
	if item == nil {
		p.add("%s: not a mapping", at)
		return
	}
	for k := range item {
		if !slices.Contains(httpMethods, k) && !strings.HasPrefix(k, "x-") &&
			k != "parameters" && k != "summary" && k != "description" && k != "servers" {
			p.add("%s: unknown field %q", at, k)
		}
	}
	if other, ok := item[extOtherMethods]; ok {
		om, _ := other.(map[string]any)
		if len(om) == 0 {
			p.add("%s.%s: no responses", at, extOtherMethods)
		}
		s.checkResponses(p, at+"."+extOtherMethods, om)
	}
	nops := 0
	for _, method := range httpMethods {
		op, ok := item[method].(map[string]any)
		if !ok {
			continue
		}
		nops++
		oat := at + "." + method
		id, _ := op["operationId"].(string)
		switch {
		case id == "":
			p.add("%s: no operationId", oat)
		case opIDs[id] != "":
			p.add("%s: operationId %q also at %s", oat, id, opIDs[id])
		default:
			opIDs[id] = oat
		}
		// Path parameters: every template name declared, required; no other.
		declared := map[string]bool{}
		for _, list := range []any{item["parameters"], op["parameters"]} {
			params, _ := list.([]any)
			for i, raw := range params {
				pm, err := s.deref(raw)
				if err != nil {
					p.add("%s.parameters[%d]: %v", oat, i, err)
					continue
				}
				name, _ := pm["name"].(string)
				in, _ := pm["in"].(string)
				if name == "" || !slices.Contains([]string{"query", "header", "path", "cookie"}, in) {
					p.add("%s: parameter %d needs a name and in", oat, i)
				}
				if _, ok := pm["schema"]; !ok {
					p.add("%s: parameter %q has no schema", oat, name)
				} else {
					s.checkSchema(p, oat+".parameters."+name, pm["schema"])
					if ex, ok := pm["example"]; ok {
						if err := s.validate(pm["schema"], ex, "example"); err != nil {
							p.add("%s: parameter %q example: %v", oat, name, err)
						}
					}
				}
				if in == "path" {
					if pm["required"] != true {
						p.add("%s: path parameter %q must be required", oat, name)
					}
					if !slices.Contains(tmpl, name) {
						p.add("%s: path parameter %q is not in the path", oat, name)
					}
					declared[name] = true
				}
			}
		}
		for _, name := range tmpl {
			if !declared[name] {
				p.add("%s: path template {%s} has no parameter", oat, name)
			}
		}
		if rb, ok := op["requestBody"]; ok {
			rbm, err := s.deref(rb)
			if err != nil {
				p.add("%s.requestBody: %v", oat, err)
			} else {
				s.checkContent(p, oat+".requestBody", rbm, true)
			}
		}
		resps, _ := op["responses"].(map[string]any)
		if len(resps) == 0 {
			p.add("%s: no responses", oat)
		}
		s.checkResponses(p, oat+".responses", resps)
	}
	if nops == 0 {
		p.add("%s: no operation", at)
	}
}

func (s *spec) checkResponses(p *problems, at string, resps map[string]any) {
	for _, code := range sortedKeys(resps) {
		if !statusKey.MatchString(code) {
			p.add("%s: %q is not a status", at, code)
		}
		r, err := s.deref(resps[code])
		if err != nil {
			p.add("%s.%s: %v", at, code, err)
			continue
		}
		if d, _ := r["description"].(string); d == "" {
			p.add("%s.%s: no description", at, code)
		}
		// A 204 has no body; every other answer has a schema.
		s.checkContent(p, at+"."+code, r, code != "204")
		for _, name := range sortedKeys(mapAt(r, "headers")) {
			h, err := s.deref(r["headers"].(map[string]any)[name])
			if err != nil {
				p.add("%s.%s.headers.%s: %v", at, code, name, err)
				continue
			}
			if _, ok := h["schema"]; !ok {
				p.add("%s.%s.headers.%s: no schema", at, code, name)
			}
			s.checkSchema(p, at+"."+code+".headers."+name, h["schema"])
		}
	}
}

// checkContent checks the content of a response or request body: when
// want, at least one media type, each with a schema (and examples that
// validate against it); otherwise none.
func (s *spec) checkContent(p *problems, at string, m map[string]any, want bool) {
	content, _ := m["content"].(map[string]any)
	if !want {
		if len(content) > 0 {
			p.add("%s: a body where none is allowed", at)
		}
		return
	}
	if len(content) == 0 {
		p.add("%s: no content", at)
	}
	for _, mt := range sortedKeys(content) {
		media, _ := content[mt].(map[string]any)
		sch, ok := media["schema"]
		if !ok {
			p.add("%s.content.%s: no schema", at, mt)
			continue
		}
		s.checkSchema(p, at+".content."+mt+".schema", sch)
		for _, name := range sortedKeys(mapAt(media, "examples")) {
			ex, _ := media["examples"].(map[string]any)[name].(map[string]any)
			val, ok := ex["value"]
			if !ok {
				p.add("%s.content.%s.examples.%s: no value", at, mt, name)
				continue
			}
			if err := s.validate(sch, val, "example"); err != nil {
				p.add("%s.content.%s.examples.%s: %v", at, mt, name, err)
			}
		}
	}
}

// schemaKeywords are the JSON Schema keywords the validator implements or
// that are annotations only.
var schemaKeywords = map[string]bool{
	"$ref": true, "type": true, "enum": true, "const": true, "properties": true, "required": true,
	"additionalProperties": true, "items": true, "minItems": true, "maxItems": true, "minLength": true,
	"maxLength": true, "pattern": true, "minimum": true, "maximum": true, "format": true, "allOf": true,
	"anyOf": true, "oneOf": true,
	// annotations
	"description": true, "title": true, "example": true, "examples": true, "default": true, "deprecated": true,
}

var jsonTypes = []string{"object", "array", "string", "number", "integer", "boolean", "null"}

func (s *spec) checkSchema(p *problems, at string, v any) {
	if _, ok := v.(bool); ok {
		return
	}
	m, ok := v.(map[string]any)
	if !ok {
		p.add("%s: a schema must be a mapping", at)
		return
	}
	for _, k := range sortedKeys(m) {
		if !schemaKeywords[k] && !strings.HasPrefix(k, "x-") {
			p.add("%s: schema keyword %q is not implemented by the test's validator", at, k)
		}
	}
	if ref, ok := m["$ref"].(string); ok {
		if _, err := s.resolve(ref); err != nil {
			p.add("%s: %v", at, err)
		}
	}
	if t, ok := m["type"]; ok {
		for _, name := range typeNames(t) {
			if !slices.Contains(jsonTypes, name) {
				p.add("%s: unknown type %q", at, name)
			}
		}
		if len(typeNames(t)) == 0 {
			p.add("%s: type must be a name or a list of names", at)
		}
	}
	if f, ok := m["format"]; ok && f != "date-time" {
		p.add("%s: format %v is not implemented by the test's validator", at, f)
	}
	if pat, ok := m["pattern"].(string); ok {
		if _, err := regexp.Compile(pat); err != nil {
			p.add("%s: pattern: %v", at, err)
		}
	}
	if req, ok := m["required"]; ok {
		if _, ok := req.([]any); !ok {
			p.add("%s: required must be a list", at)
		}
	}
	for _, k := range sortedKeys(mapAt(m, "properties")) {
		s.checkSchema(p, at+".properties."+k, m["properties"].(map[string]any)[k])
	}
	for _, k := range []string{"items", "additionalProperties"} {
		if sub, ok := m[k]; ok {
			s.checkSchema(p, at+"."+k, sub)
		}
	}
	for _, k := range []string{"allOf", "anyOf", "oneOf"} {
		if list, ok := m[k]; ok {
			subs, _ := list.([]any)
			if len(subs) == 0 {
				p.add("%s.%s: must be a non-empty list", at, k)
			}
			for i, sub := range subs {
				s.checkSchema(p, fmt.Sprintf("%s.%s[%d]", at, k, i), sub)
			}
		}
	}
	if ex, ok := m["example"]; ok {
		if err := s.validate(m, ex, "example"); err != nil {
			p.add("%s: example: %v", at, err)
		}
	}
}

func typeNames(t any) []string {
	switch t := t.(type) {
	case string:
		return []string{t}
	case []any:
		var out []string
		for _, e := range t {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// validate checks a JSON value (as encoding/json decodes into any) against
// a schema of the subset checkSchema admits.
func (s *spec) validate(schema any, v any, at string) error {
	if b, ok := schema.(bool); ok {
		if !b {
			return fmt.Errorf("%s: no value is allowed here", at)
		}
		return nil
	}
	m, ok := schema.(map[string]any)
	if !ok {
		return fmt.Errorf("%s: bad schema", at)
	}
	if ref, ok := m["$ref"].(string); ok {
		target, err := s.resolve(ref)
		if err != nil {
			return err
		}
		if err := s.validate(target, v, at); err != nil {
			return err
		}
	}
	if t, ok := m["type"]; ok {
		names := typeNames(t)
		if !slices.ContainsFunc(names, func(n string) bool { return hasType(v, n) }) {
			return fmt.Errorf("%s: %s is not of type %v", at, short(v), names)
		}
	}
	if enum, ok := m["enum"].([]any); ok && !slices.ContainsFunc(enum, func(e any) bool { return reflect.DeepEqual(e, v) }) {
		return fmt.Errorf("%s: %s is not one of %v", at, short(v), enum)
	}
	if c, ok := m["const"]; ok && !reflect.DeepEqual(c, v) {
		return fmt.Errorf("%s: %s is not %v", at, short(v), c)
	}
	switch v := v.(type) {
	case string:
		n := float64(utf8.RuneCountInString(v))
		if min, ok := m["minLength"].(float64); ok && n < min {
			return fmt.Errorf("%s: shorter than %v", at, min)
		}
		if max, ok := m["maxLength"].(float64); ok && n > max {
			return fmt.Errorf("%s: longer than %v", at, max)
		}
		if pat, ok := m["pattern"].(string); ok && !regexp.MustCompile(pat).MatchString(v) {
			return fmt.Errorf("%s: %q does not match %s", at, v, pat)
		}
		if m["format"] == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
				return fmt.Errorf("%s: %q is not a date-time", at, v)
			}
		}
	case float64:
		if min, ok := m["minimum"].(float64); ok && v < min {
			return fmt.Errorf("%s: %v below %v", at, v, min)
		}
		if max, ok := m["maximum"].(float64); ok && v > max {
			return fmt.Errorf("%s: %v above %v", at, v, max)
		}
	case []any:
		if min, ok := m["minItems"].(float64); ok && float64(len(v)) < min {
			return fmt.Errorf("%s: fewer than %v items", at, min)
		}
		if max, ok := m["maxItems"].(float64); ok && float64(len(v)) > max {
			return fmt.Errorf("%s: more than %v items", at, max)
		}
		if items, ok := m["items"]; ok {
			for i, e := range v {
				if err := s.validate(items, e, fmt.Sprintf("%s[%d]", at, i)); err != nil {
					return err
				}
			}
		}
	case map[string]any:
		req, _ := m["required"].([]any)
		for _, r := range req {
			if _, ok := v[r.(string)]; !ok {
				return fmt.Errorf("%s: %q is required", at, r)
			}
		}
		props, _ := m["properties"].(map[string]any)
		for _, k := range sortedKeys(v) {
			if sub, ok := props[k]; ok {
				if err := s.validate(sub, v[k], at+"."+k); err != nil {
					return err
				}
				continue
			}
			if ap, ok := m["additionalProperties"]; ok {
				if err := s.validate(ap, v[k], at+"."+k); err != nil {
					if ap == false {
						return fmt.Errorf("%s: %q is not allowed", at, k)
					}
					return err
				}
			}
		}
	}
	if all, ok := m["allOf"].([]any); ok {
		for _, sub := range all {
			if err := s.validate(sub, v, at); err != nil {
				return err
			}
		}
	}
	if any_, ok := m["anyOf"].([]any); ok {
		var errs []string
		for _, sub := range any_ {
			err := s.validate(sub, v, at)
			if err == nil {
				errs = nil
				break
			}
			errs = append(errs, err.Error())
		}
		if errs != nil {
			return fmt.Errorf("%s: matches none of anyOf: %s", at, strings.Join(errs, "; "))
		}
	}
	if one, ok := m["oneOf"].([]any); ok {
		var errs []string
		n := 0
		for _, sub := range one {
			if err := s.validate(sub, v, at); err != nil {
				errs = append(errs, err.Error())
			} else {
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("%s: matches %d of oneOf (want 1): %s", at, n, strings.Join(errs, "; "))
		}
	}
	return nil
}

func hasType(v any, name string) bool {
	switch name {
	case "null":
		return v == nil
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "number":
		_, ok := v.(float64)
		return ok
	case "integer":
		f, ok := v.(float64)
		return ok && f == math.Trunc(f)
	case "array":
		_, ok := v.([]any)
		return ok
	case "object":
		_, ok := v.(map[string]any)
		return ok
	}
	return false
}

func short(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}

// proxyErr is one row of the proxy's error table: HTTP status, resultCode
// and resultStatus.
type proxyErr struct {
	status int
	code   string
	result string
}

func (e proxyErr) String() string { return fmt.Sprintf("%d %s (%s)", e.status, e.code, e.result) }

// errorOf reads the resultStatus and resultCode an error schema fixes
// (allOf: the envelope, then consts), ok false for any other schema.
func (s *spec) errorOf(schema any) (result, code string, ok bool) {
	m, err := s.deref(schema)
	if err != nil {
		return "", "", false
	}
	all, _ := m["allOf"].([]any)
	for _, sub := range all {
		sm, _ := sub.(map[string]any)
		res := mapAt(sm, "properties", "result", "properties")
		c, _ := mapAt(res, "resultCode")["const"].(string)
		r, _ := mapAt(res, "resultStatus")["const"].(string)
		if c != "" && r != "" {
			return r, c, true
		}
	}
	return "", "", false
}

// errorsIn lists the error schemas a response schema admits (through $ref,
// oneOf and anyOf), by resultCode.
func (s *spec) errorsIn(schema any) map[string]string {
	out := map[string]string{}
	var visit func(v any, depth int)
	visit = func(v any, depth int) {
		if depth > 8 {
			return
		}
		if r, c, ok := s.errorOf(v); ok {
			out[c] = r
			return
		}
		m, err := s.deref(v)
		if err != nil {
			return
		}
		for _, k := range []string{"oneOf", "anyOf"} {
			list, _ := m[k].([]any)
			for _, sub := range list {
				visit(sub, depth+1)
			}
		}
	}
	visit(schema, 0)
	return out
}

// response returns the documented response of method on the spec path
// (method "other": the path's x-tokenproxy-other-methods) for an HTTP
// status: the exact status, else its nXX range, else default.
func (s *spec) response(path, method string, status int) (map[string]any, error) {
	item := mapAt(s.root, "paths", path)
	if item == nil {
		return nil, fmt.Errorf("no path %s in the spec", path)
	}
	var resps map[string]any
	if method == "other" {
		resps = mapAt(item, extOtherMethods)
	} else {
		resps = mapAt(item, method, "responses")
	}
	if resps == nil {
		return nil, fmt.Errorf("no %s operation on %s", method, path)
	}
	code := strconv.Itoa(status)
	for _, k := range []string{code, code[:1] + "XX", "default"} {
		if r, ok := resps[k]; ok {
			return s.deref(r)
		}
	}
	return nil, fmt.Errorf("%s %s documents no %d answer", method, path, status)
}

// documentedErrors lists every (status, code, result) the document says
// the proxy answers itself, with where.
func (s *spec) documentedErrors() map[proxyErr][]string {
	out := map[proxyErr][]string{}
	add := func(at string, resps map[string]any) {
		for _, k := range sortedKeys(resps) {
			status, err := strconv.Atoi(k)
			if err != nil {
				continue // default, nXX: the wallet's own answers
			}
			r, err := s.deref(resps[k])
			if err != nil {
				continue
			}
			sch := mapAt(r, "content", "application/json")["schema"]
			for code, result := range s.errorsIn(sch) {
				e := proxyErr{status, code, result}
				out[e] = append(out[e], at)
			}
		}
	}
	paths := mapAt(s.root, "paths")
	for _, path := range sortedKeys(paths) {
		item := paths[path].(map[string]any)
		add(path+" "+extOtherMethods, mapAt(item, extOtherMethods))
		for _, method := range httpMethods {
			add(method+" "+path, mapAt(item, method, "responses"))
		}
	}
	return out
}

// matchPath finds the spec path a concrete request path falls under: a
// literal path first, then a template of the same number of segments,
// then the x-tokenproxy-any-path template with the longest literal
// prefix (slashes included in its parameter).
func (s *spec) matchPath(concrete string) (string, bool) {
	paths := mapAt(s.root, "paths")
	if _, ok := paths[concrete]; ok {
		return concrete, true
	}
	best, bestPrefix := "", -1
	for _, p := range sortedKeys(paths) {
		item := paths[p].(map[string]any)
		anyPath := item[extAnyPath] == true
		if !strings.Contains(p, "{") {
			continue
		}
		var re strings.Builder
		re.WriteString("^")
		last := 0
		for _, loc := range templateParam.FindAllStringIndex(p, -1) {
			re.WriteString(regexp.QuoteMeta(p[last:loc[0]]))
			if anyPath {
				re.WriteString(`[^/]+(/[^/]+)*`)
			} else {
				re.WriteString(`[^/]+`)
			}
			last = loc[1]
		}
		re.WriteString(regexp.QuoteMeta(p[last:]) + "$")
		if !regexp.MustCompile(re.String()).MatchString(concrete) {
			continue
		}
		prefix := strings.Index(p, "{")
		if !anyPath {
			prefix += 1 << 16 // a fixed-arity template beats any any-path one
		}
		if prefix > bestPrefix {
			best, bestPrefix = p, prefix
		}
	}
	return best, best != ""
}
