package refresher

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// headroomCounts gathers tokenproxy_refresh_headroom_seconds{trigger} and
// returns its sample count and cumulative bucket counts by upper bound,
// and its sum under the key -1.
func headroomCounts(t *testing.T, m *Metrics, trigger string) (uint64, map[float64]float64) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.headroom)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, s := range mf.GetMetric() {
			if len(s.GetLabel()) != 1 || s.GetLabel()[0].GetValue() != trigger {
				continue
			}
			buckets := make(map[float64]float64)
			for _, b := range s.GetHistogram().GetBucket() {
				buckets[b.GetUpperBound()] = float64(b.GetCumulativeCount())
			}
			buckets[-1] = s.GetHistogram().GetSampleSum()
			return s.GetHistogram().GetSampleCount(), buckets
		}
	}
	t.Fatalf("no headroom series for trigger %q", trigger)
	return 0, nil
}

func TestHeadroomObservedOnSuccessfulRefresh(t *testing.T) {
	f := newFixture(t)
	for _, tr := range allTriggers {
		if n, _ := headroomCounts(t, f.metrics, tr); n != 0 {
			t.Fatalf("trigger %s: %d observations before any refresh", tr, n)
		}
	}
	f.install(t, time.Hour, time.Time{})

	// Forced 50 minutes ahead of expiry: 3000 s of headroom.
	f.clock.add(10 * time.Minute)
	if _, err := f.r.Refresh(ctx(t), "c1"); err != nil {
		t.Fatal(err)
	}
	n, b := headroomCounts(t, f.metrics, TriggerForced)
	if n != 1 || b[1800] != 0 || b[3600] != 1 || b[-1] != 3000 {
		t.Fatalf("forced: count %d, buckets %v; want one observation in (1800, 3600]", n, b)
	}

	// The new token (1 h) is left to expire: the on-demand refresh had
	// no headroom left, counted in the 0 bucket (negative clamps to 0).
	f.clock.add(2 * time.Hour)
	if _, err := f.r.Token(ctx(t), "c1"); err != nil {
		t.Fatal(err)
	}
	n, b = headroomCounts(t, f.metrics, TriggerOnDemand)
	if n != 1 || b[0] != 1 || b[-1] != 0 {
		t.Fatalf("on demand: count %d, buckets %v; want one observation of 0", n, b)
	}

	// A failed refresh observes nothing.
	f.clock.add(2 * time.Hour)
	f.wallet.setErr(wallet.ErrTimeout)
	if _, err := f.r.Token(ctx(t), "c1"); err == nil {
		t.Fatal("no error from a failed refresh")
	}
	if n, _ := headroomCounts(t, f.metrics, TriggerOnDemand); n != 1 {
		t.Fatalf("on demand: %d observations after a failed refresh, want still 1", n)
	}
	if n, _ := headroomCounts(t, f.metrics, TriggerScheduled); n != 0 {
		t.Fatalf("scheduled: %d observations, want 0", n)
	}
}

