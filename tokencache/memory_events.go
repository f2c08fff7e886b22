package tokencache

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The memory store's outbox, expiry schedule, hints, delivery leases and
// state indexes: the same semantics as the Redis ones (redis_events.go),
// kept under the store's lock and changed in the same step as the entry.

type memEvents struct {
	cfg    EventsConfig
	outbox map[int][]Event
	expiry map[int]map[string]time.Time // bucket -> customer -> refresh token expiry
	hint   map[int]time.Time
	lease  map[int]memLease
	index  map[Index]map[int][]string // sorted ids per bucket
}

type memLease struct {
	fence string
	until time.Time
}

func newMemEvents(cfg EventsConfig) memEvents {
	return memEvents{
		cfg:    cfg,
		outbox: make(map[int][]Event),
		expiry: make(map[int]map[string]time.Time),
		hint:   make(map[int]time.Time),
		lease:  make(map[int]memLease),
		index: map[Index]map[int][]string{
			IndexActive:                  make(map[int][]string),
			IndexReauthorizationRequired: make(map[int][]string),
		},
	}
}

// prepare derives what a write from was to next records; nothing is
// changed yet, so an error leaves the store as it was.
func (ev *memEvents) prepare(was, next *Entry, now time.Time) ([]Event, error) {
	if !ev.cfg.Enabled {
		return nil, nil
	}
	return deriveEvents(was, next, now)
}

// apply keeps the indexes, the expiry schedule, the outbox and the hint in
// step with a write from was to next. m.mu must be held.
func (ev *memEvents) apply(id string, bucket int, was, next *Entry, events []Event, now time.Time) {
	if to, changed := indexAction(was, next); changed {
		for _, idx := range []Index{IndexActive, IndexReauthorizationRequired} {
			ev.setIndex(idx, bucket, id, idx == to)
		}
	}
	if !ev.cfg.Enabled {
		return
	}
	set, remove := expiryAction(was, next)
	switch {
	case !set.IsZero():
		if ev.expiry[bucket] == nil {
			ev.expiry[bucket] = make(map[string]time.Time)
		}
		ev.expiry[bucket][id] = set
		ev.hintAt(bucket, set.Add(-ev.cfg.ExpiryHorizon))
	case remove:
		delete(ev.expiry[bucket], id)
	}
	if len(events) > 0 {
		ev.outbox[bucket] = append(ev.outbox[bucket], events...)
		ev.hintAt(bucket, now)
	}
}

// hintAt names the bucket in the hint at at, unless it names an earlier time.
func (ev *memEvents) hintAt(bucket int, at time.Time) {
	if cur, ok := ev.hint[bucket]; !ok || at.Before(cur) {
		ev.hint[bucket] = at
	}
}

func (ev *memEvents) setIndex(idx Index, bucket int, id string, in bool) {
	ids := ev.index[idx][bucket]
	i, found := slices.BinarySearch(ids, id)
	switch {
	case in && !found:
		ev.index[idx][bucket] = slices.Insert(ids, i, id)
	case !in && found:
		ev.index[idx][bucket] = slices.Delete(ids, i, i+1)
	}
}

