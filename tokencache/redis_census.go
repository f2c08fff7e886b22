package tokencache

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The census sets (see keys.go) let Census count customers by state with
// one script, whatever their number: each write that lands updates them
// from Go (afterWrite), and Census cleans out the records Redis forgot by
// their TTL (the "gone" set) before counting.

// censusState is what the census sets hold of one entry.
type censusState struct {
	active, reauth bool
	at, lease      int64 // access token expiry, lease end (Unix ms; 0: none)
	gone           int64 // when the record is forgotten (Unix ms; 0: never)
}

func censusOf(e *Entry) censusState {
	var c censusState
	if e == nil || e.Record == nil {
		return c
	}
	if e.Record.State == StateReauthorizationRequired {
		c.reauth = true
	} else {
		c.active, c.at = true, e.Record.AccessTokenExpiry.UnixMilli()
	}
	if !e.Lease.Until.IsZero() {
		c.lease = e.Lease.Until.UnixMilli()
	}
	if !e.Expires.IsZero() {
		c.gone = e.Expires.UnixMilli()
	}
	return c
}

// censusOps are the census writes of a write from cur to next: every set
// when the record was written or went (so that a set an earlier write
// missed is put right by the next), else the lease when it changed.
func (s *Redis) censusOps(ctx context.Context, id string, cur, next *Entry) []func(p redis.Pipeliner) {
	was, now := censusOf(cur), censusOf(next)
	whole := recordWritten(cur, next) || (cur.Record != nil) != (next.Record != nil)
	if !whole && was.lease == now.lease {
		return nil
	}
	var ops []func(p redis.Pipeliner)
	set := func(kind string, in bool, score int64) {
		key := s.censusKey(kind)
		ops = append(ops, func(p redis.Pipeliner) {
			if in {
				p.ZAdd(ctx, key, redis.Z{Score: float64(score), Member: id})
			} else {
				p.ZRem(ctx, key, id)
			}
		})
	}
	set("lease", now.lease != 0, now.lease)
	if whole {
		set("at", now.active, now.at)
		set("ra", now.reauth, 0)
		set("gone", now.gone != 0, now.gone)
	}
	return ops
}

// censusScript drops the customers whose records Redis forgot and leases
// long over, then counts, by the server's clock.
//
//	KEYS:  at, ra, lease, gone
//	reply: {valid, expired, refreshing, reauthorization required}
//
// Refreshing counts the active customers with a live lease (at most 1000
// looked at); they are taken out of valid or expired by their token.
var censusScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local snow = string.format('%d', now)
local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', snow, 'LIMIT', '0', '1000')
if #gone > 0 then
  for i = 1, 4 do redis.call('ZREM', KEYS[i], unpack(gone)) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%d', now - 3600000))
local leased = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. snow, '+inf', 'LIMIT', '0', '1000')
local valid = redis.call('ZCOUNT', KEYS[1], '(' .. snow, '+inf')
local active = redis.call('ZCARD', KEYS[1])
local reauth = redis.call('ZCARD', KEYS[2])
local refreshing, leasedValid = 0, 0
if #leased > 0 then
  local at = redis.call('ZMSCORE', KEYS[1], unpack(leased))
  for i = 1, #leased do
    if at[i] then
      refreshing = refreshing + 1
      if tonumber(at[i]) > now then leasedValid = leasedValid + 1 end
    end
  end
