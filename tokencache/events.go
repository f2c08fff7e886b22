package tokencache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Re-authorization events (contract: "Re-authorization events") and the
// index of customers by state, both kept by the stores in the same atomic
// step as the record they follow.
//
// Every write derives, from the entry as read and the entry written
// (deriveEvents), the events it records:
//
//	active -> reauthorization_required   reauthorization_required (reason: the code, or LOST_ROTATION)
//	reauthorization_required -> active   reauthorized (a new exchange)
//
// and appends them to its bucket's outbox. refresh_token_expiring events
// are not derived from a write: each write keeps the bucket's expiry
// schedule (customer scored by its refresh token's expiry) in step with the
// record (expiryAction), and the deliverer moves the entries that come
// within the horizon into the outbox, once per refresh token expiry.
//
// Per bucket, in the bucket's slot: the outbox (a list, oldest first), the
// expiry schedule (a sorted set), the deliverer's lease, and the two state
// indexes (sorted sets of ids at score 0, walked in lexical order): active
// and reauthorization_required. Outside the slots, one hint (a sorted set
// of bucket numbers scored by when to look) tells deliverers where work is;
// it is written after the step, best effort, and a slow sweep of every
// bucket restores what a lost hint hides.

// EventType is the type of a re-authorization event.
type EventType string

const (
	EventReauthorizationRequired EventType = "reauthorization_required"
	EventReauthorized            EventType = "reauthorized"
	EventRefreshTokenExpiring    EventType = "refresh_token_expiring"
)

// ReasonLostRotation is the reason of a reauthorization_required event
// caused by a lost rotation: an unknown outcome, then USED_REFRESH_TOKEN on
// the re-presentation (the record's LastError stays USED_REFRESH_TOKEN).
const ReasonLostRotation = "LOST_ROTATION"

// codeUsedRefreshToken is the wallet's resultCode for a spent refresh token
// (package wallet names it too; tokencache imports no other package).
const codeUsedRefreshToken = "USED_REFRESH_TOKEN"

// Event is one re-authorization event. It never holds a token.
type Event struct {
	// ID is random (128 bits, hex): the receiver deduplicates on it.
	ID         string
	Type       EventType
	CustomerID string
	// Reason is the refresh-token code or LOST_ROTATION for
	// reauthorization_required, "" (JSON null) otherwise.
	Reason string
	// Time is when the store recorded it, on the store's clock (ms).
	Time time.Time

	// raw is the outbox element it was read from (Redis), so that an
	// acknowledgement removes exactly that element.
	raw string
}

// eventJSON is an event as delivered: the body of the POST.
type eventJSON struct {
	ID         string    `json:"id"`
	Type       EventType `json:"type"`
	CustomerID string    `json:"customerId"`
	Reason     *string   `json:"reason"`
	Time       string    `json:"time"`
}

// eventTimeFormat is RFC 3339 with milliseconds, the stores' precision.
const eventTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// MarshalJSON encodes the event as the contract's body
// {"id","type","customerId","reason","time"}.
func (e Event) MarshalJSON() ([]byte, error) {
	out := eventJSON{ID: e.ID, Type: e.Type, CustomerID: e.CustomerID, Time: e.Time.UTC().Format(eventTimeFormat)}
	if e.Reason != "" {
		r := e.Reason
		out.Reason = &r
	}
	return json.Marshal(out)
}

// storedEvent is an event as an outbox element: the store's clock in Unix
// milliseconds (the Redis scripts that record expiring events cannot
// format dates).
type storedEvent struct {
	ID         string    `json:"id"`
	Type       EventType `json:"type"`
	CustomerID string    `json:"customerId"`
	Reason     *string   `json:"reason"`
	At         int64     `json:"at"`
}

func encodeStoredEvent(e Event) (string, error) {
	s := storedEvent{ID: e.ID, Type: e.Type, CustomerID: e.CustomerID, At: e.Time.UnixMilli()}
	if e.Reason != "" {
		r := e.Reason
		s.Reason = &r
	}
	b, err := json.Marshal(s)
	if err != nil {
		return "", fmt.Errorf("encode event: %w", err)
	}
	return string(b), nil
}

func decodeStoredEvent(raw string) (*Event, error) {
	var s storedEvent
	if err := json.Unmarshal([]byte(raw), &s); err != nil || s.ID == "" || s.CustomerID == "" {
		return nil, corrupt("event", "malformed")
	}
	switch s.Type {
	case EventReauthorizationRequired, EventReauthorized, EventRefreshTokenExpiring:
	default:
		return nil, corrupt("event", "unknown type")
	}
	e := &Event{ID: s.ID, Type: s.Type, CustomerID: s.CustomerID, Time: time.UnixMilli(s.At).UTC(), raw: raw}
	if s.Reason != nil {
		e.Reason = *s.Reason
	}
	return e, nil
}

