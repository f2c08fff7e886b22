package tokencache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"time"
)

// MemoryConfig configures a Memory store.
type MemoryConfig struct {
	// Now is the store's clock: tombstone and record expiry, leases,
	// backoff and the schedule; nil means time.Now.
	Now func() time.Time
	// Buckets is the number of schedule buckets; DefaultBuckets when zero
	// or negative.
	Buckets int
}

// Memory is a Store in process memory, for the quick start and for a single
// replica. It is not shared: every process that uses one has its own tokens,
// so two replicas with memory stores would each spend the same refresh
// token. Records are kept as given (tokens are not sealed: they never leave
// the process) and are lost on restart.
//
// Memory has the same semantics as the Redis store, generations, tombstones,
// record expiry and the refresh protocol (RefreshStore) included. It is
// safe for concurrent use.
type Memory struct {
	now     func() time.Time
	buckets int
	hub     watchHub

	mu         sync.Mutex
	records    map[string]*memRecord
	tombs      map[string]memTomb
	lastSweep  time.Time
	leases     map[string]memLease
	journal    map[memJournalKey]memJournal
	lastJSweep time.Time
	due        memDue
	fence      int64 // last fence handed out, for all customers: never reused
}

// memRecord is a stored record with the protocol state the Redis store
// keeps in the same hash.
type memRecord struct {
	// rec is normalized, with Generation, RefreshTokenHash, Failures and
	// NotBefore set.
	rec     *Record
	expires time.Time // zero: never
	intent  memIntent // zero: none
}

// memIntent: refresh token hash (ih) claimed attempts times, last by owner
// with fence at time at.
type memIntent struct {
	hash     string
	attempts int
	owner    string
	fence    int64
	at       time.Time
	// leaseUntil: the claim that wrote it recorded no outcome yet, and its
	// lease runs (ran) until then; graceUntil: the grace given to it once
	// that passed (Redis "le" and "lg", see claimScript).
	leaseUntil, graceUntil time.Time
}

type memLease struct {
	owner   string
	fence   int64
	expires time.Time
}

type memTomb struct {
	gen     int64
	expires time.Time
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
	return &Memory{
		now:     now,
		buckets: buckets,
		records: make(map[string]*memRecord),
		tombs:   make(map[string]memTomb),
		leases:  make(map[string]memLease),
		journal: make(map[memJournalKey]memJournal),
		due:     newMemDue(buckets),
	}
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
	r := m.record(customerID, m.now())
	if r == nil {
		return nil, ErrNotFound
	}
	return clone(r.rec), nil
}

// Put replaces the customer's record; see Store.Put.
func (m *Memory) Put(ctx context.Context, rec *Record) (int64, error) {
	return m.write(ctx, rec, false, 0)
}

// CompareAndSwap writes rec if the stored generation is expect; see
// Store.CompareAndSwap.
func (m *Memory) CompareAndSwap(ctx context.Context, rec *Record, expect int64) (int64, error) {
	return m.write(ctx, rec, true, expect)
}

func (m *Memory) write(ctx context.Context, rec *Record, cas bool, expect int64) (int64, error) {
	op := "put record"
	if cas {
		op = "compare and swap record"
	}
	if err := checkRecord(rec); err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	stored := normalize(rec)

	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	cur := m.record(rec.CustomerID, now)
	if cas {
		if cur == nil {
			return 0, ErrNotFound
		}
		if cur.rec.Generation != expect {
			return 0, ErrConflict
		}
	}
	var gen int64
	if cur != nil {
		gen = cur.rec.Generation
	}
	if t, ok := m.tomb(rec.CustomerID, now); ok && t.gen > gen {
		gen = t.gen
	}
	gen++
	stored.Generation = gen
	stored.RefreshTokenHash = memRefreshTokenHash(rec.CustomerID, stored.RefreshToken)
	next := &memRecord{rec: stored, expires: expiresAt(stored)}
	if cas {
		// A CAS rewrites the record's own fields; the protocol state
		// (intent, failures, cooldown) stays.
		next.intent = cur.intent
		stored.Failures = cur.rec.Failures
		stored.NotBefore = cur.rec.NotBefore
	} else {
		// A new exchange starts afresh: no intent, failures, cooldown or
		// lease of the old refresh token survive it.
		delete(m.leases, rec.CustomerID)
	}
	m.records[rec.CustomerID] = next
	m.due.set(rec.CustomerID, Bucket(rec.CustomerID, m.buckets), stored.NextRefresh)
	if !cas {
		m.hub.notify(rec.CustomerID) // never blocks
	}
	return gen, nil
}

// Delete forgets the customer's record; see Store.Delete.
func (m *Memory) Delete(ctx context.Context, customerID string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete record: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.sweepTombs(now)
	m.due.remove(customerID)
	delete(m.leases, customerID)
	cur := m.record(customerID, now)
	if cur == nil {
		return nil
	}
	gen := cur.rec.Generation
	if t, ok := m.tomb(customerID, now); ok && t.gen > gen {
		gen = t.gen
	}
	m.tombs[customerID] = memTomb{gen: gen + 1, expires: now.Add(TombstoneTTL)}
	delete(m.records, customerID)
	m.hub.notify(customerID) // never blocks
	return nil
}

// Ping always succeeds unless ctx is done.
func (m *Memory) Ping(ctx context.Context) error {
	return ctx.Err()
}

// record returns the live record of the customer, dropping it if it has
// expired, as Redis would have. m.mu must be held.
func (m *Memory) record(customerID string, now time.Time) *memRecord {
	r, ok := m.records[customerID]
	if !ok {
		return nil
	}
	if !r.expires.IsZero() && !now.Before(r.expires) {
		delete(m.records, customerID)
		m.due.remove(customerID)
		return nil
	}
	return r
}

// tomb returns the live tombstone of the customer. m.mu must be held.
func (m *Memory) tomb(customerID string, now time.Time) (memTomb, bool) {
	t, ok := m.tombs[customerID]
	if !ok {
		return memTomb{}, false
	}
	if !now.Before(t.expires) {
		delete(m.tombs, customerID)
		return memTomb{}, false
	}
	return t, true
}

// sweepTombs drops expired tombstones at most once an hour, so that
// tombstones of customers never seen again do not pile up. m.mu must be
// held.
func (m *Memory) sweepTombs(now time.Time) {
	if now.Sub(m.lastSweep) < time.Hour {
		return
	}
	m.lastSweep = now
	for id := range m.tombs {
		m.tomb(id, now)
	}
}
