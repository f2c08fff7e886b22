package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// importEnv is the environment of `tokenproxy import` against r with the
// encryption key encKey: no wallet settings, which import does not need.
func importEnv(redisURL, encKey string) map[string]string {
	return map[string]string{
		"TOKENPROXY_REDIS_URL":       redisURL,
		"TOKENPROXY_ENCRYPTION_KEYS": encKey,
		"TOKENPROXY_LOG_FORMAT":      "text",
	}
}

// runImportFile writes content to a file and runs `tokenproxy import FILE`
// in process through run().
func runImportFile(t *testing.T, env map[string]string, content string) (code int, stdout, stderr string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pairs.ndjson")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code = run(context.Background(), []string{"import", path}, envconfig.MapLookuper(env), &out, &errOut)
	return code, out.String(), errOut.String()
}

// importStore opens the store import wrote to, as a sidecar would.
func importStore(t *testing.T, redisURL, encKey string) *tokencache.Redis {
	t.Helper()
	rc, err := tokencache.NewRedisClient(tokencache.RedisOptions{URL: redisURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	kr, err := tokencache.ParseKeyring(encKey)
	if err != nil {
		t.Fatal(err)
	}
	s, err := tokencache.NewRedis(tokencache.RedisConfig{Client: rc, Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// newEncKey is a fresh TOKENPROXY_ENCRYPTION_KEYS value.
func newEncKey(t *testing.T) string {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(key)
}

// pairLine renders one import line; empty rte leaves the field out.
func pairLine(id, at, ate, rt, rte string) string {
	m := map[string]string{"customerId": id, "accessToken": at, "accessTokenExpiryTime": ate, "refreshToken": rt}
	if rte != "" {
		m["refreshTokenExpiryTime"] = rte
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func TestImport(t *testing.T) {
	r := testenv.StartRedis(t)
	encKey := newEncKey(t)
	env := importEnv(r.URL, encKey)
	now := time.Now().UTC()
	ate := wallet.FormatTime(now.Add(2 * time.Hour))
	rte := wallet.FormatTime(now.Add(720 * time.Hour))
	long := strings.Repeat("x", 129)

	// Every token in this file, valid line or not, is a secret: none may
	// be printed.
	lines := []string{
		/* 1 */ pairLine("imp-a", "AT-secret-a-1", ate, "RT-secret-a-1", rte),
		/* 2 */ `{"customerId":"imp-bad-json","accessToken":"AT-secret-bad-json"`,
		/* 3 */ pairLine("imp-b", "AT-secret-b-1", ate, "RT-secret-b-1", ""), // no refresh expiry: allowed
		/* 4 */ pairLine("bad id", "AT-secret-badid", ate, "RT-secret-badid", rte),
		/* 5 */ pairLine("imp-empty", "", ate, "RT-secret-empty", rte),
		/* 6 */ pairLine("imp-long", "AT-secret-long", ate, long, rte),
		/* 7 */ pairLine("imp-char", "AT-secret@char", ate, "RT-secret-char", rte),
		/* 8 */ pairLine("imp-exp", "AT-secret-exp", "tomorrow", "RT-secret-exp", rte),
		/* 9 */ pairLine("imp-rexp", "AT-secret-rexp", ate, "RT-secret-rexp", "2024-13-45"),
		/* 10 */ `["AT-secret-array"]`,
		/* 11 */ "",
		/* 12 */ `{"customerId":"imp-num","accessToken":12,"accessTokenExpiryTime":"` + ate + `","refreshToken":"RT-secret-num"}`,
		/* 13 */ pairLine("imp-c", "AT-secret-c-1", ate, "RT-secret-c-1", rte) + "\r", // CRLF file
		/* 14 */ pairLine("imp-ctl", "AT-secret\tctl", ate, "RT-secret-ctl", rte),
	}
	secrets := []string{"secret"} // every token above contains it
	content := strings.Join(lines, "\n") + "\n"

	code, stdout, stderr := runImportFile(t, env, content)
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	wantInvalid := "2, 4, 5, 6, 7, 8, 9, 10, 12, 14"
	if !strings.Contains(stdout, "imported 3, skipped invalid 10, already newer 0\n") ||
		!strings.Contains(stdout, "invalid lines: "+wantInvalid+"\n") {
		t.Fatalf("summary:\n%s", stdout)
	}
	for _, s := range secrets {
		if strings.Contains(stdout+stderr, s) {
			t.Fatalf("the output holds a token:\n%s\n%s", stdout, stderr)
		}
	}

	store := importStore(t, r.URL, encKey)
	for _, c := range []struct {
		id, at, rt string
		rte        string
	}{
		{"imp-a", "AT-secret-a-1", "RT-secret-a-1", rte},
		{"imp-b", "AT-secret-b-1", "RT-secret-b-1", ""},
		{"imp-c", "AT-secret-c-1", "RT-secret-c-1", rte},
	} {
		rec, err := store.Get(context.Background(), c.id)
		if err != nil {
			t.Fatalf("%s: %v", c.id, err)
		}
		wantATE, _ := wallet.ParseDateTime(ate)
		if rec.AccessToken.Reveal() != c.at || rec.RefreshToken.Reveal() != c.rt || !rec.AccessTokenExpiry.Equal(wantATE) {
			t.Fatalf("%s: stored tokens or expiry differ from the imported ones (expiry %s)", c.id, rec.AccessTokenExpiry)
		}
		if c.rte == "" && !rec.RefreshTokenExpiry.IsZero() {
			t.Fatalf("%s: refresh expiry %s, want none", c.id, rec.RefreshTokenExpiry)
		}
		if c.rte != "" {
			want, _ := wallet.ParseDateTime(c.rte)
			if !rec.RefreshTokenExpiry.Equal(want) {
				t.Fatalf("%s: refresh expiry %s, want %s", c.id, rec.RefreshTokenExpiry, want)
			}
		}
		if rec.NextRefresh.IsZero() || !rec.NextRefresh.Before(rec.AccessTokenExpiry) || rec.NextRefresh.Before(now) {
			t.Fatalf("%s: next refresh %s, access expiry %s", c.id, rec.NextRefresh, rec.AccessTokenExpiry)
		}
		if rec.ExchangePath != "/v1/authorizations/applyToken" || rec.LastUsed.IsZero() ||
			rec.State != tokencache.StateActive || rec.LastError != "" {
			t.Fatalf("%s: record %+v", c.id, rec)
		}
	}
	for _, id := range []string{"imp-bad-json", "imp-empty", "imp-long", "imp-char", "imp-exp", "imp-rexp", "imp-num", "imp-ctl"} {
		if _, err := store.Get(context.Background(), id); err != tokencache.ErrNotFound {
			t.Fatalf("invalid line's customer %s was stored (%v)", id, err)
		}
	}
	// Sealed: no token in Redis in plaintext.
	for _, kv := range r.Dump(t) {
		for _, v := range kv.Values {
			if bytes.Contains(v, []byte("secret")) {
				t.Fatalf("a token is in Redis in plaintext, key %s", kv.Key)
			}
		}
	}

	t.Run("re-import is already newer", func(t *testing.T) {
		code, stdout, stderr := runImportFile(t, env, content)
		if code != 0 || !strings.Contains(stdout, "imported 0, skipped invalid 10, already newer 3\n") {
			t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
		}
	})

	t.Run("older line is already newer, newer line replaces", func(t *testing.T) {
		older := wallet.FormatTime(now.Add(time.Hour))
		newer := wallet.FormatTime(now.Add(3 * time.Hour))
		content := pairLine("imp-a", "AT-secret-a-old", older, "RT-secret-a-old", rte) + "\n" +
			pairLine("imp-b", "AT-secret-b-2", newer, "RT-secret-b-2", rte) + "\n"
		code, stdout, stderr := runImportFile(t, env, content)
		if code != 0 || !strings.Contains(stdout, "imported 1, skipped invalid 0, already newer 1\n") ||
			strings.Contains(stdout, "invalid lines") {
			t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
		}
		a, err := store.Get(context.Background(), "imp-a")
		if err != nil || a.AccessToken.Reveal() != "AT-secret-a-1" {
			t.Fatalf("imp-a was overwritten by an older pair (%v)", err)
		}
		b, err := store.Get(context.Background(), "imp-b")
		if err != nil || b.AccessToken.Reveal() != "AT-secret-b-2" || b.RefreshToken.Reveal() != "RT-secret-b-2" {
			t.Fatalf("imp-b was not replaced by the newer pair (%v)", err)
		}
	})

	t.Run("the same customer twice in one file: the newer pair wins", func(t *testing.T) {
		var b strings.Builder
		for i := range 40 {
			exp := wallet.FormatTime(now.Add(4*time.Hour + time.Duration(i)*time.Minute))
			fmt.Fprintln(&b, pairLine("imp-dup", fmt.Sprintf("AT-secret-dup-%d", i), exp, fmt.Sprintf("RT-secret-dup-%d", i), rte))
		}
		code, stdout, stderr := runImportFile(t, env, b.String())
		if code != 0 || !strings.Contains(stdout, "skipped invalid 0") {
			t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
		}
		rec, err := store.Get(context.Background(), "imp-dup")
		if err != nil || rec.AccessToken.Reveal() != "AT-secret-dup-39" || rec.RefreshToken.Reveal() != "RT-secret-dup-39" {
			t.Fatalf("the newest pair did not win (%v)", err)
		}
	})

	t.Run("standard input", func(t *testing.T) {
		in := strings.NewReader(pairLine("imp-stdin", "AT-secret-stdin", ate, "RT-secret-stdin", rte) + "\n")
		var out, errOut bytes.Buffer
		code := runImport(context.Background(), []string{"-"}, envconfig.MapLookuper(env), in, &out, &errOut)
		if code != 0 || !strings.Contains(out.String(), "imported 1, skipped invalid 0, already newer 0") {
			t.Fatalf("exit %d\n%s\n%s", code, out.String(), errOut.String())
		}
		if _, err := store.Get(context.Background(), "imp-stdin"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("many invalid lines are capped at 20 numbers", func(t *testing.T) {
		var b strings.Builder
		for range 25 {
			b.WriteString("not json AT-secret\n")
		}
		code, stdout, _ := runImportFile(t, env, b.String())
		want := "invalid lines: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20 and 5 more\n"
		if code != 0 || !strings.Contains(stdout, want) || strings.Contains(stdout, "secret") {
			t.Fatalf("exit %d\n%s", code, stdout)
		}
	})

	t.Run("an overlong line is invalid, not fatal", func(t *testing.T) {
		content := `{"customerId":"imp-huge","accessToken":"` + strings.Repeat("A", 200<<10) + `"}` + "\n" +
			pairLine("imp-after-huge", "AT-secret-ah", ate, "RT-secret-ah", rte) + "\n"
		code, stdout, _ := runImportFile(t, env, content)
		if code != 0 || !strings.Contains(stdout, "imported 1, skipped invalid 1") || !strings.Contains(stdout, "invalid lines: 1\n") {
			t.Fatalf("exit %d\n%s", code, stdout)
		}
	})
}

// TestImportSettings: import needs a Redis store and encryption keys but no
// wallet settings; a bad setting or usage is exit 2 with one line.
func TestImportSettings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pairs.ndjson")
	if err := os.WriteFile(path, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := newEncKey(t)
	for _, tt := range []struct {
		name     string
		env      map[string]string
		args     []string
		variable string
	}{
		{"no redis", map[string]string{"TOKENPROXY_ENCRYPTION_KEYS": key}, []string{"import", path}, "TOKENPROXY_REDIS_URL"},
		{"no keys", map[string]string{"TOKENPROXY_REDIS_URL": "redis://127.0.0.1:1"}, []string{"import", path}, "TOKENPROXY_ENCRYPTION_KEYS"},
		{"bad keys", map[string]string{"TOKENPROXY_REDIS_URL": "redis://127.0.0.1:1", "TOKENPROXY_ENCRYPTION_KEYS": "c2hvcnQ="}, []string{"import", path}, "TOKENPROXY_ENCRYPTION_KEYS"},
		{"no file", importEnv("redis://127.0.0.1:1", key), []string{"import"}, "usage"},
		{"two files", importEnv("redis://127.0.0.1:1", key), []string{"import", path, path}, "usage"},
		{"missing file", importEnv("redis://127.0.0.1:1", key), []string{"import", path + ".nope"}, "cannot open"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, envconfig.MapLookuper(tt.env), &stdout, &stderr)
			out := strings.TrimSpace(stderr.String())
			if code != 2 || strings.Count(out, "\n") != 0 || !strings.Contains(out, tt.variable) {
				t.Fatalf("exit %d, stderr %q, want 2 and one line naming %s", code, out, tt.variable)
			}
			if strings.Contains(out, "c2hvcnQ=") {
				t.Fatal("a key was printed")
			}
		})
	}
}

// TestImportStoreDown: with Redis gone, the import stops, exits 1 and says
// which lines were not written.
func TestImportStoreDown(t *testing.T) {
	r := testenv.StartRedis(t)
	env := importEnv(r.URL, newEncKey(t))
	r.Stop()
	ate := wallet.FormatTime(time.Now().Add(time.Hour))
	var b strings.Builder
	b.WriteString("not json\n")
	for i := range 5 {
		fmt.Fprintln(&b, pairLine(fmt.Sprintf("down-%d", i), "AT-secret-down", ate, "RT-secret-down", ""))
	}
	code, stdout, stderr := runImportFile(t, env, b.String())
	if code != 1 || !strings.Contains(stdout, "imported 0, skipped invalid 1, already newer 0, not written 5\n") ||
		!strings.Contains(stdout, "not written (the token store failed): 2-6\n") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if strings.Contains(stdout+stderr, "secret") {
		t.Fatal("the output holds a token")
	}
}

// seed asks walletsim for n token pairs in the import format.
func (h *harness) seed(n int, prefix, accessTTL string) []byte {
	h.t.Helper()
	body := fmt.Sprintf(`{"count":%d,"prefix":%q,"accessTtl":%q}`, n, prefix, accessTTL)
	resp, err := http.Post(h.simURL+"/sim/seed", "application/json", strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		h.t.Fatalf("seed: %d %v %.200s", resp.StatusCode, err, out)
	}
	return out
}

// TestImportSeededCustomersAreUsable imports walletsim's /sim/seed output
// and uses the customers through a tokenproxy process: a proxied call
// carries the imported access token, and a refresh presents the imported
// refresh token.
func TestImportSeededCustomersAreUsable(t *testing.T) {
	h := newHarness(t).withRedis()
	seeded := h.seed(50, "seed-", "2h")
	code, stdout, stderr := runImportFile(t, importEnv(h.redis.URL, h.encKey), string(seeded))
	if code != 0 || !strings.Contains(stdout, "imported 50, skipped invalid 0, already newer 0\n") {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	for _, line := range bytes.Split(bytes.TrimSpace(seeded), []byte("\n")) {
		var l importLine
		if err := json.Unmarshal(line, &l); err != nil {
			t.Fatal(err)
		}
		for _, tok := range []string{l.AccessToken, l.RefreshToken} {
			for _, enc := range encodings(tok) {
				if strings.Contains(stdout+stderr, enc) {
					t.Fatal("the import's output holds a token")
				}
			}
		}
	}

	p := h.startProxy()
	for _, id := range []string{"seed-0", "seed-49"} {
		status, body, _ := do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": id})
		if status != 200 || resultCode(body) != "SUCCESS" {
			t.Fatalf("%s: %d %s", id, status, body)
		}
	}
	status, body, _ := do(t, "GET", p.url+"/tokenproxy/customers/seed-7", "", nil)
	var st struct{ State string }
	if status != 200 || json.Unmarshal(body, &st) != nil || st.State != "valid" {
		t.Fatalf("status: %d %s", status, body)
	}
	before := h.stats()
	status, body, _ = do(t, "POST", p.url+"/tokenproxy/customers/seed-7/refresh", "", nil)
	if status != 200 {
		t.Fatalf("forced refresh of an imported customer: %d %s", status, body)
	}
	after := h.stats()
	if d := after.calls(applyV1, grantRT) - before.calls(applyV1, grantRT); d != 1 || after.RefreshTokensReused != 0 {
		t.Fatalf("%d refresh calls (want 1), %d reused", d, after.RefreshTokensReused)
	}
	status, body, _ = do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": "seed-7"})
	if status != 200 || resultCode(body) != "SUCCESS" {
		t.Fatalf("after refresh: %d %s", status, body)
	}
}

// TestImportLarge imports 100,000 seeded pairs on loopback Redis. It asserts
// counts only and logs the time taken (the contract asks for well under a
// minute; under -race on two cores this test binary is several times
// slower than the real command).
func TestImportLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode: imports 100,000 pairs")
	}
	h := newHarness(t).withRedis()
	seeded := h.seed(100_000, "bulk-", "2h")
	start := time.Now()
	code, stdout, stderr := runImportFile(t, importEnv(h.redis.URL, h.encKey), string(seeded))
	t.Logf("imported 100,000 pairs in %v", time.Since(start).Round(time.Millisecond))
	if code != 0 || !strings.Contains(stdout, "imported 100000, skipped invalid 0, already newer 0\n") {
		t.Fatalf("exit %d\n%s\n%.2000s", code, stdout, stderr)
	}
	store := importStore(t, h.redis.URL, h.encKey)
	for _, id := range []string{"bulk-0", "bulk-50000", "bulk-99999"} {
		if _, err := store.Get(context.Background(), id); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
}
