package tokencache

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Redis store's outbox, expiry schedule, hint, delivery leases and
// state indexes (see events.go and keys.go for the layout). Everything of
// one bucket lives in the bucket's slot, written by casScript together
// with the entry, or by the scripts below; only the hint lives elsewhere
// and is written best effort.

// casSide is what casScript does beside the entry (see its ARGV).
type casSide struct {
	index  string
	expiry string
	events []any
	// hint is when a deliverer should look at the bucket after this
	// write; zero: no need.
	hint time.Time
}

// sideEffects decides the index, expiry schedule and outbox changes of a
// write from was to next at now.
func (s *Redis) sideEffects(was, next *Entry, now time.Time) (casSide, error) {
	var side casSide
	if to, changed := indexAction(was, next); changed {
		side.index = string(to)
		if to == IndexNone {
			side.index = "none"
		}
	}
	if !s.events.Enabled {
		return side, nil
	}
	set, remove := expiryAction(was, next)
	switch {
	case !set.IsZero():
		side.expiry = unixMilli(set)
		side.hint = set.Add(-s.events.ExpiryHorizon)
	case remove:
		side.expiry = "-"
	}
	events, err := deriveEvents(was, next, now)
	if err != nil {
		return side, err
	}
	next.lostRotation = false
	for _, e := range events {
		raw, err := encodeStoredEvent(e)
		if err != nil {
			return side, err
		}
		side.events = append(side.events, raw)
	}
	if len(events) > 0 && (side.hint.IsZero() || now.Before(side.hint)) {
		side.hint = now
	}
	return side, nil
}

// hintAfterWrite names the bucket in the hint after a write that gave a
// deliverer work. Best effort: the sweep finds what a lost hint hides.
func (s *Redis) hintAfterWrite(ctx context.Context, bucket int, at time.Time) {
	_ = s.EventsHint(ctx, bucket, at)
}

// EventsDue returns up to limit buckets the hint names at or before now,
// earliest first. One command.
func (s *Redis) EventsDue(ctx context.Context, now time.Time, limit int) ([]BucketHint, error) {
	zs, err := s.client.ZRangeByScoreWithScores(ctx, s.EventsHintKey(), &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(now.UnixMilli(), 10), Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, unavailable("events due", err)
	}
	out := make([]BucketHint, 0, len(zs))
	for _, z := range zs {
		m, _ := z.Member.(string)
		b, err := strconv.Atoi(m)
		if err != nil || b < 0 || b >= s.buckets {
			continue // not one of ours: ignored, and never removed by us
		}
		out = append(out, BucketHint{Bucket: b, At: time.UnixMilli(int64(z.Score)).UTC()})
	}
	return out, nil
}

// EventsProbe reports each bucket's pending events and earliest scheduled
// refresh token expiry: two commands per bucket, in one pipeline.
func (s *Redis) EventsProbe(ctx context.Context, buckets []int) ([]BucketProbe, error) {
	if err := checkBuckets(buckets, s.buckets); err != nil {
		return nil, err
	}
	lens := make([]*redis.IntCmd, len(buckets))
	firsts := make([]*redis.ZSliceCmd, len(buckets))
	// Errors are read from each command.
	_, _ = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, b := range buckets {
			lens[i] = p.LLen(ctx, s.OutboxKey(b))
			firsts[i] = p.ZRangeWithScores(ctx, s.ExpiryKey(b), 0, 0)
		}
		return nil
	})
	out := make([]BucketProbe, len(buckets))
	for i, b := range buckets {
		n, err := lens[i].Result()
		if err != nil {
			return nil, unavailable("events probe", err)
		}
		zs, err := firsts[i].Result()
		if err != nil {
			return nil, unavailable("events probe", err)
		}
		out[i] = BucketProbe{Bucket: b, Pending: int(n)}
		if len(zs) > 0 {
			out[i].EarliestExpiry = time.UnixMilli(int64(zs[0].Score)).UTC()
		}
	}
	return out, nil
}

// EventsHint names the bucket in the hint at at, unless it names an
// earlier time (ZADD LT).
func (s *Redis) EventsHint(ctx context.Context, bucket int, at time.Time) error {
	err := s.client.ZAddLT(ctx, s.EventsHintKey(), redis.Z{Score: float64(at.UnixMilli()), Member: strconv.Itoa(bucket)}).Err()
	if err != nil {
		return unavailable("events hint", err)
	}
	return nil
}

