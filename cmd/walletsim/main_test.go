package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/tokenproxy/tokenproxy/internal/proc"
	"github.com/tokenproxy/tokenproxy/wallet"
)

var (
	keyOnce   sync.Once
	clientPub string // bare base64 PKIX
	walletPEM string // PKCS#1 PEM private key
)

func keys(t *testing.T) {
	keyOnce.Do(func() {
		ck, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKIXPublicKey(&ck.PublicKey)
		clientPub = base64.StdEncoding.EncodeToString(der)
		wk, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		walletPEM = string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(wk)}))
	})
}

func TestConfigErrors(t *testing.T) {
	keys(t)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		env      map[string]string
		variable string
	}{
		{"no client key", map[string]string{}, "WALLETSIM_CLIENT_PUBLIC_KEY"},
		{"both client key forms", map[string]string{"WALLETSIM_CLIENT_PUBLIC_KEY": clientPub, "WALLETSIM_CLIENT_PUBLIC_KEY_FILE": garbage}, "WALLETSIM_CLIENT_PUBLIC_KEY"},
		{"garbage client key file", map[string]string{"WALLETSIM_CLIENT_PUBLIC_KEY_FILE": garbage}, "WALLETSIM_CLIENT_PUBLIC_KEY_FILE"},
		{"missing client key file", map[string]string{"WALLETSIM_CLIENT_PUBLIC_KEY_FILE": filepath.Join(dir, "none")}, "WALLETSIM_CLIENT_PUBLIC_KEY_FILE"},
		{"garbage private key", map[string]string{"WALLETSIM_CLIENT_PUBLIC_KEY": clientPub, "WALLETSIM_PRIVATE_KEY": "c2VjcmV0"}, "WALLETSIM_PRIVATE_KEY"},
		{"bad duration", map[string]string{"WALLETSIM_CLIENT_PUBLIC_KEY": clientPub, "WALLETSIM_ACCESS_TTL": "soon"}, "WALLETSIM_ACCESS_TTL"},
		{"zero duration", map[string]string{"WALLETSIM_CLIENT_PUBLIC_KEY": clientPub, "WALLETSIM_CODE_TTL": "0s"}, "WALLETSIM_CODE_TTL"},
		{"bad prefix", map[string]string{"WALLETSIM_CLIENT_PUBLIC_KEY": clientPub, "WALLETSIM_PRIVATE_KEY": walletPEM, "WALLETSIM_PATH_PREFIX": "api"}, "WALLETSIM_PATH_PREFIX"},
		{"bad key version", map[string]string{"WALLETSIM_CLIENT_PUBLIC_KEY": clientPub, "WALLETSIM_PRIVATE_KEY": walletPEM, "WALLETSIM_KEY_VERSION": "v 1"}, "WALLETSIM_KEY_VERSION"},
		{"bad log level", map[string]string{"WALLETSIM_CLIENT_PUBLIC_KEY": clientPub, "WALLETSIM_LOG_LEVEL": "loud"}, "WALLETSIM_LOG_LEVEL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr proc.Buffer
			code := run(context.Background(), nil, envconfig.MapLookuper(c.env), &stdout, &stderr)
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			if code != 2 || len(lines) != 1 || !strings.HasPrefix(lines[0], "walletsim: "+c.variable+": ") {
				t.Errorf("exit %d, stderr %q; want 2 and one line naming %s", code, stderr.String(), c.variable)
			}
			if strings.Contains(stderr.String(), "c2VjcmV0") || stdout.String() != "" {
				t.Errorf("printed a value: stdout %q stderr %q", stdout.String(), stderr.String())
			}
		})
	}
}

func TestUsage(t *testing.T) {
	var stdout, stderr proc.Buffer
	if code := run(context.Background(), []string{"-h"}, envconfig.MapLookuper(nil), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"WALLETSIM_LISTEN_ADDR (default 127.0.0.1:9182)", "WALLETSIM_ACCESS_TTL (default 2h)", "WALLETSIM_PUBLIC_KEY_OUT"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("usage lacks %q", want)
		}
	}
}

