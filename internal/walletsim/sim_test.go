package walletsim

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// seed posts to /sim/seed and returns the NDJSON lines, decoded.
func (h *harness) seed(req map[string]any) []seedLine {
	h.t.Helper()
	resp, err := h.hc.Post(h.ts.URL+"/sim/seed", "application/json", bytes.NewReader(mustJSON(h.t, req)))
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		h.t.Fatalf("seed: HTTP %d %s", resp.StatusCode, b)
	}
	var lines []seedLine
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var l seedLine
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			h.t.Fatalf("seed line %d: %v", len(lines)+1, err)
		}
		lines = append(lines, l)
	}
	if err := sc.Err(); err != nil {
		h.t.Fatal(err)
	}
	return lines
}

func TestSeed(t *testing.T) {
	h := newHarness(t, nil)
	lines := h.seed(map[string]any{"count": 1000, "prefix": "bench-", "accessTtl": "10m", "refreshTtl": "1h"})
	if len(lines) != 1000 {
		t.Fatalf("%d lines", len(lines))
	}
	seen := map[string]bool{}
	now := h.clk.Now()
	for i, l := range lines {
		if l.CustomerID != "bench-"+strconv.Itoa(i) {
			t.Fatalf("line %d: customerId %q", i, l.CustomerID)
		}
		if !tokenShape.MatchString(l.AccessToken) || !tokenShape.MatchString(l.RefreshToken) || seen[l.AccessToken] || seen[l.RefreshToken] {
			t.Fatalf("line %d: tokens malformed or repeated", i)
		}
		seen[l.AccessToken], seen[l.RefreshToken] = true, true
		at, err1 := wallet.ParseDateTime(l.AccessTokenExpiryTime)
		rt, err2 := wallet.ParseDateTime(l.RefreshTokenExpiryTime)
		if err1 != nil || err2 != nil || !at.Equal(now.Add(10*time.Minute)) || !rt.Equal(now.Add(time.Hour)) {
			t.Fatalf("line %d: expiries %q %q", i, l.AccessTokenExpiryTime, l.RefreshTokenExpiryTime)
		}
	}
	// Seeded pairs work like issued ones, and keep their chain's lifetimes.
	for _, i := range []int{0, 499, 999} {
		l := lines[i]
		h.want(PathInquiryUserInfo, inquiryBody(l.AccessToken), "S SUCCESS")
		next := h.tokens(h.want(PathApplyTokenV1, refreshBody(l.RefreshToken), "S SUCCESS"))
		if next.CustomerID != l.CustomerID {
			t.Errorf("refresh of %s gave %s", l.CustomerID, next.CustomerID)
		}
		if at, _ := wallet.ParseDateTime(next.AccessTokenExpiryTime); !at.Equal(now.Add(10 * time.Minute)) {
			t.Errorf("refreshed access expiry %s", at)
		}
		h.want(PathInquiryUserInfo, inquiryBody(l.AccessToken), "F INVALID_ACCESS_TOKEN")
	}
	h.clk.Advance(10 * time.Minute)
	h.want(PathInquiryUserInfo, inquiryBody(lines[1].AccessToken), "F EXPIRED_ACCESS_TOKEN")

	// start offsets the numbering; defaults apply.
	more := h.seed(map[string]any{"count": 2, "start": 1000})
	if len(more) != 2 || more[0].CustomerID != DefaultSeedPrefix+"1000" || more[1].CustomerID != DefaultSeedPrefix+"1001" {
		t.Errorf("seed with start: %+v", more)
	}
}

// TestSeedRefreshedAccessTTL: refreshedAccessTtl gives the pairs refreshed
// from seeded ones another access lifetime, for the whole chain onwards; the
// seeded pair and the refresh token lifetime are unchanged.
func TestSeedRefreshedAccessTTL(t *testing.T) {
	h := newHarness(t, nil)
	lines := h.seed(map[string]any{"count": 1, "accessTtl": "1m", "refreshTtl": "3h", "refreshedAccessTtl": "2h"})
	now := h.clk.Now()
	if at, _ := wallet.ParseDateTime(lines[0].AccessTokenExpiryTime); !at.Equal(now.Add(time.Minute)) {
		t.Fatalf("seeded access expiry %s, want +1m", at)
	}
	rt := lines[0].RefreshToken
	for i := range 2 {
		h.clk.Advance(time.Minute)
		next := h.tokens(h.want(PathApplyTokenV1, refreshBody(rt), "S SUCCESS"))
		now := h.clk.Now()
		at, _ := wallet.ParseDateTime(next.AccessTokenExpiryTime)
		exp, _ := wallet.ParseDateTime(next.RefreshTokenExpiryTime)
		if !at.Equal(now.Add(2*time.Hour)) || !exp.Equal(now.Add(3*time.Hour)) {
			t.Errorf("refresh %d: expiries %s %s, want +2h and +3h from %s", i+1, at, exp, now)
		}
		rt = next.RefreshToken
	}
}

// TestSeedLarge seeds the benchmark size; sized to take a few seconds under -race.
func TestSeedLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("100k seed skipped in -short mode")
	}
	h := newHarness(t, nil)
	start := time.Now()
	lines := h.seed(map[string]any{"count": 100000, "prefix": "c"})
	if len(lines) != 100000 || lines[99999].CustomerID != "c99999" {
		t.Fatalf("%d lines", len(lines))
	}
	t.Logf("seeded 100000 pairs in %s", time.Since(start))
	h.want(PathApplyTokenV1, refreshBody(lines[54321].RefreshToken), "S SUCCESS")
}

