// Command bare is the floor of `make bench-proxy`: a two-hop net/http
// proxy (httputil.ReverseProxy) that forwards every request to the wallet
// unchanged, without reading, signing or verifying anything. The app in
// front of it sends requests it signed itself. It uses tokenproxy's wallet
// HTTP client transport (wallet.NewHTTPClient), so that the comparison is
// of the proxies, not of their connection pools.
//
//	bare -listen 127.0.0.1:PORT -wallet http(s)://HOST:PORT
//
// GET /_bench/mallocs answers the process's runtime.MemStats.Mallocs.
// Benchmarks only: loopback.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"runtime"

	"github.com/tokenproxy/tokenproxy/internal/proc"
	"github.com/tokenproxy/tokenproxy/wallet"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	walletURL := flag.String("wallet", "", "wallet base URL")
	flag.Parse()
	target, err := url.Parse(*walletURL)
	if err != nil || target.Host == "" {
		log.Fatalf("bare: -wallet: want a URL, got %q", *walletURL)
	}
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport: wallet.NewHTTPClient().Transport,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_bench/mallocs", func(w http.ResponseWriter, _ *http.Request) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Fprintln(w, ms.Mallocs)
	})
	mux.Handle("/", rp)
	proc.Serve("bare", *listen, mux)
}
