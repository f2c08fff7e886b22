package refresher

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// Run drives the proactive refresh until ctx ends: every ScheduleEvery it
// asks the store which customers are due, over every bucket starting at a
// random one (so replicas share the buckets fairly), and refreshes them in
// worker slots, at most RefreshRate per second. It also recounts
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
			r.scheduleOnce(ctx)
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
