package refresher

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// benchReplica is a Refresher on store holding 1,000 customers, each read
// once (so held in L1).
func benchReplica(b *testing.B, store tokencache.Store, cacheMax int) *Refresher {
	b.Helper()
	r := New(Config{
		Store: store, Wallet: &fakeWallet{ttl: time.Hour, now: time.Now}, Metrics: NewMetrics(prometheus.NewRegistry()),
		RefreshBefore: time.Minute, UpstreamTimeout: 5 * time.Second, CacheMaxEntries: cacheMax, IdleAfter: time.Hour,
	})
	b.Cleanup(r.Close)
	ctx := context.Background()
	for i := range 1000 {
		id := "c" + strconv.Itoa(i)
		if err := r.Install(ctx, Exchange{Path: "/v1/authorizations/applyToken", Pair: &wallet.TokenResponse{
			CustomerID: id, AccessToken: "access", AccessTokenExpiry: time.Now().Add(time.Hour), RefreshToken: "refresh",
		}}); err != nil {
			b.Fatal(err)
		}
	}
	return r
}

func benchToken(b *testing.B, r *Refresher) {
	ctx := context.Background()
	for i := range 1000 {
		if _, err := r.Token(ctx, "c"+strconv.Itoa(i)); err != nil { // warm: held from here on
			b.Fatal(err)
		}
	}
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = "c" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := r.Token(ctx, ids[i%len(ids)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// BenchmarkLookup is Refresher.Token of a cached customer (the hot path's
// token lookup): from L1 with the memory and the Redis store, and, for
// comparison, with the Redis store and no L1 (a read and an unsealing per
// call).
func BenchmarkLookup(b *testing.B) {
	b.Run("memory-l1", func(b *testing.B) {
		benchToken(b, benchReplica(b, tokencache.NewMemory(tokencache.MemoryConfig{}), 100_000))
	})
	redisStore := func(b *testing.B) tokencache.Store {
		rd := testenv.StartRedis(b)
		s, err := tokencache.NewRedis(tokencache.RedisConfig{Client: rd.Client(b), Keyring: testKeyring, Buckets: 16})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		if err := s.WatchReady(context.Background()); err != nil {
			b.Fatal(err)
		}
		return s
	}
	b.Run("redis-l1", func(b *testing.B) { benchToken(b, benchReplica(b, redisStore(b), 100_000)) })
	b.Run("redis-no-l1", func(b *testing.B) { benchToken(b, benchReplica(b, redisStore(b), 0)) })
}

// BenchmarkL1Fresh is the L1 lookup alone.
func BenchmarkL1Fresh(b *testing.B) {
	c := newL1(100_000, time.Now)
	c.Reset(true)
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = "c" + strconv.Itoa(i)
		c.put(&tokencache.Record{CustomerID: ids[i], Generation: 1, AccessToken: "a", AccessTokenExpiry: time.Now().Add(time.Hour)}, c.snapshot(ids[i]))
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok := c.fresh(ids[i%len(ids)]); !ok {
				b.Error("miss")
				return
			}
			i++
		}
	})
}
