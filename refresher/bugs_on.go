//go:build plantbugs

package refresher

import "github.com/tokenproxy/tokenproxy/tokencache"

// planted reports whether tokencache.PlantedBug names bug; plantbugs
// builds only (TestPlantedBugsCaught).
func planted(bug string) bool { return tokencache.PlantedBug == bug }
