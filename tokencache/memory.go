package tokencache

import (
	"container/heap"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// MemoryConfig configures a Memory store.
type MemoryConfig struct {
	// Now is the store's clock: every decision and expiry; nil means
	// time.Now.
	Now func() time.Time
	// Buckets is the number of schedule buckets; DefaultBuckets when zero
	// or negative.
	Buckets int
	// Events turns the re-authorization events' outbox on (events.go).
	Events EventsConfig
}

// Memory is a Store in process memory, for the quick start and for a single
// replica. It is not shared: every process that uses one has its own tokens,
// so two replicas with memory stores would each spend the same refresh
// token. Records are kept as given (tokens are not sealed: they never leave
// the process) and are lost on restart.
//
// Memory applies each Decision under one lock, with its clock read under
// it, so it has the same semantics as the Redis store. It is safe for
// concurrent use.
type Memory struct {
	now     func() time.Time
	buckets int
	hub     watchHub
	inv     invalidators

	mu        sync.Mutex
	entries   map[string]*Entry // each a private copy, replaced on write
	lastSweep time.Time
	due       memDue
	ev        memEvents

	plan memPlan // the refresh plan (plan.go), under its own lock
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty Memory store.
func NewMemory(cfg MemoryConfig) *Memory {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	buckets := cfg.Buckets
	if buckets <= 0 {
		buckets = DefaultBuckets
	}
	m := &Memory{now: now, buckets: buckets, entries: make(map[string]*Entry), due: newMemDue(buckets),
		ev: newMemEvents(cfg.Events)}
	m.inv.hearing = true // every write tells its listeners itself
	return m
}

// memRefreshTokenHash is the memory store's RefreshTokenHash: unkeyed,
// since it never leaves the process, but bound to the customer like the
// Redis one.
func memRefreshTokenHash(customerID string, token Secret) string {
	if token == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(customerID + "\x00" + token.Reveal()))
	return hex.EncodeToString(sum[:16])
}

// Get returns a copy of the customer's record, or ErrNotFound.
func (m *Memory) Get(ctx context.Context, customerID string) (*Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get record: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entry(customerID, m.now())
	if e == nil || e.Record == nil {
		return nil, ErrNotFound
	}
	return clone(e.Record), nil
}

// Update applies d under the store's lock; see Store.Update.
func (m *Memory) Update(ctx context.Context, customerID string, d Decision) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", d.Op, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := storedTime(m.now())
	m.sweep(now)
	cur := m.entry(customerID, now)
	var next Entry
	if cur != nil {
		next = copyEntry(cur)
	}
	write, err := d.Apply(&next, now)
	if !write {
		return err
	}
	if r := next.Record; recordWritten(cur, &next) && r.RefreshTokenHash == "" {
		r.RefreshTokenHash = memRefreshTokenHash(customerID, r.RefreshToken)
	}
	events, eerr := m.ev.prepare(cur, &next, now)
	if eerr != nil {
		return fmt.Errorf("%s: %w", d.Op, eerr)
	}
	next.lostRotation = false
	if next.Record == nil && next.Tombstone == 0 {
		delete(m.entries, customerID)
	} else {
		m.entries[customerID] = &next
	}
	var nr time.Time
	if next.Record != nil {
		nr = next.Record.NextRefresh
	}
	bucket := Bucket(customerID, m.buckets)
	m.due.set(customerID, bucket, nr)
	m.ev.apply(customerID, bucket, cur, &next, events, now)
	if changed(cur, &next) {
		m.hub.notify(customerID) // never blocks
		// Under the lock: no Get returns the new record before the
		// listeners have dropped the old one.
		m.inv.changed(customerID)
	}
	return err
}

// copyEntry is a deep copy of e.
func copyEntry(e *Entry) Entry {
	c := *e
	if e.Record != nil {
		c.Record = clone(e.Record)
	}
	return c
}

// changed reports whether a write from cur to next changes what watchers
// wait for: the record's generation, or the record itself going.
func changed(cur, next *Entry) bool {
	var was Entry
	if cur != nil {
		was = *cur
	}
	return generation(&was) != generation(next) || (was.Record != nil) != (next.Record != nil)
}

// entry returns the customer's live entry, dropping it if it has expired,
// as Redis would have. m.mu must be held.
func (m *Memory) entry(customerID string, now time.Time) *Entry {
	e, ok := m.entries[customerID]
	if !ok {
		return nil
	}
	if !e.Expires.IsZero() && !now.Before(e.Expires) {
		delete(m.entries, customerID)
		m.due.remove(customerID)
		return nil
	}
	return e
}

// sweep drops expired entries at most once an hour, so that tombstones of
// customers never seen again do not pile up. m.mu must be held.
func (m *Memory) sweep(now time.Time) {
	if now.Sub(m.lastSweep) < time.Hour {
		return
	}
	m.lastSweep = now
	for id := range m.entries {
		m.entry(id, now)
	}
}

// Ping always succeeds unless ctx is done.
func (m *Memory) Ping(ctx context.Context) error { return ctx.Err() }

// Buckets is the number of schedule buckets.
func (m *Memory) Buckets() int { return m.buckets }

