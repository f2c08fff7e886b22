package refresher

import (
	"container/list"
	"sync"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// recordCache holds the most recently used opened records of this process,
// at most max of them. It is a fallback, not a source of truth: every lookup
// reads the store, and the cache serves only while the store cannot be
// reached (a still-valid access token keeps app calls working through a
// short Redis outage). It holds copies: put stores a copy of the record it
// is given and get returns a copy, so no caller ever shares a record with
// the cache or with another caller (a record's Replay map is never
// modified after it is read, so the copies may share it).
type recordCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // front: most recent; values are *tokencache.Record
	byID  map[string]*list.Element
}

func newRecordCache(max int) *recordCache {
	return &recordCache{max: max, order: list.New(), byID: make(map[string]*list.Element)}
}

func (c *recordCache) get(id string) (*tokencache.Record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byID[id]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(e)
	cp := *e.Value.(*tokencache.Record)
	return &cp, true
}

// put stores rec unless the cache holds a newer generation of it.
func (c *recordCache) put(rec *tokencache.Record) {
	if c.max <= 0 {
		return
	}
	cp := *rec
	rec = &cp
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[rec.CustomerID]; ok {
		if e.Value.(*tokencache.Record).Generation > rec.Generation {
			return
		}
		e.Value = rec
		c.order.MoveToFront(e)
		return
	}
	c.byID[rec.CustomerID] = c.order.PushFront(rec)
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.byID, last.Value.(*tokencache.Record).CustomerID)
	}
}

func (c *recordCache) remove(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[id]; ok {
		c.order.Remove(e)
		delete(c.byID, id)
	}
}
