package tokencache_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"

	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/tokencache/storetest"
)

var prefixSeq atomic.Int64

// uniquePrefix gives each store of a test its own key space on a shared
// server.
func uniquePrefix() string {
	return fmt.Sprintf("test%d:", prefixSeq.Add(1))
}

// newClient returns a client made the way the sidecar makes it, closed when
// the test ends.
func newClient(t *testing.T, url string) redis.UniversalClient {
	t.Helper()
	c, err := tokencache.NewRedisClient(tokencache.RedisOptions{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newRedisStore(t *testing.T, cfg tokencache.RedisConfig) *tokencache.Redis {
	t.Helper()
	s, err := tokencache.NewRedis(cfg)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	return s
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestRedisConformance(t *testing.T) {
	r := testenv.StartRedis(t)
	client := newClient(t, r.URL)
	keyring := mustKeyring(t, newKey(t), newKey(t))
	storetest.Run(t, func(t *testing.T) tokencache.Store {
		return newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: uniquePrefix(), Keyring: keyring})
	})
}

// startReplicated starts a master and one replica of it, and waits until
// the replica is in sync.
func startReplicated(t *testing.T) (master, replica *testenv.Redis) {
	t.Helper()
	return testenv.StartReplicated(t)
}

func TestRedisConformanceWaitReplicas(t *testing.T) {
	master, _ := startReplicated(t)
	client := newClient(t, master.URL)
	keyring := mustKeyring(t, newKey(t))
	storetest.Run(t, func(t *testing.T) tokencache.Store {
		return newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: uniquePrefix(), Keyring: keyring, WaitReplicas: 1})
	})
}

func TestRedisWaitReplicasMissing(t *testing.T) {
	r := testenv.StartRedis(t)
	s := newRedisStore(t, tokencache.RedisConfig{
		Client: newClient(t, r.URL), Keyring: mustKeyring(t, newKey(t)), WaitReplicas: 1,
	})
	rec := storetest.FullRecord("c1")
	start := time.Now()
	gen, err := tokencache.Put(ctxTimeout(t, 300*time.Millisecond), s, rec)
	if !errors.Is(err, tokencache.ErrUnavailable) {
		t.Fatalf("Put without replicas: %v, want ErrUnavailable", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("Put waited %v, beyond its context's deadline", elapsed)
	}
	// The write is on the master; the caller learns its generation.
	if gen <= 0 {
		t.Fatalf("generation %d, want the written one (%v)", gen, err)
	}
	got, err := s.Get(ctxTimeout(t, time.Second), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Generation != gen {
		t.Fatalf("Generation = %d, want %d", got.Generation, gen)
	}
	if err := tokencache.Delete(ctxTimeout(t, 300*time.Millisecond), s, "c1"); !errors.Is(err, tokencache.ErrUnavailable) {
		t.Fatalf("Delete without replicas: %v, want ErrUnavailable", err)
	}
}

func TestRedisKeyRotation(t *testing.T) {
	r := testenv.StartRedis(t)
	client := newClient(t, r.URL)
	keyA, keyB := newKey(t), newKey(t)
	ringA, ringBA, ringB := mustKeyring(t, keyA), mustKeyring(t, keyB+"\n"+keyA+"\n"), mustKeyring(t, keyB)
	idA, idB := ringA.SealingKeyID(), ringB.SealingKeyID()
	prefix := uniquePrefix()
	storeA := newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: prefix, Keyring: ringA})
	storeBA := newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: prefix, Keyring: ringBA})
	storeB := newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: prefix, Keyring: ringB})
	ctx := ctxTimeout(t, 10*time.Second)

	rewritten, untouched := storetest.FullRecord("rewritten"), storetest.FullRecord("untouched")
	for _, rec := range []*tokencache.Record{rewritten, untouched} {
		if _, err := tokencache.Put(ctx, storeA, rec); err != nil {
			t.Fatal(err)
		}
	}
	got, err := storeA.Get(ctx, "rewritten")
	if err != nil {
		t.Fatal(err)
	}
	if got.KeyID != idA {
		t.Fatalf("KeyID = %q, want %q", got.KeyID, idA)
	}

	// B is rotated in: records sealed with A still open...
	got, err = storeBA.Get(ctx, "rewritten")
	if err != nil {
		t.Fatalf("Get with keyring B,A: %v", err)
	}
	storetest.CheckRecord(t, got, rewritten)
	if got.KeyID != idA {
		t.Fatalf("KeyID = %q, want %q", got.KeyID, idA)
	}
	// ...and the next write seals with B.
	if _, err := tokencache.CompareAndSwap(ctx, storeBA, got, got.Generation); err != nil {
		t.Fatal(err)
	}
	got, err = storeBA.Get(ctx, "rewritten")
	if err != nil {
		t.Fatal(err)
	}
	storetest.CheckRecord(t, got, rewritten)
	if got.KeyID != idB {
		t.Fatalf("KeyID after rewrite = %q, want %q", got.KeyID, idB)
	}

	// A is retired: the rewritten record opens, the untouched one does not.
	if _, err := storeB.Get(ctx, "rewritten"); err != nil {
		t.Fatalf("Get rewritten record with keyring B: %v", err)
	}
	_, err = storeB.Get(ctx, "untouched")
	var se *tokencache.SealError
	if !errors.As(err, &se) {
		t.Fatalf("Get untouched record with keyring B: %v, want *SealError", err)
	}
	if se.KeyID != idA || !strings.Contains(err.Error(), idA) {
		t.Fatalf("SealError names %q (%v), want %q", se.KeyID, err, idA)
	}
	checkNoTokens(t, err.Error(), untouched)
}

