package refresher

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// TestPendingPairKeptUntilReplicated: with REDIS_WAIT_REPLICAS=1 and the
// replica gone, a refreshed pair lands on the master unacknowledged. Its
// retry then finds the record already holding the pair; the pair must stay
// kept (a failover now would lose it) until a write the replica
// acknowledges follows it, and only then be let go.
func TestPendingPairKeptUntilReplicated(t *testing.T) {
	master, replica := testenv.StartReplicated(t)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	kr, err := tokencache.ParseKeyring(base64.StdEncoding.EncodeToString(key))
	if err != nil {
		t.Fatal(err)
	}
	store, err := tokencache.NewRedis(tokencache.RedisConfig{Client: master.Client(t), Keyring: kr, Buckets: 4, WaitReplicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	w := &fakeWallet{ttl: time.Hour, now: time.Now, gate: make(chan struct{})}
	r := New(Config{
		Store: store, Wallet: w, Metrics: NewMetrics(prometheus.NewRegistry()),
		RefreshBefore: time.Minute, RefreshRate: 1000, UpstreamTimeout: 5 * time.Second,
		// A long lease: the background retry runs every Lease/4 and is
		// left alone; the test calls writeAll itself.
		Lease: time.Hour, CacheMaxEntries: 10,
	})
	t.Cleanup(r.Close)
	ctx := context.Background()
	if err := r.Install(ctx, Exchange{Path: "/v1/authorizations/applyToken", Pair: &wallet.TokenResponse{
		CustomerID: "c1", AccessToken: "access-0", AccessTokenExpiry: time.Now().Add(time.Hour), RefreshToken: "refresh-0",
	}}); err != nil {
		t.Fatal(err)
	}

	// The claim is acknowledged; the replica goes while the wallet answers.
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := r.Refresh(rctx, "c1")
		done <- err
	}()
	for w.calls.Load() == 0 {
		if rctx.Err() != nil {
			t.Fatal("the refresh never reached the wallet")
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
	replica.Stop()
	close(w.gate)
	if err := <-done; err != nil {
		t.Fatalf("forced refresh with the replica gone: %v (the pair is kept and served)", err)
	}
	if w.calls.Load() != 1 {
		t.Fatalf("%d wallet calls, want 1", w.calls.Load())
	}
	kept, ok := r.pending.get("c1")
	if !ok || kept.RefreshToken.Reveal() != "refresh-1" {
		t.Fatal("the unacknowledged pair is not kept")
	}
	got, err := store.Get(ctx, "c1")
	if err != nil || got.RefreshToken.Reveal() != "refresh-1" {
		t.Fatalf("the master does not hold the new pair (%v)", err)
	}
	// Retries while the replica is gone: the record holds the pair, and
	// still no replica acknowledged it, so it stays kept.
	for i := range 3 {
		if left := r.pending.writeAll(ctx); left != 1 {
			t.Fatalf("retry %d without a replica: %d pairs left, want 1 (dropped before any replica had it)", i, left)
		}
	}

	replica.Start()
	deadline := time.Now().Add(30 * time.Second)
	for r.pending.writeAll(ctx) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the pair was never confirmed after the replica came back")
		}
		time.Sleep(100 * time.Millisecond) // the replica resyncs; polling with a deadline
	}
	if _, ok := r.pending.get("c1"); ok {
		t.Fatal("pair still kept after a replicated write")
	}
	got, err = store.Get(ctx, "c1")
	if err != nil || got.RefreshToken.Reveal() != "refresh-1" {
		t.Fatalf("after the confirmation the store does not hold the pair (%v)", err)
	}
	if w.calls.Load() != 1 {
		t.Fatalf("%d wallet calls, want 1: a kept pair is never refreshed again", w.calls.Load())
	}
}
