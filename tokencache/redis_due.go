package tokencache

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Redis store's reads across customers (Due, Census) and its watches.

// dueScript lists a bucket's due customers by the server's clock.
//
//	KEYS:  bucket schedule
//	ARGV:  limit
//	reply: {customer id, score, ...}
var dueScript = redis.NewScript(`
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', '0', ARGV[1])
`)

// Due lists the customers due for refresh; see Store.Due.
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
