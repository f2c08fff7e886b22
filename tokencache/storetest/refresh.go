package storetest

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// Lease and backoff durations of the refresh suite. Short ones lapse when
// the suite means them to (it advances the clock past them); long ones
// never lapse during a subtest. A store on a real clock (advance sleeps)
// needs two consecutive store calls to fit in shortTTL: 750 ms holds with
// -race at a load of 4 on 2 cores, where calls that take a few ms idle
// can take a few hundred; the suite then runs in about 25 s.
const (
	shortTTL = 750 * time.Millisecond  // lapses after advance(shortTTL + slack)
	midTTL   = 1500 * time.Millisecond // outlives two calls, not an advance past it
	longTTL  = 30 * time.Second        // never lapses in a subtest
	backoff  = 1500 * time.Millisecond
	slack    = 100 * time.Millisecond
	// watchWait bounds how long a watcher waits for a notice it must get.
	watchWait = 5 * time.Second
)

// RunRefresh runs the refresh-protocol suite (tokencache.Store) as
// subtests of t. newStore is called once per subtest and must return an
// empty store no other subtest uses. advance(d) must move the store's clock
// forward by at least d: a fake clock's Advance, or time.Sleep for a store
// on a real clock (Redis).
//
// The subtests run one after another, not in parallel, so that advance may
// move one clock shared by all stores. Assertions count outcomes, never
// measure time: the only timing assumption is that two consecutive store
// calls take less than shortTTL (750 ms).
func RunRefresh(t *testing.T, newStore func(t *testing.T) tokencache.Store, advance func(d time.Duration)) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s tokencache.Store, advance func(time.Duration))
	}{
		{"ClaimErrors", testClaimErrors},
		{"ClaimInvalid", testClaimInvalid},
		{"ConcurrentClaim", testConcurrentClaim},
		{"LeaseLapse", testLeaseLapse},
		{"RenewRelease", testRenewRelease},
		{"FenceNeverReused", testFenceNeverReused},
		{"RefreshedAfterLapse", testRefreshedAfterLapse},
		{"LateHolderRefreshed", testLateHolderRefreshed},
		{"CompleteAfterDelete", testCompleteAfterDelete},
		{"CompleteAfterPut", testCompleteAfterPut},
		{"Unknown", testUnknown},
		{"Refused", testRefused},
		{"RefusedRepresentation", testRefusedRepresentation},
		{"Rejected", testRejected},
		{"StaleFailureAfterRejected", testStaleFailureAfterRejected},
		{"BackoffReschedules", testBackoffReschedules},
		{"Due", testDue},
		{"JournalUnknown", testJournalUnknown},
		{"Watch", testWatch},
		{"TouchLastUsed", testTouchLastUsed},
		{"Census", testCensus},
		{"GenerationOnlyOnWrites", testGenerationOnlyOnWrites},
		{"PutResetsProtocol", testPutResetsProtocol},
		{"CompareAndSwapKeepsProtocol", testCompareAndSwapKeepsProtocol},
		{"ReadOnlyFields", testReadOnlyFields},
		{"RefreshTokenHash", testRefreshTokenHash},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newStore(t), advance)
		})
	}
}

// peek reads the customer's entry and the store's now through Update, with
// a decision that writes nothing.
func peek(t *testing.T, s tokencache.Store, id string) (tokencache.Entry, time.Time) {
	t.Helper()
	var (
		e   tokencache.Entry
		now time.Time
	)
	err := s.Update(testContext(t), id, tokencache.Decision{Op: "peek", Apply: func(cur *tokencache.Entry, n time.Time) (bool, error) {
		e, now = *cur, n
		return false, nil
	}})
	if err != nil {
		t.Fatalf("peek: %v", err)
	}
	return e, now
}

func storeNow(t *testing.T, s tokencache.Store) time.Time {
	t.Helper()
	_, now := peek(t, s, "\x00now")
	return now
}

// census counts the store's customers with its Census method, which both
// stores have.
func census(t *testing.T, s tokencache.Store) (tokencache.Census, error) {
	t.Helper()
	c, ok := s.(interface {
		Census(context.Context) (tokencache.Census, error)
	})
	if !ok {
		t.Fatalf("%T has no Census method", s)
	}
	return c.Census(testContext(t))
}

func mustClaim(t *testing.T, s tokencache.Store, id string, gen int64, owner string, ttl time.Duration) *tokencache.Lease {
	t.Helper()
	l, err := tokencache.Claim(testContext(t), s, id, gen, owner, ttl, false)
	if err != nil {
		t.Fatalf("Claim(%q, gen %d, %q): %v", id, gen, owner, err)
	}
	return l
}

// claimAfterLapse claims, for owner, a customer whose last claim (by
// lapsed) lapsed without an outcome: the first claim is held off for its
// ttl (shortTTL here), the grace a holder cut off from the store gets to
// write an S pair, and the one after it succeeds.
func claimAfterLapse(t *testing.T, s tokencache.Store, id string, gen int64, owner, lapsed string, ttl time.Duration, advance func(time.Duration)) *tokencache.Lease {
	t.Helper()
	_, err := tokencache.Claim(testContext(t), s, id, gen, owner, shortTTL, false)
	wantHeld(t, err, lapsed)
	_, err = tokencache.Claim(testContext(t), s, id, gen, owner, shortTTL, false)
	wantHeld(t, err, lapsed) // the grace is given once, not moved
	advance(shortTTL + slack)
	return mustClaim(t, s, id, gen, owner, ttl)
}

func mustComplete(t *testing.T, s tokencache.Store, l *tokencache.Lease, o tokencache.Outcome) int64 {
	t.Helper()
	gen, err := tokencache.Complete(testContext(t), s, l, o)
	if err != nil {
		t.Fatalf("Complete(%v): %v", o.Kind, err)
	}
	return gen
}

func wantHeld(t *testing.T, err error, owner string) {
	t.Helper()
	var he *tokencache.LeaseHeldError
	if !errors.As(err, &he) || !errors.Is(err, tokencache.ErrLeaseHeld) {
		t.Fatalf("claim: %v, want *LeaseHeldError", err)
	}
	if he.Owner != owner {
		t.Fatalf("LeaseHeldError.Owner = %q, want %q", he.Owner, owner)
	}
	if he.TTL <= 0 {
		t.Fatalf("LeaseHeldError TTL %v, want a live lease", he.TTL)
	}
}

func wantLease(t *testing.T, l *tokencache.Lease, represent bool, attempt int) {
	t.Helper()
	if l.Represent != represent || l.Attempt != attempt {
		t.Fatalf("lease Represent %v Attempt %d, want %v %d", l.Represent, l.Attempt, represent, attempt)
	}
}

