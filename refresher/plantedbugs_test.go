package refresher

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// The known bugs the state-machine checker must catch, planted from the
// test side: each wraps the protocol's decisions on their way to a real
// store, so the production code holds nothing of them.
var plantedBugs = map[string]func(d tokencache.Decision) tokencache.Decision{
	// Complete refuses to write an outcome once the lease lapsed, so an S
	// pair that came late is thrown away (design.md step 3).
	"complete-gated-on-lease": func(d tokencache.Decision) tokencache.Decision {
		if d.Op != tokencache.OpComplete {
			return d
		}
		apply := d.Apply
		d.Apply = func(e *tokencache.Entry, now time.Time) (bool, error) {
			if !now.Before(e.Lease.Until) || e.Lease.Owner != d.Lease.Owner || e.Lease.Fence != d.Lease.Fence {
				return false, tokencache.ErrConflict
			}
			return apply(e, now)
		}
		return d
	},
	// Claims and outcomes keep no intent: a re-presentation after an
	// unknown outcome is not recognised, and nothing holds off a second
	// presenter when a lease is lost early (steps 1 and 5).
	"no-intent": func(d tokencache.Decision) tokencache.Decision {
		if d.Op != tokencache.OpClaim && d.Op != tokencache.OpComplete {
			return d
		}
		apply := d.Apply
		d.Apply = func(e *tokencache.Entry, now time.Time) (bool, error) {
			e.Intent = tokencache.Intent{}
			w, err := apply(e, now)
			e.Intent = tokencache.Intent{}
			return w, err
		}
		return d
	},
	// Complete writes a refreshed pair even when the customer was deleted
	// meanwhile (step 7).
	"no-tombstone-check": func(d tokencache.Decision) tokencache.Decision {
		if d.Op != tokencache.OpComplete {
			return d
		}
		apply := d.Apply
		d.Apply = func(e *tokencache.Entry, now time.Time) (bool, error) {
			if e.Record == nil && e.Tombstone > 0 {
				e.Record = &tokencache.Record{CustomerID: d.Lease.CustomerID, ExchangePath: "/v1/authorizations/applyToken",
					RefreshTokenHash: d.Lease.RefreshTokenHash, Generation: e.Tombstone}
				w, err := apply(e, now)
				if err != nil || e.Record.Journal.Kind != tokencache.Refreshed {
					return false, tokencache.ErrNotFound
				}
				return w, nil
			}
			return apply(e, now)
		}
		return d
	},
	// Complete writes without the spent-token check: an outcome of a
	// token a new exchange replaced lands on the new one (step 3).
	"no-spent-token-check": func(d tokencache.Decision) tokencache.Decision {
		if d.Op != tokencache.OpComplete {
			return d
		}
		apply := d.Apply
		d.Apply = func(e *tokencache.Entry, now time.Time) (bool, error) {
			if e.Record != nil {
				e.Record.RefreshTokenHash = d.Lease.RefreshTokenHash
			}
			return apply(e, now)
		}
		return d
	},
}

// bugStore plants one bug in every decision on its way to the store.
type bugStore struct {
	tokencache.Store
	plant func(tokencache.Decision) tokencache.Decision
}

func (s bugStore) Update(ctx context.Context, id string, d tokencache.Decision) error {
	return s.Store.Update(ctx, id, s.plant(d))
}

// TestPlantedBugsCaught proves the state-machine checker is not vacuous:
// each known bug, planted alone, must be caught on every backend within
// the default number of histories.
func TestPlantedBugsCaught(t *testing.T) {
	forEachBackend(t, func(t *testing.T, env *smEnv) {
		for _, name := range slices.Sorted(maps.Keys(plantedBugs)) {
			plant := plantedBugs[name]
			t.Run(name, func(t *testing.T) {
				env.wrap = func(s tokencache.Store) tokencache.Store { return bugStore{Store: s, plant: plant} }
				defer func() { env.wrap = nil }()
				base := uint64(time.Now().UnixNano())
				start := time.Now()
				res := env.runMany(t, base, *smHistories, nil)
				if res.failed == nil {
					t.Fatalf("planted bug %q not caught in %d histories (seeds from %d)", name, res.histories, base)
				}
				h := res.failed
				t.Logf("caught after %d histories in %v (seed %d): %s", res.histories, time.Since(start).Round(time.Millisecond), h.seed, h.violations[0])
				if *smVerbose {
					t.Logf("%s", h.describe())
				}
			})
		}
	})
}
