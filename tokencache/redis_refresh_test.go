package tokencache_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/tokencache/storetest"
)

// The refresh suite on a real clock: advance sleeps. Its leases and
// backoffs are 100-300 ms, so each run takes a few seconds; the three
// setups run in parallel with each other.

func TestRedisRefreshConformance(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	client := newClient(t, r.URL)
	keyring := mustKeyring(t, newKey(t))
	storetest.RunRefresh(t, func(t *testing.T) tokencache.Store {
		return newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: uniquePrefix(), Keyring: keyring})
	}, time.Sleep)
}

func TestRedisRefreshConformanceWaitReplicas(t *testing.T) {
	t.Parallel()
	master, _ := startReplicated(t)
	client := newClient(t, master.URL)
	keyring := mustKeyring(t, newKey(t))
	storetest.RunRefresh(t, func(t *testing.T) tokencache.Store {
		return newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: uniquePrefix(), Keyring: keyring, WaitReplicas: 1})
	}, time.Sleep)
}

func TestRedisClusterRefreshConformance(t *testing.T) {
	t.Parallel()
	r := startCluster(t)
	client := newClusterClient(t, r.Addr)
	keyring := mustKeyring(t, newKey(t))
	storetest.RunRefresh(t, func(t *testing.T) tokencache.Store {
		return newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: uniquePrefix(), Keyring: keyring})
	}, time.Sleep)
}

