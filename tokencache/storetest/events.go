package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// EventStore is a store with the outbox, the expiry schedule and the state
// indexes (both stores, built with EventsConfig.Enabled).
type EventStore interface {
	tokencache.Store
	tokencache.Outbox
	List(ctx context.Context, idx tokencache.Index, from tokencache.Cursor, limit int) ([]tokencache.Listed, tokencache.Cursor, bool, error)
}

// EventsHorizon is the ExpiryHorizon newStore must give RunEvents' stores.
const EventsHorizon = time.Hour

// RunEvents runs the events and index suite; newStore returns an empty
// store with EventsConfig{Enabled: true, ExpiryHorizon: EventsHorizon} and
// few buckets (at most 8), so that customers share buckets.
func RunEvents(t *testing.T, newStore func(t *testing.T) EventStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s EventStore)
	}{
		{"Transitions", testEventTransitions},
		{"LostRotation", testEventLostRotation},
		{"Expiring", testEventExpiring},
		{"LeaseAndAck", testEventLeaseAndAck},
		{"Hint", testEventHint},
		{"List", testList},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t))
		})
	}
}

var eventIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// drain takes every event of the customer's bucket, in order, acknowledging
// each under a delivery lease.
func drain(t *testing.T, s EventStore, id string) []tokencache.Event {
	t.Helper()
	ctx := testContext(t)
	b := tokencache.Bucket(id, s.Buckets())
	fence, err := s.EventsLease(ctx, b, time.Minute)
	if err != nil {
		t.Fatalf("EventsLease: %v", err)
	}
	defer func() { _ = s.EventsRelease(ctx, b, fence) }()
	var out []tokencache.Event
	for {
		ev, err := s.EventsHead(ctx, b)
		if err != nil {
			t.Fatalf("EventsHead: %v", err)
		}
		if ev == nil {
			return out
		}
		out = append(out, *ev)
		left, err := s.EventsAck(ctx, b, fence, ev)
		if err != nil {
			t.Fatalf("EventsAck: %v", err)
		}
		if len(out) > 100 || left < 0 {
			t.Fatalf("outbox does not drain: %d taken, %d left", len(out), left)
		}
	}
}

func wantEvents(t *testing.T, got []tokencache.Event, want ...string) {
	t.Helper()
	var g []string
	for _, e := range got {
		g = append(g, string(e.Type)+":"+e.CustomerID+":"+e.Reason)
		if !eventIDPattern.MatchString(e.ID) {
			t.Errorf("event id %q: want 32 hex digits", e.ID)
		}
		if e.Time.IsZero() || time.Since(e.Time).Abs() > time.Minute {
			t.Errorf("event time %v: want about now", e.Time)
		}
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		if err := json.Unmarshal(b, &body); err != nil || len(body) != 5 {
			t.Errorf("event body %s: want the five fields", b)
		}
	}
	if !slices.Equal(g, want) {
		t.Fatalf("events %q, want %q", g, want)
	}
}

