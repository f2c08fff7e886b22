package tokencache

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tokenproxy/tokenproxy/internal/testenv"
)

// TestRedisResentWriteAppliesOnce covers what the public API cannot
// provoke on demand: go-redis resending a write script after a timeout
// that hid a successful first attempt. The resent write must report the
// first attempt's result, not apply again, and a resent CAS must not see
// its own write as a conflict.
func TestRedisResentWriteAppliesOnce(t *testing.T) {
	r := testenv.StartRedis(t)
	client := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { client.Close() })
	kr, err := ParseKeyring("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewRedis(RedisConfig{Client: client, Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	rec := &Record{CustomerID: "c1", AccessToken: "a1", RefreshToken: "r1", AccessTokenExpiry: time.Now().Add(time.Hour), ExchangePath: "/v1/authorizations/applyToken"}

	tests := []struct {
		name   string
		mode   string
		expect func(current int64) int64
	}{
		{"put", "put", func(int64) int64 { return 0 }},
		{"compare and swap", "cas", func(current int64) int64 { return current }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cur, err := s.Put(ctx, rec)
			if err != nil {
				t.Fatal(err)
			}
			first, err := s.writeOp(ctx, "test", rec, tc.mode, tc.expect(cur), "op-"+tc.mode)
			if err != nil {
				t.Fatalf("first attempt: %v", err)
			}
			again, err := s.writeOp(ctx, "test", rec, tc.mode, tc.expect(cur), "op-"+tc.mode)
			if err != nil {
				t.Fatalf("resent attempt: %v", err)
			}
			if again != first {
				t.Fatalf("resent write got generation %d, first %d", again, first)
			}
			got, err := s.Get(ctx, "c1")
			if err != nil {
				t.Fatal(err)
			}
			if got.Generation != first {
				t.Fatalf("stored generation %d, want %d (applied once)", got.Generation, first)
			}
			// A different write with the same stale generation still conflicts.
			if tc.mode == "cas" {
				if _, err := s.CompareAndSwap(ctx, rec, cur); !errors.Is(err, ErrConflict) {
					t.Fatalf("another CAS with the stale generation: %v, want ErrConflict", err)
				}
			}
		})
	}
}

// TestRedisResentProtocolAppliesOnce: a Claim or Complete that go-redis
// resends after a lost reply reports its first result. A resent Claim must
// not find its own lease "held", a resent Refreshed not call its own new
// token a conflict.
func TestRedisResentProtocolAppliesOnce(t *testing.T) {
	r := testenv.StartRedis(t)
	client := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { client.Close() })
	kr, err := ParseKeyring("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewRedis(RedisConfig{Client: client, Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	rec := &Record{CustomerID: "c1", AccessToken: "a1", RefreshToken: "r1", AccessTokenExpiry: time.Now().Add(time.Hour), ExchangePath: "/v1/authorizations/applyToken"}
	gen, err := s.Put(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}

	for _, kind := range []OutcomeKind{Unknown, Refused, Refreshed} {
		t.Run(kind.String(), func(t *testing.T) {
			first, err := s.claimOp(ctx, "c1", gen, "owner", time.Minute, false, "claim-"+kind.String())
			if err != nil {
				t.Fatalf("claim: %v", err)
			}
			again, err := s.claimOp(ctx, "c1", gen, "owner", time.Minute, false, "claim-"+kind.String())
			if err != nil {
				t.Fatalf("resent claim: %v", err)
			}
			if again.Fence != first.Fence || again.Attempt != first.Attempt || again.Represent != first.Represent ||
				again.RefreshTokenHash != first.RefreshTokenHash || again.Generation != first.Generation {
				t.Fatalf("resent claim %+v, first %+v", again, first)
			}
			// Another claim is still refused.
			if _, err := s.Claim(ctx, "c1", gen, "owner", time.Minute, true); !errors.Is(err, ErrLeaseHeld) {
				t.Fatalf("another claim: %v, want ErrLeaseHeld", err)
			}

			o := Outcome{Kind: kind, Code: "CODE", Backoff: 0}
			if kind == Refreshed {
				o = Outcome{Kind: kind, Record: &Record{AccessToken: "a2", RefreshToken: "r2", AccessTokenExpiry: time.Now().Add(time.Hour)}}
			}
			g1, err := s.completeOp(ctx, first, o, "complete-"+kind.String())
			if err != nil {
				t.Fatalf("complete: %v", err)
			}
			g2, err := s.completeOp(ctx, first, o, "complete-"+kind.String())
			if err != nil {
				t.Fatalf("resent complete: %v", err)
			}
			got, err := s.Get(ctx, "c1")
			if err != nil {
				t.Fatal(err)
			}
			if g2 != g1 || got.Generation != g1 {
				t.Fatalf("resent complete: generation %d, first %d, stored %d", g2, g1, got.Generation)
			}
			if kind != Refreshed && got.Failures != 1 {
				t.Fatalf("failures %d after one %v applied twice?", got.Failures, kind)
			}
			gen = g1
			if kind == Unknown {
				// Reset the failure count for the next kind.
				l, err := s.Claim(ctx, "c1", gen, "owner", time.Minute, true)
				if err != nil {
					t.Fatal(err)
				}
				if gen, err = s.Complete(ctx, l, Outcome{Kind: Refreshed, Record: rec}); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestWaitTimeout(t *testing.T) {
	bg := context.Background()
	short, cancel1 := context.WithTimeout(bg, 200*time.Millisecond)
	defer cancel1()
	// 1.2 s: WAIT gets 3/4 of what is left (between the margin and the
	// cap) for as long as more than 600 ms are left, so the bounds below
	// hold however late under load waitTimeout runs, up to 600 ms.
	medium, cancel4 := context.WithTimeout(bg, 1200*time.Millisecond)
	defer cancel4()
	long, cancel2 := context.WithTimeout(bg, time.Minute)
	defer cancel2()
	past, cancel3 := context.WithDeadline(bg, time.Now().Add(-time.Second))
	defer cancel3()
	tests := []struct {
		name     string
		ctx      context.Context
		min, max time.Duration
	}{
		{"no deadline: the cap", bg, maxWaitTimeout, maxWaitTimeout},
		{"short deadline: minus the margin", short, time.Millisecond, 200*time.Millisecond - waitMargin},
		{"medium deadline: 3/4 of it", medium, 450 * time.Millisecond, 900 * time.Millisecond},
		{"long deadline: the cap", long, maxWaitTimeout, maxWaitTimeout},
		{"deadline passed: never 0", past, time.Millisecond, time.Millisecond},
	}
	for _, tc := range tests {
		if got := waitTimeout(tc.ctx); got < tc.min || got > tc.max {
			t.Errorf("%s: %v, want in [%v, %v]", tc.name, got, tc.min, tc.max)
		}
	}
}