// EventsDefer names the bucket in the hint at until, whatever it named:
// after a failed delivery nothing in the bucket can go before its head.
func (s *Redis) EventsDefer(ctx context.Context, bucket int, until time.Time) error {
	err := s.client.ZAdd(ctx, s.EventsHintKey(), redis.Z{Score: float64(until.UnixMilli()), Member: strconv.Itoa(bucket)}).Err()
	if err != nil {
		return unavailable("events defer", err)
	}
	return nil
}

// rehintScript replaces a hint entry still scored as read.
//
//	KEYS: hint; ARGV: bucket, score read, new score or "" (remove)
var rehintScript = redis.NewScript(`
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not cur or tonumber(cur) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
return 1
`)

// EventsRehint replaces the bucket's hint, if it still names was, by next
// (zero: removes it). A hint written meanwhile stays.
func (s *Redis) EventsRehint(ctx context.Context, bucket int, was, next time.Time) error {
	err := rehintScript.Run(ctx, s.client, []string{s.EventsHintKey()}, strconv.Itoa(bucket), was.UnixMilli(), unixMilli(next)).Err()
	if err != nil {
		return unavailable("events rehint", err)
	}
	return nil
}

// EventsLease takes the bucket's delivery lease for ttl and returns its
// fence (random, never reused); ErrEventsLease while another holds it.
func (s *Redis) EventsLease(ctx context.Context, bucket int, ttl time.Duration) (string, error) {
	fence, err := NewEventID()
	if err != nil {
		return "", err
	}
	ok, err := s.client.SetNX(ctx, s.EventsLeaseKey(bucket), fence, ttl).Result()
	if err != nil {
		return "", unavailable("events lease", err)
	}
	if !ok {
		return "", ErrEventsLease
	}
	return fence, nil
}

// renewEventsScript: KEYS lease; ARGV fence, ttl ms (or "" to release).
var renewEventsScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
`)

// EventsRenew extends a held delivery lease; ErrEventsLease when lost.
func (s *Redis) EventsRenew(ctx context.Context, bucket int, fence string, ttl time.Duration) error {
	n, err := renewEventsScript.Run(ctx, s.client, []string{s.EventsLeaseKey(bucket)}, fence, max(ttl.Milliseconds(), 1)).Int()
	if err != nil {
		return unavailable("events renew", err)
	}
	if n == 0 {
		return ErrEventsLease
	}
	return nil
}

// EventsRelease drops a held delivery lease; not an error when lost.
func (s *Redis) EventsRelease(ctx context.Context, bucket int, fence string) error {
	if err := renewEventsScript.Run(ctx, s.client, []string{s.EventsLeaseKey(bucket)}, fence, "").Err(); err != nil {
		return unavailable("events release", err)
	}
	return nil
}

// moveExpiringScript moves due customers of a bucket's expiry schedule
// into its outbox, earliest first, on the server's clock; one whose refresh
// token has already expired leaves the schedule without an event (it is
// not expiring but expired: its next refresh attempt ends it, with a
// reauthorization_required event).
//
//	KEYS: expiry schedule, outbox; ARGV: horizon ms, then one event id per
//	customer that may be moved
var moveExpiringScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now + tonumber(ARGV[1])), 'WITHSCORES', 'LIMIT', 0, #ARGV - 1)
local moved = 0
for i = 1, #due, 2 do
  local id = due[i]
  redis.call('ZREM', KEYS[1], id)
  if tonumber(due[i + 1]) > now then
    moved = moved + 1
    redis.call('RPUSH', KEYS[2], '{"id":' .. cjson.encode(ARGV[moved + 1]) .. ',"type":"refresh_token_expiring","customerId":' ..
      cjson.encode(id) .. ',"reason":null,"at":' .. string.format('%d', now) .. '}')
  end
end
return #due / 2
`)

// EventsMoveExpiring moves up to max customers whose refresh token expires
// within horizon of the server's now out of the bucket's expiry schedule
// and into its outbox as refresh_token_expiring events (none for a token
// already expired), in one script. It returns how many left the schedule.
func (s *Redis) EventsMoveExpiring(ctx context.Context, bucket int, horizon time.Duration, max int) (int, error) {
	args := []any{horizon.Milliseconds()}
	for range max {
		id, err := NewEventID()
		if err != nil {
			return 0, err
		}
		args = append(args, id)
	}
	n, err := moveExpiringScript.Run(ctx, s.client, []string{s.ExpiryKey(bucket), s.OutboxKey(bucket)}, args...).Int()
	if err != nil {
		return 0, unavailable("move expiring", err)
	}
	return n, nil
}

