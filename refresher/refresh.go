package refresher

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// The refresh protocol, as design.md lays it down ("Exactly one refresh per
// refresh token"):
//
//  1. Claim: a lease plus an intent in the store, in one atomic step
//     (tokencache.Claim), only if no live lease exists and the record still
//     holds the refresh token we read (by generation). The store's clock
//     decides.
//  2. Call: the wallet call runs under a deadline that ends a margin before
//     the lease could lapse; a watchdog renews the lease every lease/3 and
//     moves the deadline on each confirmed renewal. A renewal that fails
//     lets the deadline pass: the call is cancelled rather than run on
//     without a lease.
//  3. Complete: the outcome is written only while the record still holds
//     the spent refresh token and no tombstone is newer; the lease need not
//     be held. An S pair the store cannot take is kept in memory and
//     written when the store is back (pending.go).
//  4. Waiters on any replica are woken through the store's Watch and poll
//     as a fallback, each bounded by its own deadline; one whose awaited
//     presentation failed replays that outcome from the journal.
//  5. Unknown outcomes keep the intent: the next claimer presents the same
//     token once more; USED_REFRESH_TOKEN then is a lost rotation.
//  6. Only INVALID/EXPIRED/USED_REFRESH_TOKEN end a customer; every other
//     failure backs off (capped, jittered) in the store, so every replica
//     honours it.

// Backoff of transient failures: 1 s doubling to 30 s, with jitter.
const (
	backoffBase = time.Second
	backoffMax  = 30 * time.Second
)

// pollEvery bounds how long a waiter sleeps between two looks at the store
// when no notification arrives.
const pollEvery = 250 * time.Millisecond

// maxRounds bounds the claim loop of one refresh.
const maxRounds = 1000

// refresh makes sure the customer is refreshed past done: it runs one
// refresh in this process per customer and trigger (callers join it),
// detached from the caller, and waits for it at most until ctx ends.
func (r *Refresher) refresh(ctx context.Context, customerID, trigger string, done func(*tokencache.Record) bool) (*tokencache.Record, error) {
	return r.refreshFrom(ctx, customerID, trigger, done, nil)
}

// refreshFrom is refresh starting from a record the caller has just read
// (nil: read it first), which saves the refresh its first read: the
// scheduler reads each due customer to see whether it is idle.
func (r *Refresher) refreshFrom(ctx context.Context, customerID, trigger string, done func(*tokencache.Record) bool, first *tokencache.Record) (*tokencache.Record, error) {
	ch := r.flights.DoChan(customerID+"\x00"+trigger, func() (any, error) {
		if !r.track() {
			return nil, fmt.Errorf("refresh: %w: shutting down", wallet.ErrUnavailable)
		}
		defer r.wg.Done()
		runCtx, cancel := context.WithTimeout(r.ctx, r.refreshBudget())
		defer cancel()
		return r.run(runCtx, customerID, trigger, done, first)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*tokencache.Record), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for refresh: %w: %w", wallet.ErrTimeout, ctx.Err())
	}
}

