package tokencache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The schedule hint and the census sets: keys outside the bucket slots,
// written from Go after a record's write landed (never by casScript, which
// cannot reach another Cluster slot), so that an idle replica finds the
// buckets with work and counts customers by state with a handful of
// commands instead of visiting every bucket and record.
//
// The hint, <prefix>sched, scores each bucket by the earliest NextRefresh
// it may hold. Its one invariant: for every schedule entry, the bucket's
// hint is at or before the entry's score, or a sweep that removed the
// hint reads the bucket after the entry was written. It holds because
//   - a write that schedules a customer at a new time lowers the hint
//     afterwards (ZADD LT, which also adds a missing one);
//   - a sweep never raises a hint in place: it removes the bucket's hint
//     first (ZREM), then reads the bucket, then lowers the hint to the
//     earliest entry it read (ZADD LT). A write that lands before the read
//     is seen by it; one after it lowers the hint itself.
//
// Only lowering happens concurrently, so any order of writers and
// sweepers, on any replica, keeps it. What breaks it is a process dying
// (or the network failing) between a write and its hint, or between a
// sweep's ZREM and its ZADD: the slow full check (CheckHints) finds such a
// bucket within one round over all buckets.
//
// The census sets follow each write's record state the same way (see
// censusOps); they are as exact as the writes that reached them.

// DueHints is implemented by stores that keep a hint of which schedule
// buckets may have work, so that a scheduler reads the hint instead of
// every bucket (the Redis store; see redis_hint.go for the invariant).
type DueHints interface {
	// HintedBuckets returns up to limit buckets whose hint is at or before
	// now (this process's clock), earliest first.
	HintedBuckets(ctx context.Context, now time.Time, limit int) ([]int, error)
	// SweepDue is Due over the buckets, moving each bucket's hint to its
	// earliest entry (removing it when the bucket is empty).
	SweepDue(ctx context.Context, buckets []int, limit int) ([]DueEntry, error)
	// CheckHints lowers the hint of each bucket whose earliest entry is
	// before it (or that has none): the safety net for hints lost.
	CheckHints(ctx context.Context, buckets []int) error
	// HintsExist reports whether any hint exists (none: a new store, or
	// one written only by releases without hints).
	HintsExist(ctx context.Context) (bool, error)
}

var _ DueHints = (*Redis)(nil)

// followUpTimeout bounds the follow-up writes of one landed write.
const followUpTimeout = 2 * time.Second

// afterWrite sends the follow-ups of a write that landed (cur: the entry
// read, next: the one written): the schedule hint when the customer was
// scheduled at a new time, and the census sets where its state changed.
// Best effort, in one pipeline: a failure leaves a hint for CheckHints to
// find and a census entry for the customer's next write to correct.
func (s *Redis) afterWrite(ctx context.Context, customerID string, cur, next *Entry) {
	var ops []func(p redis.Pipeliner)
	if nr := dueScore(next); nr != "" && nr != dueScore(cur) {
		ms, _ := strconv.ParseInt(nr, 10, 64)
		bucket := strconv.Itoa(s.BucketOf(customerID))
		ops = append(ops, func(p redis.Pipeliner) {
			p.ZAddLT(ctx, s.SchedKey(), redis.Z{Score: float64(ms), Member: bucket})
		})
	}
	ops = append(ops, s.censusOps(ctx, customerID, cur, next)...)
	if len(ops) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), followUpTimeout)
	defer cancel()
	_, _ = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, op := range ops {
			op(p)
		}
		return nil
	})
}

// HintedBuckets reads the hint: one ZRANGEBYSCORE; see DueHints.
func (s *Redis) HintedBuckets(ctx context.Context, now time.Time, limit int) ([]int, error) {
	if limit <= 0 {
		return nil, nil
	}
	ids, err := s.client.ZRangeByScore(ctx, s.SchedKey(), &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(now.UnixMilli(), 10), Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, unavailable("read schedule hint", err)
	}
	out := make([]int, 0, len(ids))
	for _, id := range ids {
		if b, err := strconv.Atoi(id); err == nil && b >= 0 && b < s.buckets {
			out = append(out, b)
		}
	}
	return out, nil
}

// HintsExist: one EXISTS; see DueHints.
func (s *Redis) HintsExist(ctx context.Context) (bool, error) {
	n, err := s.client.Exists(ctx, s.SchedKey()).Result()
	if err != nil {
		return false, unavailable("read schedule hint", err)
	}
	return n > 0, nil
}

// sweepScript lists a bucket's due customers by the server's clock, and
// its earliest entry.
//
//	KEYS:  bucket schedule
//	ARGV:  limit
//	reply: {{customer id, score, ...}, {customer id, score} or {}}
var sweepScript = redis.NewScript(`
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', '0', ARGV[1])
if #due > 0 then return {due, {due[1], due[2]}} end
return {due, redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')}
`)

