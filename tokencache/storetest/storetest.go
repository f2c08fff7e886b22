// Package storetest is the conformance suite of tokencache.Store: every
// implementation runs it and must pass all of it, so callers can rely on the
// same semantics whichever store is configured.
package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// Run runs the suite as subtests of t. newStore is called once per subtest
// and must return an empty store that no other subtest uses (subtests run
// in parallel); it may share a server with others under a distinct key
// prefix.
func Run(t *testing.T, newStore func(t *testing.T) tokencache.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s tokencache.Store)
	}{
		{"GetUnknown", testGetUnknown},
		{"RoundTripFull", testRoundTripFull},
		{"RoundTripMinimal", testRoundTripMinimal},
		{"PutReplacesWholeRecord", testPutReplacesWholeRecord},
		{"ReauthorizationRequired", testReauthorizationRequired},
		{"GenerationGrows", testGenerationGrows},
		{"WriteIgnoresInputGeneration", testWriteIgnoresInputGeneration},
		{"CompareAndSwap", testCompareAndSwap},
		{"CompareAndSwapStale", testCompareAndSwapStale},
		{"CompareAndSwapUnknown", testCompareAndSwapUnknown},
		{"CompareAndSwapAfterDelete", testCompareAndSwapAfterDelete},
		{"PutAfterDelete", testPutAfterDelete},
		{"DeleteUnknown", testDeleteUnknown},
		{"DeleteOnlyThatCustomer", testDeleteOnlyThatCustomer},
		{"ConcurrentCompareAndSwap", testConcurrentCompareAndSwap},
		{"ConcurrentPut", testConcurrentPut},
		{"RecordsAreCopies", testRecordsAreCopies},
		{"InvalidRecord", testInvalidRecord},
		{"CanceledContext", testCanceledContext},
		{"Ping", testPing},
		{"Import", testImport},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t))
		})
	}
}

// callTimeout bounds every store call of the suite.
const callTimeout = 10 * time.Second

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

// token returns a fresh random token, so that no two records or test runs
// share one.
func token(kind string) tokencache.Secret {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return tokencache.Secret(kind + "-" + hex.EncodeToString(b))
}

// FullRecord returns a record with every field set, tokens random, times
// with sub-millisecond parts and a non-UTC zone (stores keep milliseconds;
// comparisons use Equal). Times lie in the future, so no store forgets it.
func FullRecord(customerID string) *tokencache.Record {
	base := time.Now().Add(time.Hour).Truncate(time.Second).Add(123_456_789 * time.Nanosecond).
		In(time.FixedZone("UTC+1", 3600))
	return &tokencache.Record{
		CustomerID:         customerID,
		AccessToken:        token("access"),
		AccessTokenExpiry:  base.Add(2 * time.Hour),
		RefreshToken:       token("refresh"),
		RefreshTokenExpiry: base.Add(30 * 24 * time.Hour),
		ExchangePath:       "/v2/authorizations/applyToken",
		Replay: map[string]json.RawMessage{
			"appId":             json.RawMessage(`"app-1"`),
			"authClientId":      json.RawMessage(`"client-9"`),
			"customerBelongsTo": json.RawMessage(`"WALLET"`),
			"extendInfo":        json.RawMessage(`{"a":[1,2,{"b":null}],"c":"d\u00e9"}`),
		},
		State:       tokencache.StateActive,
		LastError:   "EXPIRED_ACCESS_TOKEN",
		LastRefresh: base.Add(-time.Minute),
		LastUsed:    base.Add(-time.Second),
		NextRefresh: base.Add(90 * time.Minute),
	}
}

// minimalRecord has only what an exchange always gives.
func minimalRecord(customerID string) *tokencache.Record {
	return &tokencache.Record{
		CustomerID:        customerID,
		AccessToken:       token("access"),
		AccessTokenExpiry: time.Now().Add(time.Hour),
		RefreshToken:      token("refresh"),
		ExchangePath:      "/v1/authorizations/applyToken",
	}
}

// msTime is t as stores keep it.
func msTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return time.UnixMilli(t.UnixMilli())
}

