package tokencache

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tokenproxy/tokenproxy/internal/testenv"
)

// resendHook makes go-redis send every write script twice, as it does
// when a timeout hid a successful first attempt: the caller sees the
// second attempt's reply.
type resendHook struct{}

func (resendHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (resendHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (resendHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		if len(args) > 1 && (args[0] == "evalsha" || args[0] == "eval") && args[1] == casScript.Hash() {
			if err := next(ctx, cmd); err != nil {
				return err
			}
		}
		return next(ctx, cmd)
	}
}

// TestRedisResentWriteAppliesOnce covers what the public API cannot
// provoke on demand: go-redis resending a write after a timeout that hid a
// successful first attempt. Every step must apply once and report the
// first attempt's result: the resent write finds the version changed, and
// Update recognises its own write on the next read.
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
	// Load the script so that the hook sees EVALSHA with its hash.
	if err := casScript.Load(ctx, client).Err(); err != nil {
		t.Fatal(err)
	}
	client.AddHook(resendHook{})
	rec := &Record{CustomerID: "c1", AccessToken: "a1", RefreshToken: "r1", AccessTokenExpiry: time.Now().Add(time.Hour), ExchangePath: "/v1/authorizations/applyToken"}
	gen, err := Put(ctx, s, rec)
	if err != nil || gen != 1 {
		t.Fatalf("resent put: generation %d, %v; want 1", gen, err)
	}
	if gen, err = CompareAndSwap(ctx, s, rec, gen); err != nil || gen != 2 {
		t.Fatalf("resent compare-and-swap: generation %d, %v; want 2 (not a conflict with itself)", gen, err)
	}
	for _, kind := range []OutcomeKind{Unknown, Refused, Refreshed} {
		t.Run(kind.String(), func(t *testing.T) {
			l, err := Claim(ctx, s, "c1", gen, "owner", time.Minute, true)
			if err != nil {
				t.Fatalf("resent claim: %v", err)
			}
			// Another claim is still refused.
			if _, err := Claim(ctx, s, "c1", gen, "owner", time.Minute, true); !errors.Is(err, ErrLeaseHeld) {
				t.Fatalf("another claim: %v, want ErrLeaseHeld", err)
			}
			o := Outcome{Kind: kind, Code: "CODE"}
			if kind == Refreshed {
				o = Outcome{Kind: kind, Record: &Record{AccessToken: "a2", RefreshToken: "r2", AccessTokenExpiry: time.Now().Add(time.Hour)}}
			}
			g, err := Complete(ctx, s, l, o)
			if err != nil {
				t.Fatalf("resent complete: %v", err)
			}
			got, err := s.Get(ctx, "c1")
			if err != nil {
				t.Fatal(err)
			}
			if g != gen+1 || got.Generation != g {
				t.Fatalf("resent complete: generation %d, stored %d, want %d", g, got.Generation, gen+1)
			}
			if kind != Refreshed && got.Failures != 1 {
				t.Fatalf("failures %d after one %v applied twice?", got.Failures, kind)
			}
			if kind == Refreshed && got.Failures != 0 {
				t.Fatalf("failures %d after Refreshed", got.Failures)
			}
			gen = g
			if kind == Unknown {
				// Reset the failure count for the next kind.
				l, err := Claim(ctx, s, "c1", gen, "owner", time.Minute, true)
				if err != nil {
					t.Fatal(err)
				}
				if gen, err = Complete(ctx, s, l, Outcome{Kind: Refreshed, Record: rec}); err != nil {
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