// Close does nothing: the memory store has no background work.
func (m *Memory) Close() error { return nil }

// Watch wakes on every write that changes the customer's generation or
// removes its record; see Store.Watch.
func (m *Memory) Watch(customerID string) (<-chan struct{}, func()) {
	return m.hub.add(customerID)
}

// Invalidations registers l for every change of a record, told by the
// write itself (under the store's lock); see Invalidations.
func (m *Memory) Invalidations(l InvalidationListener) func() { return m.inv.add(l) }

// Due lists the customers due for refresh; see Store.Due. It costs
// O(limit log limit) per bucket, whatever the number of customers.
func (m *Memory) Due(ctx context.Context, buckets []int, limit int) ([]DueEntry, error) {
	if err := checkBuckets(buckets, m.buckets); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list due: %w", err)
	}
	if limit <= 0 {
		return nil, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var out []DueEntry
	for _, b := range buckets {
		out = append(out, m.due.list(b, now.UnixMilli(), limit)...)
	}
	return mergeDue(out, limit), nil
}

// Census counts the customers by state at the store's now. It visits
// every entry.
func (m *Memory) Census(ctx context.Context) (Census, error) {
	if err := ctx.Err(); err != nil {
		return Census{}, fmt.Errorf("census: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var c Census
	for id := range m.entries {
		if e := m.entry(id, now); e != nil {
			c.add(e, now)
		}
	}
	return c, nil
}

func checkBuckets(buckets []int, n int) error {
	for _, b := range buckets {
		if b < 0 || b >= n {
			return fmt.Errorf("list due: bucket %d not in [0, %d)", b, n)
		}
	}
	return nil
}

// mergeDue sorts entries by due time, then customer id, and keeps the
// first limit.
func mergeDue(out []DueEntry, limit int) []DueEntry {
	slices.SortFunc(out, func(a, b DueEntry) int {
		if c := a.Due.Compare(b.Due); c != 0 {
			return c
		}
		return strings.Compare(a.CustomerID, b.CustomerID)
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

// memDue is the memory store's schedule: per bucket, a min-heap of
// customers by (due, id), with an index to move or remove one in
// O(log n).
type memDue struct {
	heaps []dueHeap
	items map[string]*dueItem
}

type dueItem struct {
	id     string
	due    int64 // Unix ms
	bucket int
	index  int
}

func newMemDue(buckets int) memDue {
	return memDue{heaps: make([]dueHeap, buckets), items: make(map[string]*dueItem)}
}

// set schedules the customer at due, or unschedules it when due is zero.
func (d *memDue) set(id string, bucket int, due time.Time) {
	if due.IsZero() {
		d.remove(id)
		return
	}
	ms := due.UnixMilli()
	if it, ok := d.items[id]; ok {
		it.due = ms
		heap.Fix(&d.heaps[it.bucket], it.index)
		return
	}
	it := &dueItem{id: id, due: ms, bucket: bucket}
	d.items[id] = it
	heap.Push(&d.heaps[bucket], it)
}

func (d *memDue) remove(id string) {
	it, ok := d.items[id]
	if !ok {
		return
	}
	heap.Remove(&d.heaps[it.bucket], it.index)
	delete(d.items, id)
}

// list returns up to limit entries of the bucket due at or before now,
// earliest first, walking the heap best-first without changing it.
func (d *memDue) list(bucket int, now int64, limit int) []DueEntry {
	h := d.heaps[bucket]
	var out []DueEntry
	frontier := &indexHeap{h: h}
	if len(h) > 0 {
		heap.Push(frontier, 0)
	}
	for frontier.Len() > 0 && len(out) < limit {
		i := heap.Pop(frontier).(int)
		if h[i].due > now {
			break // every other candidate is later still
		}
		out = append(out, DueEntry{CustomerID: h[i].id, Due: time.UnixMilli(h[i].due).UTC()})
		for _, c := range []int{2*i + 1, 2*i + 2} {
			if c < len(h) {
				heap.Push(frontier, c)
			}
		}
	}
	return out
}

type dueHeap []*dueItem

func dueLess(a, b *dueItem) bool {
	if a.due != b.due {
		return a.due < b.due
	}
	return a.id < b.id
}

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return dueLess(h[i], h[j]) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *dueHeap) Push(x any) {
	it := x.(*dueItem)
	it.index = len(*h)
	*h = append(*h, it)
}
func (h *dueHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}

// indexHeap orders positions of a dueHeap by their items.
type indexHeap struct {
	h   dueHeap
	idx []int
}

func (x *indexHeap) Len() int           { return len(x.idx) }
func (x *indexHeap) Less(i, j int) bool { return dueLess(x.h[x.idx[i]], x.h[x.idx[j]]) }
func (x *indexHeap) Swap(i, j int)      { x.idx[i], x.idx[j] = x.idx[j], x.idx[i] }
func (x *indexHeap) Push(v any)         { x.idx = append(x.idx, v.(int)) }
func (x *indexHeap) Pop() any {
	v := x.idx[len(x.idx)-1]
	x.idx = x.idx[:len(x.idx)-1]
	return v
}
