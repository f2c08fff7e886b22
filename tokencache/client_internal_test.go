package tokencache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tokenproxy/tokenproxy/internal/testenv"
)

// TestNeedsSlotReload: the errors a failover causes make a Cluster client
// re-read its slot map; a command's own errors and a caller giving up do
// not. The Redis replies are real ones.
func TestNeedsSlotReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A cluster node holding no slot answers CLUSTERDOWN.
	noSlots := testenv.StartRedis(t, "--cluster-enabled", "yes").Client(t)
	clusterDown := noSlots.Get(ctx, "k").Err()
	plain := testenv.StartRedis(t).Client(t)
	scriptErr := plain.Eval(ctx, "return redis.error_reply('boom')", nil).Err()
	wrongType := func() error {
		_ = plain.Set(ctx, "s", "v", 0).Err()
		return plain.HGetAll(ctx, "s").Err()
	}()
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}

	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"no error", nil, false},
		{"nil reply", redis.Nil, false},
		{"transaction failed", redis.TxFailedErr, false},
		{"script error", scriptErr, false},
		{"wrong type", wrongType, false},
		{"caller cancelled", fmt.Errorf("get: %w", context.Canceled), false},
		{"too few replicas", fmt.Errorf("put: %w: 0 of 1", errNotReplicated), false},
		{"connection refused", unavailable("get", refused), true},
		{"connection cut", unavailable("get", io.EOF), true},
		{"cut mid-reply", io.ErrUnexpectedEOF, true},
		{"WAIT cut", fmt.Errorf("put: %w: %w", errNotReplicated, io.EOF), true},
		{"CLUSTERDOWN", unavailable("get", clusterDown), true},
	}
	if scriptErr == nil || wrongType == nil || clusterDown == nil {
		t.Fatalf("want Redis errors: script %v, wrong type %v, clusterdown %v", scriptErr, wrongType, clusterDown)
	}
	for _, tc := range tests {
		if got := needsSlotReload(tc.err); got != tc.want {
			t.Errorf("%s (%v): needsSlotReload = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
