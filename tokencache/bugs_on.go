//go:build plantbugs

package tokencache

import (
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// PlantedBug, in builds with the plantbugs tag only, names one known bug to
// plant in the refresh protocol, so that a test can prove its checks catch
// it (refresher's TestPlantedBugsCaught). Empty: none. Set it only while no
// store is in use.
var PlantedBug string

// The bugs planted in the store's scripts.
const (
	// BugCompleteGatedOnLease: Complete refuses to write an outcome once
	// the lease lapsed, so an S pair that came late is thrown away.
	BugCompleteGatedOnLease = "complete-gated-on-lease"
	// BugNoIntent: claims write no intent and outcomes restore none: a
	// re-presentation after an unknown outcome is not recognised, and
	// nothing holds off a second presenter when a lease is lost early.
	BugNoIntent = "no-intent"
	// BugNoTombstoneCheck: Complete writes a refreshed pair even when the
	// customer was deleted meanwhile.
	BugNoTombstoneCheck = "no-tombstone-check"
	// BugRejectedWithoutCheck is planted in package refresher: a rejected
	// access token refreshes whatever is stored, without checking that the
	// store still holds that token.
	BugRejectedWithoutCheck = "rejected-without-check"
)

var (
	completeGatedOnLease = redis.NewScript(mustReplace(completeSource,
		`if (f[3] or '') ~= ARGV[4] then return {'conflict'} end`,
		`if (f[3] or '') ~= ARGV[4] then return {'conflict'} end
if redis.call('GET', KEYS[4]) ~= ARGV[5] then return {'conflict'} end`))
	claimNoIntent = redis.NewScript(mustReplace(mustReplace(claimSource,
		`redis.call('HSET', KEYS[1], 'fence', fs, 'ih', rth,`,
		`redis.call('HSET', KEYS[1], 'fence', fs, 'ihx', rth,`),
		`if ia > 0 and f[6] == rth then ia = ia + 1 else ia = 1 end`,
		`ia = 1`))
	completeNoIntent = redis.NewScript(mustReplace(completeSource,
		`if kind == 'unknown' and not (ia > 0 and f[6] == ARGV[4]) then`,
		`if false then`))
	completeNoTombstoneCheck = redis.NewScript(mustReplace(mustReplace(mustReplace(completeSource,
		`if redis.call('EXISTS', KEYS[1]) == 0 then return {'notfound'} end`,
		`if redis.call('EXISTS', KEYS[1]) == 0 and ARGV[2] ~= 'refreshed' then return {'notfound'} end`),
		`if tomb >= cur then return {'notfound'} end`,
		``),
		`if (f[3] or '') ~= ARGV[4] then return {'conflict'} end`,
		`if (f[3] or ARGV[4]) ~= ARGV[4] then return {'conflict'} end`))
)

// plantedScript returns the variant of s with PlantedBug, or s.
func plantedScript(s *redis.Script) *redis.Script {
	switch {
	case PlantedBug == BugCompleteGatedOnLease && s == completeScript:
		return completeGatedOnLease
	case PlantedBug == BugNoIntent && s == claimScript:
		return claimNoIntent
	case PlantedBug == BugNoIntent && s == completeScript:
		return completeNoIntent
	case PlantedBug == BugNoTombstoneCheck && s == completeScript:
		return completeNoTombstoneCheck
	}
	return s
}

// mustReplace replaces old, which must occur exactly once, so that a
// planted bug cannot silently stop applying when a script changes.
func mustReplace(src, old, new string) string {
	if n := strings.Count(src, old); n != 1 {
		panic(fmt.Sprintf("planted bug: %q occurs %d times in the script", old, n))
	}
	return strings.Replace(src, old, new, 1)
}
