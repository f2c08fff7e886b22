package refresher

import (
	"container/list"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// l1 holds the most recently used opened records of this process, at most
// max of them, so that a call for a customer whose token is cached costs
// no store round trip (and no unsealing).
//
// A record is served from it (fresh) only while it can be trusted: the
// store tells this process about every change of a record on any replica
// (tokencache.Invalidations: the Redis store's subscription to the channel
// every write publishes on, with its heartbeat; the memory store at each
// write), and l1 drops the customer on each. When the store may have
// missed changes (a (re)subscription, a heartbeat not heard back, the
// subscription failing) everything held stops being fresh at once (the
// epoch moves on), and while the store does not hear changes nothing is.
// A store without invalidations never makes anything fresh: every call
// reads the store, as before.
//
// Held records that are no longer fresh still serve one purpose: while the
// store cannot be reached, a still-valid access token keeps app calls
// working (Refresher.load). A record dropped because it changed serves
// neither.
//
// Bounds: at most max records (least recently used go first), and none
// past its access token's expiry (dropped when met).
//
// Race: a reader that read the store before a change was announced must
// not put what it read after the announcement. Each read takes a snapshot
// (the epoch, and the change counter of the customer's stripe) before it
// reads; put refuses a record whose stripe counted a change since, or
// holds it as not fresh when the epoch moved.
//
// It hands out copies: put stores a copy and lookups return one, so no
// caller shares a record with l1 or another caller (a record's Replay map
// is never modified after it is read, so the copies may share it).
type l1 struct {
	max     int
	now     func() time.Time
	seed    maphash.Seed
	nshards uint64        // shards in use: one for small limits, so the count is exact
	hearing atomic.Bool   // the store hears changes (its last Reset said so)
	epoch   atomic.Uint64 // moves on at every Reset
	stripes [l1Stripes]atomic.Uint64
	shards  [l1Shards]l1Shard
}

const (
	// l1Shards spreads the lock of the hot path (limits of 64 per shard
	// and more; below, one shard keeps the count exact).
	l1Shards = 16
	// l1Stripes is how finely changes are counted: a change of one
	// customer makes a read of another in the same stripe, in flight at
	// that moment, go uncached once.
	l1Stripes = 4096
)

type l1Shard struct {
	mu    sync.Mutex
	max   int
	order *list.List // front: most recent; values are *l1Entry
	byID  map[string]*list.Element
}

type l1Entry struct {
	rec   *tokencache.Record
	epoch uint64 // the epoch of the read that put it
	// rejected: the wallet rejected this generation's access token; it is
	// neither served nor put again (the refresh path reads it once more).
	rejected bool
}

// l1Snapshot is what a reader takes before it reads the store.
type l1Snapshot struct {
	epoch, stripe uint64
	hash          uint64
}

func newL1(limit int, now func() time.Time) *l1 {
	c := &l1{max: limit, now: now, seed: maphash.MakeSeed()}
	c.nshards = 1
	if limit >= 64*l1Shards {
		c.nshards = l1Shards
	}
	per := 0
	if limit > 0 {
		per = max(1, (limit+int(c.nshards)-1)/int(c.nshards))
	}
	for i := range c.shards {
		c.shards[i] = l1Shard{max: per, order: list.New(), byID: make(map[string]*list.Element)}
	}
	return c
}

func (c *l1) hash(id string) uint64 { return maphash.String(c.seed, id) }

func (c *l1) shard(h uint64) *l1Shard { return &c.shards[h%c.nshards] }

func (c *l1) stripe(h uint64) *atomic.Uint64 { return &c.stripes[(h/l1Shards)%l1Stripes] }

// snapshot is taken before reading the customer's record from the store.
func (c *l1) snapshot(id string) l1Snapshot {
	h := c.hash(id)
	// The epoch first: a Reset between the two loads leaves the snapshot
	// in the older epoch, which makes nothing fresh.
	e := c.epoch.Load()
	return l1Snapshot{epoch: e, stripe: c.stripe(h).Load(), hash: h}
}

// fresh returns the customer's record if it may be served without reading
// the store: the store hears changes, none was announced since it was
// read, it is active and its access token has not expired.
func (c *l1) fresh(id string) (*tokencache.Record, bool) {
	if c.max <= 0 || !c.hearing.Load() {
		return nil, false
	}
	epoch := c.epoch.Load()
	h := c.hash(id)
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.byID[id]
	if !ok {
		return nil, false
	}
	e := el.Value.(*l1Entry)
	if !c.now().Before(e.rec.AccessTokenExpiry) {
		s.remove(el) // past expiry: of no use, not even in an outage
		return nil, false
	}
	if e.epoch != epoch || e.rejected || e.rec.State != tokencache.StateActive {
		return nil, false
	}
	s.order.MoveToFront(el)
	cp := *e.rec
	return &cp, true
}

// held returns the customer's record whatever its freshness, for use
// while the store cannot be reached; the caller checks it.
func (c *l1) held(id string) (*tokencache.Record, bool) {
	s := c.shard(c.hash(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.byID[id]
	if !ok || el.Value.(*l1Entry).rejected {
		return nil, false
	}
	s.order.MoveToFront(el)
	cp := *el.Value.(*l1Entry).rec
	return &cp, true
}

// put keeps rec, read from the store after snap was taken, unless a change
// of the customer was announced since or a newer generation is held.
func (c *l1) put(rec *tokencache.Record, snap l1Snapshot) {
	if c.max <= 0 {
		return
	}
	cp := *rec
	s := c.shard(snap.hash)
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.stripe(snap.hash).Load() != snap.stripe {
		return // changed meanwhile: what was read may be gone already
	}
	e := &l1Entry{rec: &cp, epoch: snap.epoch}
	s.set(e)
}

// set keeps e unless a newer generation is held, or the one held was
// rejected and e is no newer. s.mu must be held.
func (s *l1Shard) set(e *l1Entry) {
	if el, ok := s.byID[e.rec.CustomerID]; ok {
		was := el.Value.(*l1Entry)
		if was.rec.Generation > e.rec.Generation || was.rejected && was.rec.Generation == e.rec.Generation {
			return
		}
		el.Value = e
		s.order.MoveToFront(el)
		return
	}
	s.byID[e.rec.CustomerID] = s.order.PushFront(e)
	for s.order.Len() > s.max {
		s.remove(s.order.Back())
	}
}

// reject drops the customer's token of the given generation, which the
// wallet rejected, and keeps it from being put again: the refresh path
// reads it once more before it replaces it, and no call may be served it
// meanwhile. The mark lasts until a newer generation is put or the token
// expires.
func (c *l1) reject(id string, generation int64, expiry time.Time) {
	h := c.hash(id)
	c.stripe(h).Add(1) // reads in flight do not put it
	if c.max <= 0 {
		return
	}
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.byID[id]; ok {
		s.remove(el)
	}
	s.set(&l1Entry{rec: &tokencache.Record{CustomerID: id, Generation: generation, AccessTokenExpiry: expiry}, rejected: true})
}

// touched notes an app call recorded for the customer at t, so that the
// next calls served from l1 do not record it again.
func (c *l1) touched(id string, generation int64, t time.Time) {
	s := c.shard(c.hash(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.byID[id]; ok {
		e := el.Value.(*l1Entry)
		if e.rec.Generation == generation && e.rec.LastUsed.Before(t) {
			cp := *e.rec // copies handed out stay as they were
			cp.LastUsed = t
			el.Value = &l1Entry{rec: &cp, epoch: e.epoch}
		}
	}
}

// remove drops the customer and makes reads in flight not put what they
// read (a token the wallet rejected, a customer this replica deletes).
func (c *l1) remove(id string) { c.Changed(id) }

// Changed drops the customer: its record changed or went
// (tokencache.InvalidationListener).
func (c *l1) Changed(id string) {
	h := c.hash(id)
	// Count the change first: a put that checks after this refuses; one
	// that checked before has inserted, and is removed below.
	c.stripe(h).Add(1)
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.byID[id]; ok {
		s.remove(el)
	}
}

// Reset makes everything held not fresh: changes may have been missed. It
// stays held for outages. While the store does not hear changes, nothing
// is fresh (tokencache.InvalidationListener).
func (c *l1) Reset(hearing bool) {
	if !hearing {
		c.hearing.Store(false)
		c.epoch.Add(1)
		return
	}
	c.epoch.Add(1)
	c.hearing.Store(true)
}

// len is the number of records held (for tests).
func (c *l1) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += s.order.Len()
		s.mu.Unlock()
	}
	return n
}

func (s *l1Shard) remove(el *list.Element) {
	s.order.Remove(el)
	delete(s.byID, el.Value.(*l1Entry).rec.CustomerID)
}