// ghostClaim claims c1's lease as another replica ("ghost") would, and
// returns the lease and the record it claimed.
func ghostClaim(t *testing.T, f *fixture) (*tokencache.Lease, *tokencache.Record) {
	t.Helper()
	rec, err := f.store.Get(ctx(t), "c1")
	if err != nil {
		t.Fatal(err)
	}
	l, err := tokencache.Claim(ctx(t), f.store, "c1", rec.Generation, "ghost", time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	return l, rec
}

// waitCount polls c until it reaches want (a counter another goroutine
// increments), failing after a generous deadline.
func waitCount(t *testing.T, what string, c prometheus.Collector, want float64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for testutil.ToFloat64(c) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s stayed at %v, want %v", what, testutil.ToFloat64(c), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type counts map[string]float64

func checkCounts(t *testing.T, family string, vec *prometheus.CounterVec, want counts, results ...string) {
	t.Helper()
	for _, r := range results {
		if got := testutil.ToFloat64(vec.WithLabelValues(r)); got != want[r] {
			t.Errorf("%s{result=%q} = %v, want %v", family, r, got, want[r])
		}
	}
}

var (
	claimResults = []string{claimWon, claimHeld, claimConflict, claimCooldown, claimEnded, claimError}
	waitResults  = []string{waitJoined, waitClaimed, waitTimeout, waitFailed}
)

func TestClaimsAndWaitsForAnotherReplicasRefresh(t *testing.T) {
	refreshed := func(f *fixture) tokencache.Outcome {
		now := f.clock.now()
		return tokencache.Outcome{Kind: tokencache.Refreshed, Record: &tokencache.Record{
			AccessToken: "access-ghost", AccessTokenExpiry: now.Add(time.Hour),
			RefreshToken: "refresh-ghost", LastRefresh: now, NextRefresh: now.Add(55 * time.Minute),
		}}
	}
	tests := []struct {
		name string
		// end ends the ghost's refresh while r2 waits; stop is r2.Close
		// (the shutdown case).
		end        func(t *testing.T, f *fixture, l *tokencache.Lease, stop func())
		wantToken  string // "" when r2's call fails
		wantCalls  int64
		wantClaims counts
		wantWaits  counts
	}{
		{
			name: "the holder refreshed: joined without a wallet call",
			end: func(t *testing.T, f *fixture, l *tokencache.Lease, _ func()) {
				if _, err := tokencache.Complete(ctx(t), f.store, l, refreshed(f)); err != nil {
					t.Fatal(err)
				}
			},
			wantToken:  "access-ghost",
			wantClaims: counts{claimHeld: 1},
			wantWaits:  counts{waitJoined: 1},
		},
		{
			name: "the holder let go without presenting: claimed and presented",
			end: func(t *testing.T, f *fixture, l *tokencache.Lease, _ func()) {
				if err := tokencache.Release(ctx(t), f.store, l); err != nil {
					t.Fatal(err)
				}
			},
			wantToken:  "access-1",
			wantCalls:  1,
			wantClaims: counts{claimHeld: 1, claimWon: 1},
			wantWaits:  counts{waitClaimed: 1},
		},
		{
			name: "the holder's token was refused: failed",
			end: func(t *testing.T, f *fixture, l *tokencache.Lease, _ func()) {
				o := tokencache.Outcome{Kind: tokencache.Rejected, Code: wallet.CodeUsedRefreshToken}
				if _, err := tokencache.Complete(ctx(t), f.store, l, o); err != nil {
					t.Fatal(err)
				}
			},
			wantClaims: counts{claimHeld: 1},
			wantWaits:  counts{waitFailed: 1},
		},
		{
			name:       "shut down while waiting: timeout",
			end:        func(_ *testing.T, _ *fixture, _ *tokencache.Lease, stop func()) { stop() },
			wantClaims: counts{claimHeld: 1},
			wantWaits:  counts{waitTimeout: 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			m2 := NewMetrics(prometheus.NewRegistry())
			r2 := f.replica(t, "r2", m2)
			f.install(t, time.Minute, time.Time{})
			f.clock.add(2 * time.Minute) // expired: a caller waits for the refresh
			l, _ := ghostClaim(t, f)

			type result struct {
				tok Token
				err error
			}
			done := make(chan result, 1)
			go func() {
				tok, err := r2.Token(ctx(t), "c1")
				done <- result{tok, err}
			}()
			// Each wait round claims once more: the first refused claim
			// means r2 is waiting.
			waitCount(t, "claims{held}", m2.claims.WithLabelValues(claimHeld), 1)
			tc.end(t, f, l, r2.Close)
			res := <-done
			if tc.wantToken == "" && res.err == nil {
				t.Fatalf("r2 got a token %q, want an error", res.tok.Value.Reveal())
			}
			if tc.wantToken != "" && (res.err != nil || res.tok.Value.Reveal() != tc.wantToken) {
				t.Fatalf("r2 got %q, %v; want %q", res.tok.Value.Reveal(), res.err, tc.wantToken)
			}
			if n := f.wallet.calls.Load(); n != tc.wantCalls {
				t.Fatalf("%d wallet calls, want %d", n, tc.wantCalls)
			}
			// Held is counted once per round of waiting: at least once.
			tc.wantClaims[claimHeld] = max(testutil.ToFloat64(m2.claims.WithLabelValues(claimHeld)), 1)
			checkCounts(t, "tokenproxy_refresh_claims_total", m2.claims, tc.wantClaims, claimResults...)
			checkCounts(t, "tokenproxy_refresh_waits_total", m2.waits, tc.wantWaits, waitResults...)
			// The replica that did nothing counted nothing.
			checkCounts(t, "tokenproxy_refresh_claims_total (r1)", f.metrics.claims, counts{}, claimResults...)
		})
	}
}

func TestScheduledRefreshSkipsAHeldLeaseWithoutWaiting(t *testing.T) {
	f := newFixture(t)
	f.install(t, time.Hour, time.Time{})
	f.clock.add(58 * time.Minute) // due
	ghostClaim(t, f)
	if _, err := f.r.refresh(ctx(t), "c1", TriggerScheduled, f.r.notDue); err != nil {
		t.Fatal(err)
	}
	checkCounts(t, "tokenproxy_refresh_claims_total", f.metrics.claims, counts{claimHeld: 1}, claimResults...)
	checkCounts(t, "tokenproxy_refresh_waits_total", f.metrics.waits, counts{}, waitResults...)
	if n := f.wallet.calls.Load(); n != 0 {
		t.Fatalf("%d wallet calls", n)
	}
}

// claimScriptStore fails the first Claims with the scripted errors, then
// claims for real.
type claimScriptStore struct {
	*tokencache.Memory
	errs []error
}

func (s *claimScriptStore) Update(ctx context.Context, id string, d tokencache.Decision) error {
	if d.Op == tokencache.OpClaim && len(s.errs) > 0 {
		err := s.errs[0]
		s.errs = s.errs[1:]
		return err
	}
	return s.Memory.Update(ctx, id, d)
}

func TestClaimResultsCounted(t *testing.T) {
	tests := []struct {
		name    string
		errs    []error
		wantErr bool
		want    counts
	}{
		{name: "won at once", want: counts{claimWon: 1}},
		{name: "conflict, read again, won", errs: []error{tokencache.ErrConflict}, want: counts{claimConflict: 1, claimWon: 1}},
		{name: "cooling down", errs: []error{&tokencache.BackoffError{Remaining: time.Second, LastError: wallet.CodeWalletTimeout}},
			wantErr: true, want: counts{claimCooldown: 1}},
		{name: "reauthorization needed meanwhile", errs: []error{tokencache.ErrNotActive}, wantErr: true, want: counts{claimEnded: 1}},
		{name: "deleted meanwhile", errs: []error{tokencache.ErrNotFound}, wantErr: true, want: counts{claimEnded: 1}},
		{name: "store down", errs: []error{tokencache.ErrUnavailable}, wantErr: true, want: counts{claimError: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			m := NewMetrics(prometheus.NewRegistry())
			r := New(Config{Store: &claimScriptStore{Memory: f.store, errs: tc.errs}, Wallet: f.wallet, Metrics: m,
				Now: f.clock.now, RefreshRate: 1000, Lease: 5 * time.Second})
			t.Cleanup(r.Close)
			f.install(t, time.Minute, time.Time{})
			f.clock.add(2 * time.Minute)
			_, err := r.Token(ctx(t), "c1")
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if tc.want[claimError] > 0 && testutil.ToFloat64(m.storeErrors.WithLabelValues("claim")) != 1 {
				t.Error("a failed claim is not a store error")
			}
			checkCounts(t, "tokenproxy_refresh_claims_total", m.claims, tc.want, claimResults...)
			checkCounts(t, "tokenproxy_refresh_waits_total", m.waits, counts{}, waitResults...)
			if errors.Is(err, ErrNotAuthorized) != (tc.errs != nil && errors.Is(tc.errs[0], tokencache.ErrNotFound)) {
				t.Errorf("err %v", err)
			}
		})
	}
}

func TestNewMetricsInitialisesEveryKnownSeries(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	NewMetrics(reg)
	want := map[string]int{
		"tokenproxy_refresh_headroom_seconds": len(allTriggers),
		"tokenproxy_refresh_claims_total":     len(claimResults),
		"tokenproxy_refresh_waits_total":      len(waitResults),
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if n, ok := want[mf.GetName()]; ok {
			if len(mf.GetMetric()) != n {
				t.Errorf("%s: %d series at start, want %d", mf.GetName(), len(mf.GetMetric()), n)
			}
			delete(want, mf.GetName())
		}
	}
	for name := range want {
		t.Errorf("%s not registered", name)
	}
}
