package main

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// censusBackfillTimeout bounds the one-time census backfill.
const censusBackfillTimeout = 10 * time.Minute

// backfillCensus enters the records written before this release's census
// sets into them, once per store (the first replica to start does it):
// without it tokenproxy_tokens would count only customers written since.
// Only the Redis store needs it.
func backfillCensus(ctx context.Context, store tokencache.Store, log *slog.Logger) {
	b, ok := store.(interface {
		BackfillOnce(ctx context.Context, owner string) (bool, error)
	})
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, censusBackfillTimeout)
	defer cancel()
	host, _ := os.Hostname()
	start := time.Now()
	ran, err := b.BackfillOnce(ctx, host)
	switch {
	case err != nil:
		log.Warn("census backfill failed; another replica retries at its start", "err", err)
	case ran:
		log.Info("census backfilled from the stored records", "took", time.Since(start).Round(time.Millisecond))
	}
}