// run is one refresh: read, claim or wait, present, complete.
func (r *Refresher) run(ctx context.Context, customerID, trigger string, done func(*tokencache.Record) bool, first *tokencache.Record) (*tokencache.Record, error) {
	r.setRefreshing(customerID, true)
	defer r.setRefreshing(customerID, false)
	watch, stop := r.cfg.Store.Watch(customerID)
	defer stop()

	// awaited: the refresh token another caller was presenting while
	// this one waited.
	var awaited string
	// waited: this refresh found the lease held and waited for its holder;
	// endWait counts how that ended, once (the deferred call covers every
	// return not named below as failed).
	waited := false
	endWait := func(result string) {
		if waited {
			r.cfg.Metrics.waits.WithLabelValues(result).Inc()
			waited = false
		}
	}
	defer endWait(waitFailed)

	for range maxRounds {
		// The caller's record serves the first round only.
		read := first
		first = nil
		if rec, ok := r.pending.get(customerID); ok {
			// This replica holds a known outcome the store has not taken
			// yet: the stored refresh token is spent. Never claim it; serve
			// what is held if it will do, else wait for the write.
			switch {
			case rec.State == tokencache.StateReauthorizationRequired:
				return nil, ErrReauthorizationRequired
			case done(rec):
				return rec, nil
			}
			r.wait(ctx, watch, pollEvery)
			if ctx.Err() != nil {
				return nil, fmt.Errorf("wait for a kept outcome to be written: %w: %w", wallet.ErrTimeout, ctx.Err())
			}
			continue
		}
		rec := read
		if rec == nil {
			var err error
			if rec, err = r.get(ctx, customerID); err != nil {
				return nil, err
			}
		}
		if rec.State == tokencache.StateReauthorizationRequired {
			return nil, ErrReauthorizationRequired
		}
		if done(rec) {
			endWait(waitJoined)
			return rec, nil
		}
		if j := rec.Journal; awaited != "" && trigger != TriggerForced && j.For(awaited, r.now()) &&
			rec.RefreshTokenHash == awaited && (j.Kind == tokencache.Unknown || j.Kind == tokencache.Refused) {
			return nil, replay(j)
		}
		if !rec.RefreshTokenExpiry.IsZero() && !r.now().Before(rec.RefreshTokenExpiry) {
			// Never present a refresh token past its expiry: the answer is known.
			return nil, r.expireRefreshToken(ctx, rec, trigger)
		}
		if err := r.takeRate(ctx, trigger != TriggerScheduled); err != nil {
			if errors.Is(err, errRateBusy) {
				return rec, nil // still due: a later tick takes it
			}
			endWait(waitTimeout)
			return nil, fmt.Errorf("refresh rate: %w: %w", wallet.ErrTimeout, err)
		}
		// The claim and the presentation get budgets of their own, so that
		// time spent waiting above never starves a call once claimed.
		claimCtx, cancel := context.WithTimeout(r.ctx, storeWriteTimeout)
		claimedAt := time.Now()
		lease, err := tokencache.Claim(claimCtx, r.cfg.Store, customerID, rec.Generation, r.cfg.Owner, r.cfg.Lease, trigger == TriggerForced)
		cancel()
		var held *tokencache.LeaseHeldError
		var cool *tokencache.BackoffError
		switch {
		case err == nil:
			r.storeOK()
			r.claimed(claimWon)
			endWait(waitClaimed)
			return r.present(rec, lease, claimedAt, trigger)
		case errors.Is(err, tokencache.ErrConflict):
			r.claimed(claimConflict)
			continue // the record changed since we read it: read again
		case errors.As(err, &held):
			r.claimed(claimHeld)
			if trigger == TriggerScheduled {
				return rec, nil // another replica is on it
			}
			awaited = rec.RefreshTokenHash
			waited = true
			r.wait(ctx, watch, min(held.TTL, pollEvery))
		case errors.As(err, &cool):
			r.claimed(claimCooldown)
			return nil, &CooldownError{LastError: cool.LastError, Remaining: cool.Remaining}
		case errors.Is(err, tokencache.ErrNotActive):
			r.claimed(claimEnded)
			return nil, ErrReauthorizationRequired
		case errors.Is(err, tokencache.ErrNotFound):
			r.claimed(claimEnded)
			return nil, ErrNotAuthorized
		default:
			r.claimed(claimError)
			r.storeFailed("claim")
			return nil, fmt.Errorf("claim refresh: %w", err)
		}
		if ctx.Err() != nil {
			endWait(waitTimeout)
			return nil, fmt.Errorf("wait for refresh: %w: %w", wallet.ErrTimeout, ctx.Err())
		}
	}
	return nil, fmt.Errorf("refresh: %w: gave up after %d rounds", wallet.ErrUnavailable, maxRounds)
}

// replay is what a caller that waited for another caller's presentation
// (on any replica) gets when that one failed transiently: its outcome from
// the journal (design.md step 4), in the class the presenter's own caller
// got, without another wallet call.
func replay(j tokencache.JournalEntry) error {
	class := wallet.ErrUnavailable
	if j.Code == wallet.CodeWalletTimeout {
		class = wallet.ErrTimeout
	}
	return fmt.Errorf("refresh by another caller: %s %s: %w", j.Kind, j.Code, class)
}

