package tokencache

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// The refresh protocol's primitives (design.md, "Exactly one refresh per
// refresh token"). A replica claims a customer before presenting its refresh
// token (Claim: a lease plus an intent), renews the lease while the wallet
// call runs (Renew), and records the outcome (Complete). Every decision on
// time (lease expiry, backoff, what is due) uses the store's clock: the Redis
// server's TIME inside the scripts, MemoryConfig.Now for the memory store,
// never a replica's clock.
//
// Redis keys, all in the customer's bucket (hash tag {b<N>}):
//
//	<prefix>{b<N>}:lease:<customerID>        the lease: "<owner>:<fence>", PX = lease TTL
//	<prefix>{b<N>}:jrnl:<customerID>:<rth>   journal entry of the outcome of presenting the
//	                                         refresh token whose hash is rth, EX JournalTTL:
//	                                         "<kind>|<code>|<generation>"
//	<prefix>done                             pub/sub channel: a customer id per completed refresh,
//	                                         Put or Delete (waiters on any replica wake up)
//
// and in the record hash: "rth" (hash of the current refresh token), the
// intent ("ih" hash of the refresh token presented, "it" time, "io" owner,
// "ia" claims of it so far, "if" fence of the claim that wrote it, "co" op
// id of that claim, which makes a resent Claim idempotent, "le" expiry of
// that claim's lease until its outcome or release, "lg" end of the grace
// given to a holder that never recorded an outcome; see claimScript),
// "fence" (last
// fence number), "fa" (consecutive transient failures) and "nb" (no
// presentation before this time, Unix ms).
//
// The intent is the whole memory of unknown outcomes: it exists exactly
// while a presentation of the current refresh token may have reached the
// wallet without its outcome being known (a claim is in flight, its holder
// crashed or lost its lease, or the outcome was Unknown). Known outcomes
// clear it (Refreshed, Rejected, and Refused of a first presentation), and
// so does Release of a claim that presented nothing. A claim that finds an
// intent for the same refresh token is a re-presentation
// (Lease.Represent). No separate "outcome unknown" flag is needed.
//
// Fences are never reused for a customer, not even after Delete forgot the
// record that held the counter: Redis takes max(last fence + 1, server time
// in microseconds), the memory store one counter for all customers. So a
// holder whose lease was deleted under it (Put, Delete) can never renew or
// release a later lease of the same owner.
//
// The journal entry holds no token (the new pair is in the record), so it is
// not sealed; it names the outcome so that a waiter on any replica can tell
// a refresh that replaced the token it saw from one that failed.

// JournalTTL is how long the outcome of a presentation is kept for waiters.
const JournalTTL = 5 * time.Minute

// Lease is a replica's claim to present one customer's current refresh
// token. Only its holder presents the token; a lease lapses at Expiry unless
// renewed.
type Lease struct {
	CustomerID string
	Owner      string
	// Fence grows with every claim of the customer; Renew and Complete name
	// the lease by it.
	Fence int64
	// Expiry is when the lease lapses, in the store's clock. Callers turn
	// it into a local deadline with the remaining duration TTL they asked
	// for, measured from just before Claim/Renew was sent.
	Expiry time.Time
	// Generation is the record generation that was claimed.
	Generation int64
	// Represent: an earlier presentation of this same refresh token had an
	// unknown outcome (timeout, reset, U, 5xx, a crashed holder). A
	// USED_REFRESH_TOKEN answer now means a lost rotation.
	Represent bool
	// Attempt counts the presentations of this refresh token, this one
	// included (1 for the first).
	Attempt int
	// RefreshTokenHash is the Record.RefreshTokenHash of the refresh token
	// claimed: Complete writes only while the record still holds it, and
	// the journal entry of the outcome is kept under it.
	RefreshTokenHash string
}

// OutcomeKind says what presenting a refresh token led to.
type OutcomeKind int