// SweepDue lists the buckets' due customers and moves their hints; see
// DueHints and the invariant above. Commands: one ZREM, one script per
// bucket (a pipeline: one round trip per master), one ZADD.
func (s *Redis) SweepDue(ctx context.Context, buckets []int, limit int) ([]DueEntry, error) {
	const op = "sweep due"
	if err := checkBuckets(buckets, s.buckets); err != nil {
		return nil, err
	}
	if limit <= 0 || len(buckets) == 0 {
		return nil, nil
	}
	members := make([]any, len(buckets))
	for i, b := range buckets {
		members[i] = strconv.Itoa(b)
	}
	if err := s.client.ZRem(ctx, s.SchedKey(), members...).Err(); err != nil {
		return nil, unavailable(op, err)
	}
	cmds := make([]*redis.Cmd, len(buckets))
	run := func(idx []int, eval bool) {
		// Errors are read from each command.
		_, _ = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range idx {
				keys := []string{s.DueKey(buckets[i])}
				if eval {
					cmds[i] = sweepScript.Eval(ctx, p, keys, limit)
				} else {
					cmds[i] = sweepScript.EvalSha(ctx, p, keys, limit)
				}
			}
			return nil
		})
	}
	all := make([]int, len(buckets))
	for i := range all {
		all[i] = i
	}
	run(all, false)
	var missing []int
	for i, c := range cmds {
		if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		run(missing, true)
	}
	var (
		out   []DueEntry
		hints []redis.Z
		first error
	)
	for i, c := range cmds {
		due, earliest, err := parseSweep(c)
		if err != nil {
			// Not read: the hint comes back as due now, so that the bucket
			// is read again.
			first = cmp(first, err)
			hints = append(hints, redis.Z{Score: float64(time.Now().UnixMilli()), Member: members[i]})
			continue
		}
		out = append(out, due...)
		if !earliest.IsZero() {
			hints = append(hints, redis.Z{Score: float64(earliest.UnixMilli()), Member: members[i]})
		}
	}
	if len(hints) > 0 {
		// Even when the caller gives up now: a hint removed above and not
		// put back waits for the full check.
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), followUpTimeout)
		err := s.client.ZAddLT(hctx, s.SchedKey(), hints...).Err()
		cancel()
		if err != nil {
			first = cmp(first, err)
		}
	}
	if first != nil {
		return nil, unavailable(op, first)
	}
	return mergeDue(out, limit), nil
}

func cmp(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// parseSweep reads sweepScript's reply: the due entries and the earliest
// entry's time (zero: the bucket is empty).
func parseSweep(c *redis.Cmd) (due []DueEntry, earliest time.Time, err error) {
	reply, err := c.Result()
	if err != nil {
		return nil, time.Time{}, err
	}
	parts, ok := reply.([]any)
	if !ok || len(parts) != 2 {
		return nil, time.Time{}, fmt.Errorf("unexpected sweep reply %T", reply)
	}
	list, ok1 := parts[0].([]any)
	first, ok2 := parts[1].([]any)
	if !ok1 || !ok2 {
		return nil, time.Time{}, errors.New("unexpected sweep reply")
	}
	due, err = parseScored(list)
	if err != nil {
		return nil, time.Time{}, err
	}
	f, err := parseScored(first)
	if err != nil {
		return nil, time.Time{}, err
	}
	if len(f) > 0 {
		earliest = f[0].Due
	}
	return due, earliest, nil
}

// parseScored reads {member, score, ...} as due entries.
func parseScored(r []any) ([]DueEntry, error) {
	var out []DueEntry
	for j := 0; j+1 < len(r); j += 2 {
		id, _ := r[j].(string)
		score, _ := r[j+1].(string)
		ms, err := strconv.ParseFloat(score, 64)
		if err != nil {
			return nil, errors.New("malformed score")
		}
		out = append(out, DueEntry{CustomerID: id, Due: time.UnixMilli(int64(ms)).UTC()})
	}
	return out, nil
}

// CheckHints lowers the hints of buckets whose earliest entry is before
// them; see DueHints. Commands: one ZMSCORE, one ZRANGE per bucket (a
// pipeline), and one ZADD when a hint was missing or late.
func (s *Redis) CheckHints(ctx context.Context, buckets []int) error {
	const op = "check schedule hints"
	if err := checkBuckets(buckets, s.buckets); err != nil {
		return err
	}
	if len(buckets) == 0 {
		return nil
	}
	members := make([]string, len(buckets))
	for i, b := range buckets {
		members[i] = strconv.Itoa(b)
	}
	hints, err := s.client.ZMScore(ctx, s.SchedKey(), members...).Result()
	if err != nil {
		return unavailable(op, err)
	}
	cmds := make([]*redis.ZSliceCmd, len(buckets))
	_, _ = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, b := range buckets {
			cmds[i] = p.ZRangeWithScores(ctx, s.DueKey(b), 0, 0)
		}
		return nil
	})
	var lower []redis.Z
	for i, c := range cmds {
		z, err := c.Result()
		if err != nil {
			return unavailable(op, err)
		}
		// ZMSCORE answers 0 for a missing member; a real hint of 0 ms is
		// at or before every entry anyway.
		if len(z) > 0 && (hints[i] == 0 || z[0].Score < hints[i]) {
			lower = append(lower, redis.Z{Score: z[0].Score, Member: members[i]})
		}
	}
	if len(lower) > 0 {
		if err := s.client.ZAddLT(ctx, s.SchedKey(), lower...).Err(); err != nil {
			return unavailable(op, err)
		}
	}
	return nil
}