// copyField copies one hash field from one key to another, as an attacker
// with write access to Redis (or a bug) might.
func copyField(t *testing.T, c *redis.Client, fromKey, fromField, toKey, toField string) {
	t.Helper()
	ctx := ctxTimeout(t, 5*time.Second)
	v, err := c.HGet(ctx, fromKey, fromField).Result()
	if err != nil {
		t.Fatalf("HGET %s %s: %v", fromKey, fromField, err)
	}
	if err := c.HSet(ctx, toKey, toField, v).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestRedisMovedCiphertextDoesNotOpen(t *testing.T) {
	r := testenv.StartRedis(t)
	raw := r.Client(t)
	keyring := mustKeyring(t, newKey(t))
	prefix := uniquePrefix()
	s := newRedisStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Prefix: prefix, Keyring: keyring})
	other := newRedisStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Prefix: uniquePrefix(), Keyring: keyring})

	tests := []struct {
		name string
		move func(t *testing.T)
		get  func() error
	}{
		{
			name: "access token to another customer",
			move: func(t *testing.T) { copyField(t, raw, s.RecordKey("alice"), "at", s.RecordKey("bob"), "at") },
			get:  func() error { _, err := s.Get(t.Context(), "bob"); return err },
		},
		{
			name: "refresh token to another customer",
			move: func(t *testing.T) { copyField(t, raw, s.RecordKey("alice"), "rt", s.RecordKey("bob"), "rt") },
			get:  func() error { _, err := s.Get(t.Context(), "bob"); return err },
		},
		{
			name: "refresh token into the access token field",
			move: func(t *testing.T) { copyField(t, raw, s.RecordKey("alice"), "rt", s.RecordKey("alice"), "at") },
			get:  func() error { _, err := s.Get(t.Context(), "alice"); return err },
		},
		{
			name: "whole record to another customer",
			move: func(t *testing.T) {
				ctx := ctxTimeout(t, 5*time.Second)
				vals, err := raw.HGetAll(ctx, s.RecordKey("alice")).Result()
				if err != nil {
					t.Fatal(err)
				}
				if err := raw.HSet(ctx, s.RecordKey("bob"), vals).Err(); err != nil {
					t.Fatal(err)
				}
			},
			get: func() error { _, err := s.Get(t.Context(), "bob"); return err },
		},
		{
			name: "whole record to another key prefix",
			move: func(t *testing.T) {
				ctx := ctxTimeout(t, 5*time.Second)
				vals, err := raw.HGetAll(ctx, s.RecordKey("alice")).Result()
				if err != nil {
					t.Fatal(err)
				}
				if err := raw.HSet(ctx, other.RecordKey("alice"), vals).Err(); err != nil {
					t.Fatal(err)
				}
			},
			get: func() error { _, err := other.Get(t.Context(), "alice"); return err },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			alice, bob := storetest.FullRecord("alice"), storetest.FullRecord("bob")
			for _, rec := range []*tokencache.Record{alice, bob} {
				if _, err := tokencache.Put(ctxTimeout(t, 5*time.Second), s, rec); err != nil {
					t.Fatal(err)
				}
			}
			tc.move(t)
			err := tc.get()
			var se *tokencache.SealError
			if !errors.As(err, &se) {
				t.Fatalf("Get after moving a ciphertext: %v, want *SealError", err)
			}
			if se.KeyID != keyring.SealingKeyID() {
				t.Fatalf("SealError.KeyID = %q, want %q", se.KeyID, keyring.SealingKeyID())
			}
			checkNoTokens(t, err.Error(), alice, bob)
		})
	}
}

