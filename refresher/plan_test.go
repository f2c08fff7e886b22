package refresher

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// The planner's tests inject now and count: no clock runs.

// planT0 is a slot boundary (10 s slots).
var planT0 = time.Unix(1_800_000_000, 0)

// warnCounter counts log records at warn and above.
type warnCounter struct{ n atomic.Int64 }

func (w *warnCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnCounter) Handle(context.Context, slog.Record) error    { w.n.Add(1); return nil }
func (w *warnCounter) WithAttrs([]slog.Attr) slog.Handler           { return w }
func (w *warnCounter) WithGroup(string) slog.Handler                { return w }

type planFixture struct {
	p         *Planner
	shortfall prometheus.Counter
	warns     *warnCounter
}

// newPlan is a planner at rate 10/s, one replica: 80 refreshes a slot.
func newPlan(t *testing.T, before, jitter time.Duration) *planFixture {
	t.Helper()
	f := &planFixture{
		shortfall: prometheus.NewCounter(prometheus.CounterOpts{Name: "shortfall"}),
		warns:     &warnCounter{},
	}
	f.p = NewPlanner(PlanConfig{
		Book: tokencache.NewMemory(tokencache.MemoryConfig{}), Before: before, Jitter: jitter, Rate: 10,
		Shortfall: f.shortfall, Logger: slog.New(f.warns),
	})
	if c := f.p.Capacity(); c != 80 {
		t.Fatalf("capacity %d, want 80 (0.8 × 10/s × 10 s)", c)
	}
	return f
}

// serve simulates the fleet draining the plan: refreshes in order of due
// time at capacity per slot (the fleet's booked rate), one at a time; it
// returns how many were done after their token expired.
func serve(due, expiry []time.Time, perSecond float64) (late int) {
	idx := make([]int, len(due))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return due[a].Compare(due[b]) })
	step := time.Duration(float64(time.Second) / perSecond)
	var t time.Time
	for _, i := range idx {
		if t.Before(due[i]) {
			t = due[i]
		}
		t = t.Add(step)
		if t.After(expiry[i]) {
			late++
		}
	}
	return late
}

func TestPlanKeepsTheFixedLeadWithoutAWave(t *testing.T) {
	f := newPlan(t, 5*time.Minute, 0)
	exp := planT0.Add(time.Hour)
	for i := range 80 {
		got := f.p.Plan(context.Background(), planT0, exp)
		// Its own slot has room for all 80: the fixed lead, exactly.
		if want := exp.Add(-5 * time.Minute); !got.Equal(want) {
			t.Fatalf("refresh %d due %s before expiry, want the 5m lead", i, exp.Sub(got))
		}
	}
	// A token living less than a slot, planned mid-slot, is not due
	// before its fixed-lead time either (a random point of its slot could
	// be right away, while its caller is still active).
	short := newPlan(t, 0, 0)
	now := planT0.Add(3 * time.Second)
	if got := short.p.Plan(context.Background(), now, now.Add(5*time.Second)); !got.Equal(now.Add(5 * time.Second)) {
		t.Fatalf("5 s token with no lead due %s after now, want at its expiry", got.Sub(now))
	}
	if n := testutil.ToFloat64(f.shortfall); n != 0 {
		t.Fatalf("shortfall %v", n)
	}
}

