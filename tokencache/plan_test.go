package tokencache_test

import (
	"context"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/tokencache"
)

// testPlanBook is the PlanBook contract, for both stores: counts, not
// clocks (Beat's ttl is long enough never to lapse during the test, but
// for the owner given a 1 ms ttl).
func testPlanBook(t *testing.T, book tokencache.PlanBook) {
	ctx := ctxTimeout(t, 30*time.Second)
	// Slots around a plan-key boundary (360 slots a key in Redis).
	const base = 1_000_000*360 - 3
	book1 := func(lo, hi, capacity int64) (int64, bool) {
		t.Helper()
		s, ok, err := book.Book(ctx, lo, hi, capacity)
		if err != nil {
			t.Fatalf("Book(%d, %d, %d): %v", lo, hi, capacity, err)
		}
		return s, ok
	}
	// Latest slot first, then earlier ones as each fills: 3 a slot.
	var got []int64
	for range 3 * 8 {
		s, ok := book1(base, base+7, 3)
		if !ok {
			t.Fatalf("slot %d booked without room, with room left", s)
		}
		got = append(got, s-base)
	}
	for i, s := range got {
		if want := int64(7 - i/3); s != want {
			t.Fatalf("booking %d went to slot base+%d, want base+%d (all: %v)", i, s, want, got)
		}
	}
	// Full: lo is booked and reported as such.
	for range 2 {
		if s, ok := book1(base, base+7, 3); ok || s != base {
			t.Fatalf("full range: got slot base+%d ok=%v, want base+0 false", s-base, ok)
		}
	}
	// A wider range finds the room before it; a higher capacity the room
	// in the latest slot again.
	if s, ok := book1(base-100, base+7, 3); !ok || s != base-1 {
		t.Fatalf("wider range: got slot base%+d ok=%v, want base-1", s-base, ok)
	}
	if s, ok := book1(base, base+7, 4); !ok || s != base+7 {
		t.Fatalf("higher capacity: got slot base%+d ok=%v, want base+7", s-base, ok)
	}
	// A long range (more than one 64-slot read) walks back to its start.
	const far = 5_000_000 * 360
	for i := range int64(200) {
		if s, ok := book1(far, far+199, 1); !ok || s != far+199-i {
			t.Fatalf("long range booking %d: slot far%+d ok=%v, want far%+d", i, s-far, ok, 199-i)
		}
	}
	if s, ok := book1(far, far+199, 1); ok || s != far {
		t.Fatalf("long range full: slot far%+d ok=%v", s-far, ok)
	}
	for _, bad := range [][3]int64{{5, 4, 1}, {-1, 4, 1}, {0, 4, 0}, {0, 1 << 20, 1}} {
		if _, _, err := book.Book(ctx, bad[0], bad[1], bad[2]); err == nil {
			t.Fatalf("Book%v: no error", bad)
		}
	}

	// Heartbeats: owners counted once each, an empty owner only counts, a
	// lapsed owner no more.
	beat := func(owner string, ttl time.Duration) int {
		t.Helper()
		n, err := book.Beat(ctx, owner, ttl)
		if err != nil {
			t.Fatalf("Beat(%q): %v", owner, err)
		}
		return n
	}
	if n := beat("", time.Hour); n != 0 {
		t.Fatalf("no owners: %d live", n)
	}
	beat("a", time.Hour)
	beat("b", time.Hour)
	beat("a", time.Hour)
	if n := beat("", time.Hour); n != 2 {
		t.Fatalf("owners a, b: %d live", n)
	}
	beat("c", time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for beat("", time.Hour) != 2 {
		if time.Now().After(deadline) {
			t.Fatal("an owner with a 1 ms ttl still counted after 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMemoryPlanBook(t *testing.T) {
	testPlanBook(t, tokencache.NewMemory(tokencache.MemoryConfig{}))
}

func TestRedisPlanBook(t *testing.T) {
	r := testenv.StartRedis(t)
	client := newClient(t, r.URL)
	s := newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: uniquePrefix(), Keyring: mustKeyring(t, newKey(t))})
	testPlanBook(t, s)
	// The plan keys expire, share one Cluster slot, and sit outside every
	// bucket.
	ctx := context.Background()
	keys, err := client.Keys(ctx, s.Prefix()+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) == 0 {
		t.Fatal("no plan keys written")
	}
	for _, k := range keys {
		if tag := hashTag(k); tag != "plan" {
			t.Errorf("key %s: hash tag %q, want plan", k, tag)
		}
		// Raw milliseconds: go-redis's Duration overflows for the far slots.
		if ttl, err := client.Do(ctx, "PTTL", k).Int64(); err != nil || ttl <= 0 {
			t.Errorf("key %s: PTTL %d %v, want an expiry", k, ttl, err)
		}
	}
}

func TestRedisClusterPlanBook(t *testing.T) {
	c := startCluster(t)
	s := newRedisStore(t, tokencache.RedisConfig{Client: newClusterClient(t, c.Addr), Prefix: uniquePrefix(), Keyring: mustKeyring(t, newKey(t))})
	testPlanBook(t, s)
}