// refreshed is the outcome of an S answer, with a new pair.
func refreshed(t *testing.T, s tokencache.Store) (tokencache.Outcome, *tokencache.Record) {
	now := storeNow(t, s)
	rec := &tokencache.Record{
		AccessToken:        token("access"),
		AccessTokenExpiry:  now.Add(2 * time.Hour),
		RefreshToken:       token("refresh"),
		RefreshTokenExpiry: now.Add(30 * 24 * time.Hour),
		LastRefresh:        now,
		NextRefresh:        now.Add(90 * time.Minute),
	}
	return tokencache.Outcome{Kind: tokencache.Refreshed, Record: rec}, rec
}

func failed(kind tokencache.OutcomeKind, code string) tokencache.Outcome {
	return tokencache.Outcome{Kind: kind, Code: code, Backoff: backoff}
}

// wantJournal checks the journal entry Complete left, read right after it
// wrote generation gen.
func wantJournal(t *testing.T, s tokencache.Store, id, rth string, kind tokencache.OutcomeKind, code string, gen int64) {
	t.Helper()
	rec := mustGet(t, s, id)
	j := rec.Journal
	if j.RefreshTokenHash != rth || j.Kind != kind || j.Code != code || rec.Generation != gen || !j.For(rth, storeNow(t, s)) {
		t.Fatalf("Journal = %+v at gen %d, want %v %q for %s at gen %d", j, rec.Generation, kind, code, rth, gen)
	}
}

func testClaimErrors(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	ctx := testContext(t)
	before := storeNow(t, s)
	gen := mustPut(t, s, FullRecord("a"))
	l := mustClaim(t, s, "a", gen, "owner-1", longTTL)
	after := storeNow(t, s)
	rec := mustGet(t, s, "a")
	if l.CustomerID != "a" || l.Owner != "owner-1" || l.Generation != gen || l.Fence <= 0 {
		t.Fatalf("lease %+v", l)
	}
	if l.RefreshTokenHash == "" || l.RefreshTokenHash != rec.RefreshTokenHash {
		t.Fatalf("lease RefreshTokenHash %q, record's %q", l.RefreshTokenHash, rec.RefreshTokenHash)
	}
	wantLease(t, l, false, 1)
	if e, _ := peek(t, s, "a"); e.Lease.Until.Before(before.Add(longTTL).Add(-time.Millisecond)) || e.Lease.Until.After(after.Add(longTTL).Add(time.Millisecond)) ||
		e.Lease.Owner != "owner-1" || e.Lease.Fence != l.Fence {
		t.Fatalf("lease %+v, want owner-1 fence %d until now+%v in [%v, %v]", e.Lease, l.Fence, longTTL, before, after)
	}
	if rec.Generation != gen {
		t.Fatalf("Claim raised the generation: %d -> %d", gen, rec.Generation)
	}

	_, err := tokencache.Claim(ctx, s, "a", gen, "owner-2", longTTL, false)
	wantHeld(t, err, "owner-1")
	// The same owner does not get it twice either.
	_, err = tokencache.Claim(ctx, s, "a", gen, "owner-1", longTTL, true)
	wantHeld(t, err, "owner-1")
	// A stale generation is a conflict, held lease or not.
	if _, err := tokencache.Claim(ctx, s, "a", gen-1, "owner-2", longTTL, false); !errors.Is(err, tokencache.ErrConflict) {
		t.Fatalf("Claim with a stale generation: %v, want ErrConflict", err)
	}

	gen1 := mustPut(t, s, FullRecord("b"))
	gen2 := mustPut(t, s, FullRecord("b"))
	if _, err := tokencache.Claim(ctx, s, "b", gen1, "owner-1", longTTL, false); !errors.Is(err, tokencache.ErrConflict) {
		t.Fatalf("Claim with generation %d of %d: %v, want ErrConflict", gen1, gen2, err)
	}

	reauth := FullRecord("c")
	reauth.State = tokencache.StateReauthorizationRequired
	genC := mustPut(t, s, reauth)
	for _, g := range []int64{genC, genC + 1} { // state is checked before the generation
		if _, err := tokencache.Claim(ctx, s, "c", g, "owner-1", longTTL, true); !errors.Is(err, tokencache.ErrNotActive) {
			t.Fatalf("Claim of a reauthorization_required customer: %v, want ErrNotActive", err)
		}
	}

	if _, err := tokencache.Claim(ctx, s, "nobody", 1, "owner-1", longTTL, false); !errors.Is(err, tokencache.ErrNotFound) {
		t.Fatalf("Claim of an unknown customer: %v, want ErrNotFound", err)
	}
	mustDelete(t, s, "b")
	if _, err := tokencache.Claim(ctx, s, "b", gen2, "owner-1", longTTL, false); !errors.Is(err, tokencache.ErrNotFound) {
		t.Fatalf("Claim of a deleted customer: %v, want ErrNotFound", err)
	}
}

func testClaimInvalid(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	gen := mustPut(t, s, FullRecord("a"))
	for _, tc := range []struct {
		owner string
		ttl   time.Duration
	}{{"", longTTL}, {"o", 0}, {"o", -time.Second}, {"o", time.Microsecond}} {
		if _, err := tokencache.Claim(testContext(t), s, "a", gen, tc.owner, tc.ttl, false); err == nil {
			t.Errorf("Claim(owner %q, ttl %v) succeeded", tc.owner, tc.ttl)
		}
	}
	// Nothing was claimed.
	mustClaim(t, s, "a", gen, "o", longTTL)
}

