package refresher

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// Run drives the proactive refresh until ctx ends: every ScheduleEvery it
// asks the store which customers are due and refreshes them in worker
// slots, at most RefreshRate per second. A store with a schedule hint
// (tokencache.DueHints: Redis) is asked which buckets may have work, and
// only those are read (see scheduleHinted); another (memory) is read over
// every bucket starting at a random one. It also recounts
// tokenproxy_tokens every CensusEvery. Replicas run it side by side: a
// customer another replica has claimed is skipped.
func (r *Refresher) Run(ctx context.Context) {
	tick := time.NewTicker(r.cfg.ScheduleEvery)
	defer tick.Stop()
	census := time.NewTicker(r.cfg.CensusEvery)
	defer census.Stop()
	beat := time.NewTicker(planBeatEvery)
	defer beat.Stop()
	r.census(ctx)
	r.beat(ctx)
	hints, hinted := r.cfg.Store.(tokencache.DueHints)
	var check *hintCheck
	if hinted {
		check = r.newHintCheck(ctx, hints)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.ctx.Done():
			return
		case <-census.C:
			r.census(ctx)
		case <-beat.C:
			r.beat(ctx)
		case <-tick.C:
			if hinted {
				r.scheduleHinted(ctx, hints)
				check.step(ctx)
			} else {
				r.scheduleOnce(ctx)
			}
		}
	}
}

// scheduleChunk is how many buckets one Due call covers.
const scheduleChunk = 64

func (r *Refresher) scheduleOnce(ctx context.Context) {
	n := r.cfg.Store.Buckets()
	start := rand.N(n)
	limit := max(int(r.cfg.RefreshRate*r.cfg.ScheduleEvery.Seconds())*2, 16)
	for off := 0; off < n; off += scheduleChunk {
		buckets := make([]int, 0, scheduleChunk)
		for i := off; i < min(off+scheduleChunk, n); i++ {
			buckets = append(buckets, (start+i)%n)
		}
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		due, err := r.cfg.Store.Due(dctx, buckets, limit)
		cancel()
		if err != nil {
			r.storeFailed("due")
			r.log.Warn("could not read the schedule", "err", err)
			return
		}
		for _, d := range due {
			if r.refreshing(d.CustomerID) {
				continue
			}
			id := d.CustomerID
			if !r.schedule(ctx, id) {
				return // every slot busy: the rest stays due for the next tick
			}
		}
	}
}

// hintedPerTick bounds the buckets one tick reads from the hint.
const hintedPerTick = 4 * scheduleChunk

// scheduleHinted is one tick with a schedule hint: one read of the hint,
// then a sweep of only the buckets it names as due (in a random order, so
// that replicas share them fairly), which also moves their hints. With
// nothing due it costs one command.
func (r *Refresher) scheduleHinted(ctx context.Context, h tokencache.DueHints) {
	limit := max(int(r.cfg.RefreshRate*r.cfg.ScheduleEvery.Seconds())*2, 16)
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	buckets, err := h.HintedBuckets(hctx, time.Now(), hintedPerTick)
	cancel()
	if err != nil {
		r.storeFailed("due")
		r.log.Warn("could not read the schedule hint", "err", err)
		return
	}
	rand.Shuffle(len(buckets), func(i, j int) { buckets[i], buckets[j] = buckets[j], buckets[i] })
	for off := 0; off < len(buckets); off += scheduleChunk {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		due, err := h.SweepDue(dctx, buckets[off:min(off+scheduleChunk, len(buckets))], limit)
		cancel()
		if err != nil {
			r.storeFailed("due")
			r.log.Warn("could not read the schedule", "err", err)
			return
		}
		for _, d := range due {
			if r.refreshing(d.CustomerID) {
				continue
			}
			if !r.schedule(ctx, d.CustomerID) {
				return // every slot busy: the rest stays due (and hinted) for the next tick
			}
		}
	}
}

// hintCheck is the safety net of the schedule hint: it walks every bucket
// once per FullCheckEvery, in small steps spread over the ticks, and
// lowers any hint that is missing or later than the bucket's earliest
// entry (lost when a process died between a write and its hint).
type hintCheck struct {
	h     tokencache.DueHints
	r     *Refresher
	n     int
	next  int     // the next bucket to check
	owed  float64 // buckets owed to the walk, accrued each tick
	every time.Duration
}

// hintCheckStep is how many buckets one step checks (one ZMSCORE and one
// ZRANGE each).
const hintCheckStep = 16

// newHintCheck starts the walk at a random bucket. When the store has no
// hint at all (a new store, or one written only by releases without
// hints) it checks every bucket at once, so that nothing due waits for
// the walk.
func (r *Refresher) newHintCheck(ctx context.Context, h tokencache.DueHints) *hintCheck {
	n := r.cfg.Store.Buckets()
	c := &hintCheck{h: h, r: r, n: n, next: rand.N(max(n, 1)), every: r.cfg.FullCheckEvery}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	exist, err := h.HintsExist(cctx)
	if err != nil || exist {
		return c
	}
	for off := 0; off < n; off += scheduleChunk {
		if !c.check(cctx, scheduleChunk) {
			break
		}
	}
	return c
}

