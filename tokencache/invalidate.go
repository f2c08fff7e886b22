package tokencache

import (
	"slices"
	"sync"
)

// Invalidations is implemented by stores that tell a process when a
// customer's record may have changed, so that it can hold opened records
// in memory and serve them without reading the store (the refresher's L1).
// Both stores implement it: Memory in process, at every write; Redis
// through its subscription to DoneChannel, on which every write that
// changes a record's generation or removes it publishes the customer id
// (casScript), with a heartbeat that proves the subscription still hears.
type Invalidations interface {
	// Invalidations registers l and returns a function that unregisters
	// it. l.Reset(true) comes first (at once when the store hears changes
	// already, else when it first does); from then on every change is
	// delivered, or followed by a Reset. Calls to one listener never
	// overlap and never block on the store; listeners registered earlier
	// hear each call first.
	Invalidations(l InvalidationListener) (stop func())
}

// InvalidationListener hears a store's invalidations.
type InvalidationListener interface {
	// Changed: the customer's record got a new generation or went (a
	// refresh, an exchange, a delete, a reauthorization_required), on this
	// replica or another. A write on this replica calls it before its
	// Update returns.
	Changed(customerID string)
	// Reset: changes may have been missed. hearing reports whether the
	// store hears changes from now on (a subscription confirmed, or a
	// heartbeat heard after a silence) or not (the subscription failed, a
	// heartbeat was not heard back in time): then nothing held may be
	// trusted until a Reset(true).
	Reset(hearing bool)
}

// invalidators fans a store's invalidations out to its listeners, in the
// order they registered. Every call happens under mu, so a listener sees
// them in order and a registration never misses a change delivered after
// it.
//
// A Redis store's own writes are told to its listeners when they land
// (changed), before the write's reply; their echo on the channel would
// only drop again what a reader fetched meanwhile, which is current. So
// each write that may publish counts one echo expected (expectEcho), and
// heard swallows that many messages of the customer. A message swallowed
// in place of the echo is another replica's write that landed before
// this one (the channel keeps the order of the writes); the changed call
// of this one, or of noEcho when it did not publish after all, comes
// after it and stands in for it. A Reset forgets the echoes expected: a
// lost message may have been one, and a kept count would swallow another
// replica's.
type invalidators struct {
	mu      sync.Mutex
	hearing bool
	ls      []*invalidationReg // in the order registered
	echoes  map[string]int
}

type invalidationReg struct{ l InvalidationListener }

// add registers l; it hears Reset(true) at once if the store hears
// changes already.
func (v *invalidators) add(l InvalidationListener) func() {
	reg := &invalidationReg{l}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.ls = append(v.ls, reg)
	if v.hearing {
		l.Reset(true)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			v.mu.Lock()
			defer v.mu.Unlock()
			v.ls = slices.DeleteFunc(v.ls, func(r *invalidationReg) bool { return r == reg })
		})
	}
}

// changed tells every listener that the customer's record changed.
func (v *invalidators) changed(customerID string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, reg := range v.ls {
		reg.l.Changed(customerID)
	}
}

// expectEcho counts one message of the customer as this store's own
// write, to be swallowed by heard.
func (v *invalidators) expectEcho(customerID string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.echoes == nil {
		v.echoes = make(map[string]int)
	}
	v.echoes[customerID]++
}

// noEcho undoes expectEcho for a write that did not publish (or may not
// have), and tells the listeners the customer changed, in case a message
// was swallowed for it.
func (v *invalidators) noEcho(customerID string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if n := v.echoes[customerID]; n > 1 {
		v.echoes[customerID] = n - 1
	} else {
		delete(v.echoes, customerID)
	}
	for _, reg := range v.ls {
		reg.l.Changed(customerID)
	}
}

// heard is a message of the channel naming the customer: the echo of an
// own write (swallowed), or another replica's change.
func (v *invalidators) heard(customerID string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if n := v.echoes[customerID]; n > 0 {
		if n > 1 {
			v.echoes[customerID] = n - 1
		} else {
			delete(v.echoes, customerID)
		}
		return
	}
	for _, reg := range v.ls {
		reg.l.Changed(customerID)
	}
}

// reset tells every listener that changes may have been missed, and
// whether the store hears them from now on. A Reset(false) while not
// hearing already is not repeated.
func (v *invalidators) reset(hearing bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !hearing && !v.hearing {
		return
	}
	v.hearing = hearing
	clear(v.echoes)
	for _, reg := range v.ls {
		reg.l.Reset(hearing)
	}
}

// isHearing reports whether the last reset said the store hears changes.
func (v *invalidators) isHearing() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.hearing
}
