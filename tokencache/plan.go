package tokencache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// The refresh plan: how many refreshes the fleet has planned in each time
// slot, so that package refresher can pick a refresh time with room left
// under the fleet's refresh rate (refresher.Planner). It lives beside the
// records, outside every bucket: counts only, no customer ids. Both
// stores keep one; Memory's is its process's alone.

// PlanBook counts planned refreshes per slot (a slot is a number the
// caller defines, for example Unix seconds / 10) and counts the live
// replicas that share the plan.
type PlanBook interface {
	// Book books one refresh in the latest slot of [lo, hi] holding fewer
	// than capacity refreshes, and returns it with ok true. When every slot
	// of the range is full it books lo all the same (the plan stays an
	// honest count) and returns it with ok false.
	Book(ctx context.Context, lo, hi, capacity int64) (slot int64, ok bool, err error)
	// Beat says that owner is alive for ttl and returns how many owners
	// are (itself included). An empty owner only counts.
	Beat(ctx context.Context, owner string, ttl time.Duration) (int, error)
}

// maxPlanRange bounds the slots one Book call may look at (with 10 s
// slots: 11 days).
const maxPlanRange = 1 << 17

func checkPlanRange(lo, hi, capacity int64) error {
	switch {
	case lo < 0 || hi < lo:
		return fmt.Errorf("plan: bad slot range [%d, %d]", lo, hi)
	case hi-lo >= maxPlanRange:
		return fmt.Errorf("plan: slot range [%d, %d] longer than %d", lo, hi, maxPlanRange)
	case capacity < 1:
		return errors.New("plan: capacity below 1")
	}
	return nil
}

// memPlan is Memory's plan: slot counts and owners' deadlines, in process.
type memPlan struct {
	mu     sync.Mutex
	counts map[int64]int64
	owners map[string]time.Time
	// floor: slots below it are forgotten (no later Book asks for them:
	// lo only grows with the clock).
	floor int64
}

// Book books one refresh; see PlanBook.
func (m *Memory) Book(ctx context.Context, lo, hi, capacity int64) (int64, bool, error) {
	if err := ctx.Err(); err != nil {
		return 0, false, fmt.Errorf("plan: %w", err)
	}
	if err := checkPlanRange(lo, hi, capacity); err != nil {
		return 0, false, err
	}
	p := &m.plan
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counts == nil {
		p.counts = make(map[int64]int64)
	}
	if lo > p.floor && len(p.counts) > 1024 {
		for s := range p.counts {
			if s < lo {
				delete(p.counts, s)
			}
		}
		p.floor = lo
	}
	for s := hi; s >= lo; s-- {
		if p.counts[s] < capacity {
			p.counts[s]++
			return s, true, nil
		}
	}
	p.counts[lo]++
	return lo, false, nil
}

// Beat counts owners; see PlanBook.
func (m *Memory) Beat(ctx context.Context, owner string, ttl time.Duration) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("plan: %w", err)
	}
	now := m.now()
	p := &m.plan
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.owners == nil {
		p.owners = make(map[string]time.Time)
	}
	if owner != "" {
		p.owners[owner] = now.Add(ttl)
	}
	n := 0
	for o, until := range p.owners {
		if now.Before(until) {
			n++
		} else {
			delete(p.owners, o)
		}
	}
	return n, nil
}