// step accrues one tick's share of the walk and checks a step's worth of
// buckets when owed.
func (c *hintCheck) step(ctx context.Context) {
	c.owed += float64(c.n) * c.r.cfg.ScheduleEvery.Seconds() / c.every.Seconds()
	if c.owed < hintCheckStep {
		return
	}
	c.owed -= hintCheckStep
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c.check(cctx, hintCheckStep)
}

// check checks the next k buckets; false when the store failed.
func (c *hintCheck) check(ctx context.Context, k int) bool {
	buckets := make([]int, 0, k)
	for i := range min(k, c.n) {
		buckets = append(buckets, (c.next+i)%c.n)
	}
	if err := c.h.CheckHints(ctx, buckets); err != nil {
		c.r.storeFailed("due")
		c.r.log.Warn("could not check the schedule hint", "err", err)
		return false
	}
	c.next = (c.next + len(buckets)) % c.n
	return true
}

// schedule starts a scheduled refresh of one due customer in a worker slot,
// waiting for a free slot at most a tick. It reports false when none
// freed up.
func (r *Refresher) schedule(ctx context.Context, id string) bool {
	t := time.NewTimer(r.cfg.ScheduleEvery)
	defer t.Stop()
	select {
	case r.slots <- struct{}{}:
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
	return r.runInSlot(func(ctx context.Context) { r.scheduled(ctx, id) })
}

// scheduled refreshes one due customer, unless it is idle.
func (r *Refresher) scheduled(ctx context.Context, id string) {
	rec, err := r.get(ctx, id)
	switch {
	case errors.Is(err, ErrNotAuthorized):
		// A schedule entry that outlived its record: drop it.
		_ = tokencache.Delete(ctx, r.cfg.Store, id)
		return
	case err != nil:
		r.log.Warn("scheduled refresh: could not read the customer", "customer", id, "err", err)
		return
	case r.notDue(rec) || rec.State == tokencache.StateReauthorizationRequired:
		return
	}
	if r.idle(ctx, rec) {
		return
	}
	if _, err := r.refreshFrom(ctx, id, TriggerScheduled, r.notDue, rec); err != nil {
		r.log.Info("scheduled refresh failed", "customer", id, "err", err)
	}
}

// keepAliveLead is how long before its refresh token expires an idle
// customer still gets one refresh, so that consent never lapses just
// because the user was away (capped at half the refresh token's life).
const keepAliveLead = 24 * time.Hour

// idle handles a due customer without app calls for IdleAfter: it is not
// refreshed ahead of its access token's expiry any more, only on its next
// call, except one keep-alive refresh before its refresh token expires. It
// reports whether the customer was left alone.
func (r *Refresher) idle(ctx context.Context, rec *tokencache.Record) bool {
	now := r.now()
	if r.cfg.IdleAfter <= 0 || rec.LastUsed.IsZero() || now.Sub(rec.LastUsed) < r.cfg.IdleAfter {
		return false
	}
	var keepAlive time.Time // zero: no refresh token expiry to keep alive
	if !rec.RefreshTokenExpiry.IsZero() {
		lead := min(keepAliveLead, rec.RefreshTokenExpiry.Sub(rec.LastUsed)/2)
		keepAlive = rec.RefreshTokenExpiry.Add(-lead)
		if !now.Before(keepAlive) {
			return false // time for the keep-alive refresh
		}
	}
	next := *rec
	next.NextRefresh = keepAlive
	if _, err := tokencache.CompareAndSwap(ctx, r.cfg.Store, &next, rec.Generation); err != nil && !errors.Is(err, tokencache.ErrConflict) {
		r.log.Warn("could not reschedule an idle customer", "customer", rec.CustomerID, "err", err)
	}
	r.log.Debug("idle customer: refreshed on its next call", "customer", rec.CustomerID, "keep_alive", keepAlive)
	return true
}

// census recounts tokenproxy_tokens{state}, when Config.Census is set.
func (r *Refresher) census(ctx context.Context) {
	if r.cfg.Census == nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := r.cfg.Census(cctx)
	if err != nil {
		r.storeFailed("census")
		r.log.Warn("could not count tokens", "err", err)
		return
	}
	r.cfg.Metrics.tokens.WithLabelValues(string(StateValid)).Set(float64(c.Valid))
	r.cfg.Metrics.tokens.WithLabelValues(string(StateExpired)).Set(float64(c.Expired))
	r.cfg.Metrics.tokens.WithLabelValues(string(StateRefreshing)).Set(float64(c.Refreshing))
	r.cfg.Metrics.tokens.WithLabelValues(string(StateReauthorizationRequired)).Set(float64(c.ReauthorizationRequired))
}
