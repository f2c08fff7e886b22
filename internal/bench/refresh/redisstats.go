package main

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenproxy/tokenproxy/internal/proc"
)

// snapshot is a reading of Redis's and the replicas' counters, to take
// differences between two moments of the run.
type snapshot struct {
	at         time.Time
	redisCPU   float64          // INFO cpu: used_cpu_sys + used_cpu_user (s)
	calls      map[string]int64 // INFO commandstats: command -> calls (commands run by scripts included)
	usedMemory int64            // INFO memory: used_memory (bytes)
	proxyCPU   float64          // the replicas' /proc utime+stime (s)
	refreshes  int64            // walletsim's REFRESH_TOKEN calls
}

// snap reads the counters; fields it cannot read stay zero.
func (b *bench) snap(ctx context.Context, rdb *redis.Client) snapshot {
	s := snapshot{at: time.Now(), calls: map[string]int64{}}
	if info, err := rdb.Info(ctx, "cpu", "commandstats", "memory").Result(); err == nil {
		sys, _ := strconv.ParseFloat(infoField(info, "used_cpu_sys"), 64)
		user, _ := strconv.ParseFloat(infoField(info, "used_cpu_user"), 64)
		s.redisCPU = sys + user
		s.usedMemory, _ = strconv.ParseInt(infoField(info, "used_memory"), 10, 64)
		for _, line := range strings.Split(info, "\n") {
			// cmdstat_evalsha:calls=12,usec=...
			rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_")
			if !ok {
				continue
			}
			name, stats, _ := strings.Cut(rest, ":")
			for _, kv := range strings.Split(stats, ",") {
				if v, ok := strings.CutPrefix(kv, "calls="); ok {
					s.calls[name], _ = strconv.ParseInt(v, 10, 64)
				}
			}
		}
	}
	for _, r := range b.replicas {
		cpu, _ := proc.CPUSeconds(r.p.PID())
		s.proxyCPU += cpu
	}
	var st simStats
	if err := b.get(ctx, b.simURL+"/sim/stats", &st); err == nil {
		s.refreshes = st.refreshCalls()
	}
	return s
}

// delta is what happened between two snapshots.
type delta struct {
	span      time.Duration
	redisCPU  float64
	proxyCPU  float64
	calls     map[string]int64
	total     int64
	refreshes int64
}

func (a snapshot) to(b snapshot) delta {
	d := delta{span: b.at.Sub(a.at), redisCPU: b.redisCPU - a.redisCPU, proxyCPU: b.proxyCPU - a.proxyCPU,
		calls: map[string]int64{}, refreshes: b.refreshes - a.refreshes}
	for k, v := range b.calls {
		if n := v - a.calls[k]; n > 0 {
			d.calls[k] = n
			d.total += n
		}
	}
	return d
}

// perRefresh describes a delta per refresh: Redis CPU, tokenproxy CPU,
// Redis commands (by command).
func (d delta) perRefresh() string {
	if d.refreshes <= 0 {
		return "no refresh in the span"
	}
	n := float64(d.refreshes)
	return fmt.Sprintf("%d refreshes in %s: Redis CPU %.3f ms, tokenproxy CPU %.3f ms, Redis commands %.1f (%s) per refresh",
		d.refreshes, round(d.span), 1000*d.redisCPU/n, 1000*d.proxyCPU/n, float64(d.total)/n, d.byCommand(n))
}

// byCommand lists the commands, most frequent first, divided by n.
func (d delta) byCommand(n float64) string {
	type kv struct {
		k string
		v int64
	}
	var all []kv
	for k, v := range d.calls {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || all[i].v == all[j].v && all[i].k < all[j].k })
	var parts []string
	for _, e := range all {
		parts = append(parts, fmt.Sprintf("%s %.2f", e.k, float64(e.v)/n))
	}
	return strings.Join(parts, ", ")
}

// memorySample is MEMORY USAGE of a few record hashes, their encoding,
// and the schedule's share per customer (every bucket's sorted set).
func (b *bench) memorySample(ctx context.Context, rdb *redis.Client, customers int) string {
	var recs []string
	var cursor uint64
	for len(recs) < 5 {
		keys, next, err := rdb.Scan(ctx, cursor, "*:rec:*", 100).Result()
		if err != nil {
			return "? (" + err.Error() + ")"
		}
		recs = append(recs, keys...)
		if cursor = next; cursor == 0 {
			break
		}
	}
	if len(recs) > 5 {
		recs = recs[:5]
	}
	var sum int64
	enc := ""
	fields := int64(0)
	for _, k := range recs {
		n, _ := rdb.MemoryUsage(ctx, k, 0).Result()
		sum += n
		enc, _ = rdb.ObjectEncoding(ctx, k).Result()
		fields, _ = rdb.HLen(ctx, k).Result()
	}
	var due int64
	dueKeys := 0
	cursor = 0
	for {
		keys, next, err := rdb.Scan(ctx, cursor, "*}:due", 1000).Result()
		if err != nil {
			break
		}
		for _, k := range keys {
			n, _ := rdb.MemoryUsage(ctx, k, 0).Result()
			due += n
			dueKeys++
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	if len(recs) == 0 {
		return "no record found"
	}
	return fmt.Sprintf("record hash %d B (MEMORY USAGE, mean of %d; %s, %d fields); schedule %d B per customer (%d due sorted sets, %d B)",
		sum/int64(len(recs)), len(recs), enc, fields, due/int64(max(customers, 1)), dueKeys, due)
}
