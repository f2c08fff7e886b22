package wallet_test

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// TestHTTPClientKeepsConnections: against an HTTPS wallet that speaks only
// HTTP/1.1 (each call in flight needs a connection of its own), the
// client of NewHTTPClient keeps every connection 16 concurrent callers
// opened: 200 more concurrent calls open none (Go's default pool keeps 2
// per host and would open and close one per call beyond those).
func TestHTTPClientKeepsConnections(t *testing.T) {
	const callers = 16
	var (
		newConns atomic.Int64
		arrived  sync.WaitGroup
		warm     atomic.Bool
	)
	arrived.Add(callers)
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !warm.Load() {
			// The warm-up holds all 16 calls in flight at once, so that
			// exactly 16 connections are opened, whatever the scheduling.
			arrived.Done()
			select {
			case <-release:
			case <-time.After(30 * time.Second):
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"result":{"resultStatus":"S","resultCode":"SUCCESS"}}`))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			newConns.Add(1)
		}
	}
	srv.TLS = &tls.Config{NextProtos: []string{"http/1.1"}} // no HTTP/2: one call per connection
	srv.StartTLS()
	defer srv.Close()

	hc := wallet.NewHTTPClient()
	tr := hc.Transport.(*http.Transport)
	tr.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig // trust the test server
	defer hc.CloseIdleConnections()

	get := func() error {
		resp, err := hc.Get(srv.URL)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.ProtoMajor != 1 {
			t.Errorf("proto %s, want HTTP/1.1", resp.Proto)
		}
		return nil
	}
	run := func(n int) {
		jobs := make(chan struct{}, n)
		for range n {
			jobs <- struct{}{}
		}
		close(jobs)
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				for range jobs {
					if err := get(); err != nil {
						t.Errorf("call: %v", err)
					}
				}
			})
		}
		wg.Wait()
	}

	go func() { arrived.Wait(); warm.Store(true); close(release) }()
	run(callers)
	if got := newConns.Load(); got != callers {
		t.Fatalf("warm-up opened %d connections, want %d", got, callers)
	}
	run(200)
	if got := newConns.Load() - callers; got != 0 {
		t.Errorf("%d new connections (TLS handshakes) over 200 calls by %d callers after the warm-up, want 0", got, callers)
	}
}
