package tokencache_test

import (
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/tokencache/storetest"
)

// hintOf is the bucket's schedule hint (ok false: none).
func hintOf(t *testing.T, c redis.UniversalClient, s *tokencache.Redis, b int) (float64, bool) {
	t.Helper()
	v, err := c.ZScore(context.Background(), s.SchedKey(), strconv.Itoa(b)).Result()
	if err == redis.Nil {
		return 0, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return v, true
}

// checkHintInvariant fails unless every bucket with a schedule entry has a
// hint at or before its earliest entry.
func checkHintInvariant(t *testing.T, c redis.UniversalClient, s *tokencache.Redis) {
	t.Helper()
	for b := range s.Buckets() {
		z, err := c.ZRangeWithScores(context.Background(), s.DueKey(b), 0, 0).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(z) == 0 {
			continue
		}
		h, ok := hintOf(t, c, s, b)
		if !ok || h > z[0].Score {
			t.Fatalf("bucket %d: earliest entry %v at %.0f, hint %.0f (present %v): the entry would be missed", b, z[0].Member, z[0].Score, h, ok)
		}
	}
}

func putDue(t *testing.T, s tokencache.Store, id string, next time.Time) {
	t.Helper()
	rec := storetest.FullRecord(id)
	rec.NextRefresh = next
	if _, err := tokencache.Put(ctxTimeout(t, 10*time.Second), s, rec); err != nil {
		t.Fatal(err)
	}
}

func contains(bs []int, b int) bool {
	for _, x := range bs {
		if x == b {
			return true
		}
	}
	return false
}

// TestRedisScheduleHint: the hint names the buckets with due entries, a
// sweep keeps it there while they are due and moves it past now once none
// is, an emptied bucket loses it, and a lost hint is found by CheckHints;
// the census counts from its sets. Standalone and in a Cluster (the hint,
// the census sets and the buckets in different slots).
func TestRedisScheduleHint(t *testing.T) {
	t.Run("standalone", func(t *testing.T) {
		r := testenv.StartRedis(t)
		testScheduleHint(t, newClient(t, r.URL))
	})
	t.Run("cluster", func(t *testing.T) {
		r := startCluster(t)
		testScheduleHint(t, newClusterClient(t, r.Addr))
	})
}

func testScheduleHint(t *testing.T, client redis.UniversalClient) {
	s := newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: uniquePrefix(), Keyring: mustKeyring(t, newKey(t)), Buckets: 64})
	ctx := ctxTimeout(t, 30*time.Second)
	if ok, err := s.HintsExist(ctx); err != nil || ok {
		t.Fatalf("hints in a new store: %v %v", ok, err)
	}
	// Two customers in different buckets: one due, one not.
	due, later := "due-1", "later-1"
	for i := 2; s.BucketOf(later) == s.BucketOf(due); i++ {
		later = "later-" + strconv.Itoa(i)
	}
	now := time.Now()
	putDue(t, s, due, now.Add(-time.Minute))
	putDue(t, s, later, now.Add(time.Hour))
	checkHintInvariant(t, client, s)
	hinted, err := s.HintedBuckets(ctx, time.Now(), 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(hinted) != 1 || hinted[0] != s.BucketOf(due) {
		t.Fatalf("hinted buckets %v, want only %d", hinted, s.BucketOf(due))
	}
	got, err := s.SweepDue(ctx, hinted, 10)
	if err != nil || len(got) != 1 || got[0].CustomerID != due {
		t.Fatalf("sweep: %v %v", got, err)
	}
	// Still due: still hinted.
	if hinted, _ = s.HintedBuckets(ctx, time.Now(), 100); !contains(hinted, s.BucketOf(due)) {
		t.Fatalf("a bucket still due lost its hint: %v", hinted)
	}
	// Rescheduled later: the next sweep raises the hint past now.
	rec, err := s.Get(ctx, due)
	if err != nil {
		t.Fatal(err)
	}
	rec.NextRefresh = time.Now().Add(2 * time.Hour)
	if _, err := tokencache.CompareAndSwap(ctx, s, rec, rec.Generation); err != nil {
		t.Fatal(err)
	}
	if got, err := s.SweepDue(ctx, []int{s.BucketOf(due)}, 10); err != nil || len(got) != 0 {
		t.Fatalf("sweep after rescheduling: %v %v", got, err)
	}
	if hinted, _ = s.HintedBuckets(ctx, time.Now(), 100); len(hinted) != 0 {
		t.Fatalf("hinted %v with nothing due", hinted)
	}
	checkHintInvariant(t, client, s)
	// An emptied bucket loses its hint at its next sweep.
	if err := tokencache.Delete(ctx, s, later); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SweepDue(ctx, []int{s.BucketOf(later)}, 10); err != nil {
		t.Fatal(err)
	}
	if _, ok := hintOf(t, client, s, s.BucketOf(later)); ok {
		t.Fatal("an empty bucket kept its hint")
	}
	// A hint lost (a process died between a write and its hint) is found
	// by the full check.
	putDue(t, s, later, time.Now().Add(-time.Second))
	if err := client.ZRem(ctx, s.SchedKey(), strconv.Itoa(s.BucketOf(later))).Err(); err != nil {
		t.Fatal(err)
	}
	if hinted, _ = s.HintedBuckets(ctx, time.Now(), 100); contains(hinted, s.BucketOf(later)) {
		t.Fatal("the lost hint is there")
	}
	all := make([]int, s.Buckets())
	for i := range all {
		all[i] = i
	}
	if err := s.CheckHints(ctx, all); err != nil {
		t.Fatal(err)
	}
	if hinted, _ = s.HintedBuckets(ctx, time.Now(), 100); !contains(hinted, s.BucketOf(later)) {
		t.Fatalf("the full check did not restore the lost hint: %v", hinted)
	}
	checkHintInvariant(t, client, s)
	if c, err := s.Census(ctx); err != nil || c != (tokencache.Census{Valid: 2}) {
		t.Fatalf("census %+v %v, want 2 valid", c, err)
	}
}

