package validate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	simOnce sync.Once
	simPath string
	simErr  error
)

// walletsimBinary builds cmd/walletsim, the strict wallet, once per run.
func walletsimBinary(t testing.TB) string {
	t.Helper()
	simOnce.Do(func() {
		out := filepath.Join(binDir, "walletsim")
		cmd := exec.Command("go", "build", "-o", out, "./cmd/walletsim")
		cmd.Dir = repoRoot
		if b, err := cmd.CombinedOutput(); err != nil {
			simErr = fmt.Errorf("go build ./cmd/walletsim: %v\n%s", err, b)
			return
		}
		simPath = out
	})
	if simErr != nil {
		t.Fatal(simErr)
	}
	return simPath
}

func postJSON(t *testing.T, url, body string) (int, []byte) {
	t.Helper()
	c := http.Client{Timeout: 15 * time.Second}
	resp, err := c.Post(url, "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b
}

// TestSecretRotationReachesSidecar rotates the merchant key the way the
// README tells operators to: one update of the Secret with the new private
// key and its new key version. The rendered sidecar runs against walletsim,
// which knows only the new key (keyVersion 2); the Secret volume is updated
// the way the kubelet does it (a new timestamped directory swapped in
// through the ..data symlink), and the same exchange that the wallet refused
// with KEY_NOT_FOUND succeeds once tokenproxy has re-read the files, with no
// restart.
func TestSecretRotationReachesSidecar(t *testing.T) {
	tpBin, simBin := tokenproxyBinary(t), walletsimBinary(t)
	current, next := newTestKeys(t), newTestKeys(t)
	dir := t.TempDir()
	files := map[string]string{
		"priv.pem": current.merchantPriv, "wallet.pem": current.walletPub, "enc": current.encKeys,
		"sim-client.pem": next.merchantPub, "sim-wallet.pem": current.walletPriv,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const redisPassword = "rotation-test"
	redisPort, walletPort := freePort(t), freePort(t)
	startRedis(t, redisPort, redisPassword)
	sim := start(t, "walletsim", simBin, []string{
		fmt.Sprintf("WALLETSIM_LISTEN_ADDR=127.0.0.1:%d", walletPort),
		"WALLETSIM_CLIENT_PUBLIC_KEY_FILE=" + filepath.Join(dir, "sim-client.pem"),
		"WALLETSIM_PRIVATE_KEY_FILE=" + filepath.Join(dir, "sim-wallet.pem"),
		"WALLETSIM_KEY_VERSION=2",
		"WALLETSIM_CLIENT_ID=example-client-id",
	})
	simURL := fmt.Sprintf("http://127.0.0.1:%d", walletPort)
	waitFor(t, sim, 30*time.Second, "walletsim", func() bool {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(simURL + "/sim/stats")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	p := podOf(t, helmTemplate(t,
		"--set", "config.walletURL="+simURL,
		"--set", fmt.Sprintf("redis.url=redis://127.0.0.1:%d/0", redisPort),
		"--set", "redis.auth.existingSecret=redis-auth",
		"--set-file", "secrets.values.privateKey="+filepath.Join(dir, "priv.pem"),
		"--set-file", "secrets.values.walletPublicKey="+filepath.Join(dir, "wallet.pem"),
		"--set-file", "secrets.values.encryptionKeys="+filepath.Join(dir, "enc"),
	), map[string]map[string]string{"redis-auth": {"password": redisPassword}})
	run := mapToLocal(t, p, filepath.Join(dir, "mounts"))
	tp := start(t, "tokenproxy", tpBin, run.env, run.args...)
	waitFor(t, tp, 60*time.Second, "startup probe", func() bool {
		code, _, err := probe(t, p, run, p.c.StartupProbe)
		return err == nil && kubeletSuccess(code)
	})
	var listen string
	for _, e := range run.env {
		if v, ok := strings.CutPrefix(e, "TOKENPROXY_LISTEN_ADDR="); ok {
			listen = v
		}
	}

	_, b := postJSON(t, simURL+"/sim/authcodes", `{"customerId":"rotation-customer"}`)
	var code struct{ AuthCode string }
	if err := json.Unmarshal(b, &code); err != nil || code.AuthCode == "" {
		t.Fatalf("walletsim /sim/authcodes: %s", b)
	}
	exchange := func() string {
		_, b := postJSON(t, "http://"+listen+"/v1/authorizations/applyToken",
			fmt.Sprintf(`{"grantType":"AUTHORIZATION_CODE","authCode":%q}`, code.AuthCode))
		var answer struct{ Result struct{ ResultCode string } }
		if err := json.Unmarshal(b, &answer); err != nil {
			t.Fatalf("exchange answer %q: %v", b, err)
		}
		return answer.Result.ResultCode
	}
	if got := exchange(); got != "KEY_NOT_FOUND" {
		t.Fatalf("before the rotation the wallet answered %s, want KEY_NOT_FOUND (it knows only the new key)", got)
	}

	// The Secret update: new private key and new key version in one write.
	var volume, secretName string
	for _, v := range p.tmpl.Spec.Volumes {
		if v.Secret != nil && run.volumes[v.Name] != "" {
			volume, secretName = v.Name, v.Secret.SecretName
		}
	}
	updated := maps.Clone(p.secrets[secretName])
	updated["private-key.pem"] = next.merchantPriv
	updated["key-version"] = "2"
	writeVolume(t, run.volumes[volume], updated)

	last := ""
	waitFor(t, tp, 30*time.Second, "the rotated key in use", func() bool {
		last = exchange()
		if last != "SUCCESS" && last != "KEY_NOT_FOUND" {
			t.Fatalf("during the rotation the exchange answered %s", last)
		}
		return last == "SUCCESS"
	})
	if !tp.exited() && strings.Contains(tp.out.String(), "PRIVATE KEY") {
		t.Error("a key appears in tokenproxy's output")
	}
}
