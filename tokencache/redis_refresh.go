package tokencache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The refresh protocol (RefreshStore) in Redis: one Lua script per
// operation, each touching only keys of one customer's bucket (one Cluster
// slot), each taking every time decision with the server's TIME. Scripts
// reply with string arrays only, so a Lua number never loses precision on
// the way.

var _ RefreshStore = (*Redis)(nil)

// luaNow is the server time in Unix milliseconds, as `now`, with t the raw
// TIME reply.
const luaNow = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function ms(x) return string.format('%d', x) end
`

// claimScript leases a customer and writes the intent.
//
//	KEYS:  record hash, lease
//	ARGV:  expected generation, owner, ttl (ms), "1" to ignore the
//	       backoff, op id
//	reply: {"ok", fence, expiry (ms), generation, represent "1"|"0",
//	       attempt, rth} | {"notfound"} | {"notactive"} | {"conflict"} |
//	       {"held", lease value, pttl (ms), now (ms)} |
//	       {"backoff", not-before (ms), now (ms), last error}
//
// The op id ("co" in the record) makes a resent claim report the lease it
// already made rather than find it held by its own owner.
//
// "le" in the record is the expiry of the lease of the claim that wrote
// the intent, kept there too (Renew moves it, the claim's Complete or
// Release drops it), so an "le" present means that claim never recorded an
// outcome. Two rules follow (see RefreshStore.Claim):
//   - A lease key that vanished before its time (a failover that lost it,
//     an operator) must not let a second presentation of the same refresh
//     token start while the first one may still run: its holder's wallet
//     call ends before "le", so until then the claim answers "held", as if
//     the lease were there.
//   - Once "le" has passed, the holder crashed, or it is cut off from the
//     store holding an S pair it could not write yet (pending.go retries
//     it). The first claim that finds it so gives it one lease's time
//     ("lg") before the token is presented again: a pair the holder writes
//     meanwhile replaces the token, and nothing is presented after an S.
var claimScript = redis.NewScript(claimSource)

const claimSource = luaNow + `
if redis.call('EXISTS', KEYS[1]) == 0 then return {'notfound'} end
local f = redis.call('HMGET', KEYS[1], 'gen', 'state', 'rth', 'nb', 'err', 'ih', 'ia', 'if', 'co', 'fence', 'le', 'io', 'lg')
local lease = redis.call('GET', KEYS[2])
local ia = tonumber(f[7] or '0') or 0
if f[9] == ARGV[5] and f[8] and lease == ARGV[2] .. ':' .. f[8] then
  local pttl = redis.call('PTTL', KEYS[2])
  return {'ok', f[8], ms(now + pttl), f[1], ia > 1 and '1' or '0', ms(ia), f[6] or ''}
end
if f[2] == 'reauthorization_required' then return {'notactive'} end
if f[1] ~= ARGV[1] then return {'conflict'} end
if lease then
  return {'held', lease, ms(redis.call('PTTL', KEYS[2])), ms(now)}
end
local le = tonumber(f[11] or '')
if le and ia > 0 and f[6] == (f[3] or '') then
  local holder = (f[12] or '') .. ':' .. (f[8] or '')
  if le > now then return {'held', holder, ms(le - now), ms(now)} end
  local lg = tonumber(f[13] or '')
  if not lg then
    lg = now + tonumber(ARGV[3])
    redis.call('HSET', KEYS[1], 'lg', ms(lg))
  end
  if lg > now then return {'held', holder, ms(lg - now), ms(now)} end
end
local nb = tonumber(f[4] or '')
if nb and nb > now and ARGV[4] ~= '1' then
  return {'backoff', ms(nb), ms(now), f[5] or ''}
end
-- Fences never repeat, not even after Delete dropped the counter.
local fence = (tonumber(f[10] or '0') or 0) + 1
local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
if us > fence then fence = us end
local fs = ms(fence)
local rth = f[3] or ''
if ia > 0 and f[6] == rth then ia = ia + 1 else ia = 1 end
redis.call('HSET', KEYS[1], 'fence', fs, 'ih', rth, 'ia', ms(ia), 'it', ms(now), 'io', ARGV[2], 'if', fs, 'co', ARGV[5],
  'le', ms(now + tonumber(ARGV[3])))
