// Command diy is the do-it-yourself signing proxy of `make bench-proxy`:
// what a merchant app would write to call the wallet without tokenproxy,
// reduced to one customer whose access token it holds in memory. For every
// POST it reads the JSON body, writes the token into it (top-level
// accessToken), signs the bytes it sends with the merchant key
// (wallet.Sign), forwards them to the wallet, verifies the answer's
// signature (wallet.Verify) and returns the wallet's status, body,
// Content-Type, Response-Time and Signature. It shares tokenproxy's wallet
// HTTP client (wallet.NewHTTPClient), so that the comparison is of the
// proxies, not of their connection pools.
//
//	diy -listen 127.0.0.1:PORT -wallet http(s)://HOST:PORT -client-id ID \
//	    -key merchant.pem -wallet-public-key wallet.pem -token-file token
//
// GET /_bench/mallocs answers the process's runtime.MemStats.Mallocs, for
// the allocations per call. Benchmarks only: loopback, no limits beyond a
// 1 MiB body.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/proc"
	"github.com/tokenproxy/tokenproxy/wallet"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	walletURL := flag.String("wallet", "", "wallet base URL")
	clientID := flag.String("client-id", "", "Client-Id")
	keyFile := flag.String("key", "", "merchant private key (PEM)")
	walletKeyFile := flag.String("wallet-public-key", "", "wallet public key (PEM)")
	tokenFile := flag.String("token-file", "", "file holding the customer's access token")
	flag.Parse()

	key, err := readKey(*keyFile, wallet.ParsePrivateKey)
	if err != nil {
		log.Fatalf("diy: -key: %v", err)
	}
	walletKey, err := readKey(*walletKeyFile, wallet.ParsePublicKey)
	if err != nil {
		log.Fatalf("diy: -wallet-public-key: %v", err)
	}
	tok, err := os.ReadFile(*tokenFile)
	if err != nil {
		log.Fatalf("diy: -token-file: %v", err)
	}
	token := strings.TrimSpace(string(tok))
	base := strings.TrimRight(*walletURL, "/")
	hc := wallet.NewHTTPClient()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /_bench/mallocs", func(w http.ResponseWriter, _ *http.Request) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Fprintln(w, ms.Mallocs)
	})
	mux.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "read", http.StatusBadRequest)
			return
		}
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil || m == nil {
			http.Error(w, "not a JSON object", http.StatusBadRequest)
			return
		}
		m["accessToken"] = token
		out, _ := json.Marshal(m)
		reqTime := wallet.FormatTime(time.Now())
		uri := r.URL.RequestURI()
		sig, err := wallet.Sign(key, wallet.SigningContent(http.MethodPost, uri, *clientID, reqTime, out))
		if err != nil {
			http.Error(w, "sign", http.StatusInternalServerError)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+uri, bytes.NewReader(out))
		req.Header.Set("Content-Type", "application/json; charset=UTF-8")
		req.Header.Set(wallet.HeaderClientID, *clientID)
		req.Header.Set(wallet.HeaderRequestTime, reqTime)
		req.Header.Set(wallet.HeaderSignature, wallet.FormatSignatureHeader("1", sig))
		resp, err := hc.Do(req)
		if err != nil {
			http.Error(w, "wallet unavailable", http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		answer, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
		if err != nil {
			http.Error(w, "wallet unavailable", http.StatusBadGateway)
			return
		}
		sh, err := wallet.ParseSignatureHeader(resp.Header.Get(wallet.HeaderSignature))
		if err != nil || wallet.Verify(walletKey, wallet.SigningContent(http.MethodPost, uri, *clientID,
			resp.Header.Get(wallet.HeaderResponseTime), answer), sh.Signature) != nil {
			http.Error(w, "invalid wallet signature", http.StatusBadGateway)
			return
		}
		for _, h := range []string{"Content-Type", wallet.HeaderResponseTime, wallet.HeaderSignature} {
			if v := resp.Header.Get(h); v != "" {
				w.Header().Set(h, v)
			}
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(answer)
	})
	proc.Serve("diy", *listen, mux)
}

func readKey[K any](file string, parse func([]byte) (K, error)) (K, error) {
	var zero K
	b, err := os.ReadFile(file)
	if err != nil {
		return zero, err
	}
	return parse(b)
}
