package tokencache_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/tokencache"
)

// BenchmarkRedisRefreshCost measures what one refresh costs Redis, apart
// from the scheduler's scans and the census (docs/scaling.md): b.N
// customers are stored (64-character tokens, as walletsim's, the replay of
// an exchange), then each is refreshed through the protocol's steps the
// refresher takes for a scheduled refresh (Get, Claim, a plan Book,
// Complete with a new pair). It reports, from INFO before and after on a
// server of its own: Redis CPU per refresh (used_cpu_sys+user), Redis
// commands per refresh (commandstats, script commands included) and round
// trips, bytes per customer (used_memory) and MEMORY USAGE of a record.
//
//	go test -run '^$' -bench RedisRefreshCost -benchtime 20000x ./tokencache/
//
// REDIS_ARGS (for example "--hash-max-listpack-value 512") is passed to
// redis-server.
func BenchmarkRedisRefreshCost(b *testing.B) {
	r := testenv.StartRedis(b, strings.Fields(getenv("REDIS_ARGS"))...)
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	b.Cleanup(func() { c.Close() })
	kb := make([]byte, tokencache.KeySize)
	_, _ = rand.Read(kb)
	kr, err := tokencache.ParseKeyring(base64.StdEncoding.EncodeToString(kb))
	if err != nil {
		b.Fatal(err)
	}
	s, err := tokencache.NewRedis(tokencache.RedisConfig{Client: c, Keyring: kr})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	tok := func() tokencache.Secret {
		x := make([]byte, 48)
		_, _ = rand.Read(x)
		return tokencache.Secret(base64.RawURLEncoding.EncodeToString(x)) // 64 characters
	}
	id := func(i int) string { return fmt.Sprintf("2188%016d", i) }
	info := func() (cpu float64, calls int64, mem int64) {
		text, err := c.Info(ctx, "cpu", "commandstats", "memory").Result()
		if err != nil {
			b.Fatal(err)
		}
		for _, line := range strings.Split(text, "\n") {
			line = strings.TrimSpace(line)
			k, v, _ := strings.Cut(line, ":")
			switch {
			case k == "used_cpu_sys" || k == "used_cpu_user":
				f, _ := strconv.ParseFloat(v, 64)
				cpu += f
			case k == "used_memory":
				mem, _ = strconv.ParseInt(v, 10, 64)
			case strings.HasPrefix(k, "cmdstat_") && k != "cmdstat_info":
				for _, kv := range strings.Split(v, ",") {
					if n, ok := strings.CutPrefix(kv, "calls="); ok {
						x, _ := strconv.ParseInt(n, 10, 64)
						calls += x
					}
				}
			}
		}
		return cpu, calls, mem
	}

	_, _, mem0 := info()
	for i := range b.N {
		rec := &tokencache.Record{
			CustomerID: id(i), AccessToken: tok(), AccessTokenExpiry: now.Add(time.Hour),
			RefreshToken: tok(), RefreshTokenExpiry: now.Add(30 * 24 * time.Hour),
			ExchangePath: "/v1/authorizations/applyToken",
			Replay: map[string]json.RawMessage{
				"authClientId": json.RawMessage(`"2022090111112222"`), "customerBelongsTo": json.RawMessage(`"DANA"`),
			},
			LastUsed: now, NextRefresh: now.Add(55 * time.Minute),
		}
		if _, err := tokencache.Put(ctx, s, rec); err != nil {
			b.Fatal(err)
		}
	}
	_, _, mem1 := info()
	sample, _ := c.MemoryUsage(ctx, s.RecordKey(id(0)), 0).Result()
	enc, _ := c.ObjectEncoding(ctx, s.RecordKey(id(0))).Result()

	slot := now.UnixMilli() / tokencache.PlanSlot.Milliseconds()
	cpu0, calls0, _ := info()
	b.ResetTimer()
	for i := range b.N {
		rec, err := s.Get(ctx, id(i))
		if err != nil {
			b.Fatal(err)
		}
		l, err := tokencache.Claim(ctx, s, id(i), rec.Generation, "bench", 5*time.Second, false)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := s.Book(ctx, slot, slot+360, 1<<20); err != nil {
			b.Fatal(err)
		}
		next := *rec
		next.AccessToken, next.RefreshToken = tok(), tok()
		next.AccessTokenExpiry, next.LastRefresh, next.NextRefresh = now.Add(2*time.Hour), now, now.Add(115*time.Minute)
		if _, err := tokencache.Complete(ctx, s, l, tokencache.Outcome{Kind: tokencache.Refreshed, Record: &next}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cpu1, calls1, _ := info()
	n := float64(b.N)
	b.ReportMetric(1000*(cpu1-cpu0)/n, "redis-cpu-ms/refresh")
	b.ReportMetric(float64(calls1-calls0)/n, "redis-cmds/refresh")
	b.ReportMetric(float64(mem1-mem0)/n, "redis-B/customer")
	b.ReportMetric(float64(sample), "record-B")
	b.Logf("%d customers; record hash %s, MEMORY USAGE %d B", b.N, enc, sample)
}

func getenv(k string) string {
	return os.Getenv(k)
}
