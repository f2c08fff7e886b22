package tokencache

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The refresh protocol (RefreshStore) in process memory: every decision
// under m.mu, with m.now as the store's clock.

var _ RefreshStore = (*Memory)(nil)

type memJournalKey struct{ customerID, rth string }

type memJournal struct {
	entry   JournalEntry
	expires time.Time
}

// journalSweepEvery is how often Complete drops expired journal entries.
const journalSweepEvery = time.Minute

// Buckets is the number of schedule buckets.
func (m *Memory) Buckets() int { return m.buckets }

// BucketOf is Bucket(customerID, m.Buckets()).
func (m *Memory) BucketOf(customerID string) int { return Bucket(customerID, m.buckets) }

// Now is the store's clock.
func (m *Memory) Now(ctx context.Context) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, fmt.Errorf("now: %w", err)
	}
	return m.now(), nil
}

// Close does nothing: the memory store has no background work.
func (m *Memory) Close() error { return nil }

// Claim leases the customer; see RefreshStore.Claim.
func (m *Memory) Claim(ctx context.Context, customerID string, expect int64, owner string, ttl time.Duration, ignoreBackoff bool) (*Lease, error) {
	if err := checkClaim(owner, ttl); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	cur := m.record(customerID, now)
	switch {
	case cur == nil:
		return nil, ErrNotFound
	case cur.rec.State == StateReauthorizationRequired:
		return nil, ErrNotActive
	case cur.rec.Generation != expect:
		return nil, ErrConflict
	}
	if l, ok := m.lease(customerID, now); ok {
		return nil, &LeaseHeldError{Owner: l.owner, Until: l.expires, TTL: l.expires.Sub(now)}
	}
	if in := &cur.intent; in.attempts > 0 && in.hash == cur.rec.RefreshTokenHash && !in.leaseUntil.IsZero() {
		// The claim that wrote the intent never recorded an outcome.
		until := in.leaseUntil
		if !now.Before(until) {
			if in.graceUntil.IsZero() {
				in.graceUntil = now.Add(ttl)
			}
			until = in.graceUntil
		}
		if now.Before(until) {
			return nil, &LeaseHeldError{Owner: in.owner, Until: until, TTL: until.Sub(now)}
		}
	}
	if nb := cur.rec.NotBefore; !ignoreBackoff && nb.After(now) {
		return nil, &BackoffError{Until: nb, Remaining: nb.Sub(now), LastError: cur.rec.LastError}
	}
	m.fence++
	rth := cur.rec.RefreshTokenHash
	in := cur.intent
	represent := in.attempts > 0 && in.hash == rth
	if represent {
		in.attempts++
	} else {
		in = memIntent{hash: rth, attempts: 1}
	}
	expires := now.Add(ttl)
	in.owner, in.fence, in.at = owner, m.fence, now
	in.leaseUntil, in.graceUntil = expires, time.Time{}
	cur.intent = in
	m.leases[customerID] = memLease{owner: owner, fence: m.fence, expires: expires}
	return &Lease{
		CustomerID:       customerID,
		Owner:            owner,
		Fence:            m.fence,
		Expiry:           expires,
		Generation:       cur.rec.Generation,
		Represent:        represent,
		Attempt:          in.attempts,
		RefreshTokenHash: rth,
	}, nil
}

// checkClaim rejects claims no store can make, with the same answer in
// both.
func checkClaim(owner string, ttl time.Duration) error {
	if owner == "" {
		return errors.New("claim: empty owner")
	}
	if ttl < time.Millisecond {
		return fmt.Errorf("claim: lease ttl %v below 1ms", ttl)
	}
	return nil
}

// lease returns the customer's live lease. m.mu must be held.
func (m *Memory) lease(customerID string, now time.Time) (memLease, bool) {
	l, ok := m.leases[customerID]
	if !ok {
		return memLease{}, false
	}
	if !now.Before(l.expires) {
		delete(m.leases, customerID)
		return memLease{}, false
	}
	return l, true
}

// heldBy reports whether l is the customer's live lease. m.mu must be
// held.
func (m *Memory) heldBy(l *Lease, now time.Time) bool {
	cur, ok := m.lease(l.CustomerID, now)
	return ok && cur.owner == l.Owner && cur.fence == l.Fence
}

