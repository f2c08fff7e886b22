package refresher

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// TestIdleTrackingDuringStoreOutage: while Redis is down, concurrent calls
// for one customer are served the locally held token, and each records the
// app call for idle tracking on its own copy of the record (run with -race:
// a record shared with the cache would be written by every caller).
func TestIdleTrackingDuringStoreOutage(t *testing.T) {
	rd := testenv.StartRedis(t)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	kr, err := tokencache.ParseKeyring(base64.StdEncoding.EncodeToString(key))
	if err != nil {
		t.Fatal(err)
	}
	store, err := tokencache.NewRedis(tokencache.RedisConfig{Client: rd.Client(t), Keyring: kr, Buckets: 4})
	if err != nil {
		t.Fatal(err)
	}
	w := &fakeWallet{ttl: time.Hour, now: time.Now}
	r := New(Config{
		Store: store, Wallet: w, Metrics: NewMetrics(prometheus.NewRegistry()),
		RefreshBefore: time.Minute, RefreshRate: 1000, UpstreamTimeout: 2 * time.Second,
		Lease: 2 * time.Second, CacheMaxEntries: 10,
		// An app call is recorded at most once per IdleAfter/4: tiny, so
		// that every call of the burst records one.
		IdleAfter: time.Millisecond,
	})
	t.Cleanup(r.Close)
	ctx := context.Background()
	if err := r.Install(ctx, Exchange{Path: "/v1/authorizations/applyToken", Pair: &wallet.TokenResponse{
		CustomerID: "c1", AccessToken: "access-0", AccessTokenExpiry: time.Now().Add(time.Hour), RefreshToken: "refresh-0",
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Token(ctx, "c1"); err != nil { // the local copy is held
		t.Fatal(err)
	}
	rd.Stop()
	time.Sleep(2 * time.Millisecond) // ages LastUsed past IdleAfter/4; not a synchronisation

	const callers = 64
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			tok, err := r.Token(cctx, "c1")
			if err == nil && tok.Value.Reveal() != "access-0" {
				err = errBadToken
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	served := 0
	for err := range errs {
		if err != nil {
			t.Errorf("call during the outage: %v", err)
			continue
		}
		served++
	}
	if served != callers {
		t.Fatalf("%d of %d calls served from the local copy", served, callers)
	}
	if w.calls.Load() != 0 {
		t.Fatalf("%d wallet calls during the outage, want 0", w.calls.Load())
	}
}

var errBadToken = errors.New("served another token than the one held")