// encodings returns the forms in which a token must not appear in Redis.
func encodings(tok string) []string {
	b := []byte(tok)
	return []string{
		tok,
		base64.StdEncoding.EncodeToString(b),
		base64.RawStdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b),
		base64.RawURLEncoding.EncodeToString(b),
		fmt.Sprintf("%x", b),
	}
}

// containsToken reports whether data holds tok in the clear, in one of its
// encodings, or inside something that decodes from base64 (at any
// alignment, e.g. base64 of JSON around the token).
func containsToken(data []byte, tok string) bool {
	for _, e := range encodings(tok) {
		if bytes.Contains(data, []byte(e)) {
			return true
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if dec, err := enc.DecodeString(string(data)); err == nil && bytes.Contains(dec, []byte(tok)) {
			return true
		}
	}
	// base64 of a longer text: the token shows up as one of three
	// alignments of its own encoding (its middle part).
	for pad := range 3 {
		e := base64.StdEncoding.EncodeToString(append(bytes.Repeat([]byte{0}, pad), tok...))
		inner := e[4 : len(e)-4]
		if len(inner) >= 8 && (bytes.Contains(data, []byte(inner)) ||
			bytes.Contains(data, []byte(strings.NewReplacer("+", "-", "/", "_").Replace(inner)))) {
			return true
		}
	}
	return false
}

func checkNoTokens(t *testing.T, text string, recs ...*tokencache.Record) {
	t.Helper()
	for _, rec := range recs {
		for _, tok := range []tokencache.Secret{rec.AccessToken, rec.RefreshToken} {
			if tok != "" && containsToken([]byte(text), tok.Reveal()) {
				t.Fatalf("a token of %s appears in %q", rec.CustomerID, text)
			}
		}
	}
}

func TestRedisStoresNoPlaintextToken(t *testing.T) {
	r := testenv.StartRedis(t)
	s := newRedisStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Keyring: mustKeyring(t, newKey(t))})
	ctx := ctxTimeout(t, 10*time.Second)

	// Every kind of write, with tokens that are plain ASCII, JSON-ish and
	// binary-ish.
	var written []*tokencache.Record
	for i, tok := range []string{"", `{"jwt":"eyJhbGciOi"}`, "tok+/=with-odd\u00e9chars"} {
		rec := storetest.FullRecord(fmt.Sprintf("cust-%d", i))
		rec.AccessToken += tokencache.Secret(tok)
		rec.RefreshToken += tokencache.Secret(tok)
		gen, err := tokencache.Put(ctx, s, rec)
		if err != nil {
			t.Fatal(err)
		}
		written = append(written, rec)
		next := storetest.FullRecord(rec.CustomerID)
		if _, err := tokencache.CompareAndSwap(ctx, s, next, gen); err != nil {
			t.Fatal(err)
		}
		written = append(written, next)
	}
	if err := tokencache.Delete(ctx, s, "cust-0"); err != nil {
		t.Fatal(err)
	}

	dump := r.Dump(t)
	if len(dump) == 0 {
		t.Fatal("dump is empty")
	}
	for _, kv := range dump {
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

// hashTag is what Redis Cluster hashes: the part between the first '{' and
// the next '}', when not empty.
func hashTag(key string) string {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return ""
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j <= 0 {
		return ""
	}
	return key[i+1 : i+1+j]
}

func TestRedisKeyLayout(t *testing.T) {
	r := testenv.StartRedis(t)
	raw := r.Client(t)
	const buckets = 16
	s := newRedisStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Keyring: mustKeyring(t, newKey(t)), Buckets: buckets})
	ctx := ctxTimeout(t, 10*time.Second)

	customers := []string{"alice", "bob", "c{1}", "d}x{", "carol"}
	for _, id := range customers {
		rec := storetest.FullRecord(id)
		if _, err := tokencache.Put(ctx, s, rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := tokencache.Delete(ctx, s, "bob"); err != nil { // leaves a tombstone
		t.Fatal(err)
	}

	for _, id := range customers {
		b := tokencache.Bucket(id, buckets)
		if b != s.BucketOf(id) || b < 0 || b >= buckets {
			t.Fatalf("bucket of %q: %d / %d", id, b, s.BucketOf(id))
		}
		wantTag := fmt.Sprintf("b%d", b)
		wantPrefix := "tokenproxy:{" + wantTag + "}:"
		for _, key := range []string{s.RecordKey(id), s.DueKey(b), s.CustomerKey(id, "other")} {
			if hashTag(key) != wantTag || !strings.HasPrefix(key, wantPrefix) {
				t.Errorf("key %q: hash tag %q, want %q", key, hashTag(key), wantTag)
			}
		}
	}

	// Every key in Redis is one of those, with the customer's tag.
	for _, kv := range r.Dump(t) {
		if slices.Contains(s.GlobalKeys(), kv.Key) {
			continue // outside the bucket slots by design (keys.go)
		}
		if !strings.HasPrefix(kv.Key, "tokenproxy:{b") {
			t.Errorf("unexpected key %q", kv.Key)
		}
		found := false
		for _, id := range customers {
			b := tokencache.Bucket(id, buckets)
			switch kv.Key {
			case s.RecordKey(id), s.DueKey(b), s.IndexKey(b, tokencache.IndexActive), s.IndexKey(b, tokencache.IndexReauthorizationRequired):
				found = true
			}
		}
		if !found {
			t.Errorf("key %q is not the record (or tombstone), schedule or state index of a customer", kv.Key)
		}
	}
	// The deleted customer's hash holds only its tombstone.
	if f, err := raw.HGetAll(ctx, s.RecordKey("bob")).Result(); err != nil || f["tomb"] == "" || f["at"] != "" || f["v"] != "" {
		t.Errorf("hash of deleted customer: %d fields, tombstone %q, %v", len(f), f["tomb"], err)
	}
}

func TestRedisSchedule(t *testing.T) {
	r := testenv.StartRedis(t)
	raw := r.Client(t)
	s := newRedisStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Keyring: mustKeyring(t, newKey(t))})
	ctx := ctxTimeout(t, 10*time.Second)
	dueKey := s.DueKey(s.BucketOf("c1"))
	score := func() (float64, bool) {
		t.Helper()
		v, err := raw.ZScore(ctx, dueKey, "c1").Result()
		if errors.Is(err, redis.Nil) {
			return 0, false
		}
		if err != nil {
			t.Fatal(err)
		}
		return v, true
	}

	rec := storetest.FullRecord("c1")
	gen, err := tokencache.Put(ctx, s, rec)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := score(); !ok || int64(v) != rec.NextRefresh.UnixMilli() {
		t.Fatalf("due score %v (present %v), want %d", v, ok, rec.NextRefresh.UnixMilli())
	}

	rec.NextRefresh = rec.NextRefresh.Add(time.Minute)
	if gen, err = tokencache.CompareAndSwap(ctx, s, rec, gen); err != nil {
		t.Fatal(err)
	}
	if v, ok := score(); !ok || int64(v) != rec.NextRefresh.UnixMilli() {
		t.Fatalf("due score after reschedule %v, want %d", v, rec.NextRefresh.UnixMilli())
	}

	rec.NextRefresh = time.Time{}
	if gen, err = tokencache.CompareAndSwap(ctx, s, rec, gen); err != nil {
		t.Fatal(err)
	}
	if _, ok := score(); ok {
		t.Fatal("unscheduled record still in the schedule")
	}

	rec.NextRefresh = time.Now().Add(time.Hour)
	if _, err = tokencache.CompareAndSwap(ctx, s, rec, gen); err != nil {
		t.Fatal(err)
	}
	if err := tokencache.Delete(ctx, s, "c1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := score(); ok {
		t.Fatal("deleted record still in the schedule")
	}
}