// Renew extends a held lease; see RefreshStore.Renew.
func (m *Memory) Renew(ctx context.Context, l *Lease, ttl time.Duration) (time.Time, error) {
	if ttl < time.Millisecond {
		return time.Time{}, fmt.Errorf("renew lease: ttl %v below 1ms", ttl)
	}
	if err := ctx.Err(); err != nil {
		return time.Time{}, fmt.Errorf("renew lease: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if !m.heldBy(l, now) {
		return time.Time{}, ErrLeaseLost
	}
	expires := now.Add(ttl)
	m.leases[l.CustomerID] = memLease{owner: l.Owner, fence: l.Fence, expires: expires}
	if cur := m.record(l.CustomerID, now); cur != nil && cur.intent.fence == l.Fence {
		cur.intent.leaseUntil = expires
	}
	return expires, nil
}

// Release drops a lease and undoes its intent; see RefreshStore.Release.
func (m *Memory) Release(ctx context.Context, l *Lease) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if m.heldBy(l, now) {
		delete(m.leases, l.CustomerID)
	}
	cur := m.record(l.CustomerID, now)
	if cur == nil || cur.intent.fence != l.Fence || cur.intent.hash != l.RefreshTokenHash || cur.intent.attempts == 0 {
		return nil // a later claim (or an outcome) owns the intent now
	}
	if cur.intent.attempts > 1 {
		cur.intent.attempts--
		cur.intent.fence = 0 // undone once only
		cur.intent.leaseUntil, cur.intent.graceUntil = time.Time{}, time.Time{}
	} else {
		cur.intent = memIntent{}
	}
	return nil
}

// Complete records an outcome; see RefreshStore.Complete.
func (m *Memory) Complete(ctx context.Context, l *Lease, o Outcome) (int64, error) {
	if err := checkOutcome(l, o); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("complete refresh: %w", err)
	}
	var fresh *Record
	if o.Kind == Refreshed {
		fresh = normalize(o.Record)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	id := l.CustomerID
	cur := m.record(id, now)
	if cur == nil {
		return 0, ErrNotFound
	}
	if t, ok := m.tomb(id, now); ok && t.gen >= cur.rec.Generation {
		return 0, ErrNotFound
	}
	if cur.rec.RefreshTokenHash != l.RefreshTokenHash {
		return 0, ErrConflict
	}
	rec := clone(cur.rec)
	rec.Generation++
	next := &memRecord{rec: rec, expires: cur.expires, intent: cur.intent}
	switch o.Kind {
	case Refreshed:
		rec.AccessToken = fresh.AccessToken
		rec.AccessTokenExpiry = fresh.AccessTokenExpiry
		rec.RefreshToken = fresh.RefreshToken
		rec.RefreshTokenExpiry = fresh.RefreshTokenExpiry
		rec.LastRefresh = fresh.LastRefresh
		rec.NextRefresh = fresh.NextRefresh
		rec.State = StateActive
		rec.LastError = ""
		rec.Failures = 0
		rec.NotBefore = time.Time{}
		rec.RefreshTokenHash = memRefreshTokenHash(id, rec.RefreshToken)
		next.intent = memIntent{}
		next.expires = expiresAt(rec)
	case Rejected:
		rec.State = StateReauthorizationRequired
		rec.LastError = o.Code
		rec.NextRefresh = time.Time{}
		next.intent = memIntent{}
	case Refused, Unknown:
		if rec.State == StateReauthorizationRequired {
			break // terminal already: a stale holder's failure changes nothing
		}
		nb := storedTime(now.Add(o.Backoff))
		rec.LastError = o.Code
		rec.Failures++
		rec.NotBefore = nb
		rec.NextRefresh = nb
		in := &next.intent
		switch {
		case o.Kind == Unknown && (in.attempts == 0 || in.hash != l.RefreshTokenHash):
			// Cleared meanwhile: the presentation's outcome is still
			// unknown, so the intent comes back.
			*in = memIntent{hash: l.RefreshTokenHash, attempts: 1, owner: l.Owner, fence: l.Fence, at: now}
		case o.Kind == Refused && in.attempts <= 1:
			// The only presentation was refused: the token is unused.
			*in = memIntent{}
		case in.fence == l.Fence:
			// This presentation is over.
			in.leaseUntil, in.graceUntil = time.Time{}, time.Time{}
		}
	}
	m.records[id] = next
	m.due.set(id, Bucket(id, m.buckets), rec.NextRefresh)
	if m.heldBy(l, now) {
		delete(m.leases, id)
	}
	m.sweepJournal(now)
	m.journal[memJournalKey{id, l.RefreshTokenHash}] = memJournal{
		entry:   JournalEntry{Kind: o.Kind, Code: o.Code, Generation: rec.Generation},
		expires: now.Add(JournalTTL),
	}
	m.hub.notify(id) // never blocks
	return rec.Generation, nil
}