// TestVersion: `walletsim version` prints the version stamped at build
// time (make release, the image), "dev" otherwise, and starts nothing.
func TestVersion(t *testing.T) {
	var stdout, stderr proc.Buffer
	if code := run(context.Background(), []string{"version"}, envconfig.MapLookuper(nil), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if got := stdout.String(); got != version+"\n" || version != "dev" {
		t.Fatalf("version printed %q (version %q), want \"dev\\n\" in a test build", got, version)
	}
}

// TestRunGeneratesKeyAndServes starts the simulator with a generated key,
// checks only the public half is printed and written, calls it, and stops it.
func TestRunGeneratesKeyAndServes(t *testing.T) {
	keys(t)
	out := filepath.Join(t.TempDir(), "wallet.pub.pem")
	env := envconfig.MapLookuper(map[string]string{
		"WALLETSIM_LISTEN_ADDR":       "127.0.0.1:0",
		"WALLETSIM_CLIENT_PUBLIC_KEY": clientPub,
		"WALLETSIM_PUBLIC_KEY_OUT":    out,
		"WALLETSIM_PATH_PREFIX":       "/api",
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr proc.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, nil, env, &stdout, &stderr) }()

	addr := regexp.MustCompile(`addr=(127\.0\.0\.1:\d+)`)
	deadline := time.Now().Add(20 * time.Second)
	var m []string
	for m = addr.FindStringSubmatch(stderr.String()); m == nil; m = addr.FindStringSubmatch(stderr.String()) {
		select {
		case code := <-done:
			t.Fatalf("exited %d: %s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not listening: %s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}

	printed := stdout.String()
	if !strings.HasPrefix(printed, "-----BEGIN PUBLIC KEY-----") || strings.Contains(printed, "PRIVATE") {
		t.Errorf("stdout %q: want the public key only", printed)
	}
	written, err := os.ReadFile(out)
	if err != nil || string(written) != printed {
		t.Errorf("WALLETSIM_PUBLIC_KEY_OUT: %v, equal to stdout: %v", err, string(written) == printed)
	}
	if _, err := wallet.ParsePublicKey(written); err != nil {
		t.Errorf("written key: %v", err)
	}

	resp, err := http.Get("http://" + m[1] + "/api/sim/stats")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /api/sim/stats: %d", resp.StatusCode)
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after shutdown: %s", code, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no shutdown")
	}
}

// TestRunTLS: with WALLETSIM_TLS_CERT_OUT the simulator serves HTTPS with
// the certificate it writes, which a client trusting only that file
// verifies for 127.0.0.1; it speaks HTTP/2 to a client that offers it, and
// /sim/stats counts one handshake for calls that share a connection.
func TestRunTLS(t *testing.T) {
	keys(t)
	certFile := filepath.Join(t.TempDir(), "walletsim.crt")
	env := envconfig.MapLookuper(map[string]string{
		"WALLETSIM_LISTEN_ADDR":       "127.0.0.1:0",
		"WALLETSIM_CLIENT_PUBLIC_KEY": clientPub,
		"WALLETSIM_PRIVATE_KEY":       walletPEM,
		"WALLETSIM_TLS_CERT_OUT":      certFile,
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr proc.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, nil, env, &stdout, &stderr) }()

	addr := regexp.MustCompile(`addr=(127\.0\.0\.1:\d+) scheme=https`)
	deadline := time.Now().Add(20 * time.Second)
	var m []string
	for m = addr.FindStringSubmatch(stderr.String()); m == nil; m = addr.FindStringSubmatch(stderr.String()) {
		select {
		case code := <-done:
			t.Fatalf("exited %d: %s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not listening over https: %s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(certPEM) {
		t.Fatalf("WALLETSIM_TLS_CERT_OUT holds no certificate: %q", certPEM)
	}
	if strings.Contains(string(certPEM), "PRIVATE") {
		t.Fatal("the certificate file holds a private key")
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: true,
	}}
	defer client.CloseIdleConnections()
	var stats struct {
		TLSHandshakes *int64 `json:"tlsHandshakes"`
	}
	for i := range 3 {
		resp, err := client.Get("https://" + m[1] + "/sim/stats")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&stats)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /sim/stats %d: %d, %v", i, resp.StatusCode, err)
		}
		if resp.ProtoMajor != 2 {
			t.Errorf("call %d over %s, want HTTP/2", i, resp.Proto)
		}
	}
	if stats.TLSHandshakes == nil || *stats.TLSHandshakes != 1 {
		t.Errorf("tlsHandshakes after 3 calls on one connection = %v, want 1", stats.TLSHandshakes)
	}
	// A client that does not trust the certificate is refused.
	if _, err := (&http.Client{Timeout: 10 * time.Second}).Get("https://" + m[1] + "/sim/stats"); err == nil {
		t.Error("a client without the certificate connected")
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after shutdown: %s", code, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no shutdown")
	}
}