// TestPlanSpreadsAWaveAhead: a wave for a 10/s fleet larger than its rate
// × (lead + jitter + the wave's span): 6,000 tokens expiring within the
// same 2 minutes, a 5-minute lead, which at the 8/s booked takes 750 s.
// Planned in a random order (as customers arrive), every one fits: no slot
// over capacity, none later than its fixed lead, and a fleet draining the
// plan at the booked rate refreshes each before expiry, where the fixed
// lead at the full 10/s misses thousands.
func TestPlanSpreadsAWaveAhead(t *testing.T) {
	const n = 6000
	f := newPlan(t, 5*time.Minute, 30*time.Second)
	expiry := make([]time.Time, n)
	for i := range expiry {
		expiry[i] = planT0.Add(30*time.Minute + time.Duration(i)*120*time.Second/n)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	order := rng.Perm(n)
	due := make([]time.Time, n)
	perSlot := map[int64]int{}
	for k, i := range order {
		now := planT0.Add(time.Duration(k) * time.Millisecond) // planned over 6 s
		due[i] = f.p.Plan(context.Background(), now, expiry[i])
		if due[i].Before(now) || due[i].After(expiry[i].Add(-5*time.Minute)) {
			t.Fatalf("token %d due %s before expiry: earlier than now or after its 5m lead", i, expiry[i].Sub(due[i]))
		}
		perSlot[slotOf(due[i])]++
	}
	for s, c := range perSlot {
		if c > 80 {
			t.Fatalf("slot %d holds %d refreshes, capacity 80", s, c)
		}
	}
	if sf := testutil.ToFloat64(f.shortfall); sf != 0 {
		t.Fatalf("shortfall %v on a wave that fits", sf)
	}
	if late := serve(due, expiry, 8); late != 0 {
		t.Fatalf("%d of %d refreshed after expiry at the booked 8/s", late, n)
	}
	// The same wave on the fixed lead with its full jitter (its best
	// case) at the full 10/s: 7.5 minutes at 10/s is 4,500 < 6,000.
	fixed := make([]time.Time, n)
	for i := range fixed {
		fixed[i] = expiry[i].Add(-5*time.Minute - 30*time.Second)
	}
	late := serve(fixed, expiry, 10)
	t.Logf("fixed lead at 10/s: %d of %d late; planned at 8/s: 0", late, n)
	if late < 1000 {
		t.Fatal("the wave does not need planning: resize it")
	}
}

// TestPlanShortfall: 2,000 tokens 200 s from expiry with a 60 s lead: the
// 15 slots up to the lead (140 s) take 1,200; the other 800 are due at
// once, count as shortfall and log one warn line for the wave.
func TestPlanShortfall(t *testing.T) {
	f := newPlan(t, time.Minute, 0)
	exp := planT0.Add(200 * time.Second)
	now := planT0
	var atOnce int
	for range 2000 {
		if got := f.p.Plan(context.Background(), now, exp); got.Equal(now) {
			atOnce++
		} else if got.After(exp.Add(-time.Minute)) || got.Before(now) {
			t.Fatalf("due %s before expiry", exp.Sub(got))
		}
	}
	if sf := testutil.ToFloat64(f.shortfall); sf != 800 {
		t.Fatalf("shortfall %v, want 800", sf)
	}
	if atOnce < 800 {
		t.Fatalf("%d due at once, want at least the 800 without room", atOnce)
	}
	if w := f.warns.n.Load(); w != 1 {
		t.Fatalf("%d warn lines for one wave, want 1", w)
	}
	// Within the minute: no other line; a minute later, one more.
	f.p.Plan(context.Background(), now.Add(30*time.Second), exp)
	if w := f.warns.n.Load(); w != 1 {
		t.Fatalf("%d warn lines 30 s later, want 1", w)
	}
	f.p.Plan(context.Background(), now.Add(61*time.Second), exp)
	if w := f.warns.n.Load(); w != 2 {
		t.Fatalf("%d warn lines a minute later, want 2", w)
	}
}

// TestPlanShortfallEarliestExpiryFirst: tokens already inside their lead
// that find no room are due at their fixed-lead times (in the past), so
// the scheduler, going by due time, serves them earliest expiry first.
func TestPlanShortfallEarliestExpiryFirst(t *testing.T) {
	f := newPlan(t, time.Minute, 0)
	// Tokens expiring in 30 s are due at their half-life, 15 s: slots 0
	// and 1 take 160 of them.
	for range 160 {
		f.p.Plan(context.Background(), planT0, planT0.Add(30*time.Second))
	}
	// These are due at 10, 12 and 11 s: slot 1 at the latest, and full.
	exps := []time.Duration{20 * time.Second, 24 * time.Second, 22 * time.Second}
	due := map[time.Duration]time.Time{}
	for _, e := range exps {
		due[e] = f.p.Plan(context.Background(), planT0, planT0.Add(e))
	}
	if sf := testutil.ToFloat64(f.shortfall); sf != 3 {
		t.Fatalf("shortfall %v, want the 3 tokens", sf)
	}
	if !(due[20*time.Second].Before(due[22*time.Second]) && due[22*time.Second].Before(due[24*time.Second])) {
		t.Fatalf("due times %v not in expiry order", due)
	}
	for e, d := range due {
		if d.After(planT0) {
			t.Fatalf("token expiring in %s due %s from now, want at once", e, d.Sub(planT0))
		}
	}
}

// TestPlanFleetRateFromHeartbeats: the capacity follows the live replicas.
func TestPlanFleetRateFromHeartbeats(t *testing.T) {
	book := tokencache.NewMemory(tokencache.MemoryConfig{})
	p := NewPlanner(PlanConfig{Book: book, Before: time.Minute, Rate: 10})
	for _, o := range []string{"a", "b", "c"} {
		if err := p.Count(context.Background(), o); err != nil {
			t.Fatal(err)
		}
	}
	if c := p.Capacity(); c != 240 {
		t.Fatalf("capacity with 3 replicas %d, want 240", c)
	}
	reader := NewPlanner(PlanConfig{Book: tokencache.NewMemory(tokencache.MemoryConfig{}), Rate: 10})
	if err := reader.Count(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	if c := reader.Capacity(); c != 80 {
		t.Fatalf("capacity with no replica alive %d, want one replica's 80", c)
	}
}

// failingBook fails every call.
type failingBook struct{}

func (failingBook) Book(context.Context, int64, int64, int64) (int64, bool, error) {
	return 0, false, tokencache.ErrUnavailable
}
func (failingBook) Beat(context.Context, string, time.Duration) (int, error) {
	return 0, tokencache.ErrUnavailable
}

func TestPlanFallsBackToTheFixedLead(t *testing.T) {
	p := NewPlanner(PlanConfig{Book: failingBook{}, Before: 5 * time.Minute, Rate: 10})
	exp := planT0.Add(time.Hour)
	if got := p.Plan(context.Background(), planT0, exp); !got.Equal(exp.Add(-5 * time.Minute)) {
		t.Fatalf("due %s before expiry, want the fixed 5m", exp.Sub(got))
	}
}

// TestRefresherPlansInstallAndRefresh: with Config.Plan, Install and a
// successful refresh book the plan; a wave installed together spreads
// over slots at the replica's rate.
func TestRefresherPlansInstallAndRefresh(t *testing.T) {
	f := newFixture(t)
	r := New(Config{
		Store: f.store, Wallet: f.wallet, Metrics: NewMetrics(prometheus.NewRegistry()), Now: f.clock.now,
		Owner: "planned", RefreshBefore: 5 * time.Minute, RefreshRate: 1, UpstreamTimeout: 5 * time.Second,
		Lease: 5 * time.Second, Plan: f.store,
	})
	t.Cleanup(r.Close)
	now := f.clock.now()
	exp := now.Add(time.Hour)
	// 8 a slot at 1/s: 24 installs take the 3 slots before the lead.
	slots := map[int64]int{}
	for i := range 24 {
		id := "w" + string(rune('a'+i))
		err := r.Install(ctx(t), Exchange{Path: "/v1/authorizations/applyToken", Pair: &wallet.TokenResponse{
			CustomerID: id, AccessToken: wallet.Secret("a-" + id), AccessTokenExpiry: exp,
			RefreshToken: wallet.Secret("r-" + id),
		}})
		if err != nil {
			t.Fatal(err)
		}
		rec, err := f.store.Get(ctx(t), id)
		if err != nil {
			t.Fatal(err)
		}
		slots[slotOf(rec.NextRefresh)]++
	}
	lead := slotOf(exp.Add(-5 * time.Minute))
	want := map[int64]int{lead: 8, lead - 1: 8, lead - 2: 8}
	if len(slots) != 3 || slots[lead] != 8 || slots[lead-1] != 8 || slots[lead-2] != 8 {
		t.Fatalf("installs per slot %v, want %v", slots, want)
	}
	// A refresh plans the successor too: the wallet's pair lives an hour
	// from the refresh, and its slot is booked.
	f.clock.add(56 * time.Minute)
	if _, err := r.Refresh(ctx(t), "wa"); err != nil {
		t.Fatal(err)
	}
	rec, err := f.store.Get(ctx(t), "wa")
	if err != nil {
		t.Fatal(err)
	}
	if d := rec.AccessTokenExpiry.Sub(rec.NextRefresh); d < 5*time.Minute || d > 5*time.Minute+10*time.Second {
		t.Fatalf("refreshed token due %s before its expiry, want the 5m lead's slot", d)
	}
}