// NewEventID returns a random event id: 128 bits, hex.
func NewEventID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("event id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// EventsConfig turns the outbox on in a store. Off (the zero value), a
// store records no events and keeps no expiry schedule, so nothing piles up
// without a deliverer; the state indexes are kept either way.
type EventsConfig struct {
	Enabled bool
	// ExpiryHorizon: a refresh_token_expiring event is due this long
	// before the refresh token's expiry. It only places the hints; the
	// deliverer decides with its own horizon (the same setting).
	ExpiryHorizon time.Duration
}

// deriveEvents returns the events a write from was (nil: no entry) to next
// records, stamped now.
func deriveEvents(was, next *Entry, now time.Time) ([]Event, error) {
	var before, after State = "", ""
	hadRecord := was != nil && was.Record != nil
	if hadRecord {
		before = was.Record.State
	}
	if next.Record == nil || !hadRecord {
		return nil, nil // a first exchange, a delete, a record read as corrupt: no transition
	}
	after = next.Record.State
	var ev Event
	switch {
	case before == StateActive && after == StateReauthorizationRequired:
		ev = Event{Type: EventReauthorizationRequired, Reason: next.Record.LastError}
		if next.lostRotation {
			ev.Reason = ReasonLostRotation
		}
	case before == StateReauthorizationRequired && after == StateActive:
		ev = Event{Type: EventReauthorized}
	default:
		return nil, nil
	}
	id, err := NewEventID()
	if err != nil {
		return nil, err
	}
	ev.ID, ev.CustomerID, ev.Time = id, next.Record.CustomerID, storedTime(now)
	return []Event{ev}, nil
}

// expiryScheduled reports whether e belongs in the expiry schedule: an
// active record whose refresh token has an expiry.
func expiryScheduled(e *Entry) bool {
	return e != nil && e.Record != nil && e.Record.State == StateActive && !e.Record.RefreshTokenExpiry.IsZero()
}

// expiryAction is what a write from was to next does to the bucket's
// expiry schedule: set (at: the refresh token's expiry) when the entry
// comes into it or its refresh token expiry changed, remove when it leaves
// it (or was unreadable), nothing otherwise. An expiry already announced
// stays announced: a write that keeps it does not schedule it again.
func expiryAction(was, next *Entry) (set time.Time, remove bool) {
	switch {
	case expiryScheduled(next):
		if !expiryScheduled(was) || !was.Record.RefreshTokenExpiry.Equal(next.Record.RefreshTokenExpiry) {
			return storedTime(next.Record.RefreshTokenExpiry), false
		}
		return time.Time{}, false
	case expiryScheduled(was), was == nil || was.Record == nil:
		return time.Time{}, true
	}
	return time.Time{}, false
}

// Index names one of the state indexes.
type Index string

const (
	IndexNone Index = ""
	// IndexActive holds every active customer (valid, expired or
	// refreshing: derived by the reader).
	IndexActive Index = "active"
	// IndexReauthorizationRequired holds every reauthorization_required
	// customer.
	IndexReauthorizationRequired Index = "reauth"
)

func indexOf(e *Entry) Index {
	switch {
	case e == nil || e.Record == nil:
		return IndexNone
	case e.Record.State == StateReauthorizationRequired:
		return IndexReauthorizationRequired
	default:
		return IndexActive
	}
}

// indexAction is the index a write from was to next moves the customer
// into ("" with changed: out of both), and whether it changes anything. An
// entry read without a record (unknown, deleted, unreadable) may still be
// in an index, so a write from it always sets the membership.
func indexAction(was, next *Entry) (to Index, changed bool) {
	to = indexOf(next)
	if was == nil || was.Record == nil {
		return to, true
	}
	return to, indexOf(was) != to
}

// ErrEventsLease is returned when another replica holds a bucket's
// delivery lease, or the lease named was lost.
var ErrEventsLease = errors.New("tokencache: events lease held by another replica or lost")

// BucketHint is a bucket the hint names, with the time it names.
type BucketHint struct {
	Bucket int
	At     time.Time
}

// BucketProbe is what the sweep learns of a bucket: how many events wait,
// and the earliest refresh token expiry in its schedule (zero: none).
type BucketProbe struct {
	Bucket         int
	Pending        int
	EarliestExpiry time.Time
}

// Cursor is a position in the walk of an index: after customer After in
// bucket Bucket ("" : at the start of it).
type Cursor struct {
	Bucket int
	After  string
}

// Listed is one customer found in an index, as read at the walk.
type Listed struct {
	CustomerID string
	Bucket     int
	// Found is false when the record went (forgotten, deleted) or moved
	// to the other index since the index was read; skip it.
	Found             bool
	State             State
	LastError         string
	AccessTokenExpiry time.Time
	// LeaseUntil is the refresh lease's end (zero: none).
	LeaseUntil time.Time
}

// Outbox is a store's side of event delivery (internal/events): the hint of
// buckets with work, the per-bucket delivery lease, the expiry schedule and
// the outbox itself. Both stores implement it.
type Outbox interface {
	Buckets() int
	EventsDue(ctx context.Context, now time.Time, limit int) ([]BucketHint, error)
	EventsProbe(ctx context.Context, buckets []int) ([]BucketProbe, error)
	EventsHint(ctx context.Context, bucket int, at time.Time) error
	EventsRehint(ctx context.Context, bucket int, was, next time.Time) error
	EventsDefer(ctx context.Context, bucket int, until time.Time) error
	EventsLease(ctx context.Context, bucket int, ttl time.Duration) (string, error)
	EventsRenew(ctx context.Context, bucket int, fence string, ttl time.Duration) error
	EventsRelease(ctx context.Context, bucket int, fence string) error
	EventsMoveExpiring(ctx context.Context, bucket int, horizon time.Duration, max int) (int, error)
	EventsHead(ctx context.Context, bucket int) (*Event, error)
	EventsAck(ctx context.Context, bucket int, fence string, ev *Event) (int, error)
}

var (
	_ Outbox = (*Redis)(nil)
	_ Outbox = (*Memory)(nil)
)