// CheckRecord fails t unless got holds what want held when it was written:
// every field but Generation and KeyID, times at millisecond precision.
func CheckRecord(t *testing.T, got, want *tokencache.Record) {
	t.Helper()
	if got == nil {
		t.Fatal("record is nil")
	}
	check := func(name string, ok bool, g, w any) {
		t.Helper()
		if !ok {
			t.Errorf("%s = %v, want %v", name, g, w)
		}
	}
	check("CustomerID", got.CustomerID == want.CustomerID, got.CustomerID, want.CustomerID)
	// Tokens are compared without printing them: a Secret redacts anyway.
	check("AccessToken", got.AccessToken.Reveal() == want.AccessToken.Reveal(), "(differs)", "(the written token)")
	check("RefreshToken", got.RefreshToken.Reveal() == want.RefreshToken.Reveal(), "(differs)", "(the written token)")
	for _, tc := range []struct {
		name      string
		got, want time.Time
	}{
		{"AccessTokenExpiry", got.AccessTokenExpiry, want.AccessTokenExpiry},
		{"RefreshTokenExpiry", got.RefreshTokenExpiry, want.RefreshTokenExpiry},
		{"LastRefresh", got.LastRefresh, want.LastRefresh},
		{"LastUsed", got.LastUsed, want.LastUsed},
		{"NextRefresh", got.NextRefresh, want.NextRefresh},
	} {
		w := msTime(tc.want)
		check(tc.name, tc.got.Equal(w) && tc.got.IsZero() == w.IsZero(), tc.got, w)
	}
	check("ExchangePath", got.ExchangePath == want.ExchangePath, got.ExchangePath, want.ExchangePath)
	check("State", got.State == want.State, got.State, want.State)
	check("LastError", got.LastError == want.LastError, got.LastError, want.LastError)
	if len(want.Replay) == 0 {
		check("Replay", got.Replay == nil, got.Replay, nil)
	} else {
		check("Replay", equalJSONMaps(got.Replay, want.Replay), rawMapString(got.Replay), rawMapString(want.Replay))
	}
}

func equalJSONMaps(a, b map[string]json.RawMessage) bool {
	if len(a) != len(b) {
		return false
	}
	for k, av := range a {
		bv, ok := b[k]
		if !ok {
			return false
		}
		var ca, cb bytes.Buffer
		if json.Compact(&ca, av) != nil || json.Compact(&cb, bv) != nil || !bytes.Equal(ca.Bytes(), cb.Bytes()) {
			return false
		}
	}
	return true
}

func rawMapString(m map[string]json.RawMessage) string {
	b, _ := json.Marshal(m)
	return string(b)
}

func mustGet(t *testing.T, s tokencache.Store, customerID string) *tokencache.Record {
	t.Helper()
	rec, err := s.Get(testContext(t), customerID)
	if err != nil {
		t.Fatalf("Get(%q): %v", customerID, err)
	}
	return rec
}

func mustPut(t *testing.T, s tokencache.Store, rec *tokencache.Record) int64 {
	t.Helper()
	gen, err := tokencache.Put(testContext(t), s, rec)
	if err != nil {
		t.Fatalf("Put(%q): %v", rec.CustomerID, err)
	}
	return gen
}

func mustDelete(t *testing.T, s tokencache.Store, customerID string) {
	t.Helper()
	if err := tokencache.Delete(testContext(t), s, customerID); err != nil {
		t.Fatalf("Delete(%q): %v", customerID, err)
	}
}

func wantNotFound(t *testing.T, s tokencache.Store, customerID string) {
	t.Helper()
	rec, err := s.Get(testContext(t), customerID)
	if !errors.Is(err, tokencache.ErrNotFound) {
		t.Fatalf("Get(%q) = %v, %v; want ErrNotFound", customerID, rec != nil, err)
	}
}

func testGetUnknown(t *testing.T, s tokencache.Store) {
	wantNotFound(t, s, "nobody")
}

