package tokencache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/tokencache/storetest"
)

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) tokencache.Store {
		return tokencache.NewMemory(tokencache.MemoryConfig{})
	})
}

// fakeClock is a settable clock for the memory store's expiry.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestMemoryRecordExpiry(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		rtExpiry   time.Time
		advance    time.Duration
		wantExists bool
	}{
		{"no refresh expiry: kept forever", time.Time{}, 10 * 365 * 24 * time.Hour, true},
		{"refresh token still valid", start.Add(time.Hour), 59 * time.Minute, true},
		{"expired, within retention", start.Add(time.Hour), time.Hour + tokencache.RecordRetention - time.Millisecond, true},
		{"expired, retention over", start.Add(time.Hour), time.Hour + tokencache.RecordRetention, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{now: start}
			m := tokencache.NewMemory(tokencache.MemoryConfig{Now: clock.Now})
			rec := storetest.FullRecord("c1")
			rec.RefreshTokenExpiry = tc.rtExpiry
			if _, err := tokencache.Put(ctx, m, rec); err != nil {
				t.Fatal(err)
			}
			clock.Advance(tc.advance)
			_, err := m.Get(ctx, "c1")
			if tc.wantExists && err != nil {
				t.Fatalf("Get: %v, want the record", err)
			}
			if !tc.wantExists && !errors.Is(err, tokencache.ErrNotFound) {
				t.Fatalf("Get: %v, want ErrNotFound", err)
			}
		})
	}
}

func TestMemoryTombstoneExpiry(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := tokencache.NewMemory(tokencache.MemoryConfig{Now: clock.Now})
	rec := storetest.FullRecord("c1")
	rec.RefreshTokenExpiry = time.Time{} // kept for good: only the tombstone expires
	var last int64
	for range 3 {
		g, err := tokencache.Put(ctx, m, rec)
		if err != nil {
			t.Fatal(err)
		}
		last = g
	}
	if err := tokencache.Delete(ctx, m, "c1"); err != nil {
		t.Fatal(err)
	}

	// Within the tombstone's life, generations keep growing.
	clock.Advance(tokencache.TombstoneTTL - time.Second)
	g, err := tokencache.Put(ctx, m, rec)
	if err != nil {
		t.Fatal(err)
	}
	if g <= last+1 {
		t.Fatalf("Put after Delete: generation %d, want above the tombstone's %d", g, last+1)
	}
	if err := tokencache.Delete(ctx, m, "c1"); err != nil {
		t.Fatal(err)
	}

	// After it, as in Redis, the customer starts afresh.
	clock.Advance(tokencache.TombstoneTTL + 2*time.Hour)
	if err := tokencache.Delete(ctx, m, "other"); err != nil { // sweeps expired tombstones
		t.Fatal(err)
	}
	g, err = tokencache.Put(ctx, m, rec)
	if err != nil {
		t.Fatal(err)
	}
	if g != 1 {
		t.Fatalf("Put after the tombstone expired: generation %d, want 1", g)
	}
}

func TestMemoryRefreshConformance(t *testing.T) {
	// One clock for all subtests: RunRefresh runs them one at a time. It
	// starts at the real time, since FullRecord's times are relative to it.
	clock := &fakeClock{now: time.Now()}
	storetest.RunRefresh(t, func(t *testing.T) tokencache.Store {
		return tokencache.NewMemory(tokencache.MemoryConfig{Now: clock.Now})
	}, clock.Advance)
}

func TestMemoryDueIndex(t *testing.T) {
	for _, buckets := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d buckets", buckets), func(t *testing.T) {
			storetest.CheckDueIndex(t, tokencache.NewMemory(tokencache.MemoryConfig{Buckets: buckets}), 300)
		})
	}
}

func TestMemoryJournalExpiry(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Now()}
	m := tokencache.NewMemory(tokencache.MemoryConfig{Now: clock.Now})
	gen, err := tokencache.Put(ctx, m, storetest.FullRecord("c1"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := tokencache.Claim(ctx, m, "c1", gen, "owner", time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokencache.Complete(ctx, m, l, tokencache.Outcome{Kind: tokencache.Unknown, Code: "WALLET_TIMEOUT"}); err != nil {
		t.Fatal(err)
	}
	rec, err := m.Get(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(tokencache.JournalTTL - time.Millisecond)
	if !rec.Journal.For(l.RefreshTokenHash, clock.Now()) {
		t.Fatalf("Journal %+v not answering within its TTL", rec.Journal)
	}
	clock.Advance(time.Millisecond)
	if rec.Journal.For(l.RefreshTokenHash, clock.Now()) {
		t.Fatalf("Journal %+v still answering after its TTL", rec.Journal)
	}
}

func TestMemoryEvents(t *testing.T) {
	storetest.RunEvents(t, func(t *testing.T) storetest.EventStore {
		return tokencache.NewMemory(tokencache.MemoryConfig{Buckets: 4,
			Events: tokencache.EventsConfig{Enabled: true, ExpiryHorizon: storetest.EventsHorizon}})
	})
}

// Without EventsConfig.Enabled nothing is recorded: no deliverer would
// take it.
func TestMemoryEventsOff(t *testing.T) {
	m := tokencache.NewMemory(tokencache.MemoryConfig{Buckets: 1})
	ctx := t.Context()
	rec := storetest.FullRecord("c1")
	rec.RefreshTokenExpiry = time.Now().Add(time.Minute)
	gen, err := tokencache.Put(ctx, m, rec)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tokencache.Claim(ctx, m, "c1", gen, "o", time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokencache.Complete(ctx, m, l, tokencache.Outcome{Kind: tokencache.Rejected, Code: "INVALID_REFRESH_TOKEN"}); err != nil {
		t.Fatal(err)
	}
	if _, err := tokencache.Put(ctx, m, rec); err != nil {
		t.Fatal(err)
	}
	n, err := m.EventsMoveExpiring(ctx, 0, time.Hour, 10)
	head, herr := m.EventsHead(ctx, 0)
	due, derr := m.EventsDue(ctx, time.Now().Add(time.Hour), 10)
	if n != 0 || err != nil || head != nil || herr != nil || len(due) != 0 || derr != nil {
		t.Fatalf("events recorded while off: moved %d (%v), head %+v (%v), hinted %v (%v)", n, err, head, herr, due, derr)
	}
	// The state index is kept either way.
	page, _, _, err := m.List(ctx, tokencache.IndexActive, tokencache.Cursor{}, 10)
	if err != nil || len(page) != 1 || !page[0].Found {
		t.Fatalf("List: %+v, %v", page, err)
	}
}
