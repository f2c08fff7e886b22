package tokencache

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Redis store's refresh plan (see PlanBook). Keys, all under the hash
// tag {plan} (one Cluster slot, outside every bucket; a script may touch
// them together):
//
//	<prefix>{plan}:s:<W>  a hash: slot -> refreshes booked, for the
//	                      planSlotsPerKey slots W*planSlotsPerKey ...; it
//	                      expires planKeyGrace after its last slot
//	<prefix>{plan}:live   a sorted set: owner -> deadline (ms, server clock)
//
// A Book is one script call: one HMGET per 64 slots looked at (one in the
// usual case, where the latest slot has room) and one HINCRBY, plus one
// PEXPIREAT when it opens a slot.

// planSlotsPerKey is how many slots one plan hash holds.
const planSlotsPerKey = 360

// planKeyGrace is how long a plan hash outlives its last slot (its slots
// are in the past by then and no Book asks for them).
const planKeyGrace = time.Hour

// bookScript books one refresh in the latest slot with room.
//
//	KEYS:  the plan hashes of hi's window down to lo's, one per window
//	ARGV:  lo, hi, capacity, slots per key, then each key's PEXPIREAT (ms)
//	reply: {slot, 1 if it had room else 0}
var bookScript = redis.NewScript(`
local lo, hi, cap, per = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local top = math.floor(hi / per)
local function book(s, ok)
  local i = top - math.floor(s / per) + 1
  if redis.call('HINCRBY', KEYS[i], string.format('%d', s), 1) == 1 then
    redis.call('PEXPIREAT', KEYS[i], ARGV[4 + i])
  end
  return {s, ok}
end
local s = hi
while s >= lo do
  local w = math.floor(s / per)
  local n = math.min(64, s - math.max(lo, w * per) + 1)
  local fields = {}
  for j = 1, n do fields[j] = string.format('%d', s - j + 1) end
  local counts = redis.call('HMGET', KEYS[top - w + 1], unpack(fields))
  for j = 1, n do
    if (tonumber(counts[j]) or 0) < cap then
      return book(s - j + 1, 1)
    end
  end
  s = s - n
end
return book(lo, 0)
`)

// beatScript records a heartbeat and counts the live owners by the
// server's clock.
//
//	KEYS:  the live set
//	ARGV:  owner ("" only counts), ttl ms
//	reply: live owners
var beatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
end
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
`)

// PlanKey is the plan hash holding slot.
func (s *Redis) PlanKey(slot int64) string {
	return s.prefix + "{plan}:s:" + strconv.FormatInt(slot/planSlotsPerKey, 10)
}

// LiveKey is the sorted set of the replicas' heartbeats.
func (s *Redis) LiveKey() string { return s.prefix + "{plan}:live" }

// Book books one refresh; see PlanBook. The plan hashes expire as if slot
// s started s*PlanSlot after the Unix epoch, as refresher.Planner numbers
// them.
func (s *Redis) Book(ctx context.Context, lo, hi, capacity int64) (int64, bool, error) {
	if err := checkPlanRange(lo, hi, capacity); err != nil {
		return 0, false, err
	}
	var keys []string
	var args []any
	args = append(args, lo, hi, capacity, planSlotsPerKey)
	for w := hi / planSlotsPerKey; w >= lo/planSlotsPerKey; w-- {
		keys = append(keys, s.PlanKey(w*planSlotsPerKey))
		args = append(args, planKeyExpiry(w))
	}
	reply, err := bookScript.Run(ctx, s.client, keys, args...).Int64Slice()
	if err != nil {
		return 0, false, unavailable("book refresh", err)
	}
	if len(reply) != 2 {
		return 0, false, fmt.Errorf("%w: book refresh: reply of %d values", ErrUnavailable, len(reply))
	}
	return reply[0], reply[1] == 1, nil
}

// PlanSlot is the length of a plan slot as the plan keys' expiry assumes
// it (refresher.Planner uses it too): slot s is [s*PlanSlot, (s+1)*PlanSlot)
// after the Unix epoch.
const PlanSlot = 10 * time.Second

// planKeyExpiry is when the plan hash of window w may go (Unix ms).
func planKeyExpiry(w int64) int64 {
	return (w+1)*planSlotsPerKey*PlanSlot.Milliseconds() + planKeyGrace.Milliseconds()
}

// Beat records a heartbeat and counts the live owners; see PlanBook.
func (s *Redis) Beat(ctx context.Context, owner string, ttl time.Duration) (int, error) {
	n, err := beatScript.Run(ctx, s.client, []string{s.LiveKey()}, owner, max(ttl.Milliseconds(), 1)).Int()
	if err != nil {
		return 0, unavailable("heartbeat", err)
	}
	return n, nil
}
