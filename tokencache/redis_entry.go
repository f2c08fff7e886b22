package tokencache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// A customer's Entry is one hash, <prefix>{b<N>}:rec:<id>: the record's
// fields (redis.go) and the protocol's (below), rewritten whole by every
// write, expiring with the record (RecordRetention after its refresh
// token) or, once deleted, holding only the tombstone for TombstoneTTL. Its
// schedule entry is in the bucket's sorted set, in the same slot.
const (
	fVer       = "ver"  // id of the Update that wrote the hash: the version compared
	fTombstone = "tomb" // Entry.Tombstone
	fFence     = "fence"
	fJournal   = "j" // "<rth>|<kind>|<code>|<at ms>"
	// lease: owner, fence, until
	fLeaseOwner, fLeaseFence, fLeaseUntil = "lo", "lf", "lx"
	// intent: hash, attempts, owner, fence, at, lease until, grace until
	fIntentHash, fIntentAttempts, fIntentOwner, fIntentFence = "ih", "ia", "io", "if"
	fIntentAt, fIntentLease, fIntentGrace                    = "it", "le", "lg"
)

// maxDecisionAge bounds how old the clock reading a decision was taken
// with may be when it is written; an older one is decided again.
const maxDecisionAge = time.Second

// readScript reads an entry with the clock of the node that holds it.
var readScript = redis.NewScript(`
local t = redis.call('TIME')
return {t[1], t[2], redis.call('PTTL', KEYS[1]), redis.call('HGETALL', KEYS[1])}
`)

// casScript writes an entry if its version is still the one read, and
// keeps the bucket's schedule, state indexes, expiry schedule and outbox
// and the watchers in step.
//
//	KEYS:  entry hash, bucket schedule, active index, reauth index,
//	       expiry schedule, outbox
//	ARGV:  1 version read, 2 new version, 3 decision time (ms), 4 max age
//	       (ms), 5 expire at (ms) or "", 6 due (ms) or "", 7 customer id,
//	       8 channel or "" (publish), 9 index ("active", "reauth", "none":
//	       in neither, "": unchanged), 10 expiry (ms, "-": remove, "":
//	       unchanged), 11 n events, then n outbox elements, then
//	       field/value pairs (none: no entry)
var casScript = redis.NewScript(`
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[3]) > tonumber(ARGV[4]) then return 'stale' end
if (redis.call('HGET', KEYS[1], 'ver') or '') ~= ARGV[1] then return 'conflict' end
local n = tonumber(ARGV[11])
redis.call('DEL', KEYS[1])
if #ARGV > 11 + n then
  redis.call('HSET', KEYS[1], 'ver', ARGV[2], unpack(ARGV, 12 + n))
  if ARGV[5] ~= '' then redis.call('PEXPIREAT', KEYS[1], ARGV[5]) end
end
if ARGV[6] == '' then redis.call('ZREM', KEYS[2], ARGV[7]) else redis.call('ZADD', KEYS[2], ARGV[6], ARGV[7]) end
if ARGV[9] == 'active' then
  redis.call('ZADD', KEYS[3], 0, ARGV[7]) redis.call('ZREM', KEYS[4], ARGV[7])
elseif ARGV[9] == 'reauth' then
  redis.call('ZADD', KEYS[4], 0, ARGV[7]) redis.call('ZREM', KEYS[3], ARGV[7])
elseif ARGV[9] == 'none' then
  redis.call('ZREM', KEYS[3], ARGV[7]) redis.call('ZREM', KEYS[4], ARGV[7])
end
if ARGV[10] == '-' then redis.call('ZREM', KEYS[5], ARGV[7]) elseif ARGV[10] ~= '' then redis.call('ZADD', KEYS[5], ARGV[10], ARGV[7]) end
for i = 12, 11 + n do redis.call('RPUSH', KEYS[6], ARGV[i]) end
if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], ARGV[7]) end
return 'ok'
`)

// Get returns the customer's record, or ErrNotFound; see Store.Get.
func (s *Redis) Get(ctx context.Context, customerID string) (*Record, error) {
	vals, err := s.client.HGetAll(ctx, s.RecordKey(customerID)).Result()
	if err != nil {
		return nil, readError("get record", err)
	}
	e, err := s.decodeEntry(customerID, vals)
	if err != nil {
		return nil, fmt.Errorf("get record: %w", err)
	}
	if e.Record == nil {
		return nil, ErrNotFound
	}
	return e.Record, nil
}

