// Command demo runs the quick start: walletsim and tokenproxy (in-memory
// store) side by side on loopback, a real authorization-code exchange and a
// proxied wallet call, then the reason the product exists: a customer whose
// access token lives seconds is refreshed ahead of expiry while the app
// keeps calling, and a forced refresh; each step printed, never a token,
// in well under a minute. With -serve it starts the two and
// prints curl lines to try until Ctrl-C. It is driven by `make demo` and
// `make run`; it needs only the two binaries and Go's standard library.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/keygen"

	"github.com/tokenproxy/tokenproxy/internal/proc"
)

func main() {
	tokenproxy := flag.String("tokenproxy", "bin/tokenproxy", "tokenproxy binary")
	walletsim := flag.String("walletsim", "bin/walletsim", "walletsim binary")
	serve := flag.Bool("serve", false, "start both and wait for Ctrl-C instead of running the demo")
	flag.Parse()
	if err := run(*tokenproxy, *walletsim, *serve); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

const (
	proxyAddr  = "127.0.0.1:9180"
	opsAddr    = "127.0.0.1:9181"
	walletAddr = "127.0.0.1:9182"
	customer   = "2188000123456789"

	// The refresh part: a customer whose access tokens live accessTTL is
	// refreshed refreshBefore (minus up to refreshJitter) ahead of expiry,
	// so about every 6 to 8 s; the app calls once a second meanwhile.
	shortCustomer = "2188000555500001"
	accessTTL     = "15s"
	refreshBefore = "7s"
	refreshJitter = "2s"
	// watchFor bounds the watching: two scheduled refreshes take at most
	// 2 x (15s - 7s) = 16 s.
	watchFor = 25 * time.Second
)

func run(tokenproxyBin, walletsimBin string, serve bool) error {
	dir, err := os.MkdirTemp("", "tokenproxy-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	step("Generating a merchant RSA-2048 key pair (the wallet gets the public half)")
	keyFile, pubFile, err := keygen.WriteKeyPair(dir)
	if err != nil {
		return err
	}
	walletPub := filepath.Join(dir, "wallet-public.pem")

	step("Starting walletsim, a strict wallet, on " + walletAddr)
	sim, err := start(dir, "walletsim", walletsimBin, []string{
		"WALLETSIM_LISTEN_ADDR=" + walletAddr,
		"WALLETSIM_CLIENT_PUBLIC_KEY_FILE=" + pubFile,
		"WALLETSIM_PUBLIC_KEY_OUT=" + walletPub,
		"WALLETSIM_CLIENT_ID=DEMO_CLIENT",
	})
	if err != nil {
		return err
	}
	defer sim.Stop()
	if err := waitFor("http://"+walletAddr+"/sim/stats", 200, 15*time.Second, sim); err != nil {
		return err
	}

	step("Starting tokenproxy on " + proxyAddr + " (ops on " + opsAddr + "), in-memory token store")
	tp, err := start(dir, "tokenproxy", tokenproxyBin, []string{
		"TOKENPROXY_LISTEN_ADDR=" + proxyAddr,
		"TOKENPROXY_OPS_ADDR=" + opsAddr,
		"TOKENPROXY_WALLET_URL=http://" + walletAddr,
		"TOKENPROXY_CLIENT_ID=DEMO_CLIENT",
		"TOKENPROXY_PRIVATE_KEY_FILE=" + keyFile,
		"TOKENPROXY_WALLET_PUBLIC_KEY_FILE=" + walletPub,
		"TOKENPROXY_LOG_FORMAT=text",
		"TOKENPROXY_REFRESH_BEFORE=" + refreshBefore,
		"TOKENPROXY_REFRESH_JITTER=" + refreshJitter,
	})
	if err != nil {
		return err
	}
	defer tp.Stop()
	if err := waitFor("http://"+opsAddr+"/readyz", 200, 15*time.Second, tp); err != nil {
		return err
	}

	if serve {
		fmt.Printf(`
Both are running. Try, in another terminal:

  # the user consents in the super app; the wallet hands the mini program an authCode
  curl -s -XPOST http://%[2]s/sim/authcodes -d '{"customerId":"%[3]s"}'
  # the app exchanges it through tokenproxy (the answer holds no token)
  curl -s -XPOST http://%[1]s/v1/authorizations/applyToken -H 'Content-Type: application/json' \
       -d '{"grantType":"AUTHORIZATION_CODE","authCode":"<authCode>"}'
  # a wallet API call for that customer: tokenproxy injects the token and signs
  curl -s -XPOST http://%[1]s/v1/users/inquiryUserInfo -H 'X-Customer-Id: %[3]s' -d '{}'
  # the customer's token status, and the metrics
  curl -s http://%[1]s/tokenproxy/customers/%[3]s
  curl -s http://%[4]s/metrics | grep ^tokenproxy_

Ctrl-C stops both.
`, proxyAddr, walletAddr, customer, opsAddr)
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		select {
		case <-ctx.Done():
		case <-sim.Done():
			return errors.New("walletsim exited")
		case <-tp.Done():
			return errors.New("tokenproxy exited")
		}
		return nil
	}

	step("1. The user consents in the super app: walletsim issues an authCode for customer " + customer)
	var code struct{ AuthCode string }
	if _, err := call("POST", "http://"+walletAddr+"/sim/authcodes", nil, `{"customerId":"`+customer+`"}`, &code); err != nil {
		return err
	}
	fmt.Printf("   authCode: %s\n", code.AuthCode)

	step("2. The app exchanges it through tokenproxy: POST /v1/authorizations/applyToken")
	body, err := call("POST", "http://"+proxyAddr+"/v1/authorizations/applyToken", nil,
		`{"grantType":"AUTHORIZATION_CODE","authCode":"`+code.AuthCode+`"}`, nil)
	if err != nil {
		return err
	}
	show(body)
	if err := noToken(body); err != nil {
		return err
	}
	fmt.Println("   -> no accessToken or refreshToken in the app's answer: tokenproxy keeps them")

	step("3. The app calls a wallet API for the customer: POST /v1/users/inquiryUserInfo with X-Customer-Id")
	fmt.Println("   app sends: {\"extendInfo\":\"demo\"}  (no token, no signature)")
	body, err = call("POST", "http://"+proxyAddr+"/v1/users/inquiryUserInfo",
		map[string]string{"X-Customer-Id": customer}, `{"extendInfo":"demo"}`, nil)
	if err != nil {
		return err
	}
	show(body)
	if err := noToken(body); err != nil {
		return err
	}
	fmt.Println("   -> tokenproxy injected the access token, signed the request, verified the wallet's signature")

	step("4. The customer's token status: GET /tokenproxy/customers/" + customer)
	body, err = call("GET", "http://"+proxyAddr+"/tokenproxy/customers/"+customer, nil, "", nil)
	if err != nil {
		return err
	}
	show(body)

	step("5. What the wallet saw: GET /sim/stats")
	body, err = call("GET", "http://"+walletAddr+"/sim/stats", nil, "", nil)
	if err != nil {
		return err
	}
	show(body)

	step("6. A few metrics from " + opsAddr + "/metrics")
	body, err = call("GET", "http://"+opsAddr+"/metrics", nil, "", nil)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "tokenproxy_requests_total") && !strings.HasSuffix(line, " 0") ||
			strings.HasPrefix(line, "tokenproxy_upstream_requests_total") && !strings.HasSuffix(line, " 0") {
			fmt.Println("   " + line)
		}
	}

	if err := refreshDemo(); err != nil {
		return err
	}

	step("Stopping tokenproxy (SIGTERM drains in-flight calls) and walletsim")
	tp.Stop()
	sim.Stop()
	fmt.Println("\nDemo complete.")
	return nil
}