end
return {valid - leasedValid, active - valid - (refreshing - leasedValid), refreshing, reauth}
`)

// Census counts the customers by state; see Store.Census. Cost: one
// script of about eight commands, whatever the number of customers. The
// counts are those of the census sets, which every write of this release
// keeps (records written by a release without them are counted from their
// next write on; Backfill counts them at once).
func (s *Redis) Census(ctx context.Context) (Census, error) {
	keys := []string{s.censusKey("at"), s.censusKey("ra"), s.censusKey("lease"), s.censusKey("gone")}
	reply, err := censusScript.Run(ctx, s.client, keys).Int64Slice()
	if err != nil {
		return Census{}, unavailable("census", err)
	}
	if len(reply) != 4 {
		return Census{}, fmt.Errorf("census: unexpected script reply of %d values", len(reply))
	}
	return Census{Valid: int(reply[0]), Expired: int(reply[1]), Refreshing: int(reply[2]), ReauthorizationRequired: int(reply[3])}, nil
}

// backfillBatch is how many records Backfill reads per round trip.
const backfillBatch = 1000

// Backfill enters every stored record in the census sets, for records
// written before the sets existed: a SCAN of the keyspace of every master
// and one HMGET per record (about records/1000 round trips). A record
// written meanwhile may be entered as it was; its next write corrects it.
// Run it once per store (tokenproxy does, under a lease), not per count.
func (s *Redis) Backfill(ctx context.Context) error {
	each := func(ctx context.Context, node redis.Cmdable) error { return s.backfillNode(ctx, node) }
	var err error
	switch c := s.client.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return each(ctx, node) })
	case *redis.Ring:
		err = c.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error { return each(ctx, node) })
	default:
		err = each(ctx, s.client)
	}
	if err != nil {
		return unavailable("census backfill", err)
	}
	return nil
}

func (s *Redis) backfillNode(ctx context.Context, node redis.Cmdable) error {
	pattern := globEscape(s.prefix) + "{b*}:rec:*"
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		cmds := make([]*redis.SliceCmd, len(batch))
		ttls := make([]*redis.DurationCmd, len(batch))
		_, err := node.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, key := range batch {
				cmds[i] = p.HMGet(ctx, key, fGeneration, fState, fAccessExp, fLeaseUntil)
				ttls[i] = p.PTTL(ctx, key)
			}
			return nil
		})
		if err != nil {
			return err
		}
		now := time.Now()
		var ops []func(p redis.Pipeliner)
		for i, cmd := range cmds {
			v := cmd.Val()
			if len(v) < 4 || v[0] == nil {
				continue // forgotten since the scan, or a tombstone
			}
			_, id, _ := s.parseRecordKey(batch[i])
			str := func(i int) string { x, _ := v[i].(string); return x }
			exp, _ := parseUnixMilli(str(2))
			until, _ := parseUnixMilli(str(3))
			e := &Entry{Record: &Record{State: State(str(1)), AccessTokenExpiry: exp}, Lease: Hold{Until: until}}
			if d := ttls[i].Val(); d > 0 {
				e.Expires = now.Add(d)
			}
			ops = append(ops, s.censusOps(ctx, id, &Entry{}, e)...)
		}
		batch = batch[:0]
		_, err = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, op := range ops {
				op(p)
			}
			return nil
		})
		return err
	}
	var cursor uint64
	for {
		keys, next, err := node.Scan(ctx, cursor, pattern, backfillBatch).Result()
		if err != nil {
			return err
		}
		for _, k := range keys {
			if _, _, ok := s.parseRecordKey(k); ok {
				batch = append(batch, k)
			}
		}
		if len(batch) >= backfillBatch {
			if err := flush(); err != nil {
				return err
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	return flush()
}

// censusBuiltKey marks a store whose census sets were backfilled (the
// value names who did it).
func (s *Redis) censusBuiltKey() string { return s.censusKey("built") }

// BackfillOnce runs Backfill unless some process has (or is running it):
// the first to SET the marker does it. owner names the process.
func (s *Redis) BackfillOnce(ctx context.Context, owner string) (ran bool, err error) {
	ok, err := s.client.SetNX(ctx, s.censusBuiltKey(), owner+" "+strconv.FormatInt(time.Now().UnixMilli(), 10), 0).Result()
	if err != nil {
		return false, unavailable("census backfill", err)
	}
	if !ok {
		return false, nil
	}
	if err := s.Backfill(ctx); err != nil {
		// Let another process try again.
		_ = s.client.Del(context.WithoutCancel(ctx), s.censusBuiltKey()).Err()
		return true, err
	}
	return true, nil
}