// newRefreshStore is newRedisStore, closed when the test ends.
func newRefreshStore(t *testing.T, cfg tokencache.RedisConfig) *tokencache.Redis {
	t.Helper()
	s := newRedisStore(t, cfg)
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRedisWatchAcrossStores(t *testing.T) {
	t.Run("standalone", func(t *testing.T) {
		r := testenv.StartRedis(t)
		testWatchAcrossStores(t, r, func() redis.UniversalClient { return newClient(t, r.URL) })
	})
	t.Run("cluster", func(t *testing.T) {
		r := startCluster(t)
		testWatchAcrossStores(t, r, func() redis.UniversalClient { return newClusterClient(t, r.Addr) })
	})
}

func testWatchAcrossStores(t *testing.T, r *testenv.Redis, newClient func() redis.UniversalClient) {
	keyring := mustKeyring(t, newKey(t))
	prefix := uniquePrefix()
	// Two replicas: their own clients, one Redis and prefix.
	watching := newRefreshStore(t, tokencache.RedisConfig{Client: newClient(), Prefix: prefix, Keyring: keyring})
	writing := newRefreshStore(t, tokencache.RedisConfig{Client: newClient(), Prefix: prefix, Keyring: keyring})
	ctx := ctxTimeout(t, 10*time.Second)

	gens := map[string]int64{}
	for _, id := range []string{"completed", "put", "deleted"} {
		g, err := tokencache.Put(ctx, writing, storetest.FullRecord(id))
		if err != nil {
			t.Fatal(err)
		}
		gens[id] = g
	}
	completed, stop1 := watching.Watch("completed")
	defer stop1()
	put, stop2 := watching.Watch("put")
	defer stop2()
	deleted, stop3 := watching.Watch("deleted")
	defer stop3()
	if err := watching.WatchReady(ctx); err != nil {
		t.Fatal(err)
	}

	l, err := tokencache.Claim(ctx, writing, "completed", gens["completed"], "other-replica", time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokencache.Complete(ctx, writing, l, tokencache.Outcome{Kind: tokencache.Unknown, Code: "WALLET_TIMEOUT", Backoff: time.Second}); err != nil {
		t.Fatal(err)
	}
	storetest.WantNotice(t, completed, "Complete on another store")
	if _, err := tokencache.Put(ctx, writing, storetest.FullRecord("put")); err != nil {
		t.Fatal(err)
	}
	storetest.WantNotice(t, put, "Put on another store")
	if err := tokencache.Delete(ctx, writing, "deleted"); err != nil {
		t.Fatal(err)
	}
	storetest.WantNotice(t, deleted, "Delete on another store")

	// Close ends the subscription; closing twice is harmless.
	if err := watching.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := watching.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if n, err := r.Client(t).PubSubNumSub(ctx, watching.DoneChannel()).Result(); err != nil || n[watching.DoneChannel()] != 0 {
		// The server may take a moment to drop the closed connection.
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			n, err = r.Client(t).PubSubNumSub(ctx, watching.DoneChannel()).Result()
			if err == nil && n[watching.DoneChannel()] == 0 {
				break
			}
			time.Sleep(20 * time.Millisecond) // polling with a deadline
		}
		if err != nil || n[watching.DoneChannel()] != 0 {
			t.Fatalf("subscribers after Close: %v, %v", n, err)
		}
	}
}

// TestRedisRefreshKeyLayout: the protocol keeps everything of a customer
// (lease, intent, journal, tombstone) in the record's hash, and the
// schedule in its bucket's sorted set: every key carries the customer's
// bucket tag, so each step stays in one Cluster slot.
func TestRedisRefreshKeyLayout(t *testing.T) {
	r := testenv.StartRedis(t)
	const buckets = 16
	s := newRefreshStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Keyring: mustKeyring(t, newKey(t)), Buckets: buckets})
	ctx := ctxTimeout(t, 10*time.Second)

	customers := []string{"alice", "bob", "c{1}", "d}x{", "carol:rec:x"}
	for i, id := range customers {
		rec := storetest.FullRecord(id)
		rec.NextRefresh = time.Now().Add(-time.Minute)
		gen, err := tokencache.Put(ctx, s, rec)
		if err != nil {
			t.Fatal(err)
		}
		l, err := tokencache.Claim(ctx, s, id, gen, "owner", time.Minute, false)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			continue // leave the lease held
		}
		if _, err := tokencache.Complete(ctx, s, l, tokencache.Outcome{Kind: tokencache.Refused, Code: "X", Backoff: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tokencache.Delete(ctx, s, "bob"); err != nil {
		t.Fatal(err)
	}

	tags := map[string]bool{}
	for _, id := range customers {
		tags[fmt.Sprintf("b%d", tokencache.Bucket(id, buckets))] = true
	}
	kinds := map[string]int{}
	for _, kv := range r.Dump(t) {
		if slices.Contains(s.GlobalKeys(), kv.Key) {
			continue // outside the bucket slots by design (keys.go)
		}
		tag := hashTag(kv.Key)
		if !strings.HasPrefix(kv.Key, "tokenproxy:{b") || !tags[tag] {
			t.Errorf("key %q: hash tag %q is no customer's bucket", kv.Key, tag)
			continue
		}
		rest := strings.TrimPrefix(kv.Key, "tokenproxy:{"+tag+"}:")
		kind, id, _ := strings.Cut(rest, ":")
		kinds[kind]++
		if kind == "due" || kind == "idx" || kind == "ev" {
			continue // the bucket's own keys: schedule, state indexes, events
		}
		if want := fmt.Sprintf("b%d", tokencache.Bucket(id, buckets)); want != tag {
			t.Errorf("key %q of customer %q: tag %q, want %q", kv.Key, id, tag, want)
		}
	}
	// Five hashes (bob's holds its tombstone), nothing else but schedules
	// and state indexes.
	if len(kinds) != 3 || kinds["rec"] != 5 || kinds["due"] == 0 || kinds["idx"] == 0 {
		t.Errorf("keys by kind: %v", kinds)
	}
	raw := r.Client(t)
	for i, id := range customers {
		f, err := raw.HGetAll(ctx, s.RecordKey(id)).Result()
		switch {
		case err != nil:
			t.Fatal(err)
		case id == "bob" && (f["tomb"] == "" || f["at"] != "" || f["lo"] != ""):
			t.Errorf("bob's hash after Delete: fields %v, want a tombstone only", keysOf(f))
		case id != "bob" && i%2 == 0 && f["lo"] != "owner":
			t.Errorf("%s: lease owner %q, want owner", id, f["lo"])
		case id != "bob" && i%2 == 1 && f["j"] == "":
			t.Errorf("%s: no journal entry", id)
		}
	}
}

func keysOf(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func wantKey(t *testing.T, c *redis.Client, key string) {
	t.Helper()
	if n, err := c.Exists(ctxTimeout(t, 5*time.Second), key).Result(); err != nil || n != 1 {
		t.Fatalf("key %q: exists=%d, %v", key, n, err)
	}
}

// TestRedisRefreshNoPlaintextToken: the protocol's fields and keys (rth,
// intents, journal) reveal no token.
func TestRedisRefreshNoPlaintextToken(t *testing.T) {
	r := testenv.StartRedis(t)
	s := newRefreshStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Keyring: mustKeyring(t, newKey(t))})
	ctx := ctxTimeout(t, 10*time.Second)

	var written []*tokencache.Record
	for i := range 3 {
		id := fmt.Sprintf("cust-%d", i)
		rec := storetest.FullRecord(id)
		gen, err := tokencache.Put(ctx, s, rec)
		if err != nil {
			t.Fatal(err)
		}
		written = append(written, rec)
		l, err := tokencache.Claim(ctx, s, id, gen, "owner", time.Minute, false)
		if err != nil {
			t.Fatal(err)
		}
		fresh := storetest.FullRecord(id)
		written = append(written, fresh)
		gen, err = tokencache.Complete(ctx, s, l, tokencache.Outcome{Kind: tokencache.Refreshed, Record: fresh})
		if err != nil {
			t.Fatal(err)
		}
		l, err = tokencache.Claim(ctx, s, id, gen, "owner", time.Minute, false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tokencache.Complete(ctx, s, l, tokencache.Outcome{Kind: tokencache.Unknown, Code: "WALLET_TIMEOUT", Backoff: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	for _, kv := range r.Dump(t) {
		for _, v := range append([][]byte{[]byte(kv.Key)}, kv.Values...) {
			for _, rec := range written {
				for _, tok := range []tokencache.Secret{rec.AccessToken, rec.RefreshToken} {
					if containsToken(v, tok.Reveal()) {
						t.Fatalf("key %s (%s) holds a token of %s in a readable form", kv.Key, kv.Type, rec.CustomerID)
					}
				}
			}
		}
	}
}

// TestRedisClaimWaitReplicasMissing: a claim no replica acknowledged is
// not handed out, and is undone on the master.
func TestRedisClaimWaitReplicasMissing(t *testing.T) {
	r := testenv.StartRedis(t)
	s := newRefreshStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Keyring: mustKeyring(t, newKey(t)), WaitReplicas: 1})
	gen, err := tokencache.Put(ctxTimeout(t, 300*time.Millisecond), s, storetest.FullRecord("c1"))
	if !errors.Is(err, tokencache.ErrUnavailable) || gen <= 0 {
		t.Fatalf("Put: %d, %v", gen, err)
	}
	l, err := tokencache.Claim(ctxTimeout(t, 300*time.Millisecond), s, "c1", gen, "owner", time.Minute, false)
	if !errors.Is(err, tokencache.ErrUnavailable) || l != nil {
		t.Fatalf("Claim without replicas: %v, %v; want no lease and ErrUnavailable", l, err)
	}
	raw := r.Client(t)
	ctx := ctxTimeout(t, 5*time.Second)
	if n, err := raw.HExists(ctx, s.RecordKey("c1"), "lo").Result(); err != nil || n {
		t.Fatalf("lease of an unacknowledged claim: %v, %v", n, err)
	}
	if n, err := raw.HExists(ctx, s.RecordKey("c1"), "ih").Result(); err != nil || n {
		t.Fatalf("intent of an unacknowledged claim: %v, %v", n, err)
	}
}

// TestRedisKeyRotationKeepsTokenHash: after the sealing key is rotated, a
// CAS that rewrites the same refresh token keeps its hash, so a lease
// taken before still completes.
func TestRedisKeyRotationKeepsTokenHash(t *testing.T) {
	r := testenv.StartRedis(t)
	client := newClient(t, r.URL)
	keyA, keyB := newKey(t), newKey(t)
	prefix := uniquePrefix()
	storeA := newRefreshStore(t, tokencache.RedisConfig{Client: client, Prefix: prefix, Keyring: mustKeyring(t, keyA)})
	storeBA := newRefreshStore(t, tokencache.RedisConfig{Client: client, Prefix: prefix, Keyring: mustKeyring(t, keyB+","+keyA)})
	ringB := mustKeyring(t, keyB)
	storeB := newRefreshStore(t, tokencache.RedisConfig{Client: client, Prefix: prefix, Keyring: ringB})
	ctx := ctxTimeout(t, 10*time.Second)

	gen, err := tokencache.Put(ctx, storeA, storetest.FullRecord("c1"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := tokencache.Claim(ctx, storeA, "c1", gen, "owner", time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := storeBA.Get(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokencache.CompareAndSwap(ctx, storeBA, rec, gen); err != nil {
		t.Fatal(err)
	}
	got, err := storeBA.Get(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if got.KeyID != ringB.SealingKeyID() || got.RefreshTokenHash != l.RefreshTokenHash {
		t.Fatalf("after CAS under the rotated keyring: key %q, token hash kept %v", got.KeyID, got.RefreshTokenHash == l.RefreshTokenHash)
	}
	if _, err := tokencache.Complete(ctx, storeBA, l, tokencache.Outcome{Kind: tokencache.Unknown, Code: "WALLET_TIMEOUT"}); err != nil {
		t.Fatalf("Complete of a lease from before the rotation: %v", err)
	}
	// A keyring without the old key keeps it too: the token is the same
	// (the decision compares tokens, not their hashes).
	rec, err = storeB.Get(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokencache.CompareAndSwap(ctx, storeB, rec, rec.Generation); err != nil {
		t.Fatal(err)
	}
	if got, err := storeB.Get(ctx, "c1"); err != nil || got.RefreshTokenHash != l.RefreshTokenHash {
		t.Fatalf("hash under a keyring without the old key: kept %v, %v", got != nil && got.RefreshTokenHash == l.RefreshTokenHash, err)
	}
	// A new token gets a new name.
	rec.RefreshToken = "another"
	if _, err := tokencache.CompareAndSwap(ctx, storeB, rec, rec.Generation+1); err != nil {
		t.Fatal(err)
	}
	if got, err := storeB.Get(ctx, "c1"); err != nil || got.RefreshTokenHash == l.RefreshTokenHash || got.RefreshTokenHash == "" {
		t.Fatalf("hash of a new token: %v", err)
	}
}

// TestRedisRecordWithoutProtocolFields: a record written before the
// refresh protocol (no rth, fa, nb) reads, claims and completes.
func TestRedisRecordWithoutProtocolFields(t *testing.T) {
	r := testenv.StartRedis(t)
	s := newRefreshStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Keyring: mustKeyring(t, newKey(t))})
	ctx := ctxTimeout(t, 10*time.Second)
	rec := storetest.FullRecord("old")
	gen, err := tokencache.Put(ctx, s, rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Client(t).HDel(ctx, s.RecordKey("old"), "rth", "fa", "nb").Err(); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "old")
	if err != nil {
		t.Fatalf("Get of an old record: %v", err)
	}
	storetest.CheckRecord(t, got, rec)
	if got.RefreshTokenHash != "" || got.Failures != 0 || !got.NotBefore.IsZero() {
		t.Fatalf("protocol fields of an old record: %q %d %v", got.RefreshTokenHash, got.Failures, got.NotBefore)
	}
	l, err := tokencache.Claim(ctx, s, "old", gen, "owner", time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	if l.RefreshTokenHash != "" || l.Represent || l.Attempt != 1 {
		t.Fatalf("lease of an old record: %+v", l)
	}
	fresh := storetest.FullRecord("old")
	if _, err := tokencache.Complete(ctx, s, l, tokencache.Outcome{Kind: tokencache.Refreshed, Record: fresh}); err != nil {
		t.Fatalf("Complete on an old record: %v", err)
	}
	got, err = s.Get(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	if got.RefreshTokenHash == "" || got.RefreshToken.Reveal() != fresh.RefreshToken.Reveal() {
		t.Fatal("old record not refreshed")
	}
}

func TestRedisDueIndex(t *testing.T) {
	r := testenv.StartRedis(t)
	client := newClient(t, r.URL)
	for _, buckets := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d buckets", buckets), func(t *testing.T) {
			s := newRefreshStore(t, tokencache.RedisConfig{Client: client, Prefix: uniquePrefix(), Keyring: mustKeyring(t, newKey(t)), Buckets: buckets})
			storetest.CheckDueIndex(t, s, 300)
		})
	}
}

// A lease key lost before its time (a failover) must not let a second
// presentation of the same refresh token start while the first holder's
// call may still run: the record's copy of the lease expiry holds the next
// claim off until the holder records its outcome. (Found by the refresher's
// state-machine test.)
func TestRedisLeaseLostEarlyHoldsOffNextClaim(t *testing.T) {
	r := testenv.StartRedis(t)
	client := newClient(t, r.URL)
	s := newRefreshStore(t, tokencache.RedisConfig{Client: client, Prefix: uniquePrefix(), Keyring: mustKeyring(t, newKey(t))})
	ctx := ctxTimeout(t, 10*time.Second)
	gen, err := tokencache.Put(ctx, s, storetest.FullRecord("c1"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := tokencache.Claim(ctx, s, "c1", gen, "owner-1", time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.HDel(ctx, s.RecordKey("c1"), "lo", "lf", "lx").Err(); err != nil {
		t.Fatal(err)
	}
	var held *tokencache.LeaseHeldError
	if _, err := tokencache.Claim(ctx, s, "c1", gen, "owner-2", time.Minute, false); !errors.As(err, &held) || held.Owner != "owner-1" {
		t.Fatalf("claim after the lease key vanished: %v, want held by owner-1", err)
	}
	if err := tokencache.Renew(ctx, s, l, time.Minute); !errors.Is(err, tokencache.ErrLeaseLost) {
		t.Fatalf("Renew of the lost lease: %v, want ErrLeaseLost", err)
	}
	// The holder's call ends (its watchdog cancels it) and its unknown
	// outcome is recorded: the next claim may present the token once more.
	gen, err = tokencache.Complete(ctx, s, l, tokencache.Outcome{Kind: tokencache.Unknown, Code: "WALLET_TIMEOUT"})
	if err != nil {
		t.Fatal(err)
	}
	next, err := tokencache.Claim(ctx, s, "c1", gen, "owner-2", time.Minute, false)
	if err != nil || !next.Represent {
		t.Fatalf("claim after the holder's outcome: %+v, %v; want a re-presentation", next, err)
	}
}

func TestRedisEvents(t *testing.T) {
	t.Parallel()
	events := tokencache.EventsConfig{Enabled: true, ExpiryHorizon: storetest.EventsHorizon}
	t.Run("standalone", func(t *testing.T) {
		r := testenv.StartRedis(t)
		client := newClient(t, r.URL)
		keyring := mustKeyring(t, newKey(t))
		storetest.RunEvents(t, func(t *testing.T) storetest.EventStore {
			return newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: uniquePrefix(), Keyring: keyring, Buckets: 4, Events: events})
		})
	})
	t.Run("cluster", func(t *testing.T) {
		r := startCluster(t)
		client := newClusterClient(t, r.Addr)
		keyring := mustKeyring(t, newKey(t))
		storetest.RunEvents(t, func(t *testing.T) storetest.EventStore {
			return newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: uniquePrefix(), Keyring: keyring, Buckets: 4, Events: events})
		})
	})
	// Three masters: a walk of the index and the probes go to several
	// nodes in one pipeline.
	t.Run("cluster of three", func(t *testing.T) {
		cluster := testenv.StartClusterWithReplicas(t, 3, 0)
		client, err := tokencache.NewRedisClient(tokencache.RedisOptions{Addrs: cluster.Seeds()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		keyring := mustKeyring(t, newKey(t))
		storetest.RunEvents(t, func(t *testing.T) storetest.EventStore {
			return newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: uniquePrefix(), Keyring: keyring, Buckets: 8, Events: events})
		})
	})
}
