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
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os/signal"
	"runtime"
	"syscall"
	"time"

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

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("bare: listen: %v", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() { _ = srv.Serve(ln) }()
	log.Printf("listening on %s", ln.Addr())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
}
