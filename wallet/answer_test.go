package wallet

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// readResultReference is how the client read an answer's result before
// readResult: json.Unmarshal into a struct holding a *Result.
func readResultReference(body []byte) (Result, bool) {
	var env struct {
		Result *Result `json:"result"`
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' || json.Unmarshal(trimmed, &env) != nil {
		return Result{}, false
	}
	if env.Result == nil {
		return Result{}, true
	}
	return *env.Result, true
}

var readResultCases = []string{
	`{"result":{"resultStatus":"S","resultCode":"SUCCESS","resultMessage":"success"}}`,
	` {"result":{"resultStatus":"F","resultCode":"EXPIRED_ACCESS_TOKEN"},"x":[1,{"result":2}]} `,
	`{"a":{"result":{"resultStatus":"S"}},"result":{"resultStatus":"U","resultCode":"UNKNOWN_EXCEPTION"}}`,
	`{"userInfo":{"nick":"a\"b}]"},"result":{"resultCode":"X","more":{"deep":[[[]]]},"resultStatus":"S"}}`,
	`{}`,
	`{"result":null}`,
	`{"result":{}}`,
	`{"result":{"resultStatus":null,"resultCode":"C"}}`,
	`{"result":"S"}`,
	`{"result":1}`,
	`{"result":[]}`,
	`{"result":true}`,
	`{"result":{"resultStatus":1}}`,
	`{"result":{"resultCode":{}}}`,
	`{"result":{"resultMessage":["x"]}}`,
	`{"result":{"resultStatus":"S","resultCode":"A"},"result":{"resultCode":"B"}}`,
	`{"result":{"resultStatus":"S","resultCode":"A"},"result":null,"result":{"resultCode":"B"}}`,
	`{"result":{"resultStatus":"S","resultCode":"A"},"result":null}`,
	`{"result":{"resultStatus":"S","resultStatus":"F"}}`,
	`{"re\u0073ult":{"result\u0053tatus":"\u0053","resultCode":"A\nB\\C\/D\u00e9"}}`,
	"{\"result\":{\"resultCode\":\"\xff\xfe\"}}",
	`{"result":{"resultStatus":"S"}`,
	`{"result":{"resultStatus":"S"}}}`,
	`{"result":{"resultStatus":"S"}} {}`,
	`{"result":{"resultStatus":"S",}}`,
	`[{"result":{"resultStatus":"S"}}]`,
	`"x"`,
	``,
	`<html>502 Bad Gateway</html>`,
	`{"a":01}`,
	`{"a":-}`,
	`{"a":1e}`,
	`{"a":tru}`,
	`{"a":"\x"}`,
	"{\"a\":\"\x01\"}",
	`{"a":1.5e+3,"b":-0,"c":[true,false,null],"result":{"resultStatus":"F"}}`,
	"\t\n{\"result\" : { \"resultStatus\" : \"S\" , \"resultCode\" : \"SUCCESS\" } }\r\n",
	`{"result":{"resultStatus":"S"},"tail":"` + strings.Repeat("x", 5000) + `"}`,
	strings.Repeat(`{"a":`, 200) + `1` + strings.Repeat(`}`, 200),
}

func TestReadResultMatchesEncodingJSON(t *testing.T) {
	for _, body := range readResultCases {
		want, wantOK := readResultReference([]byte(body))
		got, err := readResult([]byte(body))
		if (err == nil) != wantOK || got != want {
			t.Errorf("readResult(%.60q) = %+v, %v; encoding/json reads %+v, ok %v", body, got, err, want, wantOK)
		}
	}
}

// The names are matched exactly: encoding/json would also take "Result"
// or "RESULTSTATUS".
func TestReadResultExactNames(t *testing.T) {
	for _, body := range []string{
		`{"Result":{"resultStatus":"F","resultCode":"EXPIRED_ACCESS_TOKEN"}}`,
		`{"result":{"ResultStatus":"F","RESULTCODE":"EXPIRED_ACCESS_TOKEN"}}`,
	} {
		got, err := readResult([]byte(body))
		if err != nil || got.ResultStatus != "" || got.ResultCode != "" {
			t.Errorf("readResult(%s) = %+v, %v; want the zero Result", body, got, err)
		}
	}
}

func FuzzReadResult(f *testing.F) {
	for _, c := range readResultCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := readResult(body)
		// encoding/json matches names in any letter case, readResult
		// exactly: compare only where no name can differ by case.
		lower := bytes.ToLower(body)
		if bytes.Count(lower, []byte("result")) != bytes.Count(body, []byte("result")) ||
			bytes.Count(lower, []byte("status")) != bytes.Count(body, []byte("Status")) ||
			bytes.Count(lower, []byte("code")) != bytes.Count(body, []byte("Code")) ||
			bytes.Count(lower, []byte("message")) != bytes.Count(body, []byte("Message")) ||
			bytes.Contains(body, []byte(`\u`)) {
			return
		}
		want, wantOK := readResultReference(body)
		if (err == nil) != wantOK || got != want {
			t.Fatalf("readResult(%q) = %+v, %v; encoding/json reads %+v, ok %v", body, got, err, want, wantOK)
		}
	})
}