// TestRedisScheduleHintRace: writers rescheduling customers (some due, some
// not, some deleted) and sweepers on other stores (replicas) running side by
// side never leave a bucket's earliest entry behind its hint.
func TestRedisScheduleHintRace(t *testing.T) {
	r := testenv.StartRedis(t)
	prefix := uniquePrefix()
	kr := mustKeyring(t, newKey(t))
	stores := make([]*tokencache.Redis, 3)
	for i := range stores {
		stores[i] = newRedisStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Prefix: prefix, Keyring: kr, Buckets: 4})
	}
	s := stores[0]
	ctx := ctxTimeout(t, 2*time.Minute)
	check := newClient(t, r.URL)
	const customers, rounds, writesEach = 40, 40, 12
	rng := rand.New(rand.NewPCG(1, 7))
	// Each round, writers and sweepers run side by side and stop together;
	// the invariant must hold whenever nothing runs, with no healing sweep
	// after the writes.
	for round := range rounds {
		var writers, sweepers sync.WaitGroup
		stop := make(chan struct{})
		for w := range 4 {
			seed := rng.Uint64()
			writers.Go(func() {
				rng := rand.New(rand.NewPCG(seed, uint64(round)))
				for range writesEach {
					id := "c" + strconv.Itoa(rng.IntN(customers))
					if rng.IntN(5) == 0 {
						_ = tokencache.Delete(ctx, stores[w%3], id)
						continue
					}
					rec := storetest.FullRecord(id)
					rec.NextRefresh = time.Now().Add(time.Duration(rng.IntN(120)-20) * time.Second)
					if _, err := tokencache.Put(ctx, stores[w%3], rec); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		for i := 1; i < len(stores); i++ {
			sweepers.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := stores[i].SweepDue(ctx, []int{0, 1, 2, 3}, 100); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		writers.Wait()
		close(stop)
		sweepers.Wait()
		checkHintInvariant(t, check, s)
	}
}

// TestRedisCensusBackfill: records written without the census sets (an
// earlier release) are counted once Backfill ran, once per store.
func TestRedisCensusBackfill(t *testing.T) {
	r := testenv.StartRedis(t)
	client := newClient(t, r.URL)
	prefix := uniquePrefix()
	s := newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: prefix, Keyring: mustKeyring(t, newKey(t))})
	ctx := ctxTimeout(t, 30*time.Second)
	putDue(t, s, "valid", time.Now().Add(time.Hour))
	expired := storetest.FullRecord("expired")
	expired.AccessTokenExpiry = time.Now().Add(-time.Minute)
	if _, err := tokencache.Put(ctx, s, expired); err != nil {
		t.Fatal(err)
	}
	reauth := storetest.FullRecord("reauth")
	reauth.State = tokencache.StateReauthorizationRequired
	if _, err := tokencache.Put(ctx, s, reauth); err != nil {
		t.Fatal(err)
	}
	want := tokencache.Census{Valid: 1, Expired: 1, ReauthorizationRequired: 1}
	if c, err := s.Census(ctx); err != nil || c != want {
		t.Fatalf("census %+v %v, want %+v", c, err, want)
	}
	keys, err := client.Keys(ctx, prefix+"{census}:*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("census keys %v %v", keys, err)
	}
	if err := client.Del(ctx, keys...).Err(); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Census(ctx); c != (tokencache.Census{}) {
		t.Fatalf("census without its sets %+v", c)
	}
	if ran, err := s.BackfillOnce(ctx, "test"); err != nil || !ran {
		t.Fatalf("backfill: %v %v", ran, err)
	}
	if ran, err := s.BackfillOnce(ctx, "test"); err != nil || ran {
		t.Fatalf("second backfill ran %v %v", ran, err)
	}
	if c, err := s.Census(ctx); err != nil || c != want {
		t.Fatalf("census after backfill %+v %v, want %+v", c, err, want)
	}
}