redis.call('HDEL', KEYS[1], 'lg')
redis.call('SET', KEYS[2], ARGV[2] .. ':' .. fs, 'PX', ARGV[3])
return {'ok', fs, ms(now + tonumber(ARGV[3])), f[1], ia > 1 and '1' or '0', ms(ia), rth}
`

// renewScript extends a lease that is still ours, and its copy "le" in
// the record while its claim's intent is there.
//
//	KEYS:  lease, record hash
//	ARGV:  lease value, ttl (ms), fence
//	reply: {"ok", expiry (ms)} | {"lost"}
var renewScript = redis.NewScript(luaNow + `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'lost'} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('HGET', KEYS[2], 'if') == ARGV[3] then
  redis.call('HSET', KEYS[2], 'le', ms(now + tonumber(ARGV[2])))
end
return {'ok', ms(now + tonumber(ARGV[2]))}
`)

// releaseScript drops a lease that is still ours and undoes its claim's
// intent unless a later claim replaced it.
//
//	KEYS:  lease, record hash
//	ARGV:  lease value, fence, rth
//	reply: {"ok"}
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
local f = redis.call('HMGET', KEYS[2], 'if', 'ih', 'ia')
if f[1] == ARGV[2] and f[2] == ARGV[3] then
  local ia = tonumber(f[3] or '0') or 0
  if ia > 1 then
    redis.call('HSET', KEYS[2], 'ia', string.format('%d', ia - 1))
    redis.call('HDEL', KEYS[2], 'if', 'co', 'le', 'lg')
  else
    redis.call('HDEL', KEYS[2], 'ih', 'it', 'io', 'ia', 'if', 'co', 'le', 'lg')
  end
end
return {'ok'}
`)

// completeScript records the outcome of presenting a refresh token.
//
//	KEYS:  record hash, tombstone, bucket schedule, lease, journal entry
//	ARGV:  op id, kind, code, claimed rth, lease value, backoff (ms),
//	       journal TTL (s), customer id, done channel, due score (ms) or
//	       "" and expire-at (ms) or "" (both for refreshed), lease owner,
//	       lease fence, then for refreshed the field/value pairs to write
//	       (an empty value deletes the field)
//	reply: {"ok", generation} | {"notfound"} | {"conflict"}
//
// The op id makes a resent Complete report its first result: without it a
// resent Refreshed would find its own new token and call it a conflict.
var completeScript = redis.NewScript(completeSource)

