package tokencache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// The refresh protocol of design.md ("Exactly one refresh per refresh
// token"), written once. Each step is a pure decision: a function of the
// customer's Entry as read, the store's now and the request, that changes
// the entry into the one to write and returns the result. A Store applies a
// decision atomically (Store.Update): Memory under its lock with its clock,
// Redis as an optimistic transaction on the customer's hash in one Cluster
// slot with the server's TIME. Nothing below knows which store runs it.
//
// Read it against design.md:
//
//	step 1  Claim     claim: lease + intent; re-presentation rule
//	step 2  Renew     renew: the watchdog's renewal
//	        Release   release: a claim that presented nothing
//	step 3  Complete  complete: spent-token check, outcomes, backoff
//	step 4  Complete  the journal entry (Record.Journal)
//	step 5  Complete  Unknown keeps (or restores) the intent
//	step 7  Delete    tombstone; Complete never resurrects
//	        Put, CompareAndSwap, Touch: record writes

// Entry is everything a store keeps for one customer: the record and the
// protocol's state beside it. Stores persist it whole and never interpret
// it; only the decisions in this file change it.
type Entry struct {
	// Record is nil when there is none: never stored, deleted (then
	// Tombstone is set) or forgotten RecordRetention after its refresh
	// token expired.
	Record *Record
	// Tombstone is the generation Delete left, while Record is nil: a
	// later Put goes above it, a Complete of an earlier claim finds no
	// record.
	Tombstone int64
	// Fence is the last fence handed out; it survives Delete.
	Fence int64
	// Lease is held while the store's now is before Lease.Until.
	Lease Hold
	// Intent: refresh token Hash may have been presented with no outcome
	// known yet (Attempts claims of it so far). It exists exactly while a
	// presentation of the current refresh token may have reached the
	// wallet without its outcome being known.
	Intent Intent
	// Expires is when the store forgets the entry; zero: never.
	Expires time.Time

	// lostRotation is set (never stored) by a Complete that recorded a
	// lost rotation, so that the write's event names it (deriveEvents).
	lostRotation bool
}

// Hold is the live lease of an Entry.
type Hold struct {
	Owner string
	Fence int64
	Until time.Time
}

// Intent is "refresh token Hash presented at At by Owner (claim Fence)".
// LeaseUntil is set while that claim recorded no outcome: its lease ran
// until then, even if the lease itself was lost early; GraceUntil is the
// one lease of grace given once that passed (see claim).
type Intent struct {
	Hash                   string
	Attempts               int
	Owner                  string
	Fence                  int64
	At                     time.Time
	LeaseUntil, GraceUntil time.Time
}

// Op names what a Decision decides (for logs and test wrappers).
type Op string

const (
	OpPut      Op = "put"
	OpCAS      Op = "compare-and-swap"
	OpDelete   Op = "delete"
	OpTouch    Op = "touch"
	OpClaim    Op = "claim"
	OpRenew    Op = "renew"
	OpRelease  Op = "release"
	OpComplete Op = "complete"
)

// Decision is one step of the protocol for Store.Update. Apply changes e,
// the entry as read (a private copy), at the store's now (milliseconds,
// UTC); write says whether e is then to be written, and err is what
// Update returns (after the write, if any). A store may call Apply more
// than once, on a fresh read each time, when another write got in
// between; only the last call's effects are written.
type Decision struct {
	Op    Op
	Lease *Lease // the lease named (Renew, Release, Complete)
	Apply func(e *Entry, now time.Time) (write bool, err error)
}

// JournalTTL is how long the outcome of a presentation is kept for waiters.
const JournalTTL = 5 * time.Minute

// Lease is a replica's claim to present one customer's current refresh
// token. Only its holder presents the token.
type Lease struct {
	CustomerID string
	Owner      string
	// Fence grows with every claim of the customer and is never reused;
	// Renew, Release and Complete name the lease by it.
	Fence int64
	// Generation is the record generation that was claimed.
	Generation int64
	// Represent: an earlier presentation of this same refresh token had an
	// unknown outcome. A USED_REFRESH_TOKEN answer now is a lost rotation.
	Represent bool
	// Attempt counts the presentations of this refresh token, this one
	// included (1 for the first).
	Attempt int
	// RefreshTokenHash names the refresh token claimed: Complete writes
	// only while the record still holds it.
	RefreshTokenHash string
}