const (
	// Refreshed: S. Outcome.Record holds the new pair; the intent is
	// cleared, failures reset.
	Refreshed OutcomeKind = iota + 1
	// Rejected: a refresh-token F (INVALID / EXPIRED / USED), or a refresh
	// token past its expiry (never presented). The record becomes
	// reauthorization_required with LastError = Code, leaves the schedule;
	// the intent is cleared.
	Rejected
	// Refused: another F (rate limit, signature, key, client, parameter):
	// the wallet did not process the call, so this presentation left the
	// token unused. If it was the first presentation the intent is cleared
	// (a later USED_REFRESH_TOKEN is not a lost rotation); if it was a
	// re-presentation (an earlier one's outcome is still unknown, or
	// another holder claimed the token since) the intent stays. LastError =
	// Code; failures+1; no presentation before now+Backoff; NextRefresh and
	// the schedule move to that time.
	Refused
	// Unknown: timeout, reset, U, 5xx, a bad response signature, a call
	// cancelled by the watchdog. The intent stays (it is restored if
	// something cleared it meanwhile), so the next claim is a
	// re-presentation; LastError = Code; failures+1; no presentation
	// before now+Backoff; NextRefresh and the schedule move to that time.
	//
	// Refused and Unknown on a record that is reauthorization_required
	// already (another holder's presentation was rejected meanwhile)
	// change no field but the generation: the record stays terminal.
	Unknown
)

func (k OutcomeKind) String() string {
	switch k {
	case Refreshed:
		return "refreshed"
	case Rejected:
		return "rejected"
	case Refused:
		return "refused"
	case Unknown:
		return "unknown"
	}
	return fmt.Sprintf("OutcomeKind(%d)", int(k))
}

// Outcome is what Complete records.
type Outcome struct {
	Kind OutcomeKind
	// Record, for Refreshed: the new tokens, expiries, LastRefresh and
	// NextRefresh (CustomerID, ExchangePath and Replay are kept from the
	// stored record; State, LastError, Generation are ignored).
	Record *Record
	// Code is the wallet's resultCode, or the proxy's (WALLET_TIMEOUT,
	// WALLET_UNAVAILABLE, INVALID_WALLET_SIGNATURE); "" for Refreshed.
	Code string
	// Backoff, for Refused and Unknown: how long no presentation may start.
	Backoff time.Duration
}

