// Package tokencache holds each customer's wallet tokens and the refresh
// protocol that guards them: the record (tokens, expiries, schedule,
// state), the protocol's decisions over it, written once in protocol.go
// (claim, renew, release, complete, put, delete), and two stores that
// apply those decisions atomically: Memory (one replica) and Redis (shared
// by every replica, tokens sealed with AES-256-GCM, each step one
// optimistic transaction in the customer's Cluster slot on the server's
// clock). A [Store] only reads, applies a [Decision] and lists what is
// due; when to refresh and calling the wallet belong to package refresher.
package tokencache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"
)

// State is the stored state of a record. Only the states that cannot be
// derived are stored: whether an access token is valid, expired or being
// refreshed follows from its expiry time and from leases, which callers
// know about and the store does not.
type State string

const (
	// StateActive: the tokens are usable (the access token may still have
	// expired; the refresh token was not refused).
	StateActive State = ""
	// StateReauthorizationRequired: the wallet refused the refresh token
	// (expired, used or invalid); only a new exchange (Put) clears it.
	StateReauthorizationRequired State = "reauthorization_required"
)

// Record is one customer's tokens and bookkeeping.
//
// Stores keep times at millisecond precision in UTC: a time read back equals
// (time.Time.Equal) the stored one truncated to the millisecond. The zero
// time means "none" for every time field.
type Record struct {
	CustomerID        string
	AccessToken       Secret
	AccessTokenExpiry time.Time
	RefreshToken      Secret
	// RefreshTokenExpiry is zero when the wallet gave none: the refresh
	// token is good until the wallet refuses it. When it is set, the store
	// forgets the record 30 days after it (RecordRetention), never sooner.
	RefreshTokenExpiry time.Time
	// AccessHandle and RefreshHandle are the opaque handles the app holds
	// instead of the tokens (TOKENPROXY_APP_TOKENS=handles), "" otherwise.
	// A new exchange replaces them; refreshes keep them. Sealed like the
	// tokens.
	AccessHandle  Secret
	RefreshHandle Secret
	// ExchangePath is the path of the exchange that issued the tokens (for
	// example /v1/authorizations/applyToken); refreshes replay it.
	ExchangePath string
	// Replay holds the fields of the exchange request that every refresh
	// replays (appId, authClientId, customerBelongsTo, extendInfo). Each
	// value must be valid JSON. Nil and empty read back as nil.
	Replay map[string]json.RawMessage
	// Generation is set by the store: it grows on every write of this
	// customer and is never reused, not even after Delete (for as long as
	// the tombstone lives, TombstoneTTL). Stores ignore it on writes.
	Generation  int64
	State       State
	LastError   string    // a wallet resultCode, or "" (none)
	LastRefresh time.Time // last successful refresh; zero: never
	LastUsed    time.Time // last app call; zero: never
	NextRefresh time.Time // when the record is due for refresh; zero: not scheduled
	// KeyID is read-only: the id of the keyring key that sealed the stored
	// tokens ("" for the memory store, which does not seal).
	KeyID string

	// The fields below are read-only too: the store sets them on read and
	// ignores them on write (see protocol.go).

	// RefreshTokenHash names the stored refresh token without revealing
	// it: 32 hex digits, set by the store at every write that stores a
	// refresh token ("" when there is none). Leases, intents and journal
	// entries refer to the token by it. The Redis store keys it (HMAC under
	// a key derived from the keyring), so it reveals nothing about the
	// token; the memory store uses a plain hash, which never leaves the
	// process.
	RefreshTokenHash string
	// Failures counts the transient failures (Refused, Unknown outcomes)
	// since the last successful refresh or exchange.
	Failures int
	// NotBefore is the end of the cooldown after a transient failure: no
	// presentation may start before it (zero: none).
	NotBefore time.Time
	// Journal is the outcome of the last presentation (zero: none).
	Journal JournalEntry
}

const (
	// TombstoneTTL is how long a deleted customer's tombstone lives: for that
	// long a write that was in flight when the customer was deleted cannot
	// bring the record back, and generations are not reused.
	TombstoneTTL = 24 * time.Hour
	// RecordRetention is how long after RefreshTokenExpiry a record is kept
	// (so its state can still be shown) before the store forgets it.
	RecordRetention = 30 * 24 * time.Hour
)