func testRoundTripFull(t *testing.T, s tokencache.Store) {
	want := FullRecord("cust-full")
	gen := mustPut(t, s, want)
	got := mustGet(t, s, want.CustomerID)
	CheckRecord(t, got, want)
	if got.Generation != gen {
		t.Errorf("Generation = %d, Put returned %d", got.Generation, gen)
	}
	if gen <= 0 {
		t.Errorf("generation %d, want > 0", gen)
	}
}

func testRoundTripMinimal(t *testing.T, s tokencache.Store) {
	want := minimalRecord("cust-min")
	mustPut(t, s, want)
	got := mustGet(t, s, want.CustomerID)
	CheckRecord(t, got, want)
	if !got.RefreshTokenExpiry.IsZero() || !got.NextRefresh.IsZero() || !got.LastUsed.IsZero() || !got.LastRefresh.IsZero() {
		t.Errorf("unset times read back non-zero: %+v", got)
	}
}

func testPutReplacesWholeRecord(t *testing.T, s tokencache.Store) {
	mustPut(t, s, FullRecord("cust-replace"))
	want := minimalRecord("cust-replace")
	mustPut(t, s, want)
	CheckRecord(t, mustGet(t, s, want.CustomerID), want)

	// A CAS writes the whole record as given too.
	full := FullRecord("cust-replace")
	gen := mustPut(t, s, full)
	if _, err := tokencache.CompareAndSwap(testContext(t), s, want, gen); err != nil {
		t.Fatalf("CompareAndSwap: %v", err)
	}
	CheckRecord(t, mustGet(t, s, want.CustomerID), want)
}

func testReauthorizationRequired(t *testing.T, s tokencache.Store) {
	rec := FullRecord("cust-reauth")
	gen := mustPut(t, s, rec)
	rec.State = tokencache.StateReauthorizationRequired
	rec.LastError = "USED_REFRESH_TOKEN"
	rec.NextRefresh = time.Time{}
	if _, err := tokencache.CompareAndSwap(testContext(t), s, rec, gen); err != nil {
		t.Fatalf("CompareAndSwap: %v", err)
	}
	CheckRecord(t, mustGet(t, s, rec.CustomerID), rec)

	// A new exchange clears the state.
	fresh := FullRecord("cust-reauth")
	fresh.LastError = ""
	mustPut(t, s, fresh)
	got := mustGet(t, s, rec.CustomerID)
	if got.State != tokencache.StateActive || got.LastError != "" {
		t.Errorf("after Put: State %q LastError %q, want active and none", got.State, got.LastError)
	}
}

func testGenerationGrows(t *testing.T, s tokencache.Store) {
	rec := FullRecord("cust-gen")
	last := mustPut(t, s, rec)
	for i := range 6 {
		var gen int64
		var err error
		if i%2 == 0 {
			gen, err = tokencache.CompareAndSwap(testContext(t), s, rec, last)
		} else {
			gen, err = tokencache.Put(testContext(t), s, rec)
		}
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if gen <= last {
			t.Fatalf("write %d: generation %d, not above %d", i, gen, last)
		}
		last = gen
	}
	if got := mustGet(t, s, rec.CustomerID).Generation; got != last {
		t.Fatalf("Generation = %d, want %d", got, last)
	}
}

func testWriteIgnoresInputGeneration(t *testing.T, s tokencache.Store) {
	rec := FullRecord("cust-ignore")
	rec.Generation = 1 << 40
	rec.KeyID = "not-a-key"
	before := *rec
	gen := mustPut(t, s, rec)
	if gen == rec.Generation {
		t.Fatalf("Put used the caller's generation")
	}
	if rec.Generation != before.Generation || rec.KeyID != before.KeyID || rec.AccessToken != before.AccessToken {
		t.Fatalf("Put modified its argument")
	}
	got := mustGet(t, s, rec.CustomerID)
	if got.Generation != gen {
		t.Fatalf("Generation = %d, want %d", got.Generation, gen)
	}
	if got.KeyID == "not-a-key" {
		t.Fatalf("KeyID was taken from the caller")
	}
}