// EventsDue returns up to limit buckets the hint names at or before now,
// earliest first.
func (m *Memory) EventsDue(ctx context.Context, now time.Time, limit int) ([]BucketHint, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("events due: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []BucketHint
	for b, at := range m.ev.hint {
		if !at.After(now) {
			out = append(out, BucketHint{Bucket: b, At: at})
		}
	}
	slices.SortFunc(out, func(a, b BucketHint) int {
		if c := a.At.Compare(b.At); c != 0 {
			return c
		}
		return a.Bucket - b.Bucket
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// EventsProbe reports each bucket's pending events and earliest scheduled
// refresh token expiry.
func (m *Memory) EventsProbe(ctx context.Context, buckets []int) ([]BucketProbe, error) {
	if err := checkBuckets(buckets, m.buckets); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("events probe: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]BucketProbe, len(buckets))
	for i, b := range buckets {
		out[i] = BucketProbe{Bucket: b, Pending: len(m.ev.outbox[b])}
		for _, t := range m.ev.expiry[b] {
			if out[i].EarliestExpiry.IsZero() || t.Before(out[i].EarliestExpiry) {
				out[i].EarliestExpiry = t
			}
		}
	}
	return out, nil
}

// EventsHint names the bucket in the hint at at, unless it names an
// earlier time.
func (m *Memory) EventsHint(ctx context.Context, bucket int, at time.Time) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("events hint: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ev.hintAt(bucket, storedTime(at))
	return nil
}

// EventsDefer names the bucket in the hint at until, whatever it named:
// after a failed delivery nothing in the bucket can go before its head.
func (m *Memory) EventsDefer(ctx context.Context, bucket int, until time.Time) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("events defer: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ev.hint[bucket] = storedTime(until)
	return nil
}

// EventsRehint replaces the bucket's hint, if it still names was, by next
// (zero: removes it). A hint written meanwhile stays.
func (m *Memory) EventsRehint(ctx context.Context, bucket int, was, next time.Time) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("events rehint: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.ev.hint[bucket]; !ok || !cur.Equal(storedTime(was)) {
		return nil
	}
	if next.IsZero() {
		delete(m.ev.hint, bucket)
	} else {
		m.ev.hint[bucket] = storedTime(next)
	}
	return nil
}

// EventsLease takes the bucket's delivery lease for ttl and returns its
// fence; ErrEventsLease while another holds it.
func (m *Memory) EventsLease(ctx context.Context, bucket int, ttl time.Duration) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("events lease: %w", err)
	}
	fence, err := NewEventID()
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if l, ok := m.ev.lease[bucket]; ok && now.Before(l.until) {
		return "", ErrEventsLease
	}
	m.ev.lease[bucket] = memLease{fence: fence, until: now.Add(ttl)}
	return fence, nil
}

// EventsRenew extends a held delivery lease; ErrEventsLease when lost.
func (m *Memory) EventsRenew(ctx context.Context, bucket int, fence string, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("events renew: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.leaseHeld(bucket, fence) {
		return ErrEventsLease
	}
	m.ev.lease[bucket] = memLease{fence: fence, until: m.now().Add(ttl)}
	return nil
}

// EventsRelease drops a held delivery lease; not an error when lost.
func (m *Memory) EventsRelease(ctx context.Context, bucket int, fence string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("events release: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.leaseHeld(bucket, fence) {
		delete(m.ev.lease, bucket)
	}
	return nil
}

func (m *Memory) leaseHeld(bucket int, fence string) bool {
	l, ok := m.ev.lease[bucket]
	return ok && l.fence == fence && m.now().Before(l.until)
}

// EventsMoveExpiring moves up to max customers whose refresh token expires
// within horizon of the store's now out of the bucket's expiry schedule
// and into its outbox as refresh_token_expiring events, earliest first
// (none for a token already expired). It returns how many left the
// schedule.
func (m *Memory) EventsMoveExpiring(ctx context.Context, bucket int, horizon time.Duration, max int) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("move expiring: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := storedTime(m.now())
	type due struct {
		id string
		at time.Time
	}
	var found []due
	for id, at := range m.ev.expiry[bucket] {
		if !at.After(now.Add(horizon)) {
			found = append(found, due{id, at})
		}
	}
	slices.SortFunc(found, func(a, b due) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return strings.Compare(a.id, b.id)
	})
	if len(found) > max {
		found = found[:max]
	}
	for _, d := range found {
		id, err := NewEventID()
		if err != nil {
			return 0, err
		}
		delete(m.ev.expiry[bucket], d.id)
		if d.at.After(now) { // an expired one is not announced: its next refresh ends it
			m.ev.outbox[bucket] = append(m.ev.outbox[bucket], Event{ID: id, Type: EventRefreshTokenExpiring, CustomerID: d.id, Time: now})
		}
	}
	return len(found), nil
}

// EventsHead returns the oldest event of the bucket's outbox, nil when
// it is empty.
func (m *Memory) EventsHead(ctx context.Context, bucket int) (*Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("events head: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if q := m.ev.outbox[bucket]; len(q) > 0 {
		e := q[0]
		return &e, nil
	}
	return nil, nil
}

// EventsAck removes ev from the bucket's outbox if it is still the head
// and the lease fence is still held (else ErrEventsLease), and returns
// how many events remain.
func (m *Memory) EventsAck(ctx context.Context, bucket int, fence string, ev *Event) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("events ack: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.leaseHeld(bucket, fence) {
		return 0, ErrEventsLease
	}
	q := m.ev.outbox[bucket]
	if len(q) > 0 && q[0].ID == ev.ID {
		q = slices.Delete(q, 0, 1)
		m.ev.outbox[bucket] = q
	}
	if len(q) == 0 {
		delete(m.ev.outbox, bucket)
	}
	return len(q), nil
}

// List walks index idx from from, bucket by bucket and in lexical order
// of ids within a bucket, and returns up to limit customers with what
// their records say now, the cursor after the last one, and whether the
// walk is over.
func (m *Memory) List(ctx context.Context, idx Index, from Cursor, limit int) ([]Listed, Cursor, bool, error) {
	if err := checkList(idx, from, limit, m.buckets); err != nil {
		return nil, from, false, err
	}
	if err := ctx.Err(); err != nil {
		return nil, from, false, fmt.Errorf("list: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var out []Listed
	cur := from
	for ; cur.Bucket < m.buckets; cur = (Cursor{Bucket: cur.Bucket + 1}) {
		ids := m.ev.index[idx][cur.Bucket]
		i := 0
		if cur.After != "" {
			i, _ = slices.BinarySearch(ids, cur.After)
			if i < len(ids) && ids[i] == cur.After {
				i++
			}
		}
		for ; i < len(ids); i++ {
			l := Listed{CustomerID: ids[i], Bucket: cur.Bucket}
			if e := m.entry(ids[i], now); e != nil && indexOf(e) == idx {
				l.Found, l.State, l.LastError, l.AccessTokenExpiry = true, e.Record.State, e.Record.LastError, e.Record.AccessTokenExpiry
				l.LeaseUntil = e.Lease.Until
			}
			out = append(out, l)
			if len(out) == limit {
				return out, Cursor{Bucket: cur.Bucket, After: ids[i]}, false, nil
			}
		}
	}
	return out, cur, true, nil
}

// checkList rejects walks no store can make.
func checkList(idx Index, from Cursor, limit, buckets int) error {
	switch {
	case idx != IndexActive && idx != IndexReauthorizationRequired:
		return fmt.Errorf("list: unknown index %q", idx)
	case from.Bucket < 0 || from.Bucket > buckets:
		return fmt.Errorf("list: bucket %d not in [0, %d]", from.Bucket, buckets)
	case limit <= 0:
		return fmt.Errorf("list: limit %d", limit)
	}
	return nil
}