var (
	// ErrNotFound: there is no record for the customer (never stored,
	// deleted, or forgotten RecordRetention after its refresh token expired).
	ErrNotFound = errors.New("tokencache: no record")
	// ErrConflict: CompareAndSwap found another generation than expected;
	// someone else wrote the record meanwhile. Read it again.
	ErrConflict = errors.New("tokencache: record changed meanwhile")
	// ErrCorrupt: a stored record is incomplete or holds a malformed field
	// (damaged, or written by hand). It is never used to call the wallet;
	// the error names the field, never its value.
	ErrCorrupt = errors.New("tokencache: record incomplete or malformed")
	// ErrUnavailable: the store could not be reached or did not answer in
	// time. The errors it wraps (network, context) stay reachable with
	// errors.Is / errors.As.
	ErrUnavailable = errors.New("tokencache: store unavailable")

	// The refresh protocol's refusals (protocol.go):
	// ErrLeaseHeld: another live lease exists (see *LeaseHeldError);
	// ErrBackoff: the customer is in its cooldown (see *BackoffError);
	// ErrLeaseLost: the lease named is no longer held; ErrNotActive: the
	// record is reauthorization_required.
	ErrLeaseHeld = errors.New("tokencache: customer is being refreshed")
	ErrBackoff   = errors.New("tokencache: customer is cooling down")
	ErrLeaseLost = errors.New("tokencache: lease lost")
	ErrNotActive = errors.New("tokencache: customer needs reauthorization")
)

// Store keeps one Entry per customer and applies the protocol's decisions
// to it (protocol.go). Memory and Redis implement it with identical
// semantics (the conformance suites in package storetest run against each).
// Everything else (Put, CompareAndSwap, Delete, Touch, Claim, Renew,
// Release, Complete) is a function of this package over a Store.
//
// Implementations are safe for concurrent use and copy records in and out:
// a caller never aliases stored data. Every method honours ctx; none adds
// a deadline of its own. Errors reaching the store wrap ErrUnavailable; a
// stored record that cannot be read is a *SealError or wraps ErrCorrupt.
type Store interface {
	// Get returns the customer's record, or ErrNotFound.
	Get(ctx context.Context, customerID string) (*Record, error)
	// Update applies d to the customer's entry atomically: it reads the
	// entry and the store's clock (Redis: the server's TIME) in one step,
	// calls d.Apply on a copy and, if it says so, writes the result only
	// if nobody wrote the entry meanwhile, else reads and decides again (a
	// bounded number of times). It keeps the schedule (Due) in step with
	// the record's NextRefresh, names a new refresh token
	// (Record.RefreshTokenHash), and wakes watchers when the generation
	// changed or the record went. It returns d.Apply's error; with Redis
	// and WaitReplicas, a write too few replicas acknowledged returns an
	// error wrapping ErrUnavailable although it landed on the master.
	Update(ctx context.Context, customerID string, d Decision) error
	// Due returns up to limit customers of the given buckets whose
	// NextRefresh is at or before the store's now, earliest first (ties by
	// customer id). An entry may outlive its record (forgotten
	// RecordRetention after its refresh token expired): Get then says
	// ErrNotFound, and Delete removes the entry.
	Due(ctx context.Context, buckets []int, limit int) ([]DueEntry, error)
	// Watch returns a channel that receives (without blocking the sender;
	// buffer 1) whenever the customer's generation changes or its record
	// goes, on any replica sharing the store; stop ends the watch.
	// Deliveries are best effort: callers also poll.
	Watch(customerID string) (ch <-chan struct{}, stop func())
	// Buckets is the number of schedule buckets.
	Buckets() int
	// Ping reports whether the store answers.
	Ping(ctx context.Context) error
}

// DueEntry is a customer whose refresh is due.
type DueEntry struct {
	CustomerID string
	Due        time.Time
}

// Census counts customers by state, for tokenproxy_tokens{state}.
type Census struct {
	Valid, Expired, Refreshing, ReauthorizationRequired int
}

// add counts one record: reauthorization_required before refreshing before
// expired (no expiry counts as expired, as the admin API shows it).
func (c *Census) add(e *Entry, now time.Time) {
	switch {
	case e.Record == nil:
	case e.Record.State == StateReauthorizationRequired:
		c.ReauthorizationRequired++
	case now.Before(e.Lease.Until):
		c.Refreshing++
	case !now.Before(e.Record.AccessTokenExpiry):
		c.Expired++
	default:
		c.Valid++
	}
}

// recordWritten reports whether a write from was to e writes the record
// (a new generation), rather than only the protocol's state.
func recordWritten(was, e *Entry) bool {
	return e.Record != nil && (was == nil || was.Record == nil || was.Record.Generation != e.Record.Generation)
}

