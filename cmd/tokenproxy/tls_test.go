package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
)

// TestWalletOverTLSReusesConnections: tokenproxy reaches an HTTPS wallet
// (walletsim with its self-signed certificate, trusted through
// SSL_CERT_FILE as a private CA would be) and, once warm, makes no new TLS
// handshake over 200 sequential and 200 concurrent (16 at once) calls:
// walletsim counts every handshake it completes. Counts only, no timing.
func TestWalletOverTLSReusesConnections(t *testing.T) {
	bins := testenv.Binaries(t)
	keys := testenv.WriteKeyFiles(t)
	certFile := filepath.Join(t.TempDir(), "walletsim.crt")
	sim, simAddr := startWalletsim(t, bins, keys, "WALLETSIM_TLS_CERT_OUT="+certFile)
	if err := sim.WaitLog("scheme=https", 20*time.Second); err != nil {
		t.Fatalf("walletsim over https: %v", err)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(certPEM) {
		t.Fatal("no certificate in WALLETSIM_TLS_CERT_OUT")
	}
	simClient := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	defer simClient.CloseIdleConnections()
	simURL := "https://" + simAddr
	simCall := func(method, path, body string, out any) {
		t.Helper()
		req, _ := http.NewRequest(method, simURL+path, strings.NewReader(body))
		resp, err := simClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || json.Unmarshal(b, out) != nil {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
	}
	handshakes := func() int64 {
		t.Helper()
		var st struct {
			TLSHandshakes *int64 `json:"tlsHandshakes"`
		}
		simCall(http.MethodGet, "/sim/stats", "", &st)
		if st.TLSHandshakes == nil {
			t.Fatal("walletsim's /sim/stats has no tlsHandshakes")
		}
		return *st.TLSHandshakes
	}

	listen, ops := testenv.FreeAddr(t), testenv.FreeAddr(t)
	proxy := testenv.Start(t, "tokenproxy", bins.Tokenproxy, []string{
		"TOKENPROXY_LISTEN_ADDR=" + listen,
		"TOKENPROXY_OPS_ADDR=" + ops,
		"TOKENPROXY_WALLET_URL=" + simURL,
		"TOKENPROXY_CLIENT_ID=TEST_CLIENT",
		"TOKENPROXY_PRIVATE_KEY_FILE=" + keys.MerchantPrivate,
		"TOKENPROXY_WALLET_PUBLIC_KEY_FILE=" + keys.WalletPublic,
		"TOKENPROXY_LOG_LEVEL=warn",
		"SSL_CERT_FILE=" + certFile,
	})
	testenv.WaitReady(t, "http://"+ops+"/readyz", 20*time.Second, proxy)

	var code struct{ AuthCode string }
	simCall(http.MethodPost, "/sim/authcodes", `{"customerId":"tls-1"}`, &code)
	if status, body, _ := do(t, "POST", "http://"+listen+"/v1/authorizations/applyToken",
		`{"grantType":"AUTHORIZATION_CODE","authCode":"`+code.AuthCode+`"}`, nil); status != 200 || resultCode(body) != "SUCCESS" {
		t.Fatalf("exchange over TLS: %d %s", status, body)
	}

	call := func() error {
		status, body, err := tryDo("POST", "http://"+listen+inquiry, `{}`, map[string]string{"X-Customer-Id": "tls-1"})
		if err == nil && (status != 200 || resultCode(body) != "SUCCESS") {
			err = fmt.Errorf("HTTP %d %s", status, body)
		}
		return err
	}
	concurrently := func(n, workers int) {
		t.Helper()
		jobs := make(chan struct{}, n)
		for range n {
			jobs <- struct{}{}
		}
		close(jobs)
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for range jobs {
					if err := call(); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("call: %v", err)
		}
	}

	concurrently(64, 16) // warm-up: the connections the load needs
	before := handshakes()
	if before < 1 {
		t.Fatalf("%d TLS handshakes after the warm-up: the wallet was not reached over TLS", before)
	}
	for i := range 200 {
		if err := call(); err != nil {
			t.Fatalf("sequential call %d: %v", i, err)
		}
	}
	afterSequential := handshakes()
	concurrently(200, 16)
	after := handshakes()
	// The harness's own /sim/stats client keeps its one connection.
	if afterSequential != before || after != before {
		t.Errorf("TLS handshakes: %d after the warm-up, %d after 200 sequential calls, %d after 200 concurrent ones; want no new one",
			before, afterSequential, after)
	}
	t.Logf("TLS handshakes: %d in all (warm-up included), none during the 400 measured calls", after)

}