func testEventTransitions(t *testing.T, s EventStore) {
	ctx := testContext(t)
	gen, err := tokencache.Put(ctx, s, minimalRecord("alice"))
	if err != nil {
		t.Fatal(err)
	}
	wantEvents(t, drain(t, s, "alice")) // a first exchange: none
	l := mustClaim(t, s, "alice", gen, "o1", time.Minute)
	mustComplete(t, s, l, tokencache.Outcome{Kind: tokencache.Rejected, Code: "EXPIRED_REFRESH_TOKEN"})
	// Stale failures on a terminal record, a second delete: nothing more.
	if _, err := tokencache.Complete(ctx, s, l, failed(tokencache.Unknown, "WALLET_TIMEOUT")); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, drain(t, s, "alice"), "reauthorization_required:alice:EXPIRED_REFRESH_TOKEN")
	if _, err := tokencache.Put(ctx, s, minimalRecord("alice")); err != nil {
		t.Fatal(err)
	}
	if _, err := tokencache.Put(ctx, s, minimalRecord("alice")); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, drain(t, s, "alice"), "reauthorized:alice:")
	// Put, rejected, deleted, put again: the delete is no transition.
	gen, _ = tokencache.Put(ctx, s, minimalRecord("bob"))
	l = mustClaim(t, s, "bob", gen, "o1", time.Minute)
	mustComplete(t, s, l, tokencache.Outcome{Kind: tokencache.Rejected, Code: "INVALID_REFRESH_TOKEN"})
	if err := tokencache.Delete(ctx, s, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := tokencache.Put(ctx, s, minimalRecord("bob")); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, drain(t, s, "bob"), "reauthorization_required:bob:INVALID_REFRESH_TOKEN")
	// Events never hold a token.
	rec := mustGet(t, s, "bob")
	gen = rec.Generation
	l = mustClaim(t, s, "bob", gen, "o1", time.Minute)
	mustComplete(t, s, l, tokencache.Outcome{Kind: tokencache.Rejected, Code: "USED_REFRESH_TOKEN"})
	for _, e := range drain(t, s, "bob") {
		b, _ := json.Marshal(e)
		if strings.Contains(string(b), rec.AccessToken.Reveal()) || strings.Contains(string(b), rec.RefreshToken.Reveal()) {
			t.Fatalf("event %s holds a token", b)
		}
		if e.Reason != "USED_REFRESH_TOKEN" {
			t.Fatalf("reason %q, want USED_REFRESH_TOKEN (first presentation: no lost rotation)", e.Reason)
		}
	}
}

func testEventLostRotation(t *testing.T, s EventStore) {
	gen, err := tokencache.Put(testContext(t), s, minimalRecord("carol"))
	if err != nil {
		t.Fatal(err)
	}
	l := mustClaim(t, s, "carol", gen, "o1", time.Minute)
	gen = mustComplete(t, s, l, tokencache.Outcome{Kind: tokencache.Unknown, Code: "WALLET_TIMEOUT"})
	l, err = tokencache.Claim(testContext(t), s, "carol", gen, "o2", time.Minute, true)
	if err != nil {
		t.Fatal(err)
	}
	wantLease(t, l, true, 2)
	mustComplete(t, s, l, tokencache.Outcome{Kind: tokencache.Rejected, Code: "USED_REFRESH_TOKEN"})
	wantEvents(t, drain(t, s, "carol"), "reauthorization_required:carol:LOST_ROTATION")
	if got := mustGet(t, s, "carol").LastError; got != "USED_REFRESH_TOKEN" {
		t.Fatalf("LastError %q, want the wallet's code", got)
	}
}