func step(s string) { fmt.Printf("\n== %s\n", s) }

func show(body []byte) {
	var out bytes.Buffer
	if json.Indent(&out, body, "   ", "  ") != nil {
		out.Write(body)
	}
	fmt.Println("   " + out.String())
}

func noToken(body []byte) error {
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		return err
	}
	for _, k := range []string{"accessToken", "refreshToken"} {
		if _, ok := m[k]; ok {
			return fmt.Errorf("the answer holds %s", k)
		}
	}
	return nil
}

func call(method, url string, hdr map[string]string, body string, out any) ([]byte, error) {
	status, b, err := fetch(method, url, hdr, body)
	if err != nil {
		return nil, err
	}
	fmt.Printf("   %s %s -> HTTP %d\n", method, url, status)
	if status >= 300 {
		return b, fmt.Errorf("%s %s: HTTP %d: %s", method, url, status, b)
	}
	if out != nil {
		return b, json.Unmarshal(b, out)
	}
	return b, nil
}

// fetch makes one request and returns the answer's status and body.
func fetch(method, url string, hdr map[string]string, body string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, b, nil
}

// start starts one of the demo's programs in dir, its output kept in
// memory for when it fails.
func start(dir, name, bin string, env []string) (*proc.Process, error) {
	abs, err := filepath.Abs(bin)
	if err != nil {
		return nil, err
	}
	p, err := proc.Start(name, abs, nil, proc.Options{Dir: dir, Env: env})
	if err != nil {
		return nil, fmt.Errorf("%w (run `make build` first)", err)
	}
	return p, nil
}

func waitFor(url string, status int, within time.Duration, p *proc.Process) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		select {
		case <-p.Done():
			return fmt.Errorf("%s exited:\n%s", p.Name(), p.Logs())
		default:
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == status {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %s:\n%s", p.Name(), within, p.Logs())
}