// wait sleeps until the store says the customer changed, or d passes.
func (r *Refresher) wait(ctx context.Context, watch <-chan struct{}, d time.Duration) {
	t := time.NewTimer(max(d, 10*time.Millisecond))
	defer t.Stop()
	select {
	case <-watch:
	case <-t.C:
	case <-ctx.Done():
	}
}

// present presents the claimed refresh token once and records the outcome.
// Its wallet call is bounded by UpstreamTimeout and the lease watchdog, its
// store writes by storeWriteTimeout each, whatever the caller's deadline:
// a caller that gives up does not cut a presentation in half.
func (r *Refresher) present(rec *tokencache.Record, lease *tokencache.Lease, claimedAt time.Time, trigger string) (*tokencache.Record, error) {
	ctx := r.calls
	body, err := wallet.RefreshBody(wallet.Secret(rec.RefreshToken.Reveal()), rec.Replay)
	if err == nil && len(r.cfg.TokenPaths) > 0 && !slices.Contains(r.cfg.TokenPaths, rec.ExchangePath) {
		err = fmt.Errorf("%w: the record's exchange path is not a token path", tokencache.ErrCorrupt)
	}
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeWriteTimeout)
		_ = tokencache.Release(rctx, r.cfg.Store, lease)
		cancel()
		return nil, fmt.Errorf("prepare the refresh: %w", err)
	}
	callCtx, cancel := context.WithTimeout(ctx, r.cfg.UpstreamTimeout)
	wd := r.watch(callCtx, cancel, lease, claimedAt)
	start := time.Now()
	pair, _, callErr := r.cfg.Wallet.ApplyToken(callCtx, rec.ExchangePath, body, nil)
	cancel()
	wd.Wait()
	r.cfg.Metrics.refreshSeconds.Observe(time.Since(start).Seconds())

	o, result := r.outcome(ctx, rec, pair, callErr)
	r.cfg.Metrics.refreshes.WithLabelValues(trigger, result, metricCode(o)).Inc()
	if o.Kind == tokencache.Refreshed {
		// How long the old access token had left: 0 when it had expired
		// (a caller waited, or the token was past due).
		r.cfg.Metrics.headroom.WithLabelValues(trigger).Observe(max(rec.AccessTokenExpiry.Sub(o.Record.LastRefresh), 0).Seconds())
	}
	if o.Kind == tokencache.Rejected && o.Code == wallet.CodeUsedRefreshToken && lease.Represent {
		r.cfg.Metrics.lostRotations.Inc()
		r.log.Error("lost rotation: the wallet rotated the refresh token but its answer was lost; the customer must authorize again",
			"customer", rec.CustomerID, "presentations", lease.Attempt)
	}
	wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), storeWriteTimeout)
	defer wcancel()
	snap := r.cache.snapshot(rec.CustomerID)
	gen, err := tokencache.Complete(wctx, r.cfg.Store, lease, o)
	switch {
	case err == nil:
		r.storeOK()
	case errors.Is(err, tokencache.ErrNotFound):
		r.log.Info("customer deleted during its refresh; the outcome is not written back", "customer", rec.CustomerID)
		return nil, ErrNotAuthorized
	case errors.Is(err, tokencache.ErrConflict):
		r.log.Info("customer re-authorized during its refresh; the newer exchange stands", "customer", rec.CustomerID)
		return r.get(wctx, rec.CustomerID)
	default:
		r.storeFailed("complete")
		switch o.Kind {
		case tokencache.Refreshed:
			// Never throw an S pair away: keep it, serve it, write it later.
			next := r.pending.add(lease, o, o.Record)
			r.log.Error("token store unavailable: refreshed pair kept in memory until it can be written", "customer", rec.CustomerID, "err", err)
			return next, nil
		case tokencache.Rejected:
			// A known answer too: written later, so that no replica
			// presents the refused token again meanwhile.
			ended := *rec
			ended.State, ended.LastError, ended.NextRefresh = tokencache.StateReauthorizationRequired, o.Code, time.Time{}
			r.pending.add(lease, o, &ended)
			r.log.Error("token store unavailable: refused refresh token kept in memory until it can be recorded", "customer", rec.CustomerID, "err", err)
			return nil, ErrReauthorizationRequired
		}
		return nil, fmt.Errorf("record refresh outcome: %w", err)
	}
	switch o.Kind {
	case tokencache.Refreshed:
		next := *o.Record
		next.Generation = gen
		r.cache.put(&next, snap) // refused when the store announced the change (see Install)
		r.log.Info("tokens refreshed", "customer", rec.CustomerID, "trigger", trigger,
			"access_token_expiry", next.AccessTokenExpiry, "attempt", lease.Attempt)
		return &next, nil
	case tokencache.Rejected:
		r.log.Warn("refresh token refused: the customer must authorize again", "customer", rec.CustomerID, "code", o.Code)
		return nil, ErrReauthorizationRequired
	default:
		r.log.Warn("refresh failed; backing off", "customer", rec.CustomerID, "trigger", trigger,
			"code", o.Code, "outcome", o.Kind, "backoff", o.Backoff, "err", callErr)
		return nil, fmt.Errorf("refresh: %w", callErr)
	}
}

