//go:build plantbugs

package refresher

import (
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// TestPlantedBugsCaught proves the state-machine checker is not vacuous:
// each known bug, planted alone (build tag plantbugs), must be caught
// within the default number of histories.
//
//	go test -race -tags plantbugs -run TestPlantedBugsCaught ./refresher/
func TestPlantedBugsCaught(t *testing.T) {
	env := newSMEnv(t)
	for _, bug := range []string{
		tokencache.BugCompleteGatedOnLease,
		tokencache.BugNoIntent,
		tokencache.BugRejectedWithoutCheck,
		tokencache.BugNoTombstoneCheck,
	} {
		t.Run(bug, func(t *testing.T) {
			tokencache.PlantedBug = bug
			defer func() { tokencache.PlantedBug = "" }()
			base := uint64(time.Now().UnixNano())
			res := env.runMany(t, base, *smHistories, nil)
			if res.failed == nil {
				t.Fatalf("planted bug %q not caught in %d histories (seeds from %d)", bug, res.histories, base)
			}
			h := res.failed
			t.Logf("caught after %d histories (seed %d): %s", res.histories, h.seed, h.violations[0])
			if *smVerbose {
				t.Logf("%s", h.describe())
			}
		})
	}
}