func TestRedisExpiry(t *testing.T) {
	r := testenv.StartRedis(t)
	raw := r.Client(t)
	s := newRedisStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Keyring: mustKeyring(t, newKey(t))})
	ctx := ctxTimeout(t, 10*time.Second)
	pttl := func(key string) time.Duration {
		t.Helper()
		d, err := raw.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	near := func(got, want time.Duration) bool {
		diff := got - want
		return diff > -time.Minute && diff < time.Minute
	}

	withExpiry := storetest.FullRecord("with")
	withExpiry.RefreshTokenExpiry = time.Now().Add(10 * 24 * time.Hour)
	gen, err := tokencache.Put(ctx, s, withExpiry)
	if err != nil {
		t.Fatal(err)
	}
	want := 10*24*time.Hour + tokencache.RecordRetention
	if got := pttl(s.RecordKey("with")); !near(got, want) {
		t.Fatalf("TTL of a record with refresh expiry = %v, want about %v", got, want)
	}

	// A refresh that got no refresh expiry makes the record permanent.
	withExpiry.RefreshTokenExpiry = time.Time{}
	if _, err := tokencache.CompareAndSwap(ctx, s, withExpiry, gen); err != nil {
		t.Fatal(err)
	}
	if got := pttl(s.RecordKey("with")); got != -1 {
		t.Fatalf("TTL after the refresh expiry went away = %v, want none (-1)", got)
	}

	without := storetest.FullRecord("without")
	without.RefreshTokenExpiry = time.Time{}
	if _, err := tokencache.Put(ctx, s, without); err != nil {
		t.Fatal(err)
	}
	if got := pttl(s.RecordKey("without")); got != -1 {
		t.Fatalf("TTL of a record without refresh expiry = %v, want none (-1)", got)
	}

	if err := tokencache.Delete(ctx, s, "without"); err != nil {
		t.Fatal(err)
	}
	if got := pttl(s.RecordKey("without")); !near(got, tokencache.TombstoneTTL) {
		t.Fatalf("tombstone TTL = %v, want about %v", got, tokencache.TombstoneTTL)
	}
}

