package refresher

import (
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

// redisReplica is one replica on a shared redis-server: its own client,
// store (and so its own subscription) and Refresher. The scheduler does
// not run.
type redisReplica struct {
	store *tokencache.Redis
	r     *Refresher
	// heard logs what the store told its listeners, each call after the
	// replica's L1 heard it (listeners hear in registration order).
	heard *listenerLog
}

type listenerLog struct {
	mu      sync.Mutex
	changed map[string]int
	resets  int
}

func (l *listenerLog) Changed(id string) { l.mu.Lock(); l.changed[id]++; l.mu.Unlock() }
func (l *listenerLog) Reset(hearing bool) {
	l.mu.Lock()
	if hearing {
		l.resets++
	}
	l.mu.Unlock()
}
func (l *listenerLog) counts(id string) (changed, resets int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed[id], l.resets
}

// waitFor polls cond until it holds, failing the test after 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

var testKeyring = func() *tokencache.Keyring {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	kr, err := tokencache.ParseKeyring(base64.StdEncoding.EncodeToString(key))
	if err != nil {
		panic(err)
	}
	return kr
}()

// newRedisReplica starts a replica. heartbeat 0 is the store's default.
func newRedisReplica(t *testing.T, rd *testenv.Redis, owner string, heartbeat time.Duration, cfg Config) *redisReplica {
	t.Helper()
	store, err := tokencache.NewRedis(tokencache.RedisConfig{Client: rd.Client(t), Keyring: testKeyring, Buckets: 16, HeartbeatEvery: heartbeat})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	cfg.Store, cfg.Owner = store, owner
	if cfg.Wallet == nil {
		cfg.Wallet = &fakeWallet{ttl: time.Hour, now: time.Now}
	}
	cfg.Metrics = NewMetrics(prometheus.NewRegistry())
	cfg.RefreshBefore, cfg.RefreshRate, cfg.UpstreamTimeout, cfg.Lease = time.Minute, 1000, 2*time.Second, 2*time.Second
	if cfg.CacheMaxEntries == 0 {
		cfg.CacheMaxEntries = 100
	}
	r := New(cfg)
	t.Cleanup(r.Close)
	log := &listenerLog{changed: map[string]int{}}
	t.Cleanup(store.Invalidations(log))
	if err := store.WatchReady(ctx(t)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the subscription confirmed to the L1", func() bool { _, n := log.counts(""); return n > 0 })
	return &redisReplica{store: store, r: r, heard: log}
}

func installPair(t *testing.T, r *Refresher, id, access string, ttl time.Duration) {
	t.Helper()
	if err := r.Install(ctx(t), Exchange{Path: "/v1/authorizations/applyToken", Pair: &wallet.TokenResponse{
		CustomerID: id, AccessToken: wallet.Secret(access), AccessTokenExpiry: time.Now().Add(ttl), RefreshToken: wallet.Secret("refresh-of-" + access),
	}}); err != nil {
		t.Fatal(err)
	}
}

// installHeard installs on a and waits until every replica of others has
// heard it (a reader that read the record before the change was announced
// would otherwise see its copy dropped when it is).
func installHeard(t *testing.T, a *redisReplica, id, access string, others ...*redisReplica) {
	t.Helper()
	var before []int
	for _, o := range others {
		n, _ := o.heard.counts(id)
		before = append(before, n)
	}
	installPair(t, a.r, id, access, time.Hour)
	for i, o := range others {
		waitFor(t, "the exchange heard", func() bool { n, _ := o.heard.counts(id); return n > before[i] })
	}
}

func tokenValue(t *testing.T, r *Refresher, id string) string {
	t.Helper()
	tok, err := r.Token(ctx(t), id)
	if err != nil {
		t.Fatalf("token of %s: %v", id, err)
	}
	return tok.Value.Reveal()
}

// TestCachedCallCostsNoRedisCommand: 200 calls for one customer whose
// token is held fresh send no command at all to Redis. Counted: every
// command of the server (INFO commandstats, commands inside scripts
// included), less the INFO calls that read the counts. The replica runs
// as in production (subscription, idle tracking on) but without its
// scheduler and with the heartbeat slowed to once an hour, so that the
// count is the calls' alone; the idle test counts the heartbeat. Idle
// tracking (Touch) would write at most once a minute per customer in the
// background; the record was just installed, so it does not write here.
func TestCachedCallCostsNoRedisCommand(t *testing.T) {
	rd := testenv.StartRedis(t)
	rep := newRedisReplica(t, rd, "r1", time.Hour, Config{IdleAfter: time.Hour})
	installPair(t, rep.r, "c1", "access-0", time.Hour)
	if got := tokenValue(t, rep.r, "c1"); got != "access-0" { // reads the store once
		t.Fatalf("token %q", got)
	}
	admin := rd.Client(t)
	before := testenv.Commands(t, admin)
	for i := range 200 {
		if got := tokenValue(t, rep.r, "c1"); got != "access-0" {
			t.Fatalf("call %d: token %q", i, got)
		}
	}
	if d := testenv.Commands(t, admin).Since(before); d.Total() != 0 {
		t.Fatalf("200 cached calls sent %d Redis commands, want 0: %v", d.Total(), d)
	}
	// A customer not held fresh costs a read (the count above can fail).
	before = testenv.Commands(t, admin)
	rep.r.cache.remove("c1")
	tokenValue(t, rep.r, "c1")
	if d := testenv.Commands(t, admin).Since(before); d["hgetall"] != 1 {
		t.Fatalf("an uncached call sent %v, want one HGETALL", d)
	}
}

// TestInvalidationReachesOtherReplica: a new exchange and a DELETE on
// replica A reach replica B's L1 (through the store's subscription)
// before B's next call: once B's store has heard the change, B never
// serves the old token.
func TestInvalidationReachesOtherReplica(t *testing.T) {
	rd := testenv.StartRedis(t)
	a := newRedisReplica(t, rd, "a", 0, Config{})
	b := newRedisReplica(t, rd, "b", 0, Config{})
	admin := rd.Client(t)

	installHeard(t, a, "c1", "access-0", b)
	if got := tokenValue(t, b.r, "c1"); got != "access-0" {
		t.Fatalf("b: %q", got)
	}
	if _, ok := b.r.cache.fresh("c1"); !ok {
		t.Fatal("b does not hold c1 fresh after reading it")
	}

	// A new exchange on A.
	heard, _ := b.heard.counts("c1")
	installPair(t, a.r, "c1", "access-new", time.Hour)
	waitFor(t, "b to hear the exchange", func() bool { n, _ := b.heard.counts("c1"); return n > heard })
	before := testenv.Commands(t, admin)
	if got := tokenValue(t, b.r, "c1"); got != "access-new" {
		t.Fatalf("b served %q after a new exchange on a", got)
	}
	if d := testenv.Commands(t, admin).Since(before); d["hgetall"] != 1 {
		t.Fatalf("b's call after the change sent %v, want one HGETALL (a read through)", d)
	}

	// A DELETE on A.
	heard, _ = b.heard.counts("c1")
	if err := a.r.Forget(ctx(t), "c1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to hear the delete", func() bool { n, _ := b.heard.counts("c1"); return n > heard })
	if tok, err := b.r.Token(ctx(t), "c1"); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("b after a delete on a: %q, %v", tok.Value.Reveal(), err)
	}
	// A's own delete reached its own L1 synchronously.
	if tok, err := a.r.Token(ctx(t), "c1"); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("a after its delete: %q, %v", tok.Value.Reveal(), err)
	}
}