// storeWriteTimeout bounds the store write that records an outcome.
const storeWriteTimeout = 5 * time.Second

// outcome classifies a presentation's result.
func (r *Refresher) outcome(ctx context.Context, rec *tokencache.Record, pair *wallet.TokenResponse, err error) (tokencache.Outcome, string) {
	if err == nil {
		now := r.now()
		next := *rec
		next.AccessToken = tokencache.Secret(pair.AccessToken.Reveal())
		next.AccessTokenExpiry = pair.AccessTokenExpiry
		next.RefreshToken = tokencache.Secret(pair.RefreshToken.Reveal())
		next.RefreshTokenExpiry = pair.RefreshTokenExpiry
		next.State = tokencache.StateActive
		next.LastError = ""
		next.LastRefresh = now
		next.NextRefresh = r.nextRefresh(context.WithoutCancel(ctx), now, pair.AccessTokenExpiry)
		if pair.CustomerID != rec.CustomerID {
			r.log.Warn("wallet refreshed a token for another customer id; kept under the original", "customer", rec.CustomerID)
		}
		return tokencache.Outcome{Kind: tokencache.Refreshed, Record: &next}, "success"
	}
	backoff := backoffFor(rec.Failures + 1)
	var werr *wallet.Error
	switch {
	case errors.As(err, &werr) && werr.ResultStatus == wallet.StatusFailed && wallet.IsRefreshTokenRejection(werr.ResultCode):
		return tokencache.Outcome{Kind: tokencache.Rejected, Code: werr.ResultCode}, "failure"
	case errors.As(err, &werr) && werr.ResultStatus == wallet.StatusFailed:
		// Refused, not processed (rate limit, signature, key, client,
		// parameter): the token is known unused.
		return tokencache.Outcome{Kind: tokencache.Refused, Code: werr.ResultCode, Backoff: backoff}, "failure"
	case errors.As(err, &werr):
		return tokencache.Outcome{Kind: tokencache.Unknown, Code: werr.ResultCode, Backoff: backoff}, "unknown"
	case errors.Is(err, wallet.ErrTimeout):
		return tokencache.Outcome{Kind: tokencache.Unknown, Code: wallet.CodeWalletTimeout, Backoff: backoff}, "unknown"
	case errors.Is(err, wallet.ErrBadSignature):
		return tokencache.Outcome{Kind: tokencache.Unknown, Code: wallet.CodeInvalidWalletSignature, Backoff: backoff}, "unknown"
	case errors.Is(err, wallet.ErrMalformed):
		// An S we cannot use: the wallet may have rotated the token.
		return tokencache.Outcome{Kind: tokencache.Unknown, Code: wallet.CodeWalletUnavailable, Backoff: backoff}, "unknown"
	default:
		return tokencache.Outcome{Kind: tokencache.Unknown, Code: wallet.CodeWalletUnavailable, Backoff: backoff}, "unknown"
	}
}