func TestRedisOutage(t *testing.T) {
	r := testenv.StartRedis(t)
	s := newRedisStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Keyring: mustKeyring(t, newKey(t))})
	rec := storetest.FullRecord("c1")
	gen, err := tokencache.Put(ctxTimeout(t, 5*time.Second), s, rec)
	if err != nil {
		t.Fatal(err)
	}

	r.Stop()
	calls := map[string]func(context.Context) error{
		"Get":    func(ctx context.Context) error { _, err := s.Get(ctx, "c1"); return err },
		"Put":    func(ctx context.Context) error { _, err := tokencache.Put(ctx, s, rec); return err },
		"CAS":    func(ctx context.Context) error { _, err := tokencache.CompareAndSwap(ctx, s, rec, gen); return err },
		"Delete": func(ctx context.Context) error { return tokencache.Delete(ctx, s, "c1") },
		"Ping":   func(ctx context.Context) error { return s.Ping(ctx) },
	}
	for name, call := range calls {
		err := call(ctxTimeout(t, 2*time.Second))
		if !errors.Is(err, tokencache.ErrUnavailable) {
			t.Errorf("%s while Redis is down: %v, want ErrUnavailable", name, err)
			continue
		}
		checkNoTokens(t, err.Error(), rec)
	}

	// Back up (empty: the test server keeps nothing on disk): the same
	// store works again once its pool has noticed.
	r.Start()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.Ping(ctxTimeout(t, time.Second))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store still down 10s after Redis came back: %v", err)
		}
	}
	ctx := ctxTimeout(t, 5*time.Second)
	if _, err := tokencache.Put(ctx, s, rec); err != nil {
		t.Fatalf("Put after restart: %v", err)
	}
	got, err := s.Get(ctx, "c1")
	if err != nil {
		t.Fatalf("Get after restart: %v", err)
	}
	storetest.CheckRecord(t, got, rec)
}

func TestRedisUnknownFormat(t *testing.T) {
	r := testenv.StartRedis(t)
	s := newRedisStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Keyring: mustKeyring(t, newKey(t))})
	ctx := ctxTimeout(t, 5*time.Second)
	if _, err := tokencache.Put(ctx, s, storetest.FullRecord("c1")); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ field, value string }{
		{"v", "3"},
		{"v", ""},
		{"gen", "x"},
		{"ate", "soon"},
		{"replay", "{"},
	}
	for _, tc := range tests {
		t.Run(tc.field, func(t *testing.T) {
			if _, err := tokencache.Put(ctx, s, storetest.FullRecord("c1")); err != nil {
				t.Fatal(err)
			}
			if err := r.Client(t).HSet(ctx, s.RecordKey("c1"), tc.field, tc.value).Err(); err != nil {
				t.Fatal(err)
			}
			_, err := s.Get(ctx, "c1")
			if err == nil || errors.Is(err, tokencache.ErrNotFound) || errors.Is(err, tokencache.ErrUnavailable) {
				t.Fatalf("Get of a record with %s=%q: %v, want a decoding error", tc.field, tc.value, err)
			}
		})
	}
	// A key of another type is a damaged record, not an outage: an outage
	// would let a locally held token stand in for it.
	if err := r.Client(t).Set(ctx, s.RecordKey("c1"), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "c1"); !errors.Is(err, tokencache.ErrCorrupt) {
		t.Fatalf("Get of a record key holding a string: %v, want ErrCorrupt", err)
	}
}

