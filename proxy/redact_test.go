package proxy

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenproxy/tokenproxy/wallet"
)

func TestScrub(t *testing.T) {
	const tok = "AT<x>/y+z&q"
	forms := formsOf(wallet.Secret(tok), wallet.Secret("RT-9"))
	esc := `AT\u003cx\u003e\/y+z\u0026q`
	tests := []struct {
		name, body string
		hit        bool
	}{
		{"clean", `{"result":{"resultStatus":"S"},"a":"b"}`, false},
		{"raw", `{"a":"` + tok + `"}`, true},
		{"json escaped", `{"a":"` + esc + `"}`, true},
		{"fully escaped", `{"a":"\u0041\u0054<x>/y+z&q"}`, true},
		{"inside a longer string", `{"a":"token=` + tok + `;"}`, true},
		{"as a key", `{"` + tok + `":1}`, true},
		{"nested", `{"a":[{"b":{"c":"` + tok + `"}}]}`, true},
		{"base64", `{"a":"` + base64.StdEncoding.EncodeToString([]byte(tok)) + `"}`, true},
		{"hex", `{"a":"` + hex.EncodeToString([]byte(tok)) + `"}`, true},
		{"refresh token", `{"a":"RT-9"}`, true},
		{"other token field", `{"accessToken":"someone-elses"}`, true},
		{"cased token field", `{"data":{"REFRESHTOKEN":"x"}}`, true},
		{"escaped token field name", `{"\u0061ccessToken":"x"}`, true},
		{"empty token field", `{"accessToken":""}`, false},
		{"a handle-shaped value from the wallet", `{"accessToken":"` + newHandle("c1").Reveal() + `"}`, true},
		{"a wallet's \"handle\"", `{"accessToken":"tph_someone-elses"}`, true},
		{"token field not a string", `{"accessToken":{"v":"x"}}`, true},
		{"duplicate keys", `{"a":"x","a":"` + tok + `"}`, true},
		{"escaped token in an earlier duplicate", `{"a":"` + esc + `","a":"x"}`, true},
		{"another token in an earlier duplicate token field", `{"b":{"accessToken":"someone-elses","accessToken":""}}`, true},
	}
	for _, tt := range tests {
		hdr := http.Header{}
		out, hit := scrub([]byte(tt.body), hdr, forms)
		if hit != tt.hit {
			t.Errorf("%s: hit %v, want %v (%s)", tt.name, hit, tt.hit, out)
		}
		for _, f := range forms {
			if strings.Contains(string(out), string(f)) {
				t.Errorf("%s: form %q left in %s", tt.name, f, out)
			}
		}
		if strings.Contains(string(out), "someone-elses") {
			t.Errorf("%s: another token left in %s", tt.name, out)
		}
	}
	hdr := http.Header{"Content-Type": {"application/json; x=" + tok}, "Response-Time": {"t"}}
	if _, hit := scrub([]byte(`{}`), hdr, forms); !hit || hdr.Get("Content-Type") != "" || hdr.Get("Response-Time") != "t" {
		t.Errorf("header echo: hit %v, headers %v", hit, hdr)
	}
}

func TestReadExchangeAnswer(t *testing.T) {
	ok := `{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"customerId":"c1","accessToken":"A","refreshToken":"R","accessTokenExpiryTime":"2030-01-01T00:00:00+08:00","extendInfo":"{}","secret":"x"}`
	a, err := readExchangeAnswer([]byte(ok))
	if err != nil || a.pair == nil || a.pair.CustomerID != "c1" || a.pair.AccessToken.Reveal() != "A" {
		t.Fatalf("ok answer: %+v %v", a, err)
	}
	if got := string(a.app.marshal()); strings.Contains(got, `"A"`) || strings.Contains(got, "secret") || !strings.Contains(got, "extendInfo") {
		t.Fatalf("app answer %s", got)
	}
	malformed := []string{
		`{"result":{"resultStatus":"S"},"customerId":"c1","customerId":"c2","accessToken":"A","refreshToken":"R","accessTokenExpiryTime":"2030-01-01T00:00:00Z"}`,
		`{"result":{"resultStatus":"S"},"customerId":"c1","AccessToken":"A","refreshToken":"R","accessTokenExpiryTime":"2030-01-01T00:00:00Z"}`,
		`{"result":{"resultStatus":"S"},"customerId":"c/1","accessToken":"A","refreshToken":"R","accessTokenExpiryTime":"2030-01-01T00:00:00Z"}`,
		`{"result":{"resultStatus":"S"},"customerId":"c1","accessToken":"A","refreshToken":"R","accessTokenExpiryTime":"soon"}`,
		`{"result":{"resultStatus":"S"},"customerId":"c1","accessToken":"A","refreshToken":"R","accessTokenExpiryTime":"2030-01-01T00:00:00Z","refreshTokenExpiryTime":"x"}`,
		`{"result":{"resultStatus":"S"},"customerId":"c1","accessToken":5,"refreshToken":"R","accessTokenExpiryTime":"2030-01-01T00:00:00Z"}`,
		`{"result":{"resultStatus":"S"},"customerId":"id-A7x9","accessToken":"A7x9","refreshToken":"R","accessTokenExpiryTime":"2030-01-01T00:00:00Z"}`,
		`{"result":"S"}`,
		`{"result":{"resultStatus":"F"},"result":{"resultStatus":"S"}}`,
		`[]`,
	}
	for _, m := range malformed {
		if a, err := readExchangeAnswer([]byte(m)); err == nil {
			t.Errorf("%s: accepted (%+v)", m, a.pair)
		} else if pe := classify(err); pe.status != 502 || pe.code != "WALLET_UNAVAILABLE" {
			t.Errorf("%s: %d %s", m, pe.status, pe.code)
		}
	}
	f := `{"result":{"resultStatus":"F","resultCode":"USED_CODE","resultMessage":"m","x":"y"},"accessToken":"A","refreshToken":"R","customerId":"c1"}`
	a, err = readExchangeAnswer([]byte(f))
	if err != nil || a.pair != nil {
		t.Fatalf("F answer: %v %+v", err, a)
	}
	if got := string(a.app.marshal()); got != `{"result":{"resultStatus":"F","resultCode":"USED_CODE","resultMessage":"m"},"customerId":"c1"}` {
		t.Fatalf("F app answer %s", got)
	}
}