const completeSource = luaNow + `
if redis.call('EXISTS', KEYS[1]) == 0 then return {'notfound'} end
local f = redis.call('HMGET', KEYS[1], 'gen', 'op', 'rth', 'fa', 'state', 'ih', 'ia', 'if')
local cur = tonumber(f[1] or '0') or 0
if f[2] == ARGV[1] then return {'ok', ms(cur)} end
local tomb = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if tomb >= cur then return {'notfound'} end
if (f[3] or '') ~= ARGV[4] then return {'conflict'} end
local g = ms(cur + 1)
local intent = {'ih', 'it', 'io', 'ia', 'if', 'co', 'le', 'lg'}
local function seterr(code)
  if code == '' then redis.call('HDEL', KEYS[1], 'err') else redis.call('HSET', KEYS[1], 'err', code) end
end
redis.call('HSET', KEYS[1], 'gen', g, 'op', ARGV[1])
local kind = ARGV[2]
if kind == 'refreshed' then
  local set, del = {}, {'fa', 'nb', 'state', 'err'}
  for _, x in ipairs(intent) do del[#del + 1] = x end
  for i = 14, #ARGV, 2 do
    if ARGV[i + 1] == '' then
      del[#del + 1] = ARGV[i]
    else
      set[#set + 1] = ARGV[i]
      set[#set + 1] = ARGV[i + 1]
    end
  end
  if #set > 0 then redis.call('HSET', KEYS[1], unpack(set)) end
  redis.call('HDEL', KEYS[1], unpack(del))
  if ARGV[10] == '' then
    redis.call('ZREM', KEYS[3], ARGV[8])
  else
    redis.call('ZADD', KEYS[3], ARGV[10], ARGV[8])
  end
  if ARGV[11] == '' then
    redis.call('PERSIST', KEYS[1])
  else
    redis.call('PEXPIREAT', KEYS[1], ARGV[11])
  end
elseif kind == 'rejected' then
  redis.call('HSET', KEYS[1], 'state', 'reauthorization_required')
  seterr(ARGV[3])
  redis.call('HDEL', KEYS[1], 'nr', unpack(intent))
  redis.call('ZREM', KEYS[3], ARGV[8])
elseif f[5] ~= 'reauthorization_required' then
  local nb = ms(now + tonumber(ARGV[6]))
  redis.call('HSET', KEYS[1], 'fa', ms((tonumber(f[4] or '0') or 0) + 1), 'nb', nb, 'nr', nb)
  seterr(ARGV[3])
  redis.call('ZADD', KEYS[3], nb, ARGV[8])
  local ia = tonumber(f[7] or '0') or 0
  if kind == 'unknown' and not (ia > 0 and f[6] == ARGV[4]) then
    redis.call('HSET', KEYS[1], 'ih', ARGV[4], 'ia', '1', 'it', ms(now), 'io', ARGV[12], 'if', ARGV[13])
    redis.call('HDEL', KEYS[1], 'le', 'lg')
  elseif kind == 'refused' and ia <= 1 then
    redis.call('HDEL', KEYS[1], unpack(intent))
  elseif f[8] == ARGV[13] then
    redis.call('HDEL', KEYS[1], 'le', 'lg') -- this presentation is over
  end
end
if redis.call('GET', KEYS[4]) == ARGV[5] then redis.call('DEL', KEYS[4]) end
redis.call('SET', KEYS[5], kind .. '|' .. ARGV[3] .. '|' .. g, 'EX', ARGV[7])
redis.call('PUBLISH', ARGV[9], ARGV[8])
return {'ok', g}
`

// dueScript lists a bucket's due customers by the server's clock.
//
//	KEYS:  bucket schedule
//	ARGV:  limit
//	reply: {customer id, score, ...}
var dueScript = redis.NewScript(luaNow + `
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms(now), 'WITHSCORES', 'LIMIT', '0', ARGV[1])
`)

// touchScript sets the last app call to now.
//
//	KEYS:  record hash
//	reply: 1, or 0 when there is no record
var touchScript = redis.NewScript(luaNow + `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'lu', ms(now))
return 1
`)

func leaseValue(owner string, fence int64) string {
	return owner + ":" + strconv.FormatInt(fence, 10)
}

// replyStrings turns a script's array reply into strings.
func replyStrings(op string, reply any) ([]string, error) {
	arr, ok := reply.([]any)
	if !ok || len(arr) == 0 {
		return nil, fmt.Errorf("%s: unexpected script reply %T", op, reply)
	}
	out := make([]string, len(arr))
	for i, v := range arr {
		switch v := v.(type) {
		case string:
			out[i] = v
		case int64:
			out[i] = strconv.FormatInt(v, 10)
		default:
			return nil, fmt.Errorf("%s: unexpected element %T in script reply", op, v)
		}
	}
	return out, nil
}

// parseInts parses the given decimal strings, in order.
func parseInts(op string, ss ...string) ([]int64, error) {
	out := make([]int64, len(ss))
	for i, s := range ss {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: malformed number in script reply", op)
		}
		out[i] = n
	}
	return out, nil
}

