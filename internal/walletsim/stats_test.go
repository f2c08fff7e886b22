package walletsim

import (
	"net/http"
	"testing"
	"time"
)

// TestRefreshLateness checks the lateness counters: each successful refresh
// is before or after the expiry of the access token it replaces, and the
// worst lateness is kept. Failed presentations count in neither.
func TestRefreshLateness(t *testing.T) {
	h := newHarness(t, nil)
	type lateness struct{ before, after, maxMs int64 }
	check := func(step string, want lateness) {
		t.Helper()
		st := h.srv.Stats()
		if got := (lateness{st.RefreshesBeforeAccessExpiry, st.RefreshesAfterAccessExpiry, st.MaxRefreshLatenessMs}); got != want {
			t.Fatalf("%s: before/after/maxMs %v, want %v", step, got, want)
		}
	}
	login := func(customerID string) tokenBody {
		t.Helper()
		code := h.authCode(map[string]any{"customerId": customerID, "accessTtl": "10m"})
		return h.tokens(h.want(PathApplyTokenV1, map[string]string{"grantType": GrantAuthorizationCode, "authCode": code}, "S SUCCESS"))
	}
	check("start", lateness{})

	// Ahead of expiry, one millisecond before it included.
	early := login("early")
	h.clk.Advance(10*time.Minute - time.Millisecond)
	next := h.tokens(h.want(PathApplyTokenV1, refreshBody(early.RefreshToken), "S SUCCESS"))
	check("refresh 1 ms before expiry", lateness{before: 1})

	// At the millisecond of expiry: late by 0 ms (the token is expired then).
	h.clk.Advance(10 * time.Minute)
	next = h.tokens(h.want(PathApplyTokenV1, refreshBody(next.RefreshToken), "S SUCCESS"))
	check("refresh at expiry", lateness{before: 1, after: 1})

	// 2.5 s late, through v2: the worst so far.
	h.clk.Advance(10*time.Minute + 2500*time.Millisecond)
	next = h.tokens(h.want(PathApplyTokenV2, refreshBody(next.RefreshToken), "S SUCCESS"))
	check("refresh 2.5 s late", lateness{before: 1, after: 2, maxMs: 2500})

	// A lesser lateness does not lower the maximum; the lateness is measured
	// from the replaced token's expiry (the new one lives 10m from its refresh).
	h.clk.Advance(10*time.Minute + 700*time.Millisecond)
	h.want(PathApplyTokenV1, refreshBody(next.RefreshToken), "S SUCCESS")
	check("refresh 0.7 s late", lateness{before: 1, after: 3, maxMs: 2500})

	// Refused presentations count in neither: used, unknown, expired refresh tokens.
	h.want(PathApplyTokenV1, refreshBody(early.RefreshToken), "F USED_REFRESH_TOKEN")
	h.want(PathApplyTokenV1, refreshBody("unknownRefreshToken"), "F INVALID_REFRESH_TOKEN")
	short := h.authCode(map[string]any{"customerId": "short", "accessTtl": "1m", "refreshTtl": "2m"})
	sp := h.tokens(h.want(PathApplyTokenV1, map[string]string{"grantType": GrantAuthorizationCode, "authCode": short}, "S SUCCESS"))
	h.clk.Advance(2 * time.Minute)
	h.want(PathApplyTokenV1, refreshBody(sp.RefreshToken), "F EXPIRED_REFRESH_TOKEN")
	// A faulted call that is not processed counts in neither either.
	h.addFault(map[string]any{"grantType": GrantRefreshToken, "count": 1, "failCode": "UNKNOWN_EXCEPTION", "failRate": 1})
	late := login("late")
	h.clk.Advance(11 * time.Minute)
	if _, err := h.call(PathApplyTokenV1, refreshBody(late.RefreshToken)); err != nil {
		t.Fatalf("faulted refresh: %v", err)
	}
	check("refused and faulted presentations", lateness{before: 1, after: 3, maxMs: 2500})

	// Seeded pairs count like issued ones: a whole minute late is the new worst.
	pairs := h.seed(map[string]any{"count": 2, "accessTtl": "5m", "prefix": "seeded-"})
	h.want(PathApplyTokenV1, refreshBody(pairs[0].RefreshToken), "S SUCCESS")
	h.want(PathApplyTokenV1, refreshBody(late.RefreshToken), "S SUCCESS") // the fault is spent: processed now, 1 min late
	h.clk.Advance(6 * time.Minute)
	h.want(PathApplyTokenV1, refreshBody(pairs[1].RefreshToken), "S SUCCESS")
	check("seeded", lateness{before: 2, after: 5, maxMs: 60_000})

	// The same in GET /sim/stats, beside the contract's fields; DELETE zeroes them.
	var got map[string]any
	if code := h.sim(http.MethodGet, "/sim/stats", nil, &got); code != http.StatusOK {
		t.Fatalf("GET /sim/stats: HTTP %d", code)
	}
	for k, v := range map[string]float64{"refreshesBeforeAccessExpiry": 2, "refreshesAfterAccessExpiry": 5, "maxRefreshLatenessMs": 60_000, "refreshTokensReused": 1} {
		if got[k] != v {
			t.Errorf("/sim/stats %s: %v, want %v", k, got[k], v)
		}
	}
	h.sim(http.MethodDelete, "/sim/stats", nil, nil)
	check("after DELETE", lateness{})
}