// TestResubscribeClearsL1: when the subscription is cut (CLIENT KILL TYPE
// pubsub) and established again, the L1 holds nothing fresh: a change
// published while it was cut is not served stale.
func TestResubscribeClearsL1(t *testing.T) {
	rd := testenv.StartRedis(t)
	a := newRedisReplica(t, rd, "a", 0, Config{})
	b := newRedisReplica(t, rd, "b", 0, Config{})
	admin := rd.Client(t)
	installHeard(t, a, "c1", "access-0", b)
	installHeard(t, a, "c2", "other-0", b)
	for _, id := range []string{"c1", "c2"} {
		tokenValue(t, b.r, id)
		if _, ok := b.r.cache.fresh(id); !ok {
			t.Fatalf("b does not hold %s fresh", id)
		}
	}
	_, resets := b.heard.counts("")
	if err := admin.Do(ctx(t), "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	// Written while b may not be subscribed: b may never hear it.
	installPair(t, a.r, "c1", "access-1", time.Hour)
	waitFor(t, "b's store to subscribe again", func() bool { _, n := b.heard.counts(""); return n > resets })
	if _, ok := b.r.cache.fresh("c2"); ok {
		t.Fatal("b holds c2 fresh after resubscribing")
	}
	if b.r.cache.len() == 0 {
		t.Fatal("the resubscribe dropped what is held for outages too")
	}
	if got := tokenValue(t, b.r, "c1"); got != "access-1" {
		t.Fatalf("b served %q after resubscribing", got)
	}
	before := testenv.Commands(t, admin)
	if got := tokenValue(t, b.r, "c2"); got != "other-0" {
		t.Fatalf("b: c2 %q", got)
	}
	if d := testenv.Commands(t, admin).Since(before); d["hgetall"] != 1 {
		t.Fatalf("b's first call after resubscribing sent %v, want one HGETALL", d)
	}
}

// TestMissedHeartbeatClearsL1: while Redis does not answer (CLIENT PAUSE),
// heartbeats go unheard: the L1 serves nothing fresh (reads go to the
// store) until a heartbeat is heard again.
func TestMissedHeartbeatClearsL1(t *testing.T) {
	rd := testenv.StartRedis(t)
	b := newRedisReplica(t, rd, "b", 100*time.Millisecond, Config{})
	admin := rd.Client(t)
	installPair(t, b.r, "c1", "access-0", time.Hour)
	tokenValue(t, b.r, "c1")
	if _, ok := b.r.cache.fresh("c1"); !ok {
		t.Fatal("c1 not held fresh")
	}
	_, resets := b.heard.counts("")
	if err := admin.Do(ctx(t), "CLIENT", "PAUSE", "1500", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the L1 to stop trusting", func() bool { return !b.r.cache.hearing.Load() })
	if _, ok := b.r.cache.fresh("c1"); ok {
		t.Fatal("c1 served fresh while heartbeats go unheard")
	}
	waitFor(t, "a heartbeat heard again", func() bool { _, n := b.heard.counts(""); return n > resets })
	if _, ok := b.r.cache.fresh("c1"); ok {
		t.Fatal("c1 fresh right after the silence: it was held before")
	}
	if got := tokenValue(t, b.r, "c1"); got != "access-0" {
		t.Fatalf("token %q", got)
	}
	if _, ok := b.r.cache.fresh("c1"); !ok {
		t.Fatal("c1 not held fresh again after a read")
	}
}

// TestL1NeverServesExpiredDeletedOrEnded: with the memory store (which
// tells its listeners at each write), what L1 holds is never served past
// the access token's expiry, after a DELETE by another replica, once the
// customer needs reauthorization, or after the wallet rejected it.
func TestL1NeverServesExpiredDeletedOrEnded(t *testing.T) {
	f := newFixture(t)
	other := f.replica(t, "r2", NewMetrics(prometheus.NewRegistry()))
	f.install(t, 10*time.Minute, time.Time{})
	if got := tokenValue(t, f.r, "c1"); got != "access-0" {
		t.Fatalf("token %q", got)
	}
	if _, ok := f.r.cache.fresh("c1"); !ok {
		t.Fatal("not held fresh")
	}

	// Expired: refreshed, never served.
	f.clock.add(10 * time.Minute)
	if _, ok := f.r.cache.fresh("c1"); ok {
		t.Fatal("held fresh at its expiry")
	}
	if got := tokenValue(t, f.r, "c1"); got != "access-1" || f.wallet.calls.Load() != 1 {
		t.Fatalf("at expiry: %q after %d wallet calls", got, f.wallet.calls.Load())
	}
	tokenValue(t, f.r, "c1") // held fresh again
	if _, ok := f.r.cache.fresh("c1"); !ok {
		t.Fatal("refreshed token not held fresh")
	}

	// Rejected by the wallet: leaves L1 before the refresh path.
	tok, _ := f.r.Token(ctx(t), "c1")
	f.wallet.gate = make(chan struct{})
	done := make(chan error, 1)
	go func() { _, err := f.r.Rejected(ctx(t), tok); done <- err }()
	waitFor(t, "the rejected token's refresh", func() bool { return f.wallet.calls.Load() == 2 })
	if _, ok := f.r.cache.fresh("c1"); ok {
		t.Fatal("a rejected token is still held fresh")
	}
	close(f.wallet.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	f.wallet.gate = nil
	if got := tokenValue(t, f.r, "c1"); got != "access-2" {
		t.Fatalf("after the rejection: %q", got)
	}

	// Reauthorization required (the refresh token refused, on the other
	// replica): never served as usable.
	f.wallet.setErr(&wallet.Error{HTTPStatus: 200, Result: wallet.Result{ResultStatus: wallet.StatusFailed, ResultCode: wallet.CodeInvalidRefreshToken}})
	if _, err := other.Refresh(ctx(t), "c1"); !errors.Is(err, ErrReauthorizationRequired) {
		t.Fatalf("forced refresh: %v", err)
	}
	if _, err := f.r.Token(ctx(t), "c1"); !errors.Is(err, ErrReauthorizationRequired) {
		t.Fatalf("after the refresh token was refused: %v", err)
	}
	f.wallet.setErr(nil)

	// A new exchange, held fresh, then deleted on the other replica.
	f.install(t, time.Hour, time.Time{})
	tokenValue(t, f.r, "c1")
	if _, ok := f.r.cache.fresh("c1"); !ok {
		t.Fatal("new exchange not held fresh")
	}
	if err := other.Forget(ctx(t), "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.r.Token(ctx(t), "c1"); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("after a delete on another replica: %v", err)
	}
	if _, ok := f.r.cache.held("c1"); ok {
		t.Fatal("a deleted customer is still held for outages")
	}
}

// TestL1PutAfterChangeRefused: a read that began before a change was
// announced does not put what it read; after a Reset nothing held is
// fresh until read again; a store that does not hear makes nothing fresh;
// the count bound holds.
func TestL1PutAfterChangeRefused(t *testing.T) {
	now := func() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }
	rec := func(id string, gen int64) *tokencache.Record {
		return &tokencache.Record{CustomerID: id, Generation: gen, AccessToken: "a", AccessTokenExpiry: now().Add(time.Hour)}
	}
	c := newL1(3, now)
	snap := c.snapshot("c1")
	c.put(rec("c1", 1), snap)
	if _, ok := c.fresh("c1"); ok {
		t.Fatal("fresh before the store ever heard")
	}
	c.Reset(true)
	if _, ok := c.fresh("c1"); ok {
		t.Fatal("fresh across a Reset")
	}
	snap = c.snapshot("c1")
	c.Changed("c1") // announced while the read was in flight
	c.put(rec("c1", 1), snap)
	if _, ok := c.held("c1"); ok {
		t.Fatal("a read older than a change was put")
	}
	c.put(rec("c1", 2), c.snapshot("c1"))
	if _, ok := c.fresh("c1"); !ok {
		t.Fatal("not fresh")
	}
	c.put(rec("c1", 1), c.snapshot("c1"))
	if got, _ := c.fresh("c1"); got.Generation != 2 {
		t.Fatalf("an older generation replaced a newer one: %d", got.Generation)
	}
	c.Reset(false)
	if _, ok := c.fresh("c1"); ok {
		t.Fatal("fresh while the store does not hear")
	}
	if _, ok := c.held("c1"); !ok {
		t.Fatal("a Reset dropped what is held for outages")
	}
	c.Reset(true)
	for _, id := range []string{"c2", "c3", "c4"} {
		c.put(rec(id, 1), c.snapshot(id))
	}
	if n := c.len(); n != 3 {
		t.Fatalf("%d held, bound 3", n)
	}
	if _, ok := c.held("c1"); ok {
		t.Fatal("the least recently used was not evicted")
	}
	big := newL1(100_000, now)
	big.Reset(true)
	for i := range 2000 {
		id := "k" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
		big.put(rec(id, 1), big.snapshot(id))
	}
	if n := big.len(); n != 2000 {
		t.Fatalf("%d held of 2000", n)
	}
}
