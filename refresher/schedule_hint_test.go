package refresher

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/tokencache"
)

// writeCustomers stores n customers through the tokencache API (Put, as an
// exchange would), none due before an hour from now.
func writeCustomers(t *testing.T, s tokencache.Store, n int) {
	t.Helper()
	now := time.Now()
	ids := make(chan int)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range ids {
				rec := &tokencache.Record{
					CustomerID: "cust-" + strconv.Itoa(i), AccessToken: "a", AccessTokenExpiry: now.Add(3 * time.Hour),
					RefreshToken: "r", ExchangePath: "/v1/authorizations/applyToken",
					NextRefresh: now.Add(time.Hour + time.Duration(i)*time.Second/10),
				}
				if _, err := tokencache.Put(context.Background(), s, rec); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for i := range n {
		ids <- i
	}
	close(ids)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
}

// TestIdleSchedulerBudget: a replica whose store holds 10,000 customers,
// none due, and no app traffic sends at most 10 Redis commands per second
// in all: the scheduler (the hint read each tick, the full check's steps),
// the census (recounted at once when Run starts, then every 30 s) and the
// store's subscription and heartbeat. Counted: every command the server
// ran over the first 10 s of Run (INFO commandstats, commands inside
// scripts included, the INFO calls excluded), so the start (a census, the
// hint check) is inside the window. Then, with 100 customers made due,
// the commands per refresh stay a small constant (no walk of every
// bucket).
func TestIdleSchedulerBudget(t *testing.T) {
	rd := testenv.StartRedis(t)
	store, err := tokencache.NewRedis(tokencache.RedisConfig{Client: rd.Client(t), Keyring: testKeyring})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	const customers = 10_000
	writeCustomers(t, store, customers)

	admin := rd.Client(t)
	w := &fakeWallet{ttl: 3 * time.Hour, now: time.Now}
	m := NewMetrics(prometheus.NewRegistry())
	r := New(Config{
		Store: store, Wallet: w, Metrics: m, Census: store.Census,
		RefreshBefore: time.Minute, RefreshRate: 1000, UpstreamTimeout: 5 * time.Second, Lease: 5 * time.Second,
		CacheMaxEntries: 1000,
	})
	t.Cleanup(r.Close)
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { stop(); <-done })

	before := testenv.Commands(t, admin)
	start := time.Now()
	go func() { defer close(done); r.Run(runCtx) }()
	time.Sleep(10 * time.Second) // the measured window, not a synchronisation
	idle := testenv.Commands(t, admin).Since(before)
	secs := time.Since(start).Seconds()
	t.Logf("idle, %d customers: %d commands in %.1f s (%.2f/s): %v", customers, idle.Total(), secs, float64(idle.Total())/secs, idle)
	if rate := float64(idle.Total()) / secs; rate > 10 {
		t.Errorf("an idle replica sent %.1f Redis commands per second, budget 10", rate)
	}
	if got := testutil.ToFloat64(m.tokens.WithLabelValues(string(StateValid))); got != customers {
		t.Errorf("census: %v valid, want %d", got, customers)
	}

	// 100 customers due now: each is refreshed once, at a constant cost.
	const dueN = 100
	for i := range dueN {
		rec, err := store.Get(ctx(t), "cust-"+strconv.Itoa(i*97))
		if err != nil {
			t.Fatal(err)
		}
		rec.NextRefresh = time.Now().Add(-time.Second)
		if _, err := tokencache.CompareAndSwap(ctx(t), store, rec, rec.Generation); err != nil {
			t.Fatal(err)
		}
	}
	before = testenv.Commands(t, admin)
	deadline := time.Now().Add(60 * time.Second)
	for w.calls.Load() < dueN {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d due customers refreshed within a minute", w.calls.Load(), dueN)
		}
		time.Sleep(10 * time.Millisecond)
	}
	busy := testenv.Commands(t, admin).Since(before)
	per := float64(busy.Total()) / dueN
	t.Logf("%d refreshes: %d commands, %.1f per refresh: %v", dueN, busy.Total(), per, busy)
	if per > 60 {
		t.Errorf("%.1f Redis commands per scheduled refresh, want a small constant (≤ 60)", per)
	}
	if n := w.calls.Load(); n != dueN {
		t.Errorf("%d wallet calls for %d due customers", n, dueN)
	}
}