func TestSeedValidation(t *testing.T) {
	h := newHarness(t, nil)
	for _, bad := range []string{
		`{}`,
		`{"count":0}`,
		`{"count":1000001}`,
		`{"count":1,"prefix":"a b"}`,
		`{"count":1,"prefix":"a/"}`,
		`{"count":11,"prefix":"` + string(bytes.Repeat([]byte("p"), 63)) + `"}`,
		`{"count":1,"accessTtl":"-1s"}`,
		`{"count":1,"refreshTtl":"forever"}`,
		`{"count":1,"refreshedAccessTtl":"0s"}`,
		`{"count":1,"start":-1}`,
		`{"count":1,"extra":true}`,
	} {
		if code := h.sim(http.MethodPost, "/sim/seed", []byte(bad), nil); code != http.StatusBadRequest {
			t.Errorf("%s: HTTP %d, want 400", bad, code)
		}
	}
}

func TestAuthCodeValidation(t *testing.T) {
	h := newHarness(t, nil)
	for _, bad := range []string{
		`{}`,
		`{"customerId":""}`,
		`{"customerId":"a@b"}`,
		`{"customerId":"a b"}`,
		`{"customerId":"` + string(bytes.Repeat([]byte("c"), 65)) + `"}`,
		`{"customerId":"c","accessTtl":"0s"}`,
		`{"customerId":"c","codeTtl":"1 minute"}`,
		`{"customerId":"c","customer":"d"}`,
		`not json`,
	} {
		var out map[string]string
		if code := h.sim(http.MethodPost, "/sim/authcodes", []byte(bad), &out); code != http.StatusBadRequest {
			t.Errorf("%s: HTTP %d, want 400", bad, code)
		}
	}
	if code := h.sim(http.MethodGet, "/sim/authcodes", nil, nil); code != http.StatusMethodNotAllowed {
		t.Errorf("GET: HTTP %d", code)
	}
	if code := h.sim(http.MethodGet, "/sim/nothing", nil, nil); code != http.StatusNotFound {
		t.Errorf("unknown sim endpoint: HTTP %d", code)
	}
}

func TestStatsShape(t *testing.T) {
	h := newHarness(t, nil)
	tb := h.login("cust-s")
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "S SUCCESS")
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "F USED_REFRESH_TOKEN")
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "F INVALID_ACCESS_TOKEN")

	var got map[string]any
	if code := h.sim(http.MethodGet, "/sim/stats", nil, &got); code != http.StatusOK {
		t.Fatalf("GET /sim/stats: %d", code)
	}
	want := map[string]any{
		"calls": map[string]any{
			PathApplyTokenV1:    map[string]any{GrantAuthorizationCode: 1.0, GrantRefreshToken: 2.0},
			PathInquiryUserInfo: map[string]any{"-": 1.0},
		},
		"refreshTokensReused": 1.0,
		"codesReused":         0.0,
		"badSignatures":       0.0,
	}
	for k, v := range want {
		if g, _ := json.Marshal(got[k]); string(g) != string(mustJSON(t, v)) {
			t.Errorf("%s: %s, want %s", k, g, mustJSON(t, v))
		}
	}
	if code := h.sim(http.MethodDelete, "/sim/stats", nil, nil); code != http.StatusOK {
		t.Fatalf("DELETE /sim/stats: %d", code)
	}
	var zero map[string]any
	h.sim(http.MethodGet, "/sim/stats", nil, &zero)
	if b, _ := json.Marshal(zero); string(b) != `{"abandoned":0,"badSignatures":0,"calls":{},"codesReused":0,"exchanges":0,"faultsMatched":0,"maxRefreshLatenessMs":0,"refreshPresentations":0,"refreshTokensReused":0,"refreshes":0,"refreshesAfterAccessExpiry":0,"refreshesBeforeAccessExpiry":0,"tlsHandshakes":0}` {
		t.Errorf("after DELETE: %s", b)
	}
	// Tokens survive a stats reset.
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "F USED_REFRESH_TOKEN")
}

func TestPublicKeyEndpoint(t *testing.T) {
	h := newHarness(t, nil)
	resp, err := h.hc.Get(h.ts.URL + "/sim/publickey")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if !bytes.Equal(b, h.srv.PublicKeyPEM()) {
		t.Errorf("GET /sim/publickey differs from PublicKeyPEM")
	}
}

func TestNewConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("no client key accepted")
	}
	for _, c := range []struct {
		field string
		cfg   Config
	}{
		{"PathPrefix", Config{PathPrefix: "api"}},
		{"PathPrefix", Config{PathPrefix: "/a?b"}},
		{"PathPrefix", Config{PathPrefix: "/sim"}},
		{"KeyVersion", Config{KeyVersion: "a b"}},
		{"AccessTTL", Config{AccessTTL: -time.Second}},
	} {
		c.cfg.ClientPublicKey = &clientKey.PublicKey
		c.cfg.PrivateKey = walletKey
		_, err := New(c.cfg)
		ce, ok := err.(*ConfigError)
		if !ok || ce.Field != c.field {
			t.Errorf("%+v: got %v, want a ConfigError on %s", c.cfg, err, c.field)
		}
	}
	s, err := New(Config{ClientPublicKey: &clientKey.PublicKey, PrivateKey: walletKey})
	if err != nil || s.cfg.AccessTTL != DefaultAccessTTL || s.cfg.RefreshTTL != DefaultRefreshTTL || s.cfg.CodeTTL != DefaultCodeTTL {
		t.Errorf("defaults not applied: %v", err)
	}
}
