//go:build !plantbugs

package tokencache

import "github.com/redis/go-redis/v9"

// plantedScript is s: bugs are planted only in test builds with the
// plantbugs tag (see bugs_on.go), which prove the exactly-once checks can
// fail.
func plantedScript(s *redis.Script) *redis.Script { return s }