func testConcurrentClaim(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	gen := mustPut(t, s, FullRecord("race"))
	leases := make([]*tokencache.Lease, concurrency)
	errs := make([]error, concurrency)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range concurrency {
		wg.Go(func() {
			<-start
			leases[i], errs[i] = tokencache.Claim(testContext(t), s, "race", gen, fmt.Sprintf("owner-%d", i), longTTL, false)
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	for i, err := range errs {
		if err == nil {
			if winner >= 0 {
				t.Fatalf("two claims of one customer and generation won: %d and %d", winner, i)
			}
			winner = i
		}
	}
	if winner < 0 {
		t.Fatalf("no claim won: %v", errors.Join(errs...))
	}
	for i, err := range errs {
		if i != winner {
			wantHeld(t, err, fmt.Sprintf("owner-%d", winner))
		}
	}
	wantLease(t, leases[winner], false, 1)
}

func testLeaseLapse(t *testing.T, s tokencache.Store, advance func(time.Duration)) {
	ctx := testContext(t)
	gen := mustPut(t, s, FullRecord("a"))
	first := mustClaim(t, s, "a", gen, "owner-1", shortTTL)
	advance(shortTTL + slack)

	// The first holder never completed: its presentation may have reached
	// the wallet, so the next claim is a re-presentation, after the grace
	// a holder without an outcome gets.
	second := claimAfterLapse(t, s, "a", gen, "owner-2", "owner-1", longTTL, advance)
	wantLease(t, second, true, 2)
	if second.Fence <= first.Fence {
		t.Fatalf("fence %d after %d: not growing", second.Fence, first.Fence)
	}
	if second.RefreshTokenHash != first.RefreshTokenHash {
		t.Fatal("the same token got another hash")
	}
	if err := tokencache.Renew(ctx, s, first, longTTL); !errors.Is(err, tokencache.ErrLeaseLost) {
		t.Fatalf("Renew of a lapsed and reclaimed lease: %v, want ErrLeaseLost", err)
	}
	// The lapsed holder's Release touches neither the new lease nor its
	// intent.
	if err := tokencache.Release(ctx, s, first); err != nil {
		t.Fatalf("Release of a lapsed lease: %v", err)
	}
	_, err := tokencache.Claim(ctx, s, "a", gen, "owner-3", longTTL, false)
	wantHeld(t, err, "owner-2")

	// The second holder presents nothing and releases: the first one's
	// presentation is still unknown.
	if err := tokencache.Release(ctx, s, second); err != nil {
		t.Fatal(err)
	}
	third := mustClaim(t, s, "a", gen, "owner-3", longTTL)
	wantLease(t, third, true, 2)
}

func testRenewRelease(t *testing.T, s tokencache.Store, advance func(time.Duration)) {
	ctx := testContext(t)
	gen := mustPut(t, s, FullRecord("a"))
	l := mustClaim(t, s, "a", gen, "owner-1", midTTL)
	before := storeNow(t, s)
	if err := tokencache.Renew(ctx, s, l, longTTL); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if e, _ := peek(t, s, "a"); e.Lease.Until.Before(before.Add(longTTL).Add(-time.Millisecond)) {
		exp := e.Lease.Until
		t.Fatalf("Renew expiry %v, want about %v", exp, before.Add(longTTL))
	}
	advance(midTTL + slack) // past the claimed ttl, not the renewed one
	_, err := tokencache.Claim(ctx, s, "a", gen, "owner-2", longTTL, false)
	wantHeld(t, err, "owner-1")

	if err := tokencache.Release(ctx, s, l); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := tokencache.Release(ctx, s, l); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if err := tokencache.Renew(ctx, s, l, longTTL); !errors.Is(err, tokencache.ErrLeaseLost) {
		t.Fatalf("Renew after Release: %v, want ErrLeaseLost", err)
	}
	// Nothing was presented: the next claim is a first presentation.
	next := mustClaim(t, s, "a", gen, "owner-2", longTTL)
	wantLease(t, next, false, 1)
}

func testFenceNeverReused(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	ctx := testContext(t)
	gen := mustPut(t, s, FullRecord("a"))
	old := mustClaim(t, s, "a", gen, "owner-1", longTTL)
	mustDelete(t, s, "a")
	gen = mustPut(t, s, FullRecord("a"))
	l := mustClaim(t, s, "a", gen, "owner-1", longTTL)
	if l.Fence <= old.Fence {
		t.Fatalf("fence %d after Delete and Put, not above %d", l.Fence, old.Fence)
	}
	// The holder from before the Delete cannot touch the new lease, though
	// it has the same owner.
	if err := tokencache.Renew(ctx, s, old, longTTL); !errors.Is(err, tokencache.ErrLeaseLost) {
		t.Fatalf("Renew of a lease from before Delete: %v, want ErrLeaseLost", err)
	}
	if err := tokencache.Release(ctx, s, old); err != nil {
		t.Fatal(err)
	}
	_, err := tokencache.Claim(ctx, s, "a", gen, "owner-2", longTTL, false)
	wantHeld(t, err, "owner-1")
}

func testRefreshedAfterLapse(t *testing.T, s tokencache.Store, advance func(time.Duration)) {
	ctx := testContext(t)
	orig := FullRecord("a")
	gen := mustPut(t, s, orig)
	l := mustClaim(t, s, "a", gen, "owner-1", shortTTL)
	advance(shortTTL + slack)

	o, fresh := refreshed(t, s)
	newGen := mustComplete(t, s, l, o)
	if newGen != gen+1 {
		t.Fatalf("Complete: generation %d, want %d", newGen, gen+1)
	}
	got := mustGet(t, s, "a")
	want := *orig // path, replay, last use kept
	want.AccessToken, want.AccessTokenExpiry = fresh.AccessToken, fresh.AccessTokenExpiry
	want.RefreshToken, want.RefreshTokenExpiry = fresh.RefreshToken, fresh.RefreshTokenExpiry
	want.LastRefresh, want.NextRefresh = fresh.LastRefresh, fresh.NextRefresh
	want.LastError = ""
	CheckRecord(t, got, &want)
	if got.Generation != newGen || got.Failures != 0 || !got.NotBefore.IsZero() {
		t.Fatalf("after Refreshed: generation %d failures %d not-before %v", got.Generation, got.Failures, got.NotBefore)
	}
	if got.RefreshTokenHash == "" || got.RefreshTokenHash == l.RefreshTokenHash {
		t.Fatalf("RefreshTokenHash %q after the token changed (was %q)", got.RefreshTokenHash, l.RefreshTokenHash)
	}
	wantJournal(t, s, "a", l.RefreshTokenHash, tokencache.Refreshed, "", newGen)

	if _, err := tokencache.Claim(ctx, s, "a", gen, "owner-2", longTTL, false); !errors.Is(err, tokencache.ErrConflict) {
		t.Fatalf("Claim of the spent generation: %v, want ErrConflict", err)
	}
	next := mustClaim(t, s, "a", newGen, "owner-2", longTTL)
	wantLease(t, next, false, 1) // the intent went with the old token
	if next.RefreshTokenHash != got.RefreshTokenHash {
		t.Fatal("claim names another token than the record holds")
	}
}

func testLateHolderRefreshed(t *testing.T, s tokencache.Store, advance func(time.Duration)) {
	ctx := testContext(t)
	gen := mustPut(t, s, FullRecord("a"))
	late := mustClaim(t, s, "a", gen, "owner-1", shortTTL)
	advance(shortTTL + slack)
	current := claimAfterLapse(t, s, "a", gen, "owner-2", "owner-1", longTTL, advance)

	// The lapsed holder's S answer arrives: written, and the current
	// holder's lease is left alone.
	o, fresh := refreshed(t, s)
	newGen := mustComplete(t, s, late, o)
	_, err := tokencache.Claim(ctx, s, "a", newGen, "owner-3", longTTL, false)
	wantHeld(t, err, "owner-2")

	// The current holder's answer (USED_REFRESH_TOKEN, surely) comes too
	// late to undo it.
	if _, err := tokencache.Complete(ctx, s, current, failed(tokencache.Rejected, "USED_REFRESH_TOKEN")); !errors.Is(err, tokencache.ErrConflict) {
		t.Fatalf("Complete of the spent token: %v, want ErrConflict", err)
	}
	got := mustGet(t, s, "a")
	if got.State != tokencache.StateActive || got.RefreshToken.Reveal() != fresh.RefreshToken.Reveal() || got.Generation != newGen {
		t.Fatalf("record after the late S: state %q generation %d (want %d), token replaced: %v",
			got.State, got.Generation, newGen, got.RefreshToken.Reveal() != fresh.RefreshToken.Reveal())
	}
}

func testCompleteAfterDelete(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	ctx := testContext(t)
	gen := mustPut(t, s, FullRecord("a"))
	l := mustClaim(t, s, "a", gen, "owner-1", longTTL)
	mustDelete(t, s, "a")
	for _, o := range []tokencache.Outcome{
		func() tokencache.Outcome { o, _ := refreshed(t, s); return o }(),
		failed(tokencache.Unknown, "WALLET_TIMEOUT"),
		failed(tokencache.Rejected, "INVALID_REFRESH_TOKEN"),
	} {
		if _, err := tokencache.Complete(ctx, s, l, o); !errors.Is(err, tokencache.ErrNotFound) {
			t.Fatalf("Complete(%v) after Delete: %v, want ErrNotFound", o.Kind, err)
		}
	}
	wantNotFound(t, s, "a")
}

func testCompleteAfterPut(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	ctx := testContext(t)
	gen := mustPut(t, s, FullRecord("a"))
	l := mustClaim(t, s, "a", gen, "owner-1", longTTL)
	exchange := FullRecord("a")
	newGen := mustPut(t, s, exchange)
	o, _ := refreshed(t, s)
	if _, err := tokencache.Complete(ctx, s, l, o); !errors.Is(err, tokencache.ErrConflict) {
		t.Fatalf("Complete after a new exchange: %v, want ErrConflict", err)
	}
	if _, err := tokencache.Complete(ctx, s, l, failed(tokencache.Rejected, "USED_REFRESH_TOKEN")); !errors.Is(err, tokencache.ErrConflict) {
		t.Fatalf("Complete(Rejected) after a new exchange: %v, want ErrConflict", err)
	}
	got := mustGet(t, s, "a")
	CheckRecord(t, got, exchange)
	if got.Generation != newGen {
		t.Fatalf("generation %d, want the exchange's %d", got.Generation, newGen)
	}
	// The exchange ended the old lease and intent.
	next := mustClaim(t, s, "a", newGen, "owner-2", longTTL)
	wantLease(t, next, false, 1)
}

func checkCooldown(t *testing.T, rec *tokencache.Record, before, after time.Time, code string, failures int) {
	t.Helper()
	lo, hi := before.Truncate(time.Millisecond).Add(backoff), after.Add(backoff)
	if rec.NotBefore.Before(lo) || rec.NotBefore.After(hi) {
		t.Fatalf("NotBefore %v, want now+%v in [%v, %v]", rec.NotBefore, backoff, lo, hi)
	}
	if !rec.NextRefresh.Equal(rec.NotBefore) {
		t.Fatalf("NextRefresh %v, want the end of the cooldown %v", rec.NextRefresh, rec.NotBefore)
	}
	if rec.LastError != code || rec.Failures != failures || rec.State != tokencache.StateActive {
		t.Fatalf("LastError %q Failures %d State %q, want %q %d active", rec.LastError, rec.Failures, rec.State, code, failures)
	}
}

func wantBackoff(t *testing.T, err error, rec *tokencache.Record) {
	t.Helper()
	var be *tokencache.BackoffError
	if !errors.As(err, &be) || !errors.Is(err, tokencache.ErrBackoff) {
		t.Fatalf("Claim in cooldown: %v, want *BackoffError", err)
	}
	if be.Remaining <= 0 || be.Remaining > backoff || be.LastError != rec.LastError {
		t.Fatalf("BackoffError Remaining %v LastError %q; want (0, %v], %q",
			be.Remaining, be.LastError, backoff, rec.LastError)
	}
}

func testUnknown(t *testing.T, s tokencache.Store, advance func(time.Duration)) {
	ctx := testContext(t)
	orig := FullRecord("a")
	gen := mustPut(t, s, orig)
	l := mustClaim(t, s, "a", gen, "owner-1", longTTL)
	before := storeNow(t, s)
	gen2 := mustComplete(t, s, l, failed(tokencache.Unknown, "WALLET_TIMEOUT"))
	after := storeNow(t, s)
	if gen2 != gen+1 {
		t.Fatalf("generation %d, want %d", gen2, gen+1)
	}
	rec := mustGet(t, s, "a")
	checkCooldown(t, rec, before, after, "WALLET_TIMEOUT", 1)
	if rec.AccessToken.Reveal() != orig.AccessToken.Reveal() || rec.RefreshToken.Reveal() != orig.RefreshToken.Reveal() ||
		rec.RefreshTokenHash != l.RefreshTokenHash {
		t.Fatal("an unknown outcome changed the tokens")
	}
	wantJournal(t, s, "a", l.RefreshTokenHash, tokencache.Unknown, "WALLET_TIMEOUT", gen2)

	// Cooling down: not held (Complete released the lease), but refused
	// until the cooldown ends, unless forced.
	_, err := tokencache.Claim(ctx, s, "a", gen2, "owner-2", longTTL, false)
	wantBackoff(t, err, rec)
	forced, err := tokencache.Claim(ctx, s, "a", gen2, "owner-2", longTTL, true)
	if err != nil {
		t.Fatalf("Claim ignoring the backoff: %v", err)
	}
	wantLease(t, forced, true, 2)
	if err := tokencache.Release(ctx, s, forced); err != nil {
		t.Fatal(err)
	}

	advance(backoff + slack)
	again := mustClaim(t, s, "a", gen2, "owner-2", longTTL)
	wantLease(t, again, true, 2) // the released forced claim presented nothing
	before = storeNow(t, s)
	gen3 := mustComplete(t, s, again, failed(tokencache.Unknown, "WALLET_UNAVAILABLE"))
	after = storeNow(t, s)
	rec = mustGet(t, s, "a")
	checkCooldown(t, rec, before, after, "WALLET_UNAVAILABLE", 2)

	advance(backoff + slack)
	third := mustClaim(t, s, "a", gen3, "owner-3", longTTL)
	wantLease(t, third, true, 3)
	o, _ := refreshed(t, s)
	gen4 := mustComplete(t, s, third, o)
	rec = mustGet(t, s, "a")
	if rec.Failures != 0 || !rec.NotBefore.IsZero() || rec.LastError != "" {
		t.Fatalf("after Refreshed: Failures %d NotBefore %v LastError %q", rec.Failures, rec.NotBefore, rec.LastError)
	}
	// The journal keeps the last outcome of the token.
	wantJournal(t, s, "a", l.RefreshTokenHash, tokencache.Refreshed, "", gen4)
}

func testRefused(t *testing.T, s tokencache.Store, advance func(time.Duration)) {
	ctx := testContext(t)
	gen := mustPut(t, s, FullRecord("a"))
	l := mustClaim(t, s, "a", gen, "owner-1", longTTL)
	before := storeNow(t, s)
	gen2 := mustComplete(t, s, l, failed(tokencache.Refused, "REQUEST_TRAFFIC_EXCEED_LIMIT"))
	after := storeNow(t, s)
	rec := mustGet(t, s, "a")
	checkCooldown(t, rec, before, after, "REQUEST_TRAFFIC_EXCEED_LIMIT", 1)
	wantJournal(t, s, "a", l.RefreshTokenHash, tokencache.Refused, "REQUEST_TRAFFIC_EXCEED_LIMIT", gen2)
	_, err := tokencache.Claim(ctx, s, "a", gen2, "owner-2", longTTL, false)
	wantBackoff(t, err, rec)

	advance(backoff + slack)
	next := mustClaim(t, s, "a", gen2, "owner-2", longTTL)
	wantLease(t, next, false, 1) // the token is known unused
}

func testRefusedRepresentation(t *testing.T, s tokencache.Store, advance func(time.Duration)) {
	gen := mustPut(t, s, FullRecord("a"))
	l := mustClaim(t, s, "a", gen, "owner-1", longTTL)
	gen = mustComplete(t, s, l, failed(tokencache.Unknown, "WALLET_TIMEOUT"))
	advance(backoff + slack)
	re := mustClaim(t, s, "a", gen, "owner-2", longTTL)
	wantLease(t, re, true, 2)
	// Refusing the re-presentation says nothing about the first one,
	// whose outcome stays unknown.
	gen = mustComplete(t, s, re, failed(tokencache.Refused, "REQUEST_TRAFFIC_EXCEED_LIMIT"))
	advance(backoff + slack)
	next := mustClaim(t, s, "a", gen, "owner-3", longTTL)
	wantLease(t, next, true, 3)
}

func testRejected(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	ctx := testContext(t)
	rec := FullRecord("a")
	now := storeNow(t, s)
	rec.NextRefresh = now.Add(-time.Minute) // due
	gen := mustPut(t, s, rec)
	all := allBuckets(s)
	if !dueHas(t, s, all, "a") {
		t.Fatal("due customer not listed")
	}
	l := mustClaim(t, s, "a", gen, "owner-1", longTTL)
	gen2 := mustComplete(t, s, l, failed(tokencache.Rejected, "USED_REFRESH_TOKEN"))
	got := mustGet(t, s, "a")
	if got.State != tokencache.StateReauthorizationRequired || got.LastError != "USED_REFRESH_TOKEN" || !got.NextRefresh.IsZero() {
		t.Fatalf("after Rejected: State %q LastError %q NextRefresh %v", got.State, got.LastError, got.NextRefresh)
	}
	if got.Generation != gen2 || gen2 != gen+1 {
		t.Fatalf("generation %d (returned %d), want %d", got.Generation, gen2, gen+1)
	}
	wantJournal(t, s, "a", l.RefreshTokenHash, tokencache.Rejected, "USED_REFRESH_TOKEN", gen2)
	if dueHas(t, s, all, "a") {
		t.Fatal("reauthorization_required customer still due")
	}
	if _, err := tokencache.Claim(ctx, s, "a", gen2, "owner-2", longTTL, true); !errors.Is(err, tokencache.ErrNotActive) {
		t.Fatalf("Claim after Rejected: %v, want ErrNotActive", err)
	}
}

func testStaleFailureAfterRejected(t *testing.T, s tokencache.Store, advance func(time.Duration)) {
	gen := mustPut(t, s, FullRecord("a"))
	stale := mustClaim(t, s, "a", gen, "owner-1", shortTTL)
	advance(shortTTL + slack)
	current := claimAfterLapse(t, s, "a", gen, "owner-2", "owner-1", longTTL, advance)
	gen = mustComplete(t, s, current, failed(tokencache.Rejected, "USED_REFRESH_TOKEN"))
	// The stale holder's timeout leaves the terminal record as it is.
	gen2 := mustComplete(t, s, stale, failed(tokencache.Unknown, "WALLET_TIMEOUT"))
	if gen2 != gen+1 {
		t.Fatalf("generation %d, want %d", gen2, gen+1)
	}
	got := mustGet(t, s, "a")
	if got.State != tokencache.StateReauthorizationRequired || got.LastError != "USED_REFRESH_TOKEN" ||
		!got.NextRefresh.IsZero() || !got.NotBefore.IsZero() || got.Failures != 0 {
		t.Fatalf("after a stale Unknown: State %q LastError %q NextRefresh %v NotBefore %v Failures %d",
			got.State, got.LastError, got.NextRefresh, got.NotBefore, got.Failures)
	}
	if dueHas(t, s, allBuckets(s), "a") {
		t.Fatal("reauthorization_required customer scheduled again")
	}
}

func allBuckets(s tokencache.Store) []int {
	all := make([]int, s.Buckets())
	for i := range all {
		all[i] = i
	}
	return all
}

func dueHas(t *testing.T, s tokencache.Store, buckets []int, id string) bool {
	t.Helper()
	due, err := s.Due(testContext(t), buckets, 1000)
	if err != nil {
		t.Fatalf("Due: %v", err)
	}
	for _, e := range due {
		if e.CustomerID == id {
			return true
		}
	}
	return false
}

func testBackoffReschedules(t *testing.T, s tokencache.Store, advance func(time.Duration)) {
	all := allBuckets(s)
	for i, kind := range []tokencache.OutcomeKind{tokencache.Refused, tokencache.Unknown} {
		id := fmt.Sprintf("c%d", i)
		rec := FullRecord(id)
		rec.NextRefresh = storeNow(t, s).Add(-time.Minute)
		gen := mustPut(t, s, rec)
		l := mustClaim(t, s, id, gen, "owner-1", longTTL)
		mustComplete(t, s, l, failed(kind, "CODE"))
		if dueHas(t, s, all, id) {
			t.Fatalf("%v: due during its cooldown", kind)
		}
		got := mustGet(t, s, id)
		advance(backoff + slack)
		due, err := s.Due(testContext(t), all, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(due) != 1 || due[0].CustomerID != id || !due[0].Due.Equal(got.NotBefore) {
			t.Fatalf("%v: Due after the cooldown = %+v, want %s at %v", kind, due, id, got.NotBefore)
		}
		mustDelete(t, s, id)
	}
}

func testDue(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	ctx := testContext(t)
	now := storeNow(t, s).Truncate(time.Millisecond)
	all := allBuckets(s)
	if due, err := s.Due(ctx, all, 10); err != nil || len(due) != 0 {
		t.Fatalf("Due of an empty store: %v, %v", due, err)
	}
	times := map[string]time.Time{
		"d1":      now.Add(-3 * time.Minute),
		"d2":      now.Add(-2 * time.Minute),
		"d3":      now.Add(-time.Minute),
		"later":   now.Add(time.Hour),
		"unsched": {},
	}
	gens := map[string]int64{}
	for id, at := range times {
		rec := FullRecord(id)
		rec.NextRefresh = at
		gens[id] = mustPut(t, s, rec)
	}
	due, err := s.Due(ctx, all, 10)
	if err != nil {
		t.Fatal(err)
	}
	wantDue(t, due, times, "d1", "d2", "d3")
	due, err = s.Due(ctx, all, 2)
	if err != nil {
		t.Fatal(err)
	}
	wantDue(t, due, times, "d1", "d2")
	if due, err := s.Due(ctx, all, 0); err != nil || len(due) != 0 {
		t.Fatalf("Due(limit 0) = %v, %v", due, err)
	}

	// Only the buckets asked for.
	b2 := tokencache.Bucket("d2", s.Buckets())
	var others []int
	for _, b := range all {
		if b != b2 {
			others = append(others, b)
		}
	}
	due, err = s.Due(ctx, []int{b2}, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range due {
		if tokencache.Bucket(e.CustomerID, s.Buckets()) != b2 {
			t.Fatalf("Due(bucket %d) lists %s of bucket %d", b2, e.CustomerID, tokencache.Bucket(e.CustomerID, s.Buckets()))
		}
	}
	if !dueHas(t, s, []int{b2}, "d2") || dueHas(t, s, others, "d2") {
		t.Fatal("d2 not listed in its own bucket only")
	}
	if _, err := s.Due(ctx, []int{s.Buckets()}, 10); err == nil {
		t.Fatal("Due of a bucket out of range succeeded")
	}

	// Writes move and drop entries.
	rec := mustGet(t, s, "d1")
	rec.NextRefresh = now.Add(time.Hour)
	if _, err := tokencache.CompareAndSwap(ctx, s, rec, gens["d1"]); err != nil {
		t.Fatal(err)
	}
	rec = mustGet(t, s, "later")
	rec.NextRefresh = now.Add(-4 * time.Minute)
	times["later"] = rec.NextRefresh
	if _, err := tokencache.CompareAndSwap(ctx, s, rec, gens["later"]); err != nil {
		t.Fatal(err)
	}
	mustDelete(t, s, "d3")
	due, err = s.Due(ctx, all, 10)
	if err != nil {
		t.Fatal(err)
	}
	wantDue(t, due, times, "later", "d2")
}

func wantDue(t *testing.T, due []tokencache.DueEntry, times map[string]time.Time, ids ...string) {
	t.Helper()
	var got []string
	for _, e := range due {
		got = append(got, e.CustomerID)
	}
	if strings.Join(got, ",") != strings.Join(ids, ",") {
		t.Fatalf("Due = %v, want %v", got, ids)
	}
	for _, e := range due {
		if !e.Due.Equal(times[e.CustomerID]) {
			t.Fatalf("Due of %s = %v, want %v", e.CustomerID, e.Due, times[e.CustomerID])
		}
	}
}

func testJournalUnknown(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	gen := mustPut(t, s, FullRecord("a"))
	rec := mustGet(t, s, "a")
	l := mustClaim(t, s, "a", gen, "owner-1", longTTL)
	// A claim alone writes no journal entry.
	if j := mustGet(t, s, "a").Journal; j != (tokencache.JournalEntry{}) || j.For(rec.RefreshTokenHash, storeNow(t, s)) {
		t.Fatalf("Journal before Complete: %+v, want none", j)
	}
	gen = mustComplete(t, s, l, failed(tokencache.Unknown, "WALLET_TIMEOUT"))
	wantJournal(t, s, "a", rec.RefreshTokenHash, tokencache.Unknown, "WALLET_TIMEOUT", gen)
	if j := mustGet(t, s, "a").Journal; j.For("another token", storeNow(t, s)) {
		t.Fatalf("Journal %+v answers for another token", j)
	}
	// A new exchange starts without one.
	mustPut(t, s, FullRecord("a"))
	if j := mustGet(t, s, "a").Journal; j.Kind != 0 {
		t.Fatalf("Journal after Put: %+v, want none", j)
	}
}

// watchReady waits until the store's watches can hear, for stores that
// say (Redis subscribes in the background).
func watchReady(t *testing.T, s tokencache.Store) {
	t.Helper()
	if r, ok := s.(interface{ WatchReady(context.Context) error }); ok {
		if err := r.WatchReady(testContext(t)); err != nil {
			t.Fatal(err)
		}
	}
}

// WantNotice fails t unless ch receives within a few seconds.
func WantNotice(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(watchWait):
		t.Fatalf("no watch notice for %s", what)
	}
}

func wantNoNotice(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("watch notice for %s", what)
	default:
	}
}

func testWatch(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	// One customer per event, so that a late notice of one event cannot
	// pass for another's.
	for _, id := range []string{"completed", "put", "deleted", "quiet"} {
		mustPut(t, s, FullRecord(id))
	}
	completed, stop1 := s.Watch("completed")
	defer stop1()
	completed2, stop2 := s.Watch("completed")
	defer stop2()
	put, stop3 := s.Watch("put")
	defer stop3()
	deleted, stop4 := s.Watch("deleted")
	defer stop4()
	stopped, stop5 := s.Watch("deleted")
	quiet, stop6 := s.Watch("quiet")
	defer stop6()
	watchReady(t, s)
	stop5()
	stop5() // harmless

	rec := mustGet(t, s, "completed")
	l := mustClaim(t, s, "completed", rec.Generation, "owner-1", longTTL)
	mustComplete(t, s, l, failed(tokencache.Unknown, "WALLET_TIMEOUT"))
	WantNotice(t, completed, "Complete")
	WantNotice(t, completed2, "Complete (second watcher)")
	mustPut(t, s, FullRecord("put"))
	WantNotice(t, put, "Put")
	mustDelete(t, s, "deleted")
	WantNotice(t, deleted, "Delete")

	// Every notice of those events has arrived (they come in order), so
	// none can still reach these.
	wantNoNotice(t, stopped, "a stopped watch")
	wantNoNotice(t, quiet, "a customer without events")
}

func testTouchLastUsed(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	ctx := testContext(t)
	rec := FullRecord("a")
	rec.LastUsed = time.Time{}
	gen := mustPut(t, s, rec)
	before := storeNow(t, s).Truncate(time.Millisecond)
	if err := tokencache.Touch(ctx, s, "a", 0); err != nil {
		t.Fatalf("TouchLastUsed: %v", err)
	}
	after := storeNow(t, s)
	got := mustGet(t, s, "a")
	if got.LastUsed.Before(before) || got.LastUsed.After(after) {
		t.Fatalf("LastUsed %v, want in [%v, %v]", got.LastUsed, before, after)
	}
	if got.Generation != gen {
		t.Fatalf("TouchLastUsed changed the generation: %d -> %d", gen, got.Generation)
	}
	rec.LastUsed = got.LastUsed
	CheckRecord(t, got, rec)
	// Within every of the last one, a touch writes nothing.
	if err := tokencache.Touch(ctx, s, "a", time.Hour); err != nil {
		t.Fatalf("TouchLastUsed: %v", err)
	}
	if again := mustGet(t, s, "a"); !again.LastUsed.Equal(got.LastUsed) {
		t.Fatalf("LastUsed %v after a touch within the hour, want %v kept", again.LastUsed, got.LastUsed)
	}
	if err := tokencache.Touch(ctx, s, "nobody", 0); err != nil {
		t.Fatalf("TouchLastUsed of an unknown customer: %v", err)
	}
	wantNotFound(t, s, "nobody")
}

func testCensus(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	ctx := testContext(t)
	if c, err := census(t, s); err != nil || c != (tokencache.Census{}) {
		t.Fatalf("Census of an empty store: %+v, %v", c, err)
	}
	now := storeNow(t, s)
	mustPut(t, s, FullRecord("valid"))
	expired := FullRecord("expired")
	expired.AccessTokenExpiry = now.Add(-time.Minute)
	mustPut(t, s, expired)
	reauth := FullRecord("reauth")
	reauth.State = tokencache.StateReauthorizationRequired
	mustPut(t, s, reauth)
	refreshing := FullRecord("refreshing")
	refreshing.AccessTokenExpiry = now.Add(-time.Minute) // refreshing wins over expired
	gen := mustPut(t, s, refreshing)
	l := mustClaim(t, s, "refreshing", gen, "owner-1", longTTL)
	mustPut(t, s, FullRecord("deleted"))
	mustDelete(t, s, "deleted")

	c, err := census(t, s)
	if err != nil {
		t.Fatalf("Census: %v", err)
	}
	if want := (tokencache.Census{Valid: 1, Expired: 1, Refreshing: 1, ReauthorizationRequired: 1}); c != want {
		t.Fatalf("Census = %+v, want %+v", c, want)
	}
	if err := tokencache.Release(ctx, s, l); err != nil {
		t.Fatal(err)
	}
	c, err = census(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if want := (tokencache.Census{Valid: 1, Expired: 2, ReauthorizationRequired: 1}); c != want {
		t.Fatalf("Census after Release = %+v, want %+v", c, want)
	}
}

func testGenerationOnlyOnWrites(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	ctx := testContext(t)
	gen := mustPut(t, s, FullRecord("a"))
	check := func(what string, want int64) {
		t.Helper()
		if got := mustGet(t, s, "a").Generation; got != want {
			t.Fatalf("generation after %s = %d, want %d", what, got, want)
		}
	}
	l := mustClaim(t, s, "a", gen, "owner-1", longTTL)
	check("Claim", gen)
	if err := tokencache.Renew(ctx, s, l, longTTL); err != nil {
		t.Fatal(err)
	}
	check("Renew", gen)
	if err := tokencache.Touch(ctx, s, "a", 0); err != nil {
		t.Fatal(err)
	}
	check("TouchLastUsed", gen)
	if err := tokencache.Release(ctx, s, l); err != nil {
		t.Fatal(err)
	}
	check("Release", gen)
	l = mustClaim(t, s, "a", gen, "owner-1", longTTL)
	gen2 := mustComplete(t, s, l, tokencache.Outcome{Kind: tokencache.Refused, Code: "X"}) // no backoff
	check("Complete", gen+1)
	if gen2 != gen+1 {
		t.Fatalf("Complete returned %d, want %d", gen2, gen+1)
	}
	// A zero backoff is no cooldown.
	mustClaim(t, s, "a", gen2, "owner-1", longTTL)
}

func testPutResetsProtocol(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	ctx := testContext(t)
	gen := mustPut(t, s, FullRecord("a"))
	l := mustClaim(t, s, "a", gen, "owner-1", longTTL)
	gen = mustComplete(t, s, l, failed(tokencache.Unknown, "WALLET_TIMEOUT"))
	held, err := tokencache.Claim(ctx, s, "a", gen, "owner-1", longTTL, true)
	if err != nil {
		t.Fatal(err)
	}
	exchange := FullRecord("a")
	gen = mustPut(t, s, exchange)
	got := mustGet(t, s, "a")
	if got.Failures != 0 || !got.NotBefore.IsZero() || got.RefreshTokenHash == held.RefreshTokenHash {
		t.Fatalf("after Put: Failures %d NotBefore %v, token hash unchanged %v", got.Failures, got.NotBefore, got.RefreshTokenHash == held.RefreshTokenHash)
	}
	// No lease, no cooldown, no intent.
	next := mustClaim(t, s, "a", gen, "owner-2", longTTL)
	wantLease(t, next, false, 1)
	if err := tokencache.Renew(ctx, s, held, longTTL); !errors.Is(err, tokencache.ErrLeaseLost) {
		t.Fatalf("Renew of a lease from before Put: %v, want ErrLeaseLost", err)
	}
}

func testCompareAndSwapKeepsProtocol(t *testing.T, s tokencache.Store, advance func(time.Duration)) {
	ctx := testContext(t)
	gen := mustPut(t, s, FullRecord("a"))
	l := mustClaim(t, s, "a", gen, "owner-1", longTTL)
	gen = mustComplete(t, s, l, failed(tokencache.Unknown, "WALLET_TIMEOUT"))
	before := mustGet(t, s, "a")

	// A CAS that keeps the token (say, a status update) keeps the
	// protocol's state.
	before.LastError = "SOMETHING_ELSE"
	gen, err := tokencache.CompareAndSwap(ctx, s, before, gen)
	if err != nil {
		t.Fatal(err)
	}
	got := mustGet(t, s, "a")
	if got.Failures != 1 || !got.NotBefore.Equal(before.NotBefore) || got.RefreshTokenHash != before.RefreshTokenHash {
		t.Fatalf("after CAS: Failures %d NotBefore %v (was %v), token hash kept %v",
			got.Failures, got.NotBefore, before.NotBefore, got.RefreshTokenHash == before.RefreshTokenHash)
	}
	advance(backoff + slack)
	re := mustClaim(t, s, "a", gen, "owner-2", longTTL)
	wantLease(t, re, true, 2)
	if err := tokencache.Release(ctx, s, re); err != nil {
		t.Fatal(err)
	}

	// A CAS with another refresh token names it anew: no intent is about it.
	got.RefreshToken = token("refresh")
	gen, err = tokencache.CompareAndSwap(ctx, s, got, gen)
	if err != nil {
		t.Fatal(err)
	}
	if h := mustGet(t, s, "a").RefreshTokenHash; h == before.RefreshTokenHash || h == "" {
		t.Fatalf("token hash after CAS with a new token: %q (was %q)", h, before.RefreshTokenHash)
	}
	next := mustClaim(t, s, "a", gen, "owner-2", longTTL)
	wantLease(t, next, false, 1)
}

func testReadOnlyFields(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	rec := FullRecord("a")
	rec.RefreshTokenHash = "caller-chosen"
	rec.Failures = 7
	rec.NotBefore = storeNow(t, s).Add(time.Hour)
	gen := mustPut(t, s, rec)
	if rec.RefreshTokenHash != "caller-chosen" || rec.Failures != 7 {
		t.Fatal("Put modified its argument")
	}
	got := mustGet(t, s, "a")
	if got.RefreshTokenHash == "caller-chosen" || got.Failures != 0 || !got.NotBefore.IsZero() {
		t.Fatalf("read-only fields taken from the caller: %q %d %v", got.RefreshTokenHash, got.Failures, got.NotBefore)
	}
	mustClaim(t, s, "a", gen, "owner-1", longTTL) // no cooldown
}

var hashForm = regexp.MustCompile(`^[0-9a-f]{32}$`)

func testRefreshTokenHash(t *testing.T, s tokencache.Store, _ func(time.Duration)) {
	a := FullRecord("a")
	mustPut(t, s, a)
	ha := mustGet(t, s, "a").RefreshTokenHash
	if !hashForm.MatchString(ha) {
		t.Fatalf("RefreshTokenHash %q: not 32 hex digits", ha)
	}
	if strings.Contains(ha, a.RefreshToken.Reveal()) {
		t.Fatal("RefreshTokenHash holds the token")
	}
	// Stable for one token and customer; different for another token or
	// another customer.
	mustPut(t, s, a)
	if h := mustGet(t, s, "a").RefreshTokenHash; h != ha {
		t.Fatalf("same token, hash %q then %q", ha, h)
	}
	b := FullRecord("b")
	b.RefreshToken = a.RefreshToken
	mustPut(t, s, b)
	if h := mustGet(t, s, "b").RefreshTokenHash; h == ha || !hashForm.MatchString(h) {
		t.Fatalf("another customer's hash of the same token: %q (a: %q)", h, ha)
	}
	mustPut(t, s, FullRecord("a"))
	if h := mustGet(t, s, "a").RefreshTokenHash; h == ha {
		t.Fatal("another token, same hash")
	}
}

// CheckDueIndex puts n customers with scattered NextRefresh times (past,
// future, none), moves and deletes some, and checks Due against the
// records themselves for several limits and bucket sets. Run it on a store
// with few buckets, so that each holds many customers.
func CheckDueIndex(t *testing.T, s tokencache.Store, n int) {
	ctx := testContext(t)
	now := storeNow(t, s).Truncate(time.Millisecond)
	want := map[string]time.Time{} // id -> NextRefresh, zero: not scheduled
	gens := map[string]int64{}
	for i := range n {
		id := fmt.Sprintf("cust-%03d", i)
		rec := FullRecord(id)
		switch i % 5 {
		case 0:
			rec.NextRefresh = time.Time{}
		case 1:
			rec.NextRefresh = now.Add(time.Duration(i) * time.Minute)
		default:
			// Past, with ties: several customers share a due time.
			rec.NextRefresh = now.Add(-time.Duration(i%17+1) * time.Second)
		}
		gens[id] = mustPut(t, s, rec)
		want[id] = storedTime(rec.NextRefresh)
	}
	for i := 0; i < n; i += 7 {
		id := fmt.Sprintf("cust-%03d", i)
		if i%2 == 0 {
			mustDelete(t, s, id)
			delete(want, id)
			continue
		}
		rec := mustGet(t, s, id)
		rec.NextRefresh = now.Add(-time.Duration(i) * time.Millisecond)
		if _, err := tokencache.CompareAndSwap(ctx, s, rec, gens[id]); err != nil {
			t.Fatal(err)
		}
		want[id] = rec.NextRefresh
	}

	all := allBuckets(s)
	for _, buckets := range [][]int{all, all[:1], all[len(all)/2:]} {
		in := map[int]bool{}
		for _, b := range buckets {
			in[b] = true
		}
		var expect []tokencache.DueEntry
		for id, at := range want {
			if !at.IsZero() && !at.After(now) && in[tokencache.Bucket(id, s.Buckets())] {
				expect = append(expect, tokencache.DueEntry{CustomerID: id, Due: at})
			}
		}
		sortDue(expect)
		for _, limit := range []int{1, 3, len(expect) / 2, len(expect), len(expect) + 10} {
			if limit <= 0 {
				continue
			}
			got, err := s.Due(ctx, buckets, limit)
			if err != nil {
				t.Fatal(err)
			}
			w := expect[:min(limit, len(expect))]
			if len(got) != len(w) {
				t.Fatalf("Due(%d buckets, limit %d): %d entries, want %d", len(buckets), limit, len(got), len(w))
			}
			for i := range w {
				if got[i].CustomerID != w[i].CustomerID || !got[i].Due.Equal(w[i].Due) {
					t.Fatalf("Due(%d buckets, limit %d)[%d] = %s at %v, want %s at %v",
						len(buckets), limit, i, got[i].CustomerID, got[i].Due, w[i].CustomerID, w[i].Due)
				}
			}
		}
	}
}

func storedTime(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return time.UnixMilli(t.UnixMilli())
}

func sortDue(d []tokencache.DueEntry) {
	sort.Slice(d, func(i, j int) bool {
		if !d[i].Due.Equal(d[j].Due) {
			return d[i].Due.Before(d[j].Due)
		}
		return d[i].CustomerID < d[j].CustomerID
	})
}