// Claim leases the customer; see RefreshStore.Claim. With WaitReplicas the
// lease is only returned once that many replicas have acknowledged it; a
// claim they did not acknowledge is released again (best effort) and
// reported as an error wrapping ErrUnavailable.
func (s *Redis) Claim(ctx context.Context, customerID string, expect int64, owner string, ttl time.Duration, ignoreBackoff bool) (*Lease, error) {
	opID, err := newOpID()
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	return s.claimOp(ctx, customerID, expect, owner, ttl, ignoreBackoff, opID)
}

// claimOp is Claim with a given op id; a second call with the same id
// stands for the client resending the command.
func (s *Redis) claimOp(ctx context.Context, customerID string, expect int64, owner string, ttl time.Duration, ignoreBackoff bool, opID string) (*Lease, error) {
	const op = "claim"
	if err := checkClaim(owner, ttl); err != nil {
		return nil, err
	}
	ignore := ""
	if ignoreBackoff {
		ignore = "1"
	}
	keys := []string{s.RecordKey(customerID), s.LeaseKey(customerID)}
	reply, err := s.run(ctx, op, plantedScript(claimScript), keys,
		[]any{strconv.FormatInt(expect, 10), owner, strconv.FormatInt(ttl.Milliseconds(), 10), ignore, opID})
	if reply == nil {
		return nil, err
	}
	r, perr := replyStrings(op, reply)
	if perr != nil {
		return nil, perr
	}
	switch r[0] {
	case "ok":
		if len(r) < 7 {
			return nil, fmt.Errorf("%s: short script reply", op)
		}
		n, perr := parseInts(op, r[1], r[2], r[3], r[5])
		if perr != nil {
			return nil, perr
		}
		l := &Lease{
			CustomerID:       customerID,
			Owner:            owner,
			Fence:            n[0],
			Expiry:           time.UnixMilli(n[1]).UTC(),
			Generation:       n[2],
			Represent:        r[4] == "1",
			Attempt:          int(n[3]),
			RefreshTokenHash: r[6],
		}
		if err != nil {
			// Not acknowledged by enough replicas: a failover could lose
			// it, so it must not be used. Undo it on the master.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			_ = releaseScript.Run(rctx, s.client, []string{s.LeaseKey(customerID), s.RecordKey(customerID)},
				leaseValue(owner, l.Fence), strconv.FormatInt(l.Fence, 10), l.RefreshTokenHash).Err()
			return nil, err
		}
		return l, nil
	case "notfound":
		return nil, ErrNotFound
	case "notactive":
		return nil, ErrNotActive
	case "conflict":
		return nil, ErrConflict
	case "held":
		if len(r) < 4 {
			return nil, fmt.Errorf("%s: short script reply", op)
		}
		n, perr := parseInts(op, r[2], r[3])
		if perr != nil {
			return nil, perr
		}
		pttl := time.Duration(max(n[0], 0)) * time.Millisecond
		holder := r[1]
		if i := strings.LastIndexByte(holder, ':'); i >= 0 {
			holder = holder[:i]
		}
		return nil, &LeaseHeldError{Owner: holder, Until: time.UnixMilli(n[1]).UTC().Add(pttl), TTL: pttl}
	case "backoff":
		if len(r) < 4 {
			return nil, fmt.Errorf("%s: short script reply", op)
		}
		n, perr := parseInts(op, r[1], r[2])
		if perr != nil {
			return nil, perr
		}
		return nil, &BackoffError{
			Until:     time.UnixMilli(n[0]).UTC(),
			Remaining: time.Duration(n[0]-n[1]) * time.Millisecond,
			LastError: r[3],
		}
	default:
		return nil, fmt.Errorf("%s: unexpected script reply %q", op, r[0])
	}
}