func metricCode(o tokencache.Outcome) string {
	if o.Kind == tokencache.Refreshed {
		return wallet.CodeSuccess
	}
	return o.Code
}

// backoffFor is the cooldown after the n-th consecutive transient failure:
// 1 s doubling to 30 s (design.md: "from about 1 s to 30 s"), plus up to
// half again of jitter so that customers that failed together do not retry
// together, never past the cap.
func backoffFor(n int) time.Duration {
	d := min(backoffBase<<min(max(n-1, 0), 5), backoffMax)
	return min(d+randN(d/2+1), backoffMax)
}

func randN(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// watch starts the lease watchdog of one wallet call: it renews the lease
// every lease/3 and cancels the call when the lease could lapse before the
// next confirmed renewal (its last confirmation + lease - margin). The
// returned WaitGroup is done when the watchdog has stopped (after callCtx
// ends).
func (r *Refresher) watch(callCtx context.Context, cancel context.CancelFunc, lease *tokencache.Lease, claimedAt time.Time) *sync.WaitGroup {
	var wg sync.WaitGroup
	ttl := r.cfg.Lease
	margin := min(ttl/5, time.Second)
	deadline := claimedAt.Add(ttl - margin)
	wg.Add(1)
	go func() {
		defer wg.Done()
		renew := time.NewTicker(ttl / 3)
		defer renew.Stop()
		expire := time.NewTimer(time.Until(deadline))
		defer expire.Stop()
		for {
			select {
			case <-callCtx.Done():
				return
			case <-expire.C:
				r.log.Warn("lease could lapse before the wallet answered: call cancelled", "customer", lease.CustomerID)
				cancel()
				return
			case <-renew.C:
				sent := time.Now()
				rctx, rcancel := context.WithTimeout(callCtx, ttl/3)
				err := tokencache.Renew(rctx, r.cfg.Store, lease, ttl)
				rcancel()
				if err != nil {
					if callCtx.Err() == nil {
						r.log.Warn("lease renewal failed", "customer", lease.CustomerID, "err", err)
					}
					if errors.Is(err, tokencache.ErrLeaseLost) {
						cancel()
						return
					}
					continue // the deadline of the last confirmation stands
				}
				deadline = sent.Add(ttl - margin)
				expire.Reset(time.Until(deadline))
			}
		}
	}()
	return &wg
}

// expireRefreshToken ends a customer whose refresh token is past its
// expiry, without a wallet call.
func (r *Refresher) expireRefreshToken(ctx context.Context, rec *tokencache.Record, trigger string) error {
	next := *rec
	next.State = tokencache.StateReauthorizationRequired
	next.LastError = wallet.CodeExpiredRefreshToken
	next.NextRefresh = time.Time{}
	if _, err := tokencache.CompareAndSwap(ctx, r.cfg.Store, &next, rec.Generation); err != nil &&
		!errors.Is(err, tokencache.ErrConflict) && !errors.Is(err, tokencache.ErrNotFound) {
		r.storeFailed("cas")
		return fmt.Errorf("record expired refresh token: %w", err)
	}
	r.log.Warn("refresh token expired: the customer must authorize again", "customer", rec.CustomerID, "trigger", trigger)
	return ErrReauthorizationRequired
}

// errRateBusy: a scheduled refresh found the rate limiter booked further
// ahead than it waits; the customer stays due for a later tick.
var errRateBusy = errors.New("refresh rate booked")

// takeRate waits for the refresh rate limiter. Urgent refreshes (a caller
// waits) go ahead, waiting as long as their ctx allows; scheduled ones wait
// while any urgent one is queued, and give up (errRateBusy) rather than
// book the limiter more than two scheduler ticks ahead.
func (r *Refresher) takeRate(ctx context.Context, urgent bool) error {
	if urgent {
		r.urgent.Add(1)
		defer r.urgent.Add(-1)
		return r.limiter.Wait(ctx)
	}
	for r.urgent.Load() > 0 {
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
	res := r.limiter.Reserve()
	if d := res.Delay(); d > 2*r.cfg.ScheduleEvery {
		res.Cancel()
		return errRateBusy
	} else if err := sleep(ctx, d); err != nil {
		res.Cancel()
		return err
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