func testEventExpiring(t *testing.T, s EventStore) {
	ctx := testContext(t)
	now := storeNow(t, s)
	rec := minimalRecord("dave")
	rec.RefreshTokenExpiry = now.Add(2 * time.Hour)
	gen, err := tokencache.Put(ctx, s, rec)
	if err != nil {
		t.Fatal(err)
	}
	b := tokencache.Bucket("dave", s.Buckets())
	move := func(horizon time.Duration, want int) {
		t.Helper()
		n, err := s.EventsMoveExpiring(ctx, b, horizon, 16)
		if err != nil || n != want {
			t.Fatalf("EventsMoveExpiring(%v) = %d, %v; want %d", horizon, n, err, want)
		}
	}
	probe := func() tokencache.BucketProbe {
		p, err := s.EventsProbe(ctx, []int{b})
		if err != nil || len(p) != 1 {
			t.Fatalf("EventsProbe: %v %v", p, err)
		}
		return p[0]
	}
	if p := probe(); !p.EarliestExpiry.Equal(msTime(rec.RefreshTokenExpiry)) || p.Pending != 0 {
		t.Fatalf("probe %+v, want the expiry scheduled and nothing pending", p)
	}
	move(time.Hour, 0)
	move(3*time.Hour, 1)
	if p := probe(); !p.EarliestExpiry.IsZero() || p.Pending != 1 {
		t.Fatalf("probe %+v after the move, want 1 pending, none scheduled", p)
	}
	move(3*time.Hour, 0) // sent once
	// A write that keeps the expiry does not schedule it again.
	rec2 := mustGet(t, s, "dave")
	rec2.LastUsed = now
	if gen, err = tokencache.CompareAndSwap(ctx, s, rec2, gen); err != nil {
		t.Fatal(err)
	}
	move(3*time.Hour, 0)
	wantEvents(t, drain(t, s, "dave"), "refresh_token_expiring:dave:")
	// A refresh with a new expiry schedules it again.
	l := mustClaim(t, s, "dave", gen, "o1", time.Minute)
	o, _ := refreshed(t, s)
	o.Record.RefreshTokenExpiry = now.Add(90 * time.Minute)
	mustComplete(t, s, l, o)
	move(3*time.Hour, 1)
	wantEvents(t, drain(t, s, "dave"), "refresh_token_expiring:dave:")
	// Delete and reauthorization_required unschedule it.
	o.Record.RefreshTokenExpiry = now.Add(80 * time.Minute)
	gen = mustGet(t, s, "dave").Generation
	l = mustClaim(t, s, "dave", gen, "o1", time.Minute)
	mustComplete(t, s, l, o)
	if err := tokencache.Delete(ctx, s, "dave"); err != nil {
		t.Fatal(err)
	}
	move(3*time.Hour, 0)
	rec = minimalRecord("dave")
	rec.RefreshTokenExpiry = now.Add(70 * time.Minute)
	gen, _ = tokencache.Put(ctx, s, rec)
	l = mustClaim(t, s, "dave", gen, "o1", time.Minute)
	mustComplete(t, s, l, tokencache.Outcome{Kind: tokencache.Rejected, Code: "INVALID_REFRESH_TOKEN"})
	move(3*time.Hour, 0)
	wantEvents(t, drain(t, s, "dave"), "reauthorization_required:dave:INVALID_REFRESH_TOKEN")
	// An expiry already past leaves the schedule without an event.
	rec = minimalRecord("dave")
	rec.RefreshTokenExpiry = now.Add(-time.Minute)
	tokencache.Put(ctx, s, rec)
	wantEvents(t, drain(t, s, "dave"), "reauthorized:dave:")
	move(3*time.Hour, 1)
	move(3*time.Hour, 0)
	wantEvents(t, drain(t, s, "dave"))
	// No expiry: never scheduled.
	if _, err := tokencache.Put(ctx, s, minimalRecord("dave")); err != nil {
		t.Fatal(err)
	}
	move(1000*time.Hour, 0)
	wantEvents(t, drain(t, s, "dave"))
}