// EventsHead returns the oldest event of the bucket's outbox, nil when it
// is empty. A malformed element comes back as an Event with only its
// identity for EventsAck, with an error wrapping ErrCorrupt.
func (s *Redis) EventsHead(ctx context.Context, bucket int) (*Event, error) {
	raw, err := s.client.LIndex(ctx, s.OutboxKey(bucket), 0).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, unavailable("events head", err)
	}
	e, err := decodeStoredEvent(raw)
	if err != nil {
		return &Event{raw: raw}, err
	}
	return e, nil
}

// ackScript: KEYS lease, outbox; ARGV fence, element.
var ackScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('LINDEX', KEYS[2], 0) == ARGV[2] then redis.call('LPOP', KEYS[2]) end
return redis.call('LLEN', KEYS[2])
`)

// EventsAck removes ev from the bucket's outbox if it is still the head
// and the lease fence is still held (else ErrEventsLease), and returns how
// many events remain.
func (s *Redis) EventsAck(ctx context.Context, bucket int, fence string, ev *Event) (int, error) {
	n, err := ackScript.Run(ctx, s.client, []string{s.EventsLeaseKey(bucket), s.OutboxKey(bucket)}, fence, ev.raw).Int()
	if err != nil {
		return 0, unavailable("events ack", err)
	}
	if n < 0 {
		return 0, ErrEventsLease
	}
	return n, nil
}

// listGroup bounds how many buckets one round trip of List reads.
const listGroup = 256

// List walks index idx from from, bucket by bucket and in lexical order of
// ids within a bucket (ZRANGEBYLEX on score-0 sets), and returns up to
// limit customers with what their records say now, the cursor after the
// last one, and whether the walk is over. Buckets are read in pipelines of
// 16, then more per round trip while they come back sparse; the records
// are read in one more pipeline.
func (s *Redis) List(ctx context.Context, idx Index, from Cursor, limit int) ([]Listed, Cursor, bool, error) {
	const op = "list"
	if err := checkList(idx, from, limit, s.buckets); err != nil {
		return nil, from, false, err
	}
	var out []Listed
	cur, done := from, false
	group := 16
walk:
	for {
		if cur.Bucket >= s.buckets {
			done = true
			break
		}
		n := min(group, s.buckets-cur.Bucket)
		want := int64(limit - len(out))
		cmds := make([]*redis.StringSliceCmd, n)
		_, _ = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := range n {
				lo := "-"
				if i == 0 && cur.After != "" {
					lo = "(" + cur.After
				}
				cmds[i] = p.ZRangeByLex(ctx, s.IndexKey(cur.Bucket+i, idx), &redis.ZRangeBy{Min: lo, Max: "+", Count: want})
			}
			return nil
		})
		for i, c := range cmds {
			ids, err := c.Result()
			if err != nil {
				return nil, from, false, unavailable(op, err)
			}
			for _, id := range ids {
				out = append(out, Listed{CustomerID: id, Bucket: cur.Bucket + i})
				if len(out) == limit {
					cur = Cursor{Bucket: cur.Bucket + i, After: id}
					break walk
				}
			}
		}
		cur = Cursor{Bucket: cur.Bucket + n}
		group = min(group*4, listGroup)
	}
	if err := s.readListed(ctx, idx, out); err != nil {
		return nil, from, false, err
	}
	return out, cur, done, nil
}

// readListed fills in what each listed customer's record says now.
func (s *Redis) readListed(ctx context.Context, idx Index, out []Listed) error {
	if len(out) == 0 {
		return nil
	}
	cmds := make([]*redis.SliceCmd, len(out))
	_, _ = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, l := range out {
			cmds[i] = p.HMGet(ctx, s.RecordKey(l.CustomerID), fGeneration, fState, fLastError, fAccessExp, fLeaseUntil)
		}
		return nil
	})
	for i, c := range cmds {
		vals, err := c.Result()
		if err != nil {
			return unavailable("list", err)
		}
		str := func(j int) string { v, _ := vals[j].(string); return v }
		l := &out[i]
		if str(0) == "" {
			continue // gone, or a tombstone
		}
		e := Entry{Record: &Record{State: State(str(1))}}
		if indexOf(&e) != idx {
			continue // moved to the other index since it was read
		}
		ate, err1 := parseUnixMilli(str(3))
		lx, err2 := parseUnixMilli(str(4))
		if err1 != nil || err2 != nil || !validCode(str(2)) {
			continue // damaged: Get reports it
		}
		l.Found, l.State, l.LastError, l.AccessTokenExpiry, l.LeaseUntil = true, e.Record.State, str(2), ate, lx
	}
	return nil
}