// Renew extends a held lease; see RefreshStore.Renew. With WaitReplicas a
// renewal too few replicas acknowledged is an error (wrapping
// ErrUnavailable): after a failover the lease could lapse at its old time.
func (s *Redis) Renew(ctx context.Context, l *Lease, ttl time.Duration) (time.Time, error) {
	const op = "renew lease"
	if ttl < time.Millisecond {
		return time.Time{}, fmt.Errorf("%s: ttl %v below 1ms", op, ttl)
	}
	// run names the master by keys[0]; the lease is in the record's slot.
	reply, err := s.run(ctx, op, renewScript, []string{s.LeaseKey(l.CustomerID), s.RecordKey(l.CustomerID)},
		[]any{leaseValue(l.Owner, l.Fence), strconv.FormatInt(ttl.Milliseconds(), 10), strconv.FormatInt(l.Fence, 10)})
	if reply == nil {
		return time.Time{}, err
	}
	r, perr := replyStrings(op, reply)
	if perr != nil {
		return time.Time{}, perr
	}
	switch r[0] {
	case "ok":
		if err != nil {
			return time.Time{}, err
		}
		if len(r) < 2 {
			return time.Time{}, fmt.Errorf("%s: short script reply", op)
		}
		n, perr := parseInts(op, r[1])
		if perr != nil {
			return time.Time{}, perr
		}
		return time.UnixMilli(n[0]).UTC(), nil
	case "lost":
		return time.Time{}, ErrLeaseLost
	default:
		return time.Time{}, fmt.Errorf("%s: unexpected script reply %q", op, r[0])
	}
}

// Release drops a lease and undoes its intent; see RefreshStore.Release.
func (s *Redis) Release(ctx context.Context, l *Lease) error {
	_, err := s.run(ctx, "release lease", releaseScript,
		[]string{s.LeaseKey(l.CustomerID), s.RecordKey(l.CustomerID)},
		[]any{leaseValue(l.Owner, l.Fence), strconv.FormatInt(l.Fence, 10), l.RefreshTokenHash})
	return err
}

// Complete records an outcome; see RefreshStore.Complete and, for
// WaitReplicas, Put.
func (s *Redis) Complete(ctx context.Context, l *Lease, o Outcome) (int64, error) {
	opID, err := newOpID()
	if err != nil {
		return 0, fmt.Errorf("complete refresh: %w", err)
	}
	return s.completeOp(ctx, l, o, opID)
}

// completeOp is Complete with a given op id; a second call with the same
// id stands for the client resending the command.
func (s *Redis) completeOp(ctx context.Context, l *Lease, o Outcome, opID string) (int64, error) {
	const op = "complete refresh"
	if err := checkOutcome(l, o); err != nil {
		return 0, err
	}
	id := l.CustomerID
	dueScore, expireAt := "", ""
	var fields []any
	if o.Kind == Refreshed {
		n := normalize(o.Record)
		n.CustomerID = id
		var err error
		if fields, err = s.encodeRefreshed(n); err != nil {
			return 0, fmt.Errorf("%s: %w", op, err)
		}
		dueScore, expireAt = unixMilli(n.NextRefresh), unixMilli(expiresAt(n))
	}
	args := make([]any, 0, 13+len(fields))
	args = append(args, opID, o.Kind.String(), o.Code, l.RefreshTokenHash, leaseValue(l.Owner, l.Fence),
		strconv.FormatInt(o.Backoff.Milliseconds(), 10), strconv.Itoa(int(JournalTTL/time.Second)),
		id, s.DoneChannel(), dueScore, expireAt, l.Owner, strconv.FormatInt(l.Fence, 10))
	args = append(args, fields...)
	keys := []string{s.RecordKey(id), s.TombstoneKey(id), s.DueKey(s.BucketOf(id)), s.LeaseKey(id),
		s.JournalKey(id, l.RefreshTokenHash)}

	reply, err := s.run(ctx, op, plantedScript(completeScript), keys, args)
	if reply == nil {
		return 0, err
	}
	r, perr := replyStrings(op, reply)
	if perr != nil {
		return 0, perr
	}
	switch r[0] {
	case "ok":
		if len(r) < 2 {
			return 0, fmt.Errorf("%s: script reply without generation", op)
		}
		n, perr := parseInts(op, r[1])
		if perr != nil {
			return 0, perr
		}
		s.hub.notify(id) // local waiters need not wait for pub/sub
		return n[0], err // err: written but not replicated enough
	case "notfound":
		return 0, ErrNotFound
	case "conflict":
		return 0, ErrConflict
	default:
		return 0, fmt.Errorf("%s: unexpected script reply %q", op, r[0])
	}
}

