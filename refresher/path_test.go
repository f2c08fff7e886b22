package refresher

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// TestRefreshOnlyToTokenPaths: a record whose exchange path is not one of
// the token paths (written by someone with store access, to send a refresh
// token to another wallet API) is refused as corrupt, with no wallet call.
func TestRefreshOnlyToTokenPaths(t *testing.T) {
	f := newFixture(t)
	r := New(Config{
		Store: f.store, Wallet: f.wallet, Metrics: NewMetrics(prometheus.NewRegistry()), Now: f.clock.now,
		RefreshBefore: 5 * time.Minute, RefreshRate: 1000, UpstreamTimeout: 5 * time.Second, Lease: 5 * time.Second,
		TokenPaths: []string{"/v1/authorizations/applyToken"},
	})
	t.Cleanup(r.Close)
	ctx := context.Background()
	for _, tc := range []struct {
		id, path string
		refused  bool
	}{{"c-ok", "/v1/authorizations/applyToken", false}, {"c-moved", "/v1/payments/pay", true}} {
		if err := r.Install(ctx, Exchange{Path: tc.path, Pair: &wallet.TokenResponse{CustomerID: tc.id,
			AccessToken: "access-0", AccessTokenExpiry: f.clock.now().Add(time.Minute), RefreshToken: "refresh-0"}}); err != nil {
			t.Fatal(err)
		}
		before := f.wallet.calls.Load()
		_, err := r.Refresh(ctx, tc.id)
		calls := f.wallet.calls.Load() - before
		switch {
		case tc.refused && (!errors.Is(err, tokencache.ErrCorrupt) || calls != 0):
			t.Errorf("%s: err %v, %d wallet calls; want ErrCorrupt and none", tc.path, err, calls)
		case !tc.refused && (err != nil || calls != 1):
			t.Errorf("%s: err %v, %d wallet calls; want a refresh", tc.path, err, calls)
		}
	}
}