// checkOutcome rejects outcomes no store can record, with the same answer
// in both.
func checkOutcome(l *Lease, o Outcome) error {
	switch {
	case l == nil:
		return errors.New("complete refresh: nil lease")
	case o.Kind < Refreshed || o.Kind > Unknown:
		return fmt.Errorf("complete refresh: unknown outcome kind %d", int(o.Kind))
	case o.Kind == Refreshed && o.Record == nil:
		return errors.New("complete refresh: refreshed without a record")
	case o.Backoff < 0:
		return errors.New("complete refresh: negative backoff")
	case strings.Contains(o.Code, "|"):
		return errors.New("complete refresh: code contains '|'")
	}
	return nil
}

// sweepJournal drops expired journal entries, at most once a
// journalSweepEvery. m.mu must be held.
func (m *Memory) sweepJournal(now time.Time) {
	if now.Sub(m.lastJSweep) < journalSweepEvery {
		return
	}
	m.lastJSweep = now
	for k, j := range m.journal {
		if !now.Before(j.expires) {
			delete(m.journal, k)
		}
	}
}

// Journal returns a recorded outcome; see RefreshStore.Journal.
func (m *Memory) Journal(ctx context.Context, customerID, rth string) (*JournalEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := memJournalKey{customerID, rth}
	j, ok := m.journal[k]
	if !ok {
		return nil, ErrNotFound
	}
	if !m.now().Before(j.expires) {
		delete(m.journal, k)
		return nil, ErrNotFound
	}
	e := j.entry
	return &e, nil
}

// Watch wakes on Complete, Put and Delete of the customer; see
// RefreshStore.Watch.
func (m *Memory) Watch(customerID string) (<-chan struct{}, func()) {
	return m.hub.add(customerID)
}

// Due lists the customers due for refresh; see RefreshStore.Due. It costs
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

// TouchLastUsed records an app call; see RefreshStore.TouchLastUsed.
func (m *Memory) TouchLastUsed(ctx context.Context, customerID string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("touch last used: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if cur := m.record(customerID, now); cur != nil {
		// Records are replaced, never changed in place, so that a copy
		// handed out earlier never changes.
		rec := clone(cur.rec)
		rec.LastUsed = storedTime(now)
		m.records[customerID] = &memRecord{rec: rec, expires: cur.expires, intent: cur.intent}
	}
	return nil
}

// Census counts the customers by state; see RefreshStore.Census. It visits
// every record.
func (m *Memory) Census(ctx context.Context) (Census, error) {
	if err := ctx.Err(); err != nil {
		return Census{}, fmt.Errorf("census: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var c Census
	for id := range m.records {
		r := m.record(id, now)
		if r == nil {
			continue
		}
		_, leased := m.lease(id, now)
		c.add(r.rec.State, leased, r.rec.AccessTokenExpiry, now)
	}
	return c, nil
}

// add counts one record: reauthorization_required before refreshing before
// expired (no expiry counts as expired, as the admin API shows it).
func (c *Census) add(state State, leased bool, accessExpiry, now time.Time) {
	switch {
	case state == StateReauthorizationRequired:
		c.ReauthorizationRequired++
	case leased:
		c.Refreshing++
	case !now.Before(accessExpiry):
		c.Expired++
	default:
		c.Valid++
	}
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