func TestNewRedisConfig(t *testing.T) {
	r := testenv.StartRedis(t)
	client := newClient(t, r.URL)
	keyring := mustKeyring(t, newKey(t))
	tests := []struct {
		name    string
		cfg     tokencache.RedisConfig
		wantErr bool
	}{
		{"defaults", tokencache.RedisConfig{Client: client, Keyring: keyring}, false},
		{"no client", tokencache.RedisConfig{Keyring: keyring}, true},
		{"no keyring", tokencache.RedisConfig{Client: client}, true},
		{"empty keyring", tokencache.RedisConfig{Client: client, Keyring: &tokencache.Keyring{}}, true},
		{"prefix with hash tag", tokencache.RedisConfig{Client: client, Keyring: keyring, Prefix: "a{x}:"}, true},
		{"negative buckets", tokencache.RedisConfig{Client: client, Keyring: keyring, Buckets: -1}, true},
		{"negative replicas", tokencache.RedisConfig{Client: client, Keyring: keyring, WaitReplicas: -1}, true},
		{"replicas with a ring", tokencache.RedisConfig{
			Client: redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": r.Addr}}), Keyring: keyring, WaitReplicas: 1,
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tokencache.NewRedis(tc.cfg)
			if (err != nil) != tc.wantErr {
				t.Fatalf("NewRedis: %v, want error %v", err, tc.wantErr)
			}
			if err == nil && (s.Prefix() != tokencache.DefaultKeyPrefix || s.Buckets() != tokencache.DefaultBuckets) {
				t.Fatalf("defaults: prefix %q buckets %d", s.Prefix(), s.Buckets())
			}
		})
	}
}

func TestBucket(t *testing.T) {
	tests := []struct {
		id      string
		buckets int
		want    int
	}{
		// crc32.ChecksumIEEE("alice") = 663665735: a fixed vector, so a
		// change of hash that would move every customer's keys fails here.
		{"alice", 1024, 663665735 % 1024},
		{"alice", 1, 0},
		{"", 1024, 0},
	}
	for _, tc := range tests {
		if got := tokencache.Bucket(tc.id, tc.buckets); got != tc.want {
			t.Errorf("Bucket(%q, %d) = %d, want %d", tc.id, tc.buckets, got, tc.want)
		}
	}
}

// startCluster starts a one-node Redis Cluster owning every slot: enough
// for Redis to refuse a script whose keys span slots (CROSSSLOT), which is
// what the shared hash tag must prevent.
func startCluster(t *testing.T) *testenv.Redis {
	t.Helper()
	return testenv.StartCluster(t)
}

func newClusterClient(t *testing.T, addr string) redis.UniversalClient {
	t.Helper()
	c, err := tokencache.NewRedisClient(tokencache.RedisOptions{Addrs: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.(*redis.ClusterClient); !ok {
		t.Fatalf("client %T, want a cluster client", c)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRedisClusterConformance(t *testing.T) {
	r := startCluster(t)
	client := newClusterClient(t, r.Addr)
	keyring := mustKeyring(t, newKey(t))
	storetest.Run(t, func(t *testing.T) tokencache.Store {
		return newRedisStore(t, tokencache.RedisConfig{Client: client, Prefix: uniquePrefix(), Keyring: keyring})
	})
}

func TestRedisClusterWaitReplicasMissing(t *testing.T) {
	r := startCluster(t)
	s := newRedisStore(t, tokencache.RedisConfig{
		Client: newClusterClient(t, r.Addr), Keyring: mustKeyring(t, newKey(t)), WaitReplicas: 1,
	})
	gen, err := tokencache.Put(ctxTimeout(t, 300*time.Millisecond), s, storetest.FullRecord("c1"))
	if !errors.Is(err, tokencache.ErrUnavailable) || gen <= 0 {
		t.Fatalf("Put on a cluster without replicas: %d, %v; want the generation and ErrUnavailable", gen, err)
	}
	got, err := s.Get(ctxTimeout(t, time.Second), "c1")
	if err != nil || got.Generation != gen {
		t.Fatalf("Get: %v, %v", got, err)
	}
}
