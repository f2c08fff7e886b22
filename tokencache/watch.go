package tokencache

import "sync"

// maxWatchers bounds the watches open at once in one store. Each is a
// caller waiting for a refresh, bounded by its own deadline, so the bound
// is only reached by a runaway caller; past it Watch hands out channels
// that never fire and callers fall back to polling, which they do anyway.
const maxWatchers = 1 << 16

// watchHub fans "customer changed" notices out to the watchers of each
// customer. Sends never block: each watcher's channel has a buffer of one,
// and a notice that finds it full is folded into the one already waiting.
type watchHub struct {
	mu   sync.Mutex
	byID map[string]map[*watcher]struct{}
	n    int
}

type watcher struct {
	ch chan struct{}
}

// add registers a watcher of customerID. stop removes it; calling stop
// more than once is harmless.
func (h *watchHub) add(customerID string) (<-chan struct{}, func()) {
	w := &watcher{ch: make(chan struct{}, 1)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n >= maxWatchers {
		return w.ch, func() {}
	}
	if h.byID == nil {
		h.byID = make(map[string]map[*watcher]struct{})
	}
	set := h.byID[customerID]
	if set == nil {
		set = make(map[*watcher]struct{})
		h.byID[customerID] = set
	}
	set[w] = struct{}{}
	h.n++
	var once sync.Once
	return w.ch, func() {
		once.Do(func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			set := h.byID[customerID]
			if _, ok := set[w]; !ok {
				return
			}
			delete(set, w)
			h.n--
			if len(set) == 0 {
				delete(h.byID, customerID)
			}
		})
	}
}

// notify wakes every watcher of customerID.
func (h *watchHub) notify(customerID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.byID[customerID] {
		select {
		case w.ch <- struct{}{}:
		default:
		}
	}
}

// count is the number of open watches (for tests).
func (h *watchHub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}
