package refresher

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// pendingWrites holds known outcomes the store could not take (it was down
// when the wallet answered): refreshed pairs, and refresh tokens the wallet
// refused. The wallet has already spent the old refresh token, so a pending
// pair is the customer's only valid one: it is served from memory and
// written as soon as the store answers again; a refusal is served as
// reauthorization_required and recorded the same way, so that no replica
// presents the token again. One goroutine retries, started with the first
// outcome and ending when none is left or the Refresher closes.
type pendingWrites struct {
	r *Refresher

	mu      sync.Mutex
	byID    map[string]pendingWrite
	running bool
}

type pendingWrite struct {
	lease   *tokencache.Lease
	outcome tokencache.Outcome // Refreshed or Rejected
	rec     *tokencache.Record // what to serve meanwhile
}

const pendingRetryEvery = time.Second

// retryEvery is how often pairs are retried: pendingRetryEvery, and at
// least four times within a lease, because a holder that recorded no
// outcome gets one lease's time, once its lease lapsed, before another
// replica presents the spent token again (see tokencache.Claim).
func (p *pendingWrites) retryEvery() time.Duration {
	return max(min(pendingRetryEvery, p.r.cfg.Lease/4), time.Millisecond)
}

func newPendingWrites(r *Refresher) *pendingWrites {
	return &pendingWrites{r: r, byID: make(map[string]pendingWrite)}
}

// add keeps an outcome and the record to serve meanwhile, and returns a
// copy of that record.
func (p *pendingWrites) add(lease *tokencache.Lease, o tokencache.Outcome, serve *tokencache.Record) *tokencache.Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.byID[lease.CustomerID] = pendingWrite{lease: lease, outcome: o, rec: serve}
	// Once Close has begun no retry goroutine starts: its final flush
	// writes the pair.
	if !p.running && p.r.track() {
		p.running = true
		go p.retry()
	}
	rec := *serve
	return &rec
}

func (p *pendingWrites) get(id string) (*tokencache.Record, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w, ok := p.byID[id]
	if !ok {
		return nil, false
	}
	rec := *w.rec
	return &rec, true
}

// drop forgets a pair superseded by a new exchange or a delete.
func (p *pendingWrites) drop(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.byID, id)
}

func (p *pendingWrites) retry() {
	defer p.r.wg.Done()
	t := time.NewTicker(p.retryEvery())
	defer t.Stop()
	for {
		select {
		case <-p.r.ctx.Done():
			p.mu.Lock()
			p.running = false
			p.mu.Unlock()
			return
		case <-t.C:
		}
		if p.writeAll(p.r.ctx) == 0 {
			p.mu.Lock()
			if len(p.byID) == 0 {
				p.running = false
				p.mu.Unlock()
				return
			}
			p.mu.Unlock()
		}
	}
}

// flush tries once more at shutdown.
func (p *pendingWrites) flush() {
	ctx, cancel := context.WithTimeout(context.Background(), storeWriteTimeout)
	defer cancel()
	if left := p.writeAll(ctx); left > 0 {
		p.r.log.Error("shutting down with refreshed pairs the store never took: those customers must authorize again", "count", left)
	}
}

// writeAll writes every pending pair it can and returns how many are left.
func (p *pendingWrites) writeAll(ctx context.Context) int {
	p.mu.Lock()
	todo := make([]pendingWrite, 0, len(p.byID))
	for _, w := range p.byID {
		todo = append(todo, w)
	}
	p.mu.Unlock()
	left := 0
	for _, w := range todo {
		wctx, cancel := context.WithTimeout(ctx, storeWriteTimeout)
		snap := p.r.cache.snapshot(w.lease.CustomerID)
		gen, err := tokencache.Complete(wctx, p.r.cfg.Store, w.lease, w.outcome)
		cancel()
		switch {
		case err == nil:
			rec := *w.rec
			rec.Generation = gen
			p.r.cache.put(&rec, snap)
			p.r.storeOK()
			p.r.log.Info("refresh outcome written after the store came back", "customer", w.lease.CustomerID, "outcome", w.outcome.Kind)
		case errors.Is(err, tokencache.ErrConflict) && w.outcome.Kind == tokencache.Refreshed:
			wctx, cancel := context.WithTimeout(ctx, storeWriteTimeout)
			ours, err := p.confirm(wctx, w)
			cancel()
			switch {
			case err != nil:
				left++
				continue
			case ours:
				p.r.log.Info("refresh outcome written after the store came back", "customer", w.lease.CustomerID, "outcome", w.outcome.Kind)
			default:
				p.r.log.Info("kept pair superseded by a delete or a new exchange", "customer", w.lease.CustomerID)
			}
		case errors.Is(err, tokencache.ErrNotFound), errors.Is(err, tokencache.ErrConflict):
			p.r.log.Info("kept pair superseded by a delete or a new exchange", "customer", w.lease.CustomerID)
		default:
			left++
			continue
		}
		p.mu.Lock()
		if cur, ok := p.byID[w.lease.CustomerID]; ok && cur.lease == w.lease {
			delete(p.byID, w.lease.CustomerID)
		}
		p.mu.Unlock()
	}
	return left
}

// confirm handles a kept pair whose Complete was refused because the
// record no longer holds the spent refresh token. That is a newer write,
// or this pair's own earlier write: one that landed on the Redis master
// while too few replicas acknowledged it (WaitReplicas), whose retry now
// finds it. Such a pair would be lost if the master failed before its
// replicas caught up, so it is kept until a write the replicas do
// acknowledge follows it on the same master (replication is in order): the
// record rewritten as it is. confirm reports whether the stored record is
// this pair (and is now acknowledged); an error means "keep it, try again".
func (p *pendingWrites) confirm(ctx context.Context, w pendingWrite) (bool, error) {
	cur, err := p.r.cfg.Store.Get(ctx, w.lease.CustomerID)
	switch {
	case errors.Is(err, tokencache.ErrNotFound):
		return false, nil
	case err != nil:
		return false, err
	case cur.RefreshToken.Reveal() != w.rec.RefreshToken.Reveal():
		return false, nil // refreshed again, exchanged or replaced since
	}
	if _, err := tokencache.CompareAndSwap(ctx, p.r.cfg.Store, cur, cur.Generation); err != nil {
		return false, err
	}
	return true, nil
}