// encodeRefreshed returns the field/value pairs a Refreshed outcome writes:
// the new tokens sealed with the keyring's first key, their expiries, the
// refresh times, the new rth and the format version.
func (s *Redis) encodeRefreshed(rec *Record) ([]any, error) {
	sealed, err := s.sealTokens(rec)
	if err != nil {
		return nil, err
	}
	return append(sealed,
		fVersion, formatVersion,
		fAccessExp, unixMilli(rec.AccessTokenExpiry),
		fRefreshExp, unixMilli(rec.RefreshTokenExpiry),
		fLastRefresh, unixMilli(rec.LastRefresh),
		fNextRefresh, unixMilli(rec.NextRefresh),
		fRTH, s.refreshTokenHash(rec.CustomerID, rec.RefreshToken),
	), nil
}

// Journal returns a recorded outcome; see RefreshStore.Journal.
func (s *Redis) Journal(ctx context.Context, customerID, rth string) (*JournalEntry, error) {
	const op = "read journal"
	v, err := s.client.Get(ctx, s.JournalKey(customerID, rth)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, unavailable(op, err)
	}
	kind, rest, ok1 := strings.Cut(v, "|")
	i := strings.LastIndexByte(rest, '|')
	if !ok1 || i < 0 {
		return nil, fmt.Errorf("%s: malformed entry", op)
	}
	gen, err := strconv.ParseInt(rest[i+1:], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%s: malformed generation", op)
	}
	e := &JournalEntry{Code: rest[:i], Generation: gen}
	for k := Refreshed; k <= Unknown; k++ {
		if k.String() == kind {
			e.Kind = k
		}
	}
	if e.Kind == 0 {
		return nil, fmt.Errorf("%s: unknown outcome kind", op)
	}
	return e, nil
}

// Due lists the customers due for refresh; see RefreshStore.Due.
//
// Each bucket is read by a script that takes "now" from the TIME of the
// master holding that bucket, the same clock that set the cooldown-based
// scores (Refused, Unknown), so no replica's clock and no cross-master
// skew decides what is due. The buckets' scripts go in one pipeline
// (go-redis splits it per node in a Cluster): one round trip per master.
func (s *Redis) Due(ctx context.Context, buckets []int, limit int) ([]DueEntry, error) {
	const op = "list due"
	if err := checkBuckets(buckets, s.buckets); err != nil {
		return nil, err
	}
	if limit <= 0 || len(buckets) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.Cmd, len(buckets))
	pipeline := func(idx []int, eval bool) {
		// Errors are read from each command.
		_, _ = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range idx {
				keys := []string{s.DueKey(buckets[i])}
				if eval {
					cmds[i] = dueScript.Eval(ctx, p, keys, limit)
				} else {
					cmds[i] = dueScript.EvalSha(ctx, p, keys, limit)
				}
			}
			return nil
		})
	}
	all := make([]int, len(buckets))
	for i := range all {
		all[i] = i
	}
	pipeline(all, false)
	// A master that does not know the script yet (new, restarted,
	// flushed) gets its source once.
	var missing []int
	for i, c := range cmds {
		if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		pipeline(missing, true)
	}
	var out []DueEntry
	for _, c := range cmds {
		reply, err := c.Result()
		if err != nil {
			return nil, unavailable(op, err)
		}
		r, ok := reply.([]any)
		if !ok {
			return nil, fmt.Errorf("%s: unexpected script reply %T", op, reply)
		}
		for j := 0; j+1 < len(r); j += 2 {
			id, _ := r[j].(string)
			score, _ := r[j+1].(string)
			ms, err := strconv.ParseFloat(score, 64)
			if err != nil {
				return nil, fmt.Errorf("%s: malformed score", op)
			}
			out = append(out, DueEntry{CustomerID: id, Due: time.UnixMilli(int64(ms)).UTC()})
		}
	}
	return mergeDue(out, limit), nil
}