func TestLimiter(t *testing.T) {
	l := NewLimiter(2, 100)
	if !l.admit() || !l.admit() || l.admit() {
		t.Fatal("admitted a third call of two")
	}
	l.done()
	if !l.admit() {
		t.Fatal("slot not given back")
	}
	b := &callBudget{l: l}
	if !b.take(60) || b.take(60) {
		t.Fatal("budget of 100 gave 120")
	}
	if !b.Grow(10) { // 30 bytes as three copies
		t.Fatal("Grow within budget refused")
	}
	if b.Grow(4) {
		t.Fatal("Grow over budget granted")
	}
	b.release()
	if !l.grow(100) {
		t.Fatal("release did not give everything back")
	}
}

// formsOfReference is formsOf as it was first written, one allocation per
// form: the one-buffer version must give the same forms in the same order.
func formsOfReference(tokens ...wallet.Secret) secretForms {
	var out secretForms
	add := func(s string) {
		if s == "" {
			return
		}
		for _, f := range out {
			if string(f) == s {
				return
			}
		}
		out = append(out, []byte(s))
	}
	for _, t := range tokens {
		raw := t.Reveal()
		if raw == "" {
			continue
		}
		add(raw)
		esc, _ := json.Marshal(raw)
		add(string(esc[1 : len(esc)-1]))
		add(url.QueryEscape(raw))
		add(url.PathEscape(raw))
		add(base64.StdEncoding.EncodeToString([]byte(raw)))
		add(base64.RawStdEncoding.EncodeToString([]byte(raw)))
		add(base64.URLEncoding.EncodeToString([]byte(raw)))
		add(base64.RawURLEncoding.EncodeToString([]byte(raw)))
		add(hex.EncodeToString([]byte(raw)))
	}
	return out
}

func TestFormsOfMatchesReference(t *testing.T) {
	tests := [][]wallet.Secret{
		nil,
		{""},
		{"tok-1"},
		{"AT_0123456789abcdef"},
		{"a+b/c=="},
		{`q"uo\te<>&`},
		{"é ü\u2028x\ttab"},
		{"tok-1", "tok-1"},
		{"abc", "YWJj"}, // the second is the first's base64
		{"tok-1", "", "tok-2", wallet.Secret(strings.Repeat("x", 5000))},
		{"%41", "A"},
	}
	for _, toks := range tests {
		got, want := formsOf(toks...), formsOfReference(toks...)
		if len(got) != len(want) {
			t.Fatalf("formsOf(%q): %d forms, want %d", toks, len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("formsOf(%q)[%d] = %q, want %q", toks, i, got[i], want[i])
			}
		}
	}
}

func TestFormsInString(t *testing.T) {
	forms := formsOf("tok-1", "a+b/c")
	for _, s := range []string{"", "t", "tok-", "tok-1", "xtok-1", "xxtok-tok-1y", "tok-2", "ttttok-", "a+b/c", "a%2Bb%2Fc=", "YSti", "YStiL2M=", "algorithm=RSA256,signature=dG9rLTE"} {
		if got, want := forms.inString(s), forms.in([]byte(s)); got != want {
			t.Errorf("inString(%q) = %v, in = %v", s, got, want)
		}
	}
}
