package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
)

// TestMemoryBoundUnderLoad sends 400 concurrent maximum-size requests
// (1 MiB bodies) through a tokenproxy given TOKENPROXY_MEMORY_LIMIT=128MiB
// to a wallet that answers after 1.5 s. Every request must get either the
// wallet's answer or 503 REQUEST_TRAFFIC_EXCEED_LIMIT, the process's peak
// RSS (VmHWM, from /proc) must stay under the budget it was given, and it
// must serve normally afterwards. Counts, not timings: the wallet's
// latency only makes the requests overlap. Built without -race, which
// would multiply the memory measured.
func TestMemoryBoundUnderLoad(t *testing.T) {
	const (
		budget  = 128 << 20
		callers = 400
	)
	bins := testenv.PlainBinaries(t)
	keys := testenv.WriteKeyFiles(t)
	sim, simAddr := startWalletsim(t, bins, keys)
	simURL := "http://" + simAddr
	testenv.WaitReady(t, simURL+"/sim/stats", 20*time.Second, sim)
	if status, body, _ := do(t, "POST", simURL+"/sim/faults", `{"path":"/v1/users/inquiryUserInfo","latency":"1500ms"}`, nil); status != 200 {
		t.Fatalf("fault: %d %s", status, body)
	}
	appAddr, opsAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	p := testenv.Start(t, "tokenproxy", bins.Tokenproxy, []string{
		"TOKENPROXY_LISTEN_ADDR=" + appAddr,
		"TOKENPROXY_OPS_ADDR=" + opsAddr,
		"TOKENPROXY_WALLET_URL=" + simURL,
		"TOKENPROXY_CLIENT_ID=TEST_CLIENT",
		"TOKENPROXY_PRIVATE_KEY_FILE=" + keys.MerchantPrivate,
		"TOKENPROXY_WALLET_PUBLIC_KEY_FILE=" + keys.WalletPublic,
		"TOKENPROXY_MEMORY_LIMIT=128MiB",
		"TOKENPROXY_UPSTREAM_TIMEOUT=30s",
	})
	testenv.WaitReady(t, "http://"+opsAddr+"/readyz", 20*time.Second, p)

	// One body of exactly TOKENPROXY_MAX_BODY_BYTES, shared read-only.
	const maxBody = 1 << 20
	prefix, suffix := `{"filler":"`, `"}`
	body := []byte(prefix + strings.Repeat("x", maxBody-len(prefix)-len(suffix)) + suffix)
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: callers, MaxIdleConnsPerHost: callers}}
	url := "http://" + appAddr + "/v1/users/inquiryUserInfo"

	var (
		mu       sync.Mutex
		outcomes = map[string]int{}
		wg       sync.WaitGroup
	)
	start := make(chan struct{})
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			var key string
			resp, err := client.Do(req)
			if err != nil {
				key = "transport error: " + err.Error()
			} else {
				var buf bytes.Buffer
				_, _ = buf.ReadFrom(resp.Body)
				resp.Body.Close()
				key = fmt.Sprintf("%d %s", resp.StatusCode, resultCode(buf.Bytes()))
			}
			mu.Lock()
			outcomes[key]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()

	served, refused := 0, 0
	for k, n := range outcomes {
		switch {
		case k == "503 REQUEST_TRAFFIC_EXCEED_LIMIT":
			refused += n
		case isWalletAnswer(k):
			served += n
		default:
			t.Errorf("%d requests got %q, want the wallet's answer or 503 REQUEST_TRAFFIC_EXCEED_LIMIT", n, k)
		}
	}
	peak := procStatusKiB(t, p.PID(), "VmHWM") << 10
	t.Logf("outcomes %v: %d served by the wallet, %d refused 503; peak RSS %.1f MiB of a %d MiB budget",
		outcomes, served, refused, float64(peak)/(1<<20), budget>>20)
	if served == 0 || served+refused != callers {
		t.Errorf("served %d + refused %d != %d callers", served, refused, callers)
	}
	if peak >= budget {
		t.Errorf("peak RSS %d bytes, over the %d-byte budget", peak, budget)
	}
	// Still serving.
	if status, b, _ := do(t, "POST", url, `{}`, nil); status == 503 || !isWalletAnswer(fmt.Sprintf("%d %s", status, resultCode(b))) {
		t.Fatalf("after the load: %d %s", status, b)
	}
}

// isWalletAnswer tells a wallet's answer from the proxy's own errors.
func isWalletAnswer(k string) bool {
	for _, own := range []string{"REQUEST_TRAFFIC_EXCEED_LIMIT", "WALLET_UNAVAILABLE", "WALLET_TIMEOUT", "INVALID_WALLET_SIGNATURE", "TOKEN_STORE_UNAVAILABLE", "transport error"} {
		if strings.Contains(k, own) {
			return false
		}
	}
	return true
}

// procStatusKiB reads a "kB" field of /proc/PID/status.
func procStatusKiB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