// TouchLastUsed records an app call; see RefreshStore.TouchLastUsed. It
// does not wait for replicas: losing one in a failover only makes a
// customer look idle a little early.
func (s *Redis) TouchLastUsed(ctx context.Context, customerID string) error {
	if err := touchScript.Run(ctx, s.client, []string{s.RecordKey(customerID)}).Err(); err != nil {
		return unavailable("touch last used", err)
	}
	return nil
}

// Now is the Redis server's clock (TIME; in a Cluster, of whichever node
// answers).
func (s *Redis) Now(ctx context.Context) (time.Time, error) {
	t, err := s.client.Time(ctx).Result()
	if err != nil {
		return time.Time{}, unavailable("now", err)
	}
	return t.UTC(), nil
}

// censusBatch is how many records Census reads per round trip.
const censusBatch = 1000

// Census counts the customers by state; see RefreshStore.Census.
//
// Cost: it SCANs the whole keyspace of every master (MATCH filters after
// the scan, so keys of other prefixes and this store's tombstones, leases
// and journal entries are walked too), COUNT 1000 a call, and reads each
// record's state and access expiry plus its lease's existence in pipelines
// of 1000: about (keys / 1000) SCAN calls and (records / 1000) pipelines
// per call. For 100k customers that is a few hundred round trips and well
// under a second of Redis time, spread in small steps; call it every tens
// of seconds, not per request. Counts are a snapshot only approximately
// (SCAN may visit a key twice or miss one written meanwhile).
func (s *Redis) Census(ctx context.Context) (Census, error) {
	var (
		mu    sync.Mutex
		total Census
	)
	count := func(ctx context.Context, node redis.Cmdable) error {
		c, err := s.censusNode(ctx, node)
		if err != nil {
			return err
		}
		mu.Lock()
		total.Valid += c.Valid
		total.Expired += c.Expired
		total.Refreshing += c.Refreshing
		total.ReauthorizationRequired += c.ReauthorizationRequired
		mu.Unlock()
		return nil
	}
	var err error
	switch c := s.client.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return count(ctx, node) })
	case *redis.Ring:
		err = c.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error { return count(ctx, node) })
	default:
		err = count(ctx, s.client)
	}
	if err != nil {
		return Census{}, unavailable("census", err)
	}
	return total, nil
}