func testEventLeaseAndAck(t *testing.T, s EventStore) {
	ctx := testContext(t)
	gen, _ := tokencache.Put(ctx, s, minimalRecord("erin"))
	l := mustClaim(t, s, "erin", gen, "o1", time.Minute)
	mustComplete(t, s, l, tokencache.Outcome{Kind: tokencache.Rejected, Code: "EXPIRED_REFRESH_TOKEN"})
	tokencache.Put(ctx, s, minimalRecord("erin"))
	b := tokencache.Bucket("erin", s.Buckets())
	f1, err := s.EventsLease(ctx, b, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.EventsLease(ctx, b, time.Minute); !errors.Is(err, tokencache.ErrEventsLease) {
		t.Fatalf("second lease: %v, want ErrEventsLease", err)
	}
	head, err := s.EventsHead(ctx, b)
	if err != nil || head == nil || head.Type != tokencache.EventReauthorizationRequired {
		t.Fatalf("head %+v, %v", head, err)
	}
	if _, err := s.EventsAck(ctx, b, "not-the-fence", head); !errors.Is(err, tokencache.ErrEventsLease) {
		t.Fatalf("ack with another fence: %v, want ErrEventsLease", err)
	}
	if err := s.EventsRenew(ctx, b, "not-the-fence", time.Minute); !errors.Is(err, tokencache.ErrEventsLease) {
		t.Fatalf("renew with another fence: %v, want ErrEventsLease", err)
	}
	if err := s.EventsRenew(ctx, b, f1, time.Minute); err != nil {
		t.Fatal(err)
	}
	if left, err := s.EventsAck(ctx, b, f1, head); err != nil || left != 1 {
		t.Fatalf("ack: %d left, %v; want 1", left, err)
	}
	// Acknowledging it again removes nothing: the head is another event.
	if left, err := s.EventsAck(ctx, b, f1, head); err != nil || left != 1 {
		t.Fatalf("second ack: %d left, %v; want 1", left, err)
	}
	if err := s.EventsRelease(ctx, b, f1); err != nil {
		t.Fatal(err)
	}
	f2, err := s.EventsLease(ctx, b, time.Minute)
	if err != nil || f2 == f1 {
		t.Fatalf("lease after release: %q, %v", f2, err)
	}
	if _, err := s.EventsAck(ctx, b, f1, head); !errors.Is(err, tokencache.ErrEventsLease) {
		t.Fatalf("ack with the released fence: %v, want ErrEventsLease", err)
	}
	next, _ := s.EventsHead(ctx, b)
	if next == nil || next.Type != tokencache.EventReauthorized || next.ID == head.ID {
		t.Fatalf("second event %+v", next)
	}
	_ = s.EventsRelease(ctx, b, f2)
}

func testEventHint(t *testing.T, s EventStore) {
	ctx := testContext(t)
	now := storeNow(t, s)
	gen, _ := tokencache.Put(ctx, s, minimalRecord("fred"))
	b := tokencache.Bucket("fred", s.Buckets())
	if due, err := s.EventsDue(ctx, now.Add(time.Minute), 100); err != nil || len(due) != 0 {
		t.Fatalf("hint after a first exchange without expiry: %v, %v; want none", due, err)
	}
	l := mustClaim(t, s, "fred", gen, "o1", time.Minute)
	mustComplete(t, s, l, tokencache.Outcome{Kind: tokencache.Rejected, Code: "EXPIRED_REFRESH_TOKEN"})
	due, err := s.EventsDue(ctx, now.Add(time.Minute), 100)
	if err != nil || len(due) != 1 || due[0].Bucket != b {
		t.Fatalf("hint after an event: %v, %v; want bucket %d", due, err, b)
	}
	// A rehint from a stale reading changes nothing; from the current one
	// it moves or removes the hint.
	if err := s.EventsRehint(ctx, b, due[0].At.Add(-time.Second), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.EventsDue(ctx, now.Add(time.Minute), 100); len(d) != 1 {
		t.Fatalf("stale rehint removed the hint: %v", d)
	}
	later := now.Add(time.Hour)
	if err := s.EventsRehint(ctx, b, due[0].At, later); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.EventsDue(ctx, now.Add(time.Minute), 100); len(d) != 0 {
		t.Fatalf("hint not moved: %v", d)
	}
	if err := s.EventsHint(ctx, b, now); err != nil { // earlier wins
		t.Fatal(err)
	}
	d, _ := s.EventsDue(ctx, now.Add(time.Minute), 100)
	if len(d) != 1 {
		t.Fatalf("hint not moved earlier: %v", d)
	}
	if err := s.EventsHint(ctx, b, later); err != nil { // later loses
		t.Fatal(err)
	}
	// Defer moves it later, whatever it was.
	if err := s.EventsDefer(ctx, b, later); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.EventsDue(ctx, now.Add(time.Minute), 100); len(d) != 0 {
		t.Fatalf("hint not deferred: %v", d)
	}
	d, _ = s.EventsDue(ctx, later, 100)
	if len(d) != 1 || !d[0].At.Equal(msTime(later)) {
		t.Fatalf("deferred hint: %v, want %v", d, later)
	}
	if err := s.EventsRehint(ctx, b, d[0].At, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.EventsDue(ctx, now.Add(1000*time.Hour), 100); len(d) != 0 {
		t.Fatalf("hint not removed: %v", d)
	}
	// A refresh token expiry is hinted at expiry - horizon.
	rec := minimalRecord("fred")
	rec.RefreshTokenExpiry = now.Add(3 * time.Hour)
	tokencache.Put(ctx, s, rec)
	d, _ = s.EventsDue(ctx, now.Add(1000*time.Hour), 100)
	if len(d) != 1 || !d[0].At.Before(now.Add(time.Minute)) { // the reauthorized event: now
		t.Fatalf("hint after reauthorized: %v", d)
	}
	_ = s.EventsRehint(ctx, b, d[0].At, time.Time{})
	rec.RefreshTokenExpiry = now.Add(4 * time.Hour)
	gen = mustGet(t, s, "fred").Generation
	l = mustClaim(t, s, "fred", gen, "o1", time.Minute)
	o, _ := refreshed(t, s)
	o.Record.RefreshTokenExpiry = now.Add(4 * time.Hour)
	mustComplete(t, s, l, o)
	d, _ = s.EventsDue(ctx, now.Add(1000*time.Hour), 100)
	if want := msTime(now.Add(4*time.Hour - EventsHorizon)); len(d) != 1 || !d[0].At.Equal(want) {
		t.Fatalf("hint after a new expiry: %v, want %v", d, want)
	}
}

// testList pages through both indexes while nothing changes, then checks
// that a customer whose state changes moves between them.
func testList(t *testing.T, s EventStore) {
	ctx := testContext(t)
	const n = 60
	want := map[tokencache.Index][]string{}
	for i := range n {
		id := fmt.Sprintf("cust-%03d", i)
		gen, err := tokencache.Put(ctx, s, minimalRecord(id))
		if err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			l := mustClaim(t, s, id, gen, "o1", time.Minute)
			mustComplete(t, s, l, tokencache.Outcome{Kind: tokencache.Rejected, Code: "INVALID_REFRESH_TOKEN"})
			want[tokencache.IndexReauthorizationRequired] = append(want[tokencache.IndexReauthorizationRequired], id)
		} else {
			want[tokencache.IndexActive] = append(want[tokencache.IndexActive], id)
		}
	}
	tokencache.Put(ctx, s, minimalRecord("gone"))
	if err := tokencache.Delete(ctx, s, "gone"); err != nil {
		t.Fatal(err)
	}
	for idx, ids := range want {
		for _, limit := range []int{1, 7, 1000} {
			var got []string
			cur := tokencache.Cursor{}
			for range n + 2 {
				page, next, done, err := s.List(ctx, idx, cur, limit)
				if err != nil {
					t.Fatal(err)
				}
				if len(page) > limit {
					t.Fatalf("page of %d, limit %d", len(page), limit)
				}
				for _, l := range page {
					if !l.Found || l.Bucket != tokencache.Bucket(l.CustomerID, s.Buckets()) || l.AccessTokenExpiry.IsZero() {
						t.Fatalf("listed %+v", l)
					}
					if idx == tokencache.IndexReauthorizationRequired && l.LastError != "INVALID_REFRESH_TOKEN" {
						t.Fatalf("listed %+v: want its last error", l)
					}
					got = append(got, l.CustomerID)
				}
				if done {
					break
				}
				cur = next
			}
			slices.Sort(got)
			if !slices.Equal(got, ids) {
				t.Fatalf("index %s, limit %d: listed %d %v, want %d", idx, limit, len(got), got, len(ids))
			}
		}
	}
	// Bad walks.
	if _, _, _, err := s.List(ctx, "other", tokencache.Cursor{}, 10); err == nil {
		t.Fatal("List of an unknown index: no error")
	}
	if _, _, _, err := s.List(ctx, tokencache.IndexActive, tokencache.Cursor{Bucket: s.Buckets() + 1}, 10); err == nil {
		t.Fatal("List from a bucket out of range: no error")
	}
	// A re-exchanged customer moves to the active index.
	id := want[tokencache.IndexReauthorizationRequired][0]
	tokencache.Put(ctx, s, minimalRecord(id))
	page, _, _, err := s.List(ctx, tokencache.IndexReauthorizationRequired, tokencache.Cursor{}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range page {
		if l.CustomerID == id {
			t.Fatalf("%s still listed as reauthorization_required", id)
		}
	}
}