func testCompareAndSwap(t *testing.T, s tokencache.Store) {
	gen := mustPut(t, s, FullRecord("cust-cas"))
	want := FullRecord("cust-cas")
	gen2, err := tokencache.CompareAndSwap(testContext(t), s, want, gen)
	if err != nil {
		t.Fatalf("CompareAndSwap: %v", err)
	}
	if gen2 <= gen {
		t.Fatalf("generation %d, not above %d", gen2, gen)
	}
	got := mustGet(t, s, want.CustomerID)
	CheckRecord(t, got, want)
	if got.Generation != gen2 {
		t.Fatalf("Generation = %d, want %d", got.Generation, gen2)
	}
}

func testCompareAndSwapStale(t *testing.T, s tokencache.Store) {
	gen1 := mustPut(t, s, FullRecord("cust-stale"))
	current := FullRecord("cust-stale")
	gen2, err := tokencache.CompareAndSwap(testContext(t), s, current, gen1)
	if err != nil {
		t.Fatalf("CompareAndSwap: %v", err)
	}
	for _, expect := range []int64{gen1, gen2 + 1, 0, -1} {
		_, err := tokencache.CompareAndSwap(testContext(t), s, FullRecord("cust-stale"), expect)
		if !errors.Is(err, tokencache.ErrConflict) {
			t.Errorf("CompareAndSwap(expect %d) with generation %d: %v, want ErrConflict", expect, gen2, err)
		}
	}
	got := mustGet(t, s, "cust-stale")
	CheckRecord(t, got, current)
	if got.Generation != gen2 {
		t.Fatalf("Generation = %d after failed swaps, want %d", got.Generation, gen2)
	}
}

func testCompareAndSwapUnknown(t *testing.T, s tokencache.Store) {
	for _, expect := range []int64{0, 1} {
		_, err := tokencache.CompareAndSwap(testContext(t), s, FullRecord("cust-none"), expect)
		if !errors.Is(err, tokencache.ErrNotFound) {
			t.Errorf("CompareAndSwap(expect %d) on unknown customer: %v, want ErrNotFound", expect, err)
		}
	}
	wantNotFound(t, s, "cust-none")
}

func testCompareAndSwapAfterDelete(t *testing.T, s tokencache.Store) {
	rec := FullRecord("cust-deleted")
	gen := mustPut(t, s, rec)
	mustDelete(t, s, rec.CustomerID)
	// A refresh that read the record before the delete must not write it back.
	for _, expect := range []int64{gen, gen + 1} {
		_, err := tokencache.CompareAndSwap(testContext(t), s, rec, expect)
		if !errors.Is(err, tokencache.ErrNotFound) {
			t.Errorf("CompareAndSwap(expect %d) after Delete: %v, want ErrNotFound", expect, err)
		}
	}
	wantNotFound(t, s, rec.CustomerID)
}

func testPutAfterDelete(t *testing.T, s tokencache.Store) {
	rec := FullRecord("cust-again")
	gen := mustPut(t, s, rec)
	gen, err := tokencache.CompareAndSwap(testContext(t), s, rec, gen)
	if err != nil {
		t.Fatal(err)
	}
	mustDelete(t, s, rec.CustomerID)
	want := FullRecord("cust-again")
	gen2 := mustPut(t, s, want)
	if gen2 <= gen {
		t.Fatalf("generation after Delete and Put = %d, not above %d", gen2, gen)
	}
	got := mustGet(t, s, want.CustomerID)
	CheckRecord(t, got, want)
	// The old generation is dead for good.
	if _, err := tokencache.CompareAndSwap(testContext(t), s, rec, gen); !errors.Is(err, tokencache.ErrConflict) {
		t.Fatalf("CompareAndSwap with the generation from before Delete: %v, want ErrConflict", err)
	}
	// Delete and Put again: higher still.
	mustDelete(t, s, want.CustomerID)
	if gen3 := mustPut(t, s, want); gen3 <= gen2 {
		t.Fatalf("generation after second Delete and Put = %d, not above %d", gen3, gen2)
	}
}

func testDeleteUnknown(t *testing.T, s tokencache.Store) {
	mustDelete(t, s, "cust-never")
	wantNotFound(t, s, "cust-never")
	mustPut(t, s, FullRecord("cust-twice"))
	mustDelete(t, s, "cust-twice")
	mustDelete(t, s, "cust-twice")
	wantNotFound(t, s, "cust-twice")
}

