package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
)

// certTransport trusts walletsim's self-signed certificate.
func certTransport(pemBytes []byte) (*http.Transport, error) {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		return nil, errors.New("no certificate in walletsim's certificate file")
	}
	return &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, MaxIdleConnsPerHost: 8}, nil
}

// row is one variant's medians over the rounds.
type row struct {
	g                 *groupResult
	v                 *variant
	rate, p50, p99    float64 // calls/s, ms, ms
	cpu, beyond       float64 // µs per call
	allocs            float64 // per call
	redis             float64 // commands per call
	redisBy           map[string]float64
	handshakes        float64 // per 1,000 calls
	rssMiB            float64
	ready             time.Duration
	failed, succeeded int
}

func (g *groupResult) row(v *variant) row {
	ss := g.samples[v.name]
	r := row{g: g, v: v, ready: v.ready, rssMiB: float64(g.rssKiB[v.name]) / 1024, redisBy: map[string]float64{}}
	r.rate = median(each(ss, func(s sample) float64 { return s.rate() }))
	r.p50 = median(each(ss, func(s sample) float64 { return s.load.quantile(.5).Seconds() * 1e3 }))
	r.p99 = median(each(ss, func(s sample) float64 { return s.load.quantile(.99).Seconds() * 1e3 }))
	r.cpu = median(each(ss, func(s sample) float64 { return 1e6 * s.cpuPerCall() }))
	r.beyond = median(each(ss, func(s sample) float64 { return 1e6 * (s.cpuPerCall() - s.rsa) }))
	r.allocs = median(each(ss, func(s sample) float64 { return s.mallocs / s.calls() }))
	r.handshakes = median(each(ss, func(s sample) float64 { return 1000 * s.handshakes / s.calls() }))
	r.redis = median(each(ss, func(s sample) float64 {
		var n float64
		for _, c := range s.redisCmds {
			n += c
		}
		return n / s.calls()
	}))
	names := map[string]bool{}
	for _, s := range ss {
		for k := range s.redisCmds {
			names[k] = true
		}
		r.failed += s.load.failed
		r.succeeded += s.load.ok
	}
	for k := range names {
		r.redisBy[k] = median(each(ss, func(s sample) float64 { return s.redisCmds[k] / s.calls() }))
	}
	return r
}

// ratio is the median over the rounds of a per-round ratio of two variants.
func (g *groupResult) ratio(a, b string, f func(sample) float64) (float64, bool) {
	sa, sb := g.samples[a], g.samples[b]
	if len(sa) == 0 || len(sa) != len(sb) {
		return 0, false
	}
	var rs []float64
	for i := range sa {
		if d := f(sb[i]); d != 0 {
			rs = append(rs, f(sa[i])/d)
		}
	}
	return median(rs), len(rs) > 0
}