// Update applies d as an optimistic transaction; see Store.Update. It
// reads the hash and the TIME of the master that holds it in one script,
// decides, and writes with casScript only if no other write came between
// (the version field) and the decision's clock reading is at most
// maxDecisionAge old; else it decides again, up to maxUpdateAttempts times.
// A write whose reply was lost is recognised by its version on the next
// read. A record that cannot be read (*SealError, ErrCorrupt) is handed to
// no decision but Put and Delete, which replace it.
func (s *Redis) Update(ctx context.Context, customerID string, d Decision) error {
	op := string(d.Op)
	ver, err := newOpID()
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	bucket := s.BucketOf(customerID)
	keys := []string{s.RecordKey(customerID), s.DueKey(bucket), s.IndexKey(bucket, IndexActive),
		s.IndexKey(bucket, IndexReauthorizationRequired), s.ExpiryKey(bucket), s.OutboxKey(bucket)}
	var result error
	for attempt := range maxUpdateAttempts {
		if attempt > 0 {
			// Another write got in between: let the writers spread out.
			t := time.NewTimer(time.Duration(rand.N(attempt+1)) * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return unavailable(op, ctx.Err())
			case <-t.C:
			}
		}
		reply, err := readScript.Run(ctx, s.client, keys[:1]).Slice()
		if err != nil {
			return readError(op, err)
		}
		now, expires, vals, err := readReply(reply)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		if vals[fVer] == ver {
			return result // the last write landed; its reply was lost
		}
		cur, err := s.decodeEntry(customerID, vals)
		if err != nil && d.Op != OpPut && d.Op != OpDelete {
			return fmt.Errorf("%s: %w", op, err)
		}
		cur.Expires = expires
		next := copyEntry(cur)
		write, aerr := d.Apply(&next, now.Time)
		if !write {
			return aerr
		}
		result = aerr
		args, err := s.encodeEntry(customerID, cur, &next, vals)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		side, err := s.sideEffects(cur, &next, now.Time)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		publish := changed(cur, &next)
		args = append(append([]any{vals[fVer], ver, now.ms, maxDecisionAge.Milliseconds(), unixMilli(next.Expires),
			dueScore(&next), customerID, s.channelIf(publish), side.index, side.expiry, len(side.events)},
			side.events...), args...)
		if publish {
			s.inv.expectEcho(customerID)
		}
		r, err := s.run(ctx, op, casScript, keys, args)
		if publish && r != "ok" {
			s.inv.noEcho(customerID)
		}
		if r == nil {
			return err
		}
		if r == "ok" {
			s.afterWrite(ctx, customerID, cur, &next)
			if publish {
				s.hub.notify(customerID)  // local waiters need not wait for pub/sub
				s.inv.changed(customerID) // nor this replica's copies
			}
			if !side.hint.IsZero() {
				s.hintAfterWrite(ctx, bucket, side.hint)
			}
			return errors.Join(err, result)
		}
	}
	return fmt.Errorf("%s: %w: the entry kept changing during %d attempts", op, ErrUnavailable, maxUpdateAttempts)
}

// readError is a failed read of an entry: a key of another type than a
// hash is damaged, not an outage, so no locally held token stands in for
// it; anything else is the store unavailable.
func readError(op string, err error) error {
	if redis.HasErrorPrefix(err, "WRONGTYPE") || strings.Contains(err.Error(), "WRONGTYPE") {
		return fmt.Errorf("%s: %w", op, corrupt("record", "not a hash"))
	}
	return unavailable(op, err)
}

type clockReading struct {
	time.Time
	ms int64
}

// readReply splits readScript's reply: the server's now (ms), when the
// hash expires (zero: never) and the hash.
func readReply(reply []any) (now clockReading, expires time.Time, vals map[string]string, err error) {
	bad := errors.New("unexpected read reply")
	if len(reply) != 4 {
		return now, expires, nil, bad
	}
	sec, _ := reply[0].(string)
	usec, _ := reply[1].(string)
	pttl, _ := reply[2].(int64)
	arr, ok := reply[3].([]any)
	n, err1 := strconv.ParseInt(sec, 10, 64)
	u, err2 := strconv.ParseInt(usec, 10, 64)
	if !ok || err1 != nil || err2 != nil || len(arr)%2 != 0 {
		return now, expires, nil, bad
	}
	ms := n*1000 + u/1000
	vals = make(map[string]string, len(arr)/2)
	for i := 0; i < len(arr); i += 2 {
		k, _ := arr[i].(string)
		vals[k], _ = arr[i+1].(string)
	}
	if pttl > 0 {
		expires = time.UnixMilli(ms + pttl).UTC()
	}
	return clockReading{time.UnixMilli(ms).UTC(), ms}, expires, vals, nil
}

func dueScore(e *Entry) string {
	if e.Record == nil {
		return ""
	}
	return unixMilli(e.Record.NextRefresh)
}

func (s *Redis) channelIf(publish bool) string {
	if publish {
		return s.DoneChannel()
	}
	return ""
}