// JournalEntry is the recorded outcome of presenting one refresh token.
type JournalEntry struct {
	Kind       OutcomeKind
	Code       string
	Generation int64 // generation written by Complete
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

// Refresh-protocol errors.
var (
	// ErrLeaseHeld: another live lease exists (see *LeaseHeldError).
	ErrLeaseHeld = errors.New("tokencache: customer is being refreshed")
	// ErrBackoff: the customer is in its cooldown (see *BackoffError).
	ErrBackoff = errors.New("tokencache: customer is cooling down")
	// ErrLeaseLost: the lease named is no longer held (lapsed, or claimed
	// by another after it lapsed, or the customer was deleted).
	ErrLeaseLost = errors.New("tokencache: lease lost")
	// ErrNotActive: the record is reauthorization_required.
	ErrNotActive = errors.New("tokencache: customer needs reauthorization")
)

// LeaseHeldError is ErrLeaseHeld with the holder and when its lease lapses.
type LeaseHeldError struct {
	Owner string
	Until time.Time // store clock
	// TTL is the lease's remaining life when the claim was refused.
	TTL time.Duration
}

func (e *LeaseHeldError) Error() string {
	return "tokencache: customer is being refreshed by " + e.Owner
}
func (e *LeaseHeldError) Unwrap() error { return ErrLeaseHeld }

// BackoffError is ErrBackoff with when presentations may start again and
// the code of the failure that caused it.
type BackoffError struct {
	Until     time.Time     // store clock
	Remaining time.Duration // until Until, when the claim was refused
	LastError string
}

func (e *BackoffError) Error() string {
	return "tokencache: customer is cooling down after " + e.LastError
}
func (e *BackoffError) Unwrap() error { return ErrBackoff }

// RefreshStore is a Store with the refresh protocol. Both Memory and Redis
// implement it, with identical semantics (one conformance suite).
type RefreshStore interface {
	Store

	// Claim leases the customer to owner for ttl if: the record exists and
	// is active (else ErrNotFound / ErrNotActive), its generation is
	// expect (else ErrConflict), no live lease exists (else
	// *LeaseHeldError; also while the claim that wrote the intent has
	// recorded no outcome and its lease could still run, even if the lease
	// itself was lost early, and then, once, for ttl more: a holder cut off
	// from the store with an S pair gets that long to write it before the
	// token is presented again), and it is not in backoff (else *BackoffError;
	// ignoreBackoff skips this check, for a forced refresh). It writes the
	// intent "refresh token rth presented at now by owner" and returns the
	// lease. It does not raise the generation.
	//
	// Lease.Represent is true when the record already holds an intent for
	// the same refresh token (an earlier presentation whose outcome is not
	// known: Unknown, or a holder that never completed); Attempt counts the
	// claims of that token since its last known outcome. With Redis and
	// WaitReplicas, a claim too few replicas acknowledged is undone and
	// returned as an error wrapping ErrUnavailable: it is never used.
	Claim(ctx context.Context, customerID string, expect int64, owner string, ttl time.Duration, ignoreBackoff bool) (*Lease, error)
	// Renew extends a held lease to now+ttl and returns the new expiry;
	// ErrLeaseLost when it is not held any more.
	Renew(ctx context.Context, l *Lease, ttl time.Duration) (time.Time, error)
	// Release drops a held lease without an outcome: call it only when
	// the refresh token was NOT sent (if the request may have left, call
	// Complete with Unknown). It deletes the lease if still held and
	// undoes the claim's intent if no later claim replaced it, so the next
	// claim is not taken for a re-presentation. Not an error when it is
	// not held.
	Release(ctx context.Context, l *Lease) error
	// Complete records the outcome of presenting the refresh token that l
	// claimed. It writes only while the record still holds that refresh
	// token and no newer tombstone exists, and else returns ErrConflict
	// (replaced by a new exchange) or ErrNotFound (deleted): it does NOT
	// require the lease to be still held, because an S pair must never be
	// thrown away just because a lease lapsed. It releases the lease if
	// still held (never another holder's), writes the journal entry,
	// publishes the customer id, and returns the new generation (always
	// the stored one plus 1). Effects by kind: see OutcomeKind. A Refreshed
	// record takes from o.Record only the tokens, their expiries,
	// LastRefresh and NextRefresh; NextRefresh zero leaves the schedule.
	// With Redis and WaitReplicas it behaves as Put when too few replicas
	// acknowledge (the generation and an error wrapping ErrUnavailable).
	Complete(ctx context.Context, l *Lease, o Outcome) (int64, error)
	// Journal returns the recorded outcome of presenting the refresh token
	// whose hash is rth (Record.RefreshTokenHash of the record that held
	// it), or ErrNotFound.
	Journal(ctx context.Context, customerID, rth string) (*JournalEntry, error)
	// Watch returns a channel that receives (without blocking the sender;
	// buffer 1) whenever a refresh of the customer completes, or the
	// customer is Put or Deleted, on any replica sharing the store. stop
	// ends the watch. Deliveries are best effort: callers also poll.
	Watch(customerID string) (ch <-chan struct{}, stop func())
	// Due returns up to limit customers of the given buckets whose
	// NextRefresh is at or before the store's now, earliest first (ties by
	// customer id). An entry may outlive its record (forgotten
	// RecordRetention after its refresh token expired): Get then says
	// ErrNotFound, and Delete removes the entry.
	Due(ctx context.Context, buckets []int, limit int) ([]DueEntry, error)
	// Buckets is the number of schedule buckets.
	Buckets() int
	// TouchLastUsed records an app call at the store's now, without
	// raising the generation. Not an error when the customer is unknown.
	// A CompareAndSwap of a record read before writes its LastUsed back.
	TouchLastUsed(ctx context.Context, customerID string) error
	// Census counts the customers by state at the store's now (Refreshing:
	// a live lease).
	Census(ctx context.Context) (Census, error)
	// Now is the store's clock.
	Now(ctx context.Context) (time.Time, error)
	// Close stops background work (the pub/sub subscription); the store
	// stays usable otherwise, but watches no longer hear other replicas.
	Close() error
}