func testDeleteOnlyThatCustomer(t *testing.T, s tokencache.Store) {
	a, b := FullRecord("cust-a"), FullRecord("cust-b")
	mustPut(t, s, a)
	mustPut(t, s, b)
	mustDelete(t, s, a.CustomerID)
	wantNotFound(t, s, a.CustomerID)
	CheckRecord(t, mustGet(t, s, b.CustomerID), b)
}

// concurrency is how many goroutines race in the concurrent tests.
const concurrency = 32

func testConcurrentCompareAndSwap(t *testing.T, s tokencache.Store) {
	gen := mustPut(t, s, FullRecord("cust-race"))
	recs := make([]*tokencache.Record, concurrency)
	for i := range recs {
		recs[i] = FullRecord("cust-race")
	}
	type result struct {
		i   int
		gen int64
		err error
	}
	results := make(chan result, concurrency)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range concurrency {
		wg.Go(func() {
			<-start
			g, err := tokencache.CompareAndSwap(testContext(t), s, recs[i], gen)
			results <- result{i, g, err}
		})
	}
	close(start)
	wg.Wait()
	close(results)

	winner := -1
	var winGen int64
	for r := range results {
		switch {
		case r.err == nil:
			if winner >= 0 {
				t.Fatalf("two CompareAndSwap calls with the same expected generation won: %d and %d", winner, r.i)
			}
			winner, winGen = r.i, r.gen
		case errors.Is(r.err, tokencache.ErrConflict):
		default:
			t.Errorf("CompareAndSwap %d: %v, want nil or ErrConflict", r.i, r.err)
		}
	}
	if winner < 0 {
		t.Fatal("no CompareAndSwap won")
	}
	got := mustGet(t, s, "cust-race")
	CheckRecord(t, got, recs[winner])
	if got.Generation != winGen {
		t.Fatalf("Generation = %d, winner got %d", got.Generation, winGen)
	}
}

func testConcurrentPut(t *testing.T, s tokencache.Store) {
	recs := make([]*tokencache.Record, concurrency)
	for i := range recs {
		recs[i] = FullRecord("cust-puts")
		recs[i].LastError = fmt.Sprintf("CODE_%d", i)
		recs[i].ExchangePath = fmt.Sprintf("/v1/path/%d", i)
		recs[i].Replay = map[string]json.RawMessage{"appId": json.RawMessage(fmt.Sprintf(`"app-%d"`, i))}
	}
	gens := make([]int64, concurrency)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range concurrency {
		wg.Go(func() {
			<-start
			g, err := tokencache.Put(testContext(t), s, recs[i])
			if err != nil {
				t.Errorf("Put %d: %v", i, err)
			}
			gens[i] = g
		})
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}

	seen := make(map[int64]bool)
	var maxGen int64
	last := -1
	for i, g := range gens {
		if seen[g] {
			t.Fatalf("two Puts got generation %d", g)
		}
		seen[g] = true
		if g > maxGen {
			maxGen, last = g, i
		}
	}
	got := mustGet(t, s, "cust-puts")
	if got.Generation != maxGen {
		t.Fatalf("Generation = %d, want the highest returned, %d", got.Generation, maxGen)
	}
	// The stored record is wholly the one of the last write, not a mix.
	CheckRecord(t, got, recs[last])
}

func testRecordsAreCopies(t *testing.T, s tokencache.Store) {
	rec := FullRecord("cust-copy")
	want := FullRecord("cust-copy")
	*want = *rec
	want.Replay = map[string]json.RawMessage{}
	for k, v := range rec.Replay {
		want.Replay[k] = bytes.Clone(v)
	}
	mustPut(t, s, rec)

	// Changing what was written changes nothing stored.
	rec.AccessToken = "changed"
	rec.Replay["appId"][1] = 'X'
	rec.Replay["new"] = json.RawMessage(`1`)
	CheckRecord(t, mustGet(t, s, want.CustomerID), want)

	// Changing what was read changes nothing stored.
	got := mustGet(t, s, want.CustomerID)
	got.RefreshToken = "changed"
	got.LastError = "CHANGED"
	got.Replay["appId"][1] = 'Y'
	got.Replay["other"] = json.RawMessage(`2`)
	delete(got.Replay, "extendInfo")
	CheckRecord(t, mustGet(t, s, want.CustomerID), want)
}