// errNotReplicated: a write landed on the Redis master but too few
// replicas acknowledged it (WaitReplicas).
var errNotReplicated = fmt.Errorf("%w: too few replicas acknowledged the write", ErrUnavailable)

// maxUpdateAttempts bounds how often Update decides again after a
// conflicting write.
const maxUpdateAttempts = 16

// checkRecord rejects records no store can keep, with the same answer in
// every implementation.
func checkRecord(rec *Record) error {
	if rec == nil {
		return errors.New("nil record")
	}
	if rec.CustomerID == "" {
		return errors.New("empty customer id")
	}
	for name, v := range rec.Replay {
		if !json.Valid(v) {
			return fmt.Errorf("replay field %q: not valid JSON", name)
		}
	}
	return nil
}

// corrupt is an ErrCorrupt naming the field.
func corrupt(field, problem string) error {
	return fmt.Errorf("%w: field %s %s", ErrCorrupt, field, problem)
}

// checkComplete rejects a record read back that no caller may use: one
// without the fields every record is written with, or with a state or last
// error no release writes. A record is written whole by one step, so an
// incomplete one was damaged in the store.
func checkComplete(rec *Record) error {
	switch {
	case rec.State != StateActive && rec.State != StateReauthorizationRequired:
		return corrupt("state", "unknown")
	case !validCode(rec.LastError):
		return corrupt("err", "malformed")
	case rec.AccessToken.Reveal() == "":
		return corrupt("at", "missing")
	case rec.RefreshToken.Reveal() == "":
		return corrupt("rt", "missing")
	case rec.AccessTokenExpiry.IsZero():
		return corrupt("ate", "missing")
	case !validExchangePath(rec.ExchangePath):
		return corrupt("path", "missing or malformed")
	}
	return nil
}

// validCode: empty, or a wallet resultCode (A-Z, 0-9, _; at most 64).
func validCode(s string) bool {
	if len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// validExchangePath: an absolute path of letters, digits and - . _ ~ / :
// without empty or dot segments, as the proxy's canonical paths are.
func validExchangePath(p string) bool {
	if len(p) < 2 || len(p) > 256 || p[0] != '/' {
		return false
	}
	for _, seg := range strings.Split(p[1:], "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~:", c) >= 0) {
				return false
			}
		}
	}
	return true
}

// normalize returns a deep copy of rec as a store keeps it: times at
// millisecond precision in UTC, Replay compacted (or nil when empty), the
// store-owned fields cleared. Both stores pass every written record through
// it, so both read back exactly the same values.
func normalize(rec *Record) *Record {
	c := *rec
	c.AccessTokenExpiry = storedTime(rec.AccessTokenExpiry)
	c.RefreshTokenExpiry = storedTime(rec.RefreshTokenExpiry)
	c.LastRefresh = storedTime(rec.LastRefresh)
	c.LastUsed = storedTime(rec.LastUsed)
	c.NextRefresh = storedTime(rec.NextRefresh)
	c.Replay = nil
	if len(rec.Replay) > 0 {
		c.Replay = make(map[string]json.RawMessage, len(rec.Replay))
		for k, v := range rec.Replay {
			var buf bytes.Buffer
			// checkRecord has validated v, so Compact cannot fail; fall back
			// to a plain copy rather than lose the value if it ever did.
			if err := json.Compact(&buf, v); err != nil {
				c.Replay[k] = bytes.Clone(v)
				continue
			}
			c.Replay[k] = buf.Bytes()
		}
	}
	c.Generation = 0
	c.KeyID = ""
	c.RefreshTokenHash = ""
	c.Failures = 0
	c.NotBefore = time.Time{}
	c.Journal = JournalEntry{}
	return &c
}

// clone returns a deep copy of a stored record.
func clone(rec *Record) *Record {
	c := *rec
	if rec.Replay != nil {
		c.Replay = maps.Clone(rec.Replay)
		for k, v := range c.Replay {
			c.Replay[k] = bytes.Clone(v)
		}
	}
	return &c
}

// storedTime is t as the stores keep it: milliseconds since the epoch, UTC,
// without a monotonic reading; zero stays zero.
func storedTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return time.UnixMilli(t.UnixMilli()).UTC()
}

// expiresAt is when a record written now is forgotten; zero: never.
func expiresAt(rec *Record) time.Time {
	if rec.RefreshTokenExpiry.IsZero() {
		return time.Time{}
	}
	return storedTime(rec.RefreshTokenExpiry).Add(RecordRetention)
}