// OutcomeKind says what presenting a refresh token led to.
type OutcomeKind int

const (
	// Refreshed: S. Outcome.Record holds the new pair.
	Refreshed OutcomeKind = iota + 1
	// Rejected: a refresh-token F (INVALID / EXPIRED / USED): the customer
	// becomes reauthorization_required with LastError = Code.
	Rejected
	// Refused: another F (rate limit, signature, key...): not processed,
	// the token is unused. Backs off.
	Refused
	// Unknown: timeout, reset, U, 5xx, a bad response signature, a call
	// cancelled by the watchdog. The intent stays. Backs off.
	Unknown
)

var kindNames = []string{Refreshed: "refreshed", Rejected: "rejected", Refused: "refused", Unknown: "unknown"}

func (k OutcomeKind) String() string {
	if k >= Refreshed && k <= Unknown {
		return kindNames[k]
	}
	return fmt.Sprintf("OutcomeKind(%d)", int(k))
}

// Outcome is what Complete records.
type Outcome struct {
	Kind OutcomeKind
	// Record, for Refreshed: the new tokens, their expiries, LastRefresh
	// and NextRefresh (the rest is kept from the stored record).
	Record *Record
	// Code is the wallet's resultCode, or the proxy's; "" for Refreshed.
	Code string
	// Backoff, for Refused and Unknown: how long no presentation may start.
	Backoff time.Duration
}

// JournalEntry is the recorded outcome of presenting one refresh token
// (design.md step 4), kept in the record for JournalTTL: a waiter on any
// replica replays it.
type JournalEntry struct {
	RefreshTokenHash string // the token presented
	Kind             OutcomeKind
	Code             string
	At               time.Time // store clock
}

// For reports whether j records the outcome of presenting the refresh
// token rth, recently enough (JournalTTL) at now.
func (j JournalEntry) For(rth string, now time.Time) bool {
	return j.Kind != 0 && j.RefreshTokenHash == rth && now.Before(j.At.Add(JournalTTL))
}

// LeaseHeldError is ErrLeaseHeld with the holder and its lease's
// remaining life when the claim was refused.
type LeaseHeldError struct {
	Owner string
	TTL   time.Duration
}

// BackoffError is ErrBackoff with the rest of the cooldown and the code of
// the failure that caused it.
type BackoffError struct {
	Remaining time.Duration
	LastError string
}

func (e *LeaseHeldError) Error() string {
	return "tokencache: customer is being refreshed by " + e.Owner
}
func (e *LeaseHeldError) Unwrap() error { return ErrLeaseHeld }
func (e *BackoffError) Error() string {
	return "tokencache: customer is cooling down after " + e.LastError
}
func (e *BackoffError) Unwrap() error { return ErrBackoff }

// ---- record writes ----

// Put replaces the customer's record unconditionally with rec (a new
// exchange): fields left empty are cleared, and the protocol's state of the
// old refresh token (lease, intent, failures, cooldown) ends. The new
// generation is higher than any earlier one, a tombstone's included. With
// Redis and WaitReplicas, a write too few replicas acknowledged returns
// its generation with an error wrapping ErrUnavailable.
func Put(ctx context.Context, s Store, rec *Record) (int64, error) {
	if err := checkRecord(rec); err != nil {
		return 0, fmt.Errorf("put record: %w", err)
	}
	next := normalize(rec)
	var gen int64
	err := s.Update(ctx, rec.CustomerID, Decision{Op: OpPut, Apply: func(e *Entry, _ time.Time) (bool, error) {
		n := clone(next)
		n.Generation = max(generation(e), e.Tombstone) + 1
		*e = Entry{Record: n, Fence: e.Fence, Expires: expiresAt(n)}
		gen = n.Generation
		return true, nil
	}})
	return writeResult(gen, err)
}

