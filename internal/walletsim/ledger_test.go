package walletsim

import (
	"reflect"
	"testing"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// The ledger tells a re-presentation after an unknown outcome (a lost
// rotation) from one after a delivered answer (an S pair lost).
func TestLedger(t *testing.T) {
	var g ledger
	// r1: S delivered; presented again: USED after a delivered S.
	g.presented("r1", "c1", wallet.CodeSuccess)
	g.answered("r1", wallet.CodeSuccess, true)
	g.presented("r1", "c1", wallet.CodeUsedRefreshToken)
	g.answered("r1", wallet.CodeUsedRefreshToken, true)
	// r2: S dropped; presented again: a lost rotation, after an unknown outcome.
	g.presented("r2", "c2", wallet.CodeSuccess)
	g.answered("r2", wallet.CodeSuccess, false)
	g.presented("r2", "c2", wallet.CodeUsedRefreshToken)
	// r3: two presentations at once.
	g.presented("r3", "c3", wallet.CodeSuccess)
	g.presented("r3", "c3", wallet.CodeUsedRefreshToken)
	got := g.snapshot()
	if len(got.AfterKnown) != 1 || got.AfterKnown[0].CustomerID != "c1" {
		t.Fatalf("re-presentations after a known outcome %+v, want c1's", got.AfterKnown)
	}
	got.AfterKnown = nil
	want := Ledger{Presentations: 6, Represented: 3, RepresentedAfterKnown: 1, Overlapping: 1, Undelivered: 1,
		LostRotations: 2, SPairsLost: 1}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ledger %+v, want %+v", got, want)
	}
}
