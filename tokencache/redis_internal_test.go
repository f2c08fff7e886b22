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
	rec := &Record{CustomerID: "c1", AccessToken: "a1", RefreshToken: "r1", AccessTokenExpiry: time.Now().Add(time.Hour)}

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

func TestWaitTimeout(t *testing.T) {
	bg := context.Background()
	short, cancel1 := context.WithTimeout(bg, 200*time.Millisecond)
	defer cancel1()
	medium, cancel4 := context.WithTimeout(bg, time.Second)
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
		{"medium deadline: 3/4 of it", medium, 700 * time.Millisecond, 750 * time.Millisecond},
		{"long deadline: the cap", long, maxWaitTimeout, maxWaitTimeout},
		{"deadline passed: never 0", past, time.Millisecond, time.Millisecond},
	}
	for _, tc := range tests {
		if got := waitTimeout(tc.ctx); got < tc.min || got > tc.max {
			t.Errorf("%s: %v, want in [%v, %v]", tc.name, got, tc.min, tc.max)
		}
	}
}
