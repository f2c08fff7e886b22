package wallet

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// errNotObject: an answer body that is not one JSON object, or whose
// result is not an object of strings.
var errNotObject = errors.New("not a JSON object with a result of strings")

// readResult reads the result of a wallet answer without decoding the
// rest: body must be one valid JSON object; its top-level "result" member
// (exact name; absent or null: the zero Result) must be an object whose
// resultStatus, resultCode and resultMessage, when present and not null,
// are strings. Keys are compared once unescaped. A key given twice reads
// as encoding/json would read it into a *Result: the members merge, the
// last one of each wins, and a null result starts over.
func readResult(body []byte) (Result, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' || !json.Valid(trimmed) {
		return Result{}, errNotObject
	}
	var res Result
	err := eachMember(trimmed, func(key, val []byte) error {
		if !keyIs(key, "result") {
			return nil
		}
		switch val[0] {
		case 'n':
			res = Result{}
			return nil
		case '{':
			return eachMember(val, func(key, val []byte) error {
				var field *string
				switch {
				case keyIs(key, "resultStatus"):
					field = &res.ResultStatus
				case keyIs(key, "resultCode"):
					field = &res.ResultCode
				case keyIs(key, "resultMessage"):
					field = &res.ResultMessage
				default:
					return nil
				}
				switch val[0] {
				case 'n':
					return nil // null leaves a string as it was
				case '"':
					*field = stringValue(val)
					return nil
				}
				return errNotObject
			})
		}
		return errNotObject
	})
	return res, err
}

// eachMember calls f with the raw key (quotes included) and the raw value
// of every member of obj, a valid JSON object (json.Valid holds), in order.
func eachMember(obj []byte, f func(key, val []byte) error) error {
	i := skipSpace(obj, 1)
	for i < len(obj) && obj[i] != '}' {
		keyEnd := skipValue(obj, i)
		key := obj[i:keyEnd]
		i = skipSpace(obj, skipSpace(obj, keyEnd)+1) // past ':'
		valEnd := skipValue(obj, i)
		if err := f(key, obj[i:valEnd]); err != nil {
			return err
		}
		i = skipSpace(obj, valEnd)
		if i < len(obj) && obj[i] == ',' {
			i = skipSpace(obj, i+1)
		}
	}
	return nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the end of the valid JSON value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		for i++; i < len(b); i++ {
			switch b[i] {
			case '\\':
				i++
			case '"':
				return i + 1
			}
		}
		return i
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipValue(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return i
	}
	for ; i < len(b); i++ { // a number, true, false or null
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
	}
	return i
}

// keyIs reports whether the raw key (quotes included) is name once
// unescaped.
func keyIs(raw []byte, name string) bool {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1:len(raw)-1]) == name
	}
	return stringValue(raw) == name
}

// stringValue is the raw JSON string's value, as encoding/json decodes it
// (invalid UTF-8 becomes U+FFFD).
func stringValue(raw []byte) string {
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return string(raw[1 : len(raw)-1])
	}
	var s string
	_ = json.Unmarshal(raw, &s) // valid: json.Valid checked the whole body
	return s
}
