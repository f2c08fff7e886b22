package testenv

import (
	"bufio"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// CommandStats is INFO commandstats: how many times each command ran
// (lower-case names; commands run inside scripts count too, under their
// own names, besides the EVAL/EVALSHA that ran them).
type CommandStats map[string]int64

// Commands reads the server's INFO commandstats through c.
func Commands(t testing.TB, c *redis.Client) CommandStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatalf("INFO commandstats: %v", err)
	}
	out := CommandStats{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		name, rest, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		name, isCmd := strings.CutPrefix(name, "cmdstat_")
		if !ok || !isCmd {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Fatalf("INFO commandstats: %q: %v", sc.Text(), err)
				}
				out[name] = n
			}
		}
	}
	return out
}

// Since is what ran between before and s, by command, leaving out the
// INFO calls that read them; only commands that ran are listed.
func (s CommandStats) Since(before CommandStats) CommandStats {
	out := CommandStats{}
	for name, n := range s {
		if d := n - before[name]; d > 0 && name != "info" {
			out[name] = d
		}
	}
	return out
}

// Total is the sum over every command.
func (s CommandStats) Total() int64 {
	var n int64
	for _, v := range s {
		n += v
	}
	return n
}
