package refresher

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// pendingWrites holds refreshed pairs the store could not take (it was
// down when the wallet answered S). The wallet has already spent the old
// refresh token, so these pairs are the customer's only valid ones: they are
// served from memory and written as soon as the store answers again. One
// goroutine retries, started with the first pair and ending when none is
// left or the Refresher closes.
type pendingWrites struct {
	r *Refresher

	mu      sync.Mutex
	byID    map[string]pendingWrite
	running bool
}

type pendingWrite struct {
	lease   *tokencache.Lease
	outcome tokencache.Outcome
}

const pendingRetryEvery = time.Second

func newPendingWrites(r *Refresher) *pendingWrites {
	return &pendingWrites{r: r, byID: make(map[string]pendingWrite)}
}

// add keeps a pair and returns the record to serve meanwhile.
func (p *pendingWrites) add(lease *tokencache.Lease, o tokencache.Outcome) *tokencache.Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.byID[lease.CustomerID] = pendingWrite{lease: lease, outcome: o}
	if !p.running {
		p.running = true
		p.r.wg.Add(1)
		go p.retry()
	}
	rec := *o.Record
	return &rec
}

func (p *pendingWrites) get(id string) (*tokencache.Record, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w, ok := p.byID[id]
	if !ok {
		return nil, false
	}
	rec := *w.outcome.Record
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
	t := time.NewTicker(pendingRetryEvery)
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
		gen, err := p.r.cfg.Store.Complete(wctx, w.lease, w.outcome)
		cancel()
		switch {
		case err == nil:
			rec := *w.outcome.Record
			rec.Generation = gen
			p.r.cache.put(&rec)
			p.r.storeOK()
			p.r.log.Info("refreshed pair written after the store came back", "customer", w.lease.CustomerID)
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