func testInvalidRecord(t *testing.T, s tokencache.Store) {
	badReplay := FullRecord("cust-bad")
	badReplay.Replay = map[string]json.RawMessage{"extendInfo": json.RawMessage(`{"a":`)}
	for _, tc := range []struct {
		name string
		rec  *tokencache.Record
	}{
		{"no customer id", &tokencache.Record{AccessToken: "a", RefreshToken: "r"}},
		{"replay not JSON", badReplay},
	} {
		if _, err := tokencache.Put(testContext(t), s, tc.rec); err == nil {
			t.Errorf("Put(%s) succeeded", tc.name)
		}
	}
	wantNotFound(t, s, "cust-bad")

	good := FullRecord("cust-bad")
	gen := mustPut(t, s, good)
	if _, err := tokencache.CompareAndSwap(testContext(t), s, badReplay, gen); err == nil || errors.Is(err, tokencache.ErrConflict) {
		t.Errorf("CompareAndSwap with invalid replay: %v, want a validation error", err)
	}
	CheckRecord(t, mustGet(t, s, good.CustomerID), good)
}

func testCanceledContext(t *testing.T, s tokencache.Store) {
	rec := FullRecord("cust-ctx")
	gen := mustPut(t, s, rec)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	calls := map[string]func() error{
		"Get":    func() error { _, err := s.Get(ctx, rec.CustomerID); return err },
		"Put":    func() error { _, err := tokencache.Put(ctx, s, FullRecord(rec.CustomerID)); return err },
		"CAS":    func() error { _, err := tokencache.CompareAndSwap(ctx, s, FullRecord(rec.CustomerID), gen); return err },
		"Delete": func() error { return tokencache.Delete(ctx, s, rec.CustomerID) },
		"Ping":   func() error { return s.Ping(ctx) },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context: %v, want context.Canceled", name, err)
		}
	}
	got := mustGet(t, s, rec.CustomerID)
	CheckRecord(t, got, rec)
	if got.Generation != gen {
		t.Errorf("Generation = %d after canceled writes, want %d", got.Generation, gen)
	}
}

func testPing(t *testing.T, s tokencache.Store) {
	if err := s.Ping(testContext(t)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

// testImport: Import writes a customer's pair unless the stored one expires
// no earlier, as Put for a new customer and as CompareAndSwap otherwise.
func testImport(t *testing.T, s tokencache.Store) {
	ctx := testContext(t)
	older := FullRecord("a")
	newer := FullRecord("a")
	newer.AccessTokenExpiry = older.AccessTokenExpiry.Add(time.Hour)
	if wrote, err := tokencache.Import(ctx, s, older); err != nil || !wrote {
		t.Fatalf("Import of a new customer: %v, %v", wrote, err)
	}
	gen := mustGet(t, s, "a").Generation
	for _, rec := range []*tokencache.Record{older, FullRecord("a")} {
		rec.AccessTokenExpiry = older.AccessTokenExpiry
		if wrote, err := tokencache.Import(ctx, s, rec); err != nil || wrote {
			t.Fatalf("Import of a pair expiring no later: %v, %v", wrote, err)
		}
	}
	if wrote, err := tokencache.Import(ctx, s, newer); err != nil || !wrote {
		t.Fatalf("Import of a newer pair: %v, %v", wrote, err)
	}
	got := mustGet(t, s, "a")
	CheckRecord(t, got, newer)
	if got.Generation != gen+1 {
		t.Fatalf("generation %d after Import over %d", got.Generation, gen)
	}
	mustDelete(t, s, "a")
	if wrote, err := tokencache.Import(ctx, s, older); err != nil || !wrote || mustGet(t, s, "a").Generation <= gen+1 {
		t.Fatalf("Import after Delete: %v, %v: want written above the tombstone", wrote, err)
	}
}