// decodeEntry reads an entry hash. The protocol's fields are read as the
// scripts before read them: an unparsable number counts as absent (no
// lease, no intent, fence 0, which the next claim raises to the server's
// time). When the record cannot be read, the entry comes back without it,
// its generation kept as a tombstone's (so a Put replacing it still goes
// above it), with the error.
func (s *Redis) decodeEntry(customerID string, vals map[string]string) (*Entry, error) {
	e := &Entry{}
	num := func(f string) int64 {
		n, _ := strconv.ParseInt(vals[f], 10, 64)
		return n
	}
	tm := func(f string) time.Time {
		t, _ := parseUnixMilli(vals[f])
		return t
	}
	e.Tombstone, e.Fence = num(fTombstone), num(fFence)
	e.Lease = Hold{Owner: vals[fLeaseOwner], Fence: num(fLeaseFence), Until: tm(fLeaseUntil)}
	e.Intent = Intent{Hash: vals[fIntentHash], Attempts: int(num(fIntentAttempts)), Owner: vals[fIntentOwner],
		Fence: num(fIntentFence), At: tm(fIntentAt), LeaseUntil: tm(fIntentLease), GraceUntil: tm(fIntentGrace)}
	if vals[fVersion] == "" && vals[fGeneration] == "" {
		return e, nil // none, or a tombstone
	}
	rec, err := s.decode(customerID, vals)
	if err == nil {
		rec.Journal, err = parseJournal(vals[fJournal])
	}
	if err != nil {
		e.Tombstone = max(e.Tombstone, num(fGeneration))
		return e, err
	}
	e.Record = rec
	return e, nil
}

func parseJournal(v string) (JournalEntry, error) {
	if v == "" {
		return JournalEntry{}, nil
	}
	parts := strings.Split(v, "|")
	if len(parts) != 4 {
		return JournalEntry{}, corrupt(fJournal, "malformed")
	}
	j := JournalEntry{RefreshTokenHash: parts[0], Code: parts[2]}
	for k := Refreshed; k <= Unknown; k++ {
		if k.String() == parts[1] {
			j.Kind = k
		}
	}
	at, err := parseUnixMilli(parts[3])
	if err != nil || j.Kind == 0 {
		return JournalEntry{}, corrupt(fJournal, "malformed")
	}
	j.At = at
	return j, nil
}

// encodeEntry returns the field/value pairs of e (none when it holds
// nothing). Tokens are sealed anew when the record was written (its
// generation changed); otherwise the sealed values read are kept, so a
// claim or a renewal never re-seals.
func (s *Redis) encodeEntry(customerID string, was, e *Entry, read map[string]string) ([]any, error) {
	var out []any
	add := func(f, v string) {
		if v != "" {
			out = append(out, f, v)
		}
	}
	num := func(n int64) string {
		if n == 0 {
			return ""
		}
		return strconv.FormatInt(n, 10)
	}
	add(fTombstone, num(e.Tombstone))
	add(fFence, num(e.Fence))
	add(fLeaseOwner, e.Lease.Owner)
	add(fLeaseFence, num(e.Lease.Fence))
	add(fLeaseUntil, unixMilli(e.Lease.Until))
	in := e.Intent
	add(fIntentHash, in.Hash)
	add(fIntentAttempts, num(int64(in.Attempts)))
	add(fIntentOwner, in.Owner)
	add(fIntentFence, num(in.Fence))
	add(fIntentAt, unixMilli(in.At))
	add(fIntentLease, unixMilli(in.LeaseUntil))
	add(fIntentGrace, unixMilli(in.GraceUntil))
	r := e.Record
	if r == nil {
		return out, nil
	}
	var sealed []any
	if recordWritten(was, e) {
		var err error
		if sealed, err = s.sealTokens(r); err != nil {
			return nil, err
		}
		if r.RefreshTokenHash == "" {
			r.RefreshTokenHash = s.refreshTokenHash(customerID, r.RefreshToken)
		}
	} else {
		for _, f := range []string{fKeyID, fAccess, fRefresh, fAccessHandle, fRefreshHandle} {
			sealed = append(sealed, f, read[f])
		}
	}
	for i := 0; i < len(sealed); i += 2 {
		add(sealed[i].(string), sealed[i+1].(string))
	}
	var replay string
	if len(r.Replay) > 0 {
		b, err := json.Marshal(r.Replay)
		if err != nil {
			return nil, fmt.Errorf("encode replay fields: %w", err)
		}
		replay = string(b)
	}
	var journal string
	if j := r.Journal; j.Kind != 0 {
		journal = strings.Join([]string{j.RefreshTokenHash, j.Kind.String(), j.Code, unixMilli(j.At)}, "|")
	}
	for _, kv := range [][2]string{
		{fVersion, formatVersion}, {fGeneration, num(r.Generation)}, {fState, string(r.State)},
		{fLastError, r.LastError},
		{fAccessExp, unixMilli(r.AccessTokenExpiry)}, {fRefreshExp, unixMilli(r.RefreshTokenExpiry)},
		{fLastRefresh, unixMilli(r.LastRefresh)}, {fLastUsed, unixMilli(r.LastUsed)},
		{fNextRefresh, unixMilli(r.NextRefresh)}, {fPath, r.ExchangePath}, {fReplay, replay},
		{fRTH, r.RefreshTokenHash}, {fFailures, num(int64(r.Failures))}, {fNotBefore, unixMilli(r.NotBefore)},
		{fJournal, journal},
	} {
		add(kv[0], kv[1])
	}
	return out, nil
}