func (rep *report) print(w io.Writer) {
	c := rep.cfg
	host, _ := os.Hostname()
	fmt.Fprintf(w, "\n## bench-proxy run of %s\n\n", rep.started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "- machine: %s, %d CPUs (%s), %s; %s; %s\n", host, runtime.NumCPU(), cpuModel(), runtime.Version(), orUnknown(rep.version), orUnknown(rep.redis))
	fmt.Fprintf(w, "- command: `go run ./internal/bench/proxy %s`\n", strings.Join(os.Args[1:], " "))
	fmt.Fprintf(w, "- %d callers, %d rounds of %s per phase (after %s of warm-up), wall %s\n",
		c.concurrency, c.rounds, c.duration, c.warmup, rep.ended.Sub(rep.started).Round(time.Second))
	var loads []string
	for _, g := range rep.groups {
		loads = append(loads, g.load...)
	}
	fmt.Fprintf(w, "- load average (1, 5, 15 min) at the start of each round: %s\n\n", strings.Join(loads, "; "))

	fmt.Fprintln(w, "| store | wallet | proxy | calls/s | p50 ms | p99 ms | CPU µs/call | beyond RSA µs/call | allocs/call | Redis cmds/call | TLS handshakes /1000 | peak RSS MiB | exec→ready ms |")
	fmt.Fprintln(w, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	var rows []row
	for _, g := range rep.groups {
		for _, v := range g.variants {
			r := g.row(v)
			rows = append(rows, r)
			beyond, redis, hs, ready := "-", "-", "-", "-"
			if v.rsa {
				beyond = fmt.Sprintf("%.0f", r.beyond)
			} else {
				beyond = fmt.Sprintf("(%.0f)", r.cpu)
			}
			if g.store == "redis" && v.tp {
				redis = fmt.Sprintf("%.2f", r.redis)
			}
			if g.wallet == "https" {
				hs = fmt.Sprintf("%.2f", r.handshakes)
			}
			if v.tp {
				ready = fmt.Sprintf("%.0f", float64(r.ready.Microseconds())/1e3)
			}
			failed := ""
			if r.failed > 0 {
				failed = fmt.Sprintf(" (%d failed)", r.failed)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %.0f%s | %.2f | %.2f | %.0f | %s | %.0f | %s | %s | %.1f | %s |\n",
				g.store, g.wallet, v.name, r.rate, failed, r.p50, r.p99, r.cpu, beyond, r.allocs, redis, hs, r.rssMiB, ready)
		}
	}
	fmt.Fprintln(w, "\nCPU is the proxy process's (A: tokenproxy, A0: the baseline build of tokenproxy, B: diy, C: bare); \"beyond RSA\" subtracts one RSA-2048 signature and one verification timed in the benchmark process each round; C signs nothing, its column shows its whole CPU in brackets.")
	for _, r := range rows {
		if len(r.redisBy) == 0 || !r.v.tp {
			continue
		}
		var parts []string
		for k, v := range r.redisBy {
			parts = append(parts, fmt.Sprintf("%s %.4f", k, v))
		}
		sort.Strings(parts)
		fmt.Fprintf(w, "Redis commands per call, %s, %s wallet: %s.\n", r.v.name, r.g.wallet, strings.Join(parts, ", "))
	}

	fmt.Fprintln(w, "\n### Targets (ratios measured in the same rounds, medians)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | store, wallet | measured | verdict |")
	fmt.Fprintln(w, "|---|---|---|---|")
	verdict := func(ok bool, how string) string {
		if ok {
			return "met (" + how + ")"
		}
		return "**missed** (" + how + ")"
	}
	for _, g := range rep.groups {
		gw := g.store + ", " + g.wallet
		if ab, ok := g.ratio("A tokenproxy", "B diy", func(s sample) float64 { return s.rate() }); ok {
			fmt.Fprintf(w, "| A/B throughput ≥ 0.95 | %s | %.3f | %s |\n", gw, ab, verdict(ab >= 0.95, fmt.Sprintf("%+.1f %% vs 0.95", 100*(ab/0.95-1))))
		}
		if au, ok := g.ratio("A tokenproxy unix", "A tokenproxy", func(s sample) float64 { return s.rate() }); ok {
			fmt.Fprintf(w, "| Unix socket / TCP throughput (no target) | %s | %.3f | - |\n", gw, au)
		}
		if ac, ok := g.ratio("A tokenproxy", "C bare", func(s sample) float64 { return s.cpuPerCall() - s.rsa }); ok {
			fmt.Fprintf(w, "| tokenproxy CPU beyond RSA ≤ 1.3 × bare proxy CPU | %s | %.2f × | %s |\n", gw, ac, verdict(ac <= 1.3, fmt.Sprintf("%+.0f %% vs 1.3 ×", 100*(ac/1.3-1))))
		}
		if r, ok := g.ratio("A tokenproxy", "A0 baseline", func(s sample) float64 { return s.cpuPerCall() - s.rsa }); ok {
			fmt.Fprintf(w, "| CPU beyond RSA, this build / baseline (no target) | %s | %.2f × | - |\n", gw, r)
		}
		for _, v := range g.variants {
			if !v.tp || v.name == "A0 baseline" {
				continue
			}
			r := g.row(v)
			fmt.Fprintf(w, "| ≤ 80 allocations per call | %s (%s) | %.0f | %s |\n", gw, v.name, r.allocs, verdict(r.allocs <= 80, fmt.Sprintf("%+.0f vs 80", r.allocs-80)))
			if g.store == "redis" {
				// Every command of the phase is counted; a cached call's own
				// would be a record read (HGETALL). The rest is the replica's
				// background, whatever the traffic: store ping, the
				// subscription's heartbeat, the scheduler's hint reads and
				// checks.
				reads := r.redisBy["hgetall"]
				// A paused (SIGSTOPped) tokenproxy misses its heartbeat: on
				// resuming it distrusts its L1 and reads the record once.
				fmt.Fprintf(w, "| 0 Redis commands per cached call | %s | %.4f per call, of which record reads %.4f | %s |\n", gw, r.redis, reads,
					verdict(reads == 0, fmt.Sprintf("record reads: %.1f per phase, after the pause between phases; the rest, %.1f/s, is the replica's background: ping, heartbeat, schedule hint",
						reads*r.rate*c.duration.Seconds(), (r.redis-reads)*r.rate)))
			}
			if g.wallet == "https" {
				fmt.Fprintf(w, "| 0 TLS handshakes per 1,000 calls at steady state | %s (%s) | %.2f | %s |\n", gw, v.name, r.handshakes, verdict(r.handshakes == 0, "after the warm-up"))
			}
			fmt.Fprintf(w, "| peak RSS ≤ 60 MB at %d callers | %s (%s) | %.1f MiB | %s |\n", c.concurrency, gw, v.name, r.rssMiB, verdict(r.rssMiB*1.048576 <= 60, fmt.Sprintf("%.1f MB", r.rssMiB*1.048576)))
			fmt.Fprintf(w, "| start to ready ≤ 200 ms | %s (%s) | %.0f ms | %s |\n", gw, v.name, float64(r.ready.Microseconds())/1e3, verdict(r.ready <= 200*time.Millisecond, "exec to the first /readyz 200, polled every 2 ms"))
		}
	}
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "?"
}

func orUnknown(s string) string {
	if s == "" {
		return "version unknown"
	}
	return s
}