// censusNode counts the records held by one node, by that node's clock.
func (s *Redis) censusNode(ctx context.Context, node redis.Cmdable) (Census, error) {
	var c Census
	now, err := node.Time(ctx).Result()
	if err != nil {
		return c, err
	}
	pattern := globEscape(s.prefix) + "{b*}:rec:*"
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		type pair struct {
			fields *redis.SliceCmd
			leased *redis.IntCmd
		}
		cmds := make([]pair, len(batch))
		_, err := node.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, key := range batch {
				bucketPrefix, id, _ := s.parseRecordKey(key)
				cmds[i] = pair{
					fields: p.HMGet(ctx, key, fGeneration, fState, fAccessExp),
					leased: p.Exists(ctx, bucketPrefix+"lease:"+id),
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, cmd := range cmds {
			v := cmd.fields.Val()
			if len(v) < 3 || v[0] == nil {
				continue // forgotten since the scan
			}
			state, _ := v[1].(string)
			ate, _ := v[2].(string)
			exp, err := parseUnixMilli(ate)
			if err != nil {
				exp = time.Time{}
			}
			c.add(State(state), cmd.leased.Val() > 0, exp, now)
		}
		batch = batch[:0]
		return nil
	}
	var cursor uint64
	for {
		keys, next, err := node.Scan(ctx, cursor, pattern, censusBatch).Result()
		if err != nil {
			return c, err
		}
		for _, k := range keys {
			if _, _, ok := s.parseRecordKey(k); ok {
				batch = append(batch, k)
			}
		}
		if len(batch) >= censusBatch {
			if err := flush(); err != nil {
				return c, err
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	return c, flush()
}

// parseRecordKey splits "<prefix>{b<N>}:rec:<id>" into "<prefix>{b<N>}:"
// and id; ok is false for every other key.
func (s *Redis) parseRecordKey(key string) (bucketPrefix, id string, ok bool) {
	rest, found := strings.CutPrefix(key, s.prefix+"{b")
	if !found {
		return "", "", false
	}
	digits := 0
	for digits < len(rest) && rest[digits] >= '0' && rest[digits] <= '9' {
		digits++
	}
	if digits == 0 {
		return "", "", false
	}
	id, found = strings.CutPrefix(rest[digits:], "}:rec:")
	if !found || id == "" {
		return "", "", false
	}
	return key[:len(s.prefix)+2+digits+2], id, true
}

// globEscape quotes the characters SCAN MATCH treats specially.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// redisSub is a Redis store's one subscription to its done channel,
// started by the first Watch and ended by Close.
type redisSub struct {
	mu      sync.Mutex
	started bool
	closed  bool
	cancel  context.CancelFunc
	ps      *redis.PubSub
	done    chan struct{} // closed when the receiving goroutine returns
	ready   chan struct{} // closed at the first confirmed subscription
}

// Watch wakes on Complete, Put and Delete of the customer by any store
// sharing this Redis and prefix; see RefreshStore.Watch. The first Watch
// starts the store's subscription to DoneChannel (one connection for all
// watches, re-established by go-redis after a failure; messages published
// meanwhile are lost, which is why callers also poll). After Close, Watch
// returns channels that never fire.
func (s *Redis) Watch(customerID string) (<-chan struct{}, func()) {
	s.startSubscription()
	return s.hub.add(customerID)
}

// WatchReady waits until the subscription behind Watch is established
// (starting it if no Watch has yet), or ctx ends. Tests use it to publish
// only once a watcher can hear; a readiness check may too.
func (s *Redis) WatchReady(ctx context.Context) error {
	ready := s.startSubscription()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("watch: subscription: %w", ctx.Err())
	}
}

// startSubscription starts the subscription once and returns the channel
// closed when it is established.
func (s *Redis) startSubscription() <-chan struct{} {
	s.sub.mu.Lock()
	defer s.sub.mu.Unlock()
	if s.sub.ready == nil {
		s.sub.ready = make(chan struct{})
	}
	if s.sub.started || s.sub.closed {
		return s.sub.ready
	}
	s.sub.started = true
	ctx, cancel := context.WithCancel(context.Background())
	s.sub.cancel = cancel
	s.sub.done = make(chan struct{})
	go s.receive(ctx, s.sub.ready, s.sub.done)
	return s.sub.ready
}

// receive runs the subscription: it fans each published customer id out
// to that customer's watchers.
func (s *Redis) receive(ctx context.Context, ready, done chan struct{}) {
	defer close(done)
	// Subscribe dials (bounded by the client's dial timeout, or Close); a
	// failure here is retried by the channel below.
	ps := s.client.Subscribe(ctx, s.DoneChannel())
	s.sub.mu.Lock()
	if s.sub.closed {
		s.sub.mu.Unlock()
		_ = ps.Close()
		return
	}
	s.sub.ps = ps
	s.sub.mu.Unlock()
	var once sync.Once
	for msg := range ps.ChannelWithSubscriptions() {
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				once.Do(func() { close(ready) })
			}
		case *redis.Message:
			s.hub.notify(m.Payload)
		}
	}
}

// Close stops the subscription behind Watch and waits for its goroutine.
// The store stays usable otherwise; the client is the caller's to close.
func (s *Redis) Close() error {
	s.sub.mu.Lock()
	s.sub.closed = true
	cancel, ps, done := s.sub.cancel, s.sub.ps, s.sub.done
	s.sub.ps = nil // closed once
	s.sub.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	var err error
	if ps != nil {
		err = ps.Close()
	}
	if done != nil {
		<-done
	}
	return err
}