// CompareAndSwap writes rec only if the stored generation equals expect:
// ErrConflict if it differs, ErrNotFound if there is no record (a deleted
// customer is never written back). The protocol's state stays; so does
// the name of the refresh token when rec holds the same one.
func CompareAndSwap(ctx context.Context, s Store, rec *Record, expect int64) (int64, error) {
	if err := checkRecord(rec); err != nil {
		return 0, fmt.Errorf("compare and swap record: %w", err)
	}
	next := normalize(rec)
	var gen int64
	err := s.Update(ctx, rec.CustomerID, Decision{Op: OpCAS, Apply: func(e *Entry, _ time.Time) (bool, error) {
		cur := e.Record
		switch {
		case cur == nil:
			return false, ErrNotFound
		case cur.Generation != expect:
			return false, ErrConflict
		}
		n := clone(next)
		n.Generation, n.Failures, n.NotBefore, n.Journal = cur.Generation+1, cur.Failures, cur.NotBefore, cur.Journal
		if n.RefreshToken == cur.RefreshToken {
			n.RefreshTokenHash = cur.RefreshTokenHash
		}
		e.Record, e.Expires, gen = n, expiresAt(n), n.Generation
		return true, nil
	}})
	return writeResult(gen, err)
}

// Import stores rec unless the customer's stored access token expires no
// earlier (an import of pairs issued elsewhere): for a customer without a
// record it is Put, for one with an older pair CompareAndSwap on what was
// read. It reports whether it wrote; decided in one step, so concurrent
// imports of one customer leave the newest pair.
func Import(ctx context.Context, s Store, rec *Record) (bool, error) {
	if err := checkRecord(rec); err != nil {
		return false, fmt.Errorf("import record: %w", err)
	}
	next := normalize(rec)
	var wrote bool
	err := s.Update(ctx, rec.CustomerID, Decision{Op: OpPut, Apply: func(e *Entry, _ time.Time) (bool, error) {
		cur, n := e.Record, clone(next)
		wrote = cur == nil || cur.AccessTokenExpiry.Before(n.AccessTokenExpiry)
		switch {
		case !wrote:
		case cur == nil:
			n.Generation = e.Tombstone + 1
			*e = Entry{Record: n, Fence: e.Fence}
		default:
			n.Generation, n.Failures, n.NotBefore, n.Journal = cur.Generation+1, cur.Failures, cur.NotBefore, cur.Journal
			e.Record = n
		}
		e.Expires = expiresAt(n)
		return wrote, nil
	}})
	if err != nil && !errors.Is(err, errNotReplicated) {
		return false, err
	}
	return wrote, err
}

// writeResult is a record write's answer: its generation also when the
// write landed but too few replicas acknowledged it.
func writeResult(gen int64, err error) (int64, error) {
	if err != nil && !errors.Is(err, errNotReplicated) {
		return 0, err
	}
	return gen, err
}

// Delete forgets the customer's record, leaving a tombstone with a higher
// generation for TombstoneTTL (design.md step 7), so that no write
// prepared before the delete lands. Deleting an unknown customer is not
// an error (and drops a schedule entry that outlived its record).
func Delete(ctx context.Context, s Store, customerID string) error {
	err := s.Update(ctx, customerID, Decision{Op: OpDelete, Apply: func(e *Entry, now time.Time) (bool, error) {
		if e.Record != nil {
			*e = Entry{Tombstone: max(e.Record.Generation, e.Tombstone) + 1, Fence: e.Fence, Expires: now.Add(TombstoneTTL)}
		}
		return true, nil
	}})
	if err != nil {
		return fmt.Errorf("delete record: %w", err)
	}
	return nil
}

// Touch records an app call at the store's now, unless one was recorded
// less than every ago (so that a burst of calls writes once), without
// raising the generation. Not an error when the customer is unknown.
func Touch(ctx context.Context, s Store, customerID string, every time.Duration) error {
	return s.Update(ctx, customerID, Decision{Op: OpTouch, Apply: func(e *Entry, now time.Time) (bool, error) {
		if e.Record == nil || now.Sub(e.Record.LastUsed) < every {
			return false, nil
		}
		e.Record.LastUsed = now
		return true, nil
	}})
}

