package refresher

import (
	"context"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// Capacity-aware planning (issue 17). Without it a token is due a fixed
// lead (RefreshBefore plus jitter) ahead of its expiry, and a wave of
// tokens expiring together that is larger than the fleet's rate × that
// lead cannot all be refreshed in time. The Planner keeps, in the store, a
// count of refreshes planned per 10 s slot (tokencache.PlanBook), shared
// by every replica without a leader. Each slot takes at most
// capacity = fill × fleet rate × 10 s, the fleet rate being RefreshRate ×
// the replicas alive (counted by heartbeats in the same store). A token is
// planned into the latest slot with room between now and its fixed-lead
// due time: a token whose own slot has room keeps its fixed-lead time
// exactly, and one planned into an earlier slot gets a random point of
// it, so that a wave too large for the fixed lead starts earlier, spread
// evenly at the fleet's rate (earliest deadline first with look-ahead). When no slot before the fixed-lead time has
// room, the refresh is due at once (at its fixed-lead time when that has
// passed, so the backlog is served earliest expiry first), and it counts
// in tokenproxy_refresh_plan_shortfall_total and a warn log.

// planFill is the share of the fleet's rate the plan books: the rest is
// for on-demand refreshes, retries after failures and keep-alives, which
// are not planned.
const planFill = 0.8

// planBeatEvery is how often a replica renews its heartbeat; it counts as
// alive for planBeatTTL after each.
const (
	planBeatEvery = 10 * time.Second
	planBeatTTL   = 3 * planBeatEvery
)

// planTimeout bounds one booking; past it the fixed lead is used.
const planTimeout = time.Second

// shortfallLogEvery rate-limits the warn log of shortfalls: the first of
// a wave logs at once, later ones at most this often, with their count.
const shortfallLogEvery = time.Minute

// PlanConfig configures a Planner.
type PlanConfig struct {
	// Book keeps the plan: the store's (both stores are PlanBooks).
	Book tokencache.PlanBook
	// Before and Jitter are the fixed lead (see NextRefresh): a token is
	// never planned later than that.
	Before, Jitter time.Duration
	// Rate is one replica's refresh rate (TOKENPROXY_REFRESH_RATE); the
	// fleet's is Rate × the replicas counted alive, at least one.
	Rate float64
	// Shortfall counts refreshes that found no room (nil: not counted).
	Shortfall prometheus.Counter
	Logger    *slog.Logger
}

// Planner chooses refresh times against the fleet's refresh rate. It is
// safe for concurrent use.
type Planner struct {
	cfg      PlanConfig
	replicas atomic.Int64 // live replicas last counted, at least 1

	mu        sync.Mutex
	short     int       // shortfalls not logged yet
	lastWarn  time.Time // of the last shortfall log
	warnedAny bool
}

// NewPlanner returns a Planner that assumes one live replica until Count
// says otherwise.
func NewPlanner(cfg PlanConfig) *Planner {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Planner{cfg: cfg}
	p.replicas.Store(1)
	return p
}

// Count renews owner's heartbeat (an empty owner only counts) and takes
// the number of live replicas for the fleet's rate.
func (p *Planner) Count(ctx context.Context, owner string) error {
	n, err := p.cfg.Book.Beat(ctx, owner, planBeatTTL)
	if err != nil {
		return err
	}
	p.replicas.Store(int64(max(n, 1)))
	return nil
}

// Capacity is how many refreshes one slot takes.
func (p *Planner) Capacity() int64 {
	fleet := p.cfg.Rate * float64(p.replicas.Load())
	return max(int64(math.Floor(planFill*fleet*tokencache.PlanSlot.Seconds())), 1)
}

// slotOf numbers the slot holding t.
func slotOf(t time.Time) int64 { return t.UnixMilli() / tokencache.PlanSlot.Milliseconds() }

func slotStart(s int64) time.Time {
	return time.UnixMilli(s * tokencache.PlanSlot.Milliseconds())
}

// Plan returns when a token expiring at expiry, planned at now, is due,
// and books it. When the plan cannot be reached it returns the fixed-lead
// time (NextRefresh): planning is best effort.
func (p *Planner) Plan(ctx context.Context, now, expiry time.Time) time.Time {
	want := NextRefresh(now, expiry, p.cfg.Before, p.cfg.Jitter)
	lo, hi := slotOf(now), slotOf(want)
	if hi < lo {
		hi = lo // due already: counted in the current slot
	}
	bctx, cancel := context.WithTimeout(ctx, planTimeout)
	slot, ok, err := p.cfg.Book.Book(bctx, lo, hi, p.Capacity())
	cancel()
	if err != nil {
		p.cfg.Logger.Debug("could not plan the refresh: the fixed lead stands", "err", err)
		return want
	}
	if !ok {
		p.shortfall(now)
		// Due at once; at the fixed-lead time when that has passed, so
		// that the backlog is served earliest expiry first.
		return minTime(now, expiry.Add(-p.cfg.Before-p.cfg.Jitter))
	}
	if slot == hi {
		// Room where the fixed lead (and its jitter) put it: unchanged.
		return want
	}
	// Pulled earlier: a random point of the slot, within [now, want].
	from := maxTime(slotStart(slot), now)
	to := minTime(slotStart(slot+1), want)
	if !to.After(from) {
		return minTime(from, want)
	}
	return from.Add(randN(to.Sub(from)))
}

// shortfall counts one refresh that found no room, and logs at warn the
// first of a wave and then at most every shortfallLogEvery.
func (p *Planner) shortfall(now time.Time) {
	if p.cfg.Shortfall != nil {
		p.cfg.Shortfall.Inc()
	}
	p.mu.Lock()
	p.short++
	if p.warnedAny && now.Sub(p.lastWarn) < shortfallLogEvery {
		p.mu.Unlock()
		return
	}
	n := p.short
	p.short, p.lastWarn, p.warnedAny = 0, now, true
	p.mu.Unlock()
	p.cfg.Logger.Warn("refresh plan shortfall: more tokens expire soon than the fleet's refresh rate can refresh ahead of time; the earliest expiring go first",
		"refreshes", n, "slot_capacity", p.Capacity(), "replicas", p.replicas.Load())
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// beat renews this replica's heartbeat in the plan, so that every replica
// plans with the fleet's rate (Run calls it every planBeatEvery).
func (r *Refresher) beat(ctx context.Context) {
	if r.planner == nil {
		return
	}
	bctx, cancel := context.WithTimeout(ctx, planTimeout)
	defer cancel()
	if err := r.planner.Count(bctx, r.cfg.Owner); err != nil {
		r.log.Debug("could not renew the plan heartbeat", "err", err)
	}
}