// ---- step 1: claim ----

// Claim leases the customer to owner for ttl and writes the intent
// "refresh token rth presented at now by owner", if: the record exists and
// is active (else ErrNotFound / ErrNotActive), its generation is expect
// (else ErrConflict: the record no longer holds the token the caller read,
// design.md step 6), no live lease exists (else *LeaseHeldError; also while
// the claim that wrote the intent recorded no outcome and its lease could
// still run, and then once for ttl more: the grace a holder cut off from
// the store with an S pair gets to write it), and it is not in backoff
// (else *BackoffError; ignoreBackoff skips this, for a forced refresh). It
// does not raise the generation. With Redis and WaitReplicas a claim too
// few replicas acknowledged is undone and returned as an error wrapping
// ErrUnavailable: it is never used.
func Claim(ctx context.Context, s Store, customerID string, expect int64, owner string, ttl time.Duration, ignoreBackoff bool) (*Lease, error) {
	if owner == "" || ttl < time.Millisecond {
		return nil, fmt.Errorf("claim: owner %q, lease ttl %v: need an owner and at least 1ms", owner, ttl)
	}
	var l *Lease
	err := s.Update(ctx, customerID, Decision{Op: OpClaim, Apply: func(e *Entry, now time.Time) (bool, error) {
		var write bool
		var err error
		l, write, err = claim(e, now, customerID, expect, owner, ttl, ignoreBackoff)
		return write, err
	}})
	if errors.Is(err, errNotReplicated) {
		// A failover could lose it: undo it on the master, best effort.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = Release(rctx, s, l)
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	return l, nil
}

// claim decides a claim; write is true when it granted the lease or
// started the grace of a holder without an outcome.
func claim(e *Entry, now time.Time, id string, expect int64, owner string, ttl time.Duration, ignoreBackoff bool) (l *Lease, write bool, err error) {
	rec := e.Record
	switch {
	case rec == nil:
		return nil, false, ErrNotFound
	case rec.State == StateReauthorizationRequired:
		return nil, false, ErrNotActive
	case rec.Generation != expect:
		return nil, false, ErrConflict
	case now.Before(e.Lease.Until):
		return nil, false, &LeaseHeldError{Owner: e.Lease.Owner, TTL: e.Lease.Until.Sub(now)}
	}
	if in := &e.Intent; in.unresolved(rec.RefreshTokenHash) && !in.LeaseUntil.IsZero() {
		// The claim that wrote the intent never recorded an outcome: its
		// call may still run until LeaseUntil (its lease may have been
		// lost early); after that it gets one lease's time of grace.
		until := in.LeaseUntil
		if !now.Before(until) {
			if in.GraceUntil.IsZero() {
				in.GraceUntil, write = now.Add(ttl), true
			}
			until = in.GraceUntil
		}
		if now.Before(until) {
			return nil, write, &LeaseHeldError{Owner: in.Owner, TTL: until.Sub(now)}
		}
	}
	if nb := rec.NotBefore; !ignoreBackoff && nb.After(now) {
		return nil, write, &BackoffError{Remaining: nb.Sub(now), LastError: rec.LastError}
	}
	// Fences never repeat, not even after the entry was forgotten.
	e.Fence = max(e.Fence+1, now.UnixMicro())
	attempt := 1
	if e.Intent.unresolved(rec.RefreshTokenHash) {
		attempt = e.Intent.Attempts + 1
	}
	until := now.Add(ttl)
	e.Lease = Hold{Owner: owner, Fence: e.Fence, Until: until}
	e.Intent = Intent{Hash: rec.RefreshTokenHash, Attempts: attempt, Owner: owner, Fence: e.Fence, At: now, LeaseUntil: until}
	return &Lease{CustomerID: id, Owner: owner, Fence: e.Fence, Generation: rec.Generation,
		Represent: attempt > 1, Attempt: attempt, RefreshTokenHash: rec.RefreshTokenHash}, true, nil
}

// unresolved is the re-presentation rule (design.md step 5): an intent for
// the record's current refresh token rth means an earlier presentation of
// it has no known outcome, so the next claim presents it again, once.
func (in Intent) unresolved(rth string) bool { return in.Attempts > 0 && in.Hash == rth }

// heldBy reports whether l is the entry's live lease.
func (h Hold) heldBy(l *Lease, now time.Time) bool {
	return now.Before(h.Until) && h.Owner == l.Owner && h.Fence == l.Fence
}

// ---- step 2: renew, release ----

// Renew extends a held lease to now+ttl; ErrLeaseLost when it is not held
// any more. With Redis and WaitReplicas a renewal too few replicas
// acknowledged is an error wrapping ErrUnavailable.
func Renew(ctx context.Context, s Store, l *Lease, ttl time.Duration) error {
	if ttl < time.Millisecond {
		return fmt.Errorf("renew lease: ttl %v below 1ms", ttl)
	}
	return s.Update(ctx, l.CustomerID, Decision{Op: OpRenew, Lease: l, Apply: func(e *Entry, now time.Time) (bool, error) {
		if !e.Lease.heldBy(l, now) {
			return false, ErrLeaseLost
		}
		e.Lease.Until = now.Add(ttl)
		if e.Intent.Fence == l.Fence {
			e.Intent.LeaseUntil = e.Lease.Until
		}
		return true, nil
	}})
}

// Release drops a held lease without an outcome: call it only when the
// refresh token was NOT sent (if it may have left, Complete with Unknown).
// It undoes the claim's intent unless a later claim replaced it, so the
// next claim is not taken for a re-presentation. Not an error when the
// lease is not held.
func Release(ctx context.Context, s Store, l *Lease) error {
	return s.Update(ctx, l.CustomerID, Decision{Op: OpRelease, Lease: l, Apply: func(e *Entry, now time.Time) (bool, error) {
		if e.Lease.heldBy(l, now) {
			e.Lease = Hold{}
		}
		in := &e.Intent
		if e.Record == nil || in.Fence != l.Fence || in.Hash != l.RefreshTokenHash || in.Attempts == 0 {
			return true, nil // a later claim (or an outcome) owns the intent now
		}
		if in.Attempts > 1 {
			in.Attempts, in.Fence = in.Attempts-1, 0 // undone once only
			in.LeaseUntil, in.GraceUntil = time.Time{}, time.Time{}
		} else {
			*in = Intent{}
		}
		return true, nil
	}})
}

// ---- steps 3 to 5: complete ----

// Complete records the outcome of presenting the refresh token that l
// claimed and returns the new generation. It writes only while the record
// still holds that refresh token (the spent-token check: else ErrConflict,
// replaced by a new exchange) and exists (else ErrNotFound: deleted, a
// tombstone is never resurrected); it does NOT require the lease to be
// still held: an S pair is never thrown away because a lease lapsed. It
// drops the lease if still held (never another holder's) and keeps the
// outcome in Record.Journal. Effects by kind:
//   - Refreshed: the new tokens, expiries, LastRefresh, NextRefresh (zero:
//     unscheduled); state active; failures, cooldown and intent cleared.
//   - Rejected: reauthorization_required with LastError = Code,
//     unscheduled; intent cleared.
//   - Refused, Unknown: LastError = Code, Failures+1, NotBefore and
//     NextRefresh = now+Backoff. Unknown keeps the intent (restores it if
//     something cleared it meanwhile); Refused of the only presentation
//     clears it (the token is unused), of a re-presentation keeps it. On a
//     record that is reauthorization_required already both change nothing
//     but the generation.
//
// With Redis and WaitReplicas it answers as Put when too few replicas
// acknowledge.
func Complete(ctx context.Context, s Store, l *Lease, o Outcome) (int64, error) {
	if err := checkOutcome(l, o); err != nil {
		return 0, err
	}
	var fresh *Record
	if o.Kind == Refreshed {
		fresh = normalize(o.Record)
	}
	var gen int64
	err := s.Update(ctx, l.CustomerID, Decision{Op: OpComplete, Lease: l, Apply: func(e *Entry, now time.Time) (bool, error) {
		var err error
		gen, err = complete(e, now, l, o, fresh)
		return err == nil, err
	}})
	return writeResult(gen, err)
}

func complete(e *Entry, now time.Time, l *Lease, o Outcome, fresh *Record) (int64, error) {
	if e.Record == nil {
		return 0, ErrNotFound
	}
	if e.Record.RefreshTokenHash != l.RefreshTokenHash {
		return 0, ErrConflict // the spent token was replaced: the newer write stands
	}
	rec := clone(e.Record)
	rec.Generation++
	switch {
	case o.Kind == Refreshed:
		rec.AccessToken, rec.AccessTokenExpiry = fresh.AccessToken, fresh.AccessTokenExpiry
		rec.RefreshToken, rec.RefreshTokenExpiry = fresh.RefreshToken, fresh.RefreshTokenExpiry
		rec.LastRefresh, rec.NextRefresh = fresh.LastRefresh, fresh.NextRefresh
		rec.State, rec.LastError, rec.Failures, rec.NotBefore = StateActive, "", 0, time.Time{}
		rec.RefreshTokenHash = "" // a new token: the store names it
		e.Intent, e.Expires = Intent{}, expiresAt(rec)
	case o.Kind == Rejected:
		rec.State, rec.LastError, rec.NextRefresh = StateReauthorizationRequired, o.Code, time.Time{}
		e.Intent = Intent{}
		e.lostRotation = l.Represent && o.Code == codeUsedRefreshToken
	case rec.State == StateReauthorizationRequired:
		// Refused or Unknown of a stale holder: the record stays terminal.
	default:
		backoff(rec, now, o)
		in := &e.Intent
		switch {
		case o.Kind == Unknown && !in.unresolved(l.RefreshTokenHash):
			// Cleared meanwhile: the outcome is still unknown, so the
			// intent comes back.
			*in = Intent{Hash: l.RefreshTokenHash, Attempts: 1, Owner: l.Owner, Fence: l.Fence, At: now}
		case o.Kind == Refused && in.Attempts <= 1:
			*in = Intent{} // the only presentation was refused: the token is unused
		case in.Fence == l.Fence:
			in.LeaseUntil, in.GraceUntil = time.Time{}, time.Time{} // this presentation is over
		}
	}
	if e.Lease.heldBy(l, now) {
		e.Lease = Hold{}
	}
	rec.Journal = JournalEntry{RefreshTokenHash: l.RefreshTokenHash, Kind: o.Kind, Code: o.Code, At: now}
	e.Record = rec
	return rec.Generation, nil
}

// backoff starts the cooldown after a transient failure (design.md step
// 10): no presentation, and nothing due, before now+o.Backoff.
func backoff(rec *Record, now time.Time, o Outcome) {
	rec.LastError = o.Code
	rec.Failures++
	rec.NotBefore = storedTime(now.Add(o.Backoff))
	rec.NextRefresh = rec.NotBefore
}

// ---- checks every store gives the same answer to ----

// checkOutcome rejects outcomes no store can record.
func checkOutcome(l *Lease, o Outcome) error {
	switch {
	case l == nil:
		return errors.New("complete refresh: nil lease")
	case o.Kind < Refreshed || o.Kind > Unknown:
		return fmt.Errorf("complete refresh: unknown outcome kind %d", int(o.Kind))
	case o.Kind == Refreshed && o.Record == nil:
		return errors.New("complete refresh: refreshed without a record")
	case o.Backoff < 0:
		return errors.New("complete refresh: negative backoff")
	case strings.Contains(o.Code, "|"):
		return errors.New("complete refresh: code contains '|'")
	}
	return nil
}

// generation is the entry's record generation, 0 without a record.
func generation(e *Entry) int64 {
	if e.Record == nil {
		return 0
	}
	return e.Record.Generation
}
