// Command refresh is the proactive-refresh benchmark that `make bench` runs.
//
// It starts, on loopback ports of its own, a redis-server (temporary
// directory, no persistence), walletsim and -replicas tokenproxy processes
// sharing that Redis, with no app traffic at all. Before the replicas start
// it seeds -customers token pairs through walletsim's POST /sim/seed in 10
// batches whose access tokens expire -window/10 apart, the first batch due
// for refresh -head after the start, and pipes each batch into
// `tokenproxy import -`. Then it watches walletsim's /sim/stats until every
// customer was refreshed and the last batch's expiry is -settle past (or a
// hard deadline), and prints what happened: how many refreshes came before
// the access token expired, how late the late ones were, duplicates
// (USED_REFRESH_TOKEN), the wallet call rate, CPU of every process, import
// time and Redis memory, as a table and as a Markdown block for
// docs/benchmarks.md.
//
// It exits 1 when a refresh token was presented twice or a customer was not
// refreshed before its access token expired (the target is 100 % and 0
// duplicates), 2 on bad flags, 130 when interrupted. Every process it starts
// is stopped by its PID (SIGTERM, then SIGKILL after 10 s), on errors and on
// Ctrl-C too.
//
// With the defaults (100,000 customers, 2 replicas at 150 refreshes/s, a
// 10m window, 5m lead, 30s jitter) it runs about 22 minutes. A quick try,
// about 2 minutes:
//
//	make bench BENCH_FLAGS='-customers 2000 -window 1m -lead 20s -jitter 5s'
//
// docs/benchmarks.md describes the numbers.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/keygen"

	"github.com/redis/go-redis/v9"

	"github.com/tokenproxy/tokenproxy/wallet"

	"github.com/tokenproxy/tokenproxy/internal/proc"
)

const (
	batches      = 10
	clientID     = "BENCH_CLIENT"
	stopGrace    = 10 * time.Second
	pollEvery    = time.Second
	progressEach = 30 * time.Second
	// grantRefresh is walletsim's /sim/stats key for refresh calls.
	grantRefresh = "REFRESH_TOKEN"
)

type config struct {
	profile string
	// importLive: the replicas start before the import, so that it plans
	// with the fleet's rate (the burst profile); else they start after it.
	importLive bool
	customers  int
	// idle customers are imported beside them with access tokens living
	// hours, never due during the run (the million profile).
	idle        int
	idleMeasure time.Duration
	idleWait    time.Duration
	replicas    int
	rate        float64
	window      time.Duration
	lead        time.Duration
	jitter      time.Duration
	head        time.Duration
	settle      time.Duration
	accessTTL   time.Duration
	tokenproxy  string
	walletsim   string
	redisServer string
	// redisArgs are extra redis-server arguments, for example
	// "--hash-max-listpack-value 512".
	redisArgs string
	keep      bool
}

func main() {
	var c config
	flag.StringVar(&c.profile, "profile", "wave", "wave: 10 waves of expiries over -window, every one refreshable with a fixed lead (today's bench); burst: a wave larger than the fleet's rate × (lead + jitter + window), which a fixed lead cannot refresh in time and the plan must (see profiles; flags given explicitly win)")
	flag.IntVar(&c.customers, "customers", 100000, "token pairs to seed and import (at least 10: 10 batches)")
	flag.IntVar(&c.idle, "idle", 0, "customers imported beside -customers whose access tokens expire 3 to 22 hours out: never due during the run")
	flag.DurationVar(&c.idleMeasure, "idle-measure", 0, "after the import, measure Redis commands/s this long before anything is due (0: not measured)")
	flag.DurationVar(&c.idleWait, "idle-wait", 0, "after the import and the replicas' start, wait this long before reading Redis memory and measuring the idle scheduler (their start-up work done)")
	flag.IntVar(&c.replicas, "replicas", 2, "tokenproxy processes sharing one Redis")
	flag.Float64Var(&c.rate, "rate", 150, "TOKENPROXY_REFRESH_RATE of each replica (refresh calls/s)")
	flag.DurationVar(&c.window, "window", 10*time.Minute, "the access token expiries are spread over this")
	flag.DurationVar(&c.lead, "lead", 5*time.Minute, "TOKENPROXY_REFRESH_BEFORE")
	flag.DurationVar(&c.jitter, "jitter", 30*time.Second, "TOKENPROXY_REFRESH_JITTER")
	flag.DurationVar(&c.head, "head", 0, "from the start to the first batch's refresh point (0: lead+jitter, at least min(window/4, 1m); tokenproxy refreshes at most half a token's remaining life ahead, so a shorter head makes the first batches due at their half-life)")
	flag.DurationVar(&c.settle, "settle", 0, "keep watching this long after the last access token expiry, for late duplicates (0: window/4, at most 1m)")
	flag.DurationVar(&c.accessTTL, "access-ttl", 2*time.Hour, "access lifetime of the refreshed tokens (walletsim's WALLETSIM_ACCESS_TTL and /sim/seed refreshedAccessTtl), long enough that none comes due again during the run")
	flag.StringVar(&c.tokenproxy, "tokenproxy", "bin/tokenproxy", "tokenproxy binary")
	flag.StringVar(&c.walletsim, "walletsim", "bin/walletsim", "walletsim binary")
	flag.StringVar(&c.redisServer, "redis-server", "redis-server", "redis-server binary (looked up in PATH)")
	flag.StringVar(&c.redisArgs, "redis-args", "", "extra redis-server arguments, space-separated (for example '--hash-max-listpack-value 512')")
	flag.BoolVar(&c.keep, "keep", false, "keep the temporary directory (keys, process logs) and print its path")
	proc.ParseFlags("bench", func() error {
		if err := c.applyProfile(); err != nil {
			return err
		}
		return c.check()
	})
	os.Exit(run(c))
}

// profiles are the defaults each -profile sets for the flags not given.
//
// burst is the wave (30,000 tokens expiring within 2 minutes at a
// fleet rate of 100/s and a 5-minute lead) scaled to fit this 2-core
// machine in about 9 minutes: 5,000 tokens within 2 minutes, a fleet of 2
// replicas × 10/s, a 1-minute lead plus 5 s jitter. A fixed lead can make
// at most 20/s × (65 s + 120 s) = 3,700 of them; the plan, booking 80 % of
// 20/s, needs 5,000 / 16/s = 312 s, so the tokens live 6 to 8 minutes
// when imported. The replicas run before the import, which plans with
// their heartbeats' count.
var profiles = map[string]map[string]string{
	"wave": {},
	"burst": {
		"customers": "5000", "replicas": "2", "rate": "10", "window": "2m", "lead": "1m", "jitter": "5s",
		"head": "5m", "settle": "30s",
	},
	// million: 1,000,000 customers in one Redis, 1 % of them due within a
	// 4-minute window after a 30 s measurement of the idle scheduler (90 s
	// after the replicas started: their start-up work done).
	"million": {
		"customers": "10000", "idle": "990000", "replicas": "2", "rate": "50", "window": "4m", "lead": "1m",
		"jitter": "10s", "head": "3m", "settle": "30s", "idle-measure": "30s", "idle-wait": "90s",
	},
}

// applyProfile sets the profile's defaults for the flags not given.
func (c *config) applyProfile() error {
	defaults, ok := profiles[c.profile]
	if !ok {
		return fmt.Errorf("-profile %q: want wave, burst or million", c.profile)
	}
	given := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for name, v := range defaults {
		if !given[name] {
			if err := flag.Set(name, v); err != nil {
				return fmt.Errorf("profile %s: -%s %s: %w", c.profile, name, v, err)
			}
		}
	}
	c.importLive = c.profile == "burst"
	return nil
}

func (c *config) check() error {
	quarter := min(time.Minute, c.window/4)
	if c.head == 0 {
		// tokenproxy refreshes at most half a token's remaining life ahead
		// (refresher.NextRefresh): a seeded token living less than
		// 2×(lead+jitter) would be refreshed at its half-life, not lead
		// ahead. head = lead+jitter makes the first batch live exactly that.
		c.head = max(quarter, c.lead+c.jitter)
	}
	if c.settle == 0 {
		c.settle = quarter
	}
	switch {
	case c.customers < batches:
		return fmt.Errorf("-customers must be at least %d", batches)
	case c.customers/batches+c.customers%batches > 1_000_000:
		return errors.New("-customers: at most 1,000,000 per batch (walletsim's /sim/seed limit)")
	case c.replicas < 1:
		return errors.New("-replicas must be at least 1")
	case c.rate <= 0:
		return errors.New("-rate must be positive")
	case c.window <= 0 || c.head < 0 || c.settle < 0 || c.lead < 0 || c.jitter < 0:
		return errors.New("-window must be positive; -head, -settle, -lead and -jitter not negative")
	}
	// Absolute paths: the processes run in the temporary directory.
	for _, bin := range []*string{&c.tokenproxy, &c.walletsim} {
		abs, err := filepath.Abs(*bin)
		if err != nil {
			return err
		}
		if _, err := os.Stat(abs); err != nil {
			return fmt.Errorf("%w (run `make build` first)", err)
		}
		*bin = abs
	}
	redisServer, err := exec.LookPath(c.redisServer)
	if err != nil {
		return fmt.Errorf("%w (install it with `apt-get install -y redis-server`)", err)
	}
	if c.redisServer, err = filepath.Abs(redisServer); err != nil {
		return err
	}
	// A refreshed token comes due again accessTTL-lead-jitter after its
	// refresh; the run ends at most window+lead+5m after the replicas start.
	if need := c.head + c.window + 2*c.lead + c.jitter + 10*time.Minute; c.accessTTL < need {
		return fmt.Errorf("-access-ttl %s is too short: refreshed tokens would come due again during the run (need at least %s)", c.accessTTL, need)
	}
	return nil
}

// deadline bounds the watch, from the replicas' start: the last batch's
// expiry is about head + 9/10 window + lead + jitter after the start.
func (c config) deadline() time.Duration { return c.head + c.window + c.lead + 5*time.Minute }

// run is main's body; it returns the exit code once every process it
// started is stopped.
func run(c config) int {
	ctx, stopSignals := proc.Interruptible()
	defer stopSignals()

	b := &bench{cfg: c, start: started, http: &http.Client{}} // every request has a context deadline
	defer b.cleanup()
	res, err := b.run(ctx)
	b.stopAll()
	if err != nil {
		return proc.Failed(ctx, "bench", err, b.showLogs)
	}
	res.print(os.Stdout)
	if fails := res.failures(); len(fails) > 0 {
		fmt.Fprintln(os.Stderr, "\nbench FAILED the target (100 % refreshed before expiry, 0 duplicates):")
		for _, f := range fails {
			fmt.Fprintln(os.Stderr, "  -", f)
		}
		b.showLogs()
		return 1
	}
	fmt.Fprintln(os.Stderr, "\nbench passed: every customer refreshed before expiry, no duplicate.")
	return 0
}

type bench struct {
	cfg   config
	start time.Time
	http  *http.Client
	dir   string
	procs []*child // in start order

	redisAddr string
	simURL    string
	simPub    string // wallet public key file
	keyFile   string // merchant private key
	pubFile   string // merchant public key
	encKey    string
	replicas  []*replica
}

type replica struct {
	name   string
	p      *child
	listen string
	ops    string
}

func (b *bench) run(ctx context.Context) (*result, error) {
	c := b.cfg
	res := &result{cfg: c, args: os.Args[1:], date: b.start}
	var err error
	if b.dir, err = os.MkdirTemp("", "tokenproxy-bench-"); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, c.tokenproxy, "version").Output(); err == nil {
		res.version = strings.TrimSpace(string(out))
	}
	if out, err := exec.CommandContext(ctx, c.redisServer, "--version").Output(); err == nil {
		res.redisVersion = strings.TrimSpace(string(out))
	}

	ports, err := proc.FreePorts(2 + 2*c.replicas)
	if err != nil {
		return nil, err
	}
	if b.keyFile, b.pubFile, err = keygen.WriteKeyPair(b.dir); err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	b.encKey = base64.StdEncoding.EncodeToString(key)

	// Redis.
	b.redisAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	rp, err := b.startProc("redis-server", c.redisServer, append([]string{
		"--bind", "127.0.0.1", "--port", strconv.Itoa(ports[0]),
		"--save", "", "--appendonly", "no", "--dir", b.dir, "--daemonize", "no",
	}, strings.Fields(c.redisArgs)...), nil)
	if err != nil {
		return nil, err
	}
	rdb := redis.NewClient(&redis.Options{Addr: b.redisAddr, MaxRetries: -1, DialTimeout: time.Second})
	defer rdb.Close()
	if err := waitUntil(ctx, 10*time.Second, rp, func() bool { return rdb.Ping(ctx).Err() == nil }); err != nil {
		return nil, fmt.Errorf("redis-server on %s: %w", b.redisAddr, err)
	}

	// walletsim.
	simAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	b.simURL = "http://" + simAddr
	b.simPub = filepath.Join(b.dir, "wallet-public.pem")
	sim, err := b.startProc("walletsim", c.walletsim, nil, []string{
		"WALLETSIM_LISTEN_ADDR=" + simAddr,
		"WALLETSIM_CLIENT_PUBLIC_KEY_FILE=" + b.pubFile,
		"WALLETSIM_PUBLIC_KEY_OUT=" + b.simPub,
		"WALLETSIM_CLIENT_ID=" + clientID,
		"WALLETSIM_ACCESS_TTL=" + c.accessTTL.String(),
		"WALLETSIM_LOG_LEVEL=warn",
	})
	if err != nil {
		return nil, err
	}
	if err := waitUntil(ctx, 20*time.Second, sim, func() bool { return b.get(ctx, b.simURL+"/sim/stats", nil) == nil }); err != nil {
		return nil, fmt.Errorf("walletsim on %s: %w", simAddr, err)
	}

	// Seed and import, batch by batch, before any replica runs (or after
	// they started, for the burst).
	res.atStart = b.snap(ctx, rdb)
	if !c.importLive {
		if err := b.seedIdle(ctx, res); err != nil {
			return nil, err
		}
		if err := b.seedAndImport(ctx, res); err != nil {
			return nil, err
		}
		if n, err := rdb.DBSize(ctx).Result(); err == nil {
			res.redisKeysAfterImport = n
		}
	}

	// Replicas.
	// (The burst is meant to be beyond the rate: no warning for it.)
	if need := float64(c.customers/batches) / (c.window / batches).Seconds(); !c.importLive && c.rate*float64(c.replicas) < 1.2*need {
		logf("warning: replicas × rate = %g/s is not comfortably above the %.0f/s the batches need", c.rate*float64(c.replicas), need)
	}
	for i := range c.replicas {
		r := &replica{
			name:   fmt.Sprintf("tokenproxy-%d", i+1),
			listen: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2+2*i])),
			ops:    net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3+2*i])),
		}
		if r.p, err = b.startProc(r.name, c.tokenproxy, nil, append(b.tokenproxyEnv(),
			"TOKENPROXY_LISTEN_ADDR="+r.listen,
			"TOKENPROXY_OPS_ADDR="+r.ops,
			"TOKENPROXY_LOG_LEVEL=warn",
		)); err != nil {
			return nil, err
		}
		b.replicas = append(b.replicas, r)
	}
	for _, r := range b.replicas {
		if err := waitUntil(ctx, 30*time.Second, r.p, func() bool { return b.get(ctx, "http://"+r.ops+"/readyz", nil) == nil }); err != nil {
			return nil, fmt.Errorf("%s not ready: %w", r.name, err)
		}
	}
	res.replicasUp = time.Now()
	logf("%d tokenproxy replicas ready (rate %g/s each, lead %s, jitter %s); watching walletsim, no app traffic",
		c.replicas, c.rate, c.lead, c.jitter)
	if c.importLive {
		// Let every replica's first heartbeat land, so that the import
		// plans with the fleet's rate.
		if err := b.seedAndImport(ctx, res); err != nil {
			return nil, err
		}
		if n, err := rdb.DBSize(ctx).Result(); err == nil {
			res.redisKeysAfterImport = n
		}
	}
	res.fixedLate = fixedLeadLate(res.expiryTimes, res.importedAt, c)
	if c.idleWait > 0 {
		// The replicas' start-up work (an index built from the records,
		// for one) is not the idle scheduler: let it end first.
		logf("waiting %s before measuring the store and the idle scheduler", c.idleWait)
		if err := sleepCtx(ctx, c.idleWait); err != nil {
			return nil, err
		}
	}
	res.afterImport = b.snap(ctx, rdb)
	res.phaseStart = res.afterImport
	if c.idleMeasure > 0 {
		logf("measuring the idle scheduler for %s", c.idleMeasure)
		if err := sleepCtx(ctx, c.idleMeasure); err != nil {
			return nil, err
		}
		res.phaseStart = b.snap(ctx, rdb)
		res.idleDelta = res.afterImport.to(res.phaseStart)
	}
	// After the idle measurement, which its SCAN and MEMORY USAGE calls
	// would swell; the refresh phase counts them (about 0.1 a refresh at
	// 1 M customers).
	res.memorySample = b.memorySample(ctx, rdb, c.customers+c.idle)

	if err := b.watch(ctx, res); err != nil {
		return nil, err
	}
	res.atEnd = b.snap(ctx, rdb)
	b.collect(ctx, res, rdb, sim, rp)
	res.wall = time.Since(b.start)
	return res, nil
}

// seedAndImport seeds the batches through /sim/seed and pipes each into
// `tokenproxy import -`, timing the import alone.
func (b *bench) seedAndImport(ctx context.Context, res *result) error {
	c := b.cfg
	per := c.customers / batches
	for i := range batches {
		n := per
		if i == batches-1 {
			n += c.customers % batches
		}
		ttl := c.lead + c.jitter + c.head + time.Duration(i)*(c.window/batches)
		ndjson, err := b.seed(ctx, res, n, fmt.Sprintf("b%d-", i), ttl, c.accessTTL)
		if err != nil {
			return fmt.Errorf("seed batch %d: %w", i, err)
		}
		lines, lo, hi, all, err := expiries(ndjson)
		if err != nil {
			return fmt.Errorf("seed batch %d: %w", i, err)
		}
		if lines != n {
			return fmt.Errorf("seed batch %d: %d lines, want %d", i, lines, n)
		}
		res.expiryTimes = append(res.expiryTimes, all...)
		if res.firstExpiry.IsZero() || lo.Before(res.firstExpiry) {
			res.firstExpiry = lo
		}
		if hi.After(res.lastExpiry) {
			res.lastExpiry = hi
		}

		// The earliest refresh point tokenproxy will pick (refresher.NextRefresh).
		half := hi.Sub(time.Now()) / 2
		lead := min(c.lead+c.jitter, half)
		if lead+time.Second < c.lead+c.jitter { // more than the import's own second
			logf("note: batch %d lives %s, less than 2×(lead+jitter): tokenproxy will refresh it at its half-life (-head raises that)", i, round(2*half))
		}
		dueFrom := hi.Add(-lead)

		cmd := exec.CommandContext(ctx, c.tokenproxy, "import", "-")
		cmd.Dir = b.dir
		cmd.Env = b.tokenproxyEnv()
		cmd.Stdin = bytes.NewReader(ndjson)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = stopGrace // then SIGKILL
		t1 := time.Now()
		for range all {
			res.importedAt = append(res.importedAt, t1)
		}
		err = cmd.Run()
		res.importTime += time.Since(t1)
		if cmd.ProcessState != nil {
			res.importCPU += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		}
		text := strings.TrimSpace(out.String())
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if strings.Contains(text, `unknown command "import"`) {
				return fmt.Errorf("%s has no `import` command yet (cmd/tokenproxy/import.go): %s", c.tokenproxy, text)
			}
			return fmt.Errorf("tokenproxy import of batch %d: %v\n%s", i, err, tail(text, 4096))
		}
		if m := importedRE.FindStringSubmatch(text); m == nil {
			logf("warning: cannot find %q in the import's report", "imported N")
		} else if got, _ := strconv.Atoi(m[1]); got != n {
			return fmt.Errorf("tokenproxy import of batch %d imported %d of %d pairs:\n%s", i, got, n, tail(text, 4096))
		}
		logf("batch %d: %d pairs b%d-*, access expiry %s after start (refresh due from %s); import %s: %s",
			i, n, i, round(hi.Sub(b.start)), round(dueFrom.Sub(b.start)),
			round2(time.Since(t1)), oneLine(tail(text, 300)))
		res.importOutput = text
	}
	return nil
}

// seedIdle seeds and imports the -idle customers in 20 chunks whose access
// tokens expire 3 h + i hours out: never due during the run, and spread so
// that the plan has room for each chunk.
func (b *bench) seedIdle(ctx context.Context, res *result) error {
	const chunks = 20
	c := b.cfg
	if c.idle == 0 {
		return nil
	}
	for i := range chunks {
		n := c.idle / chunks
		if i == chunks-1 {
			n += c.idle % chunks
		}
		ndjson, err := b.seed(ctx, res, n, fmt.Sprintf("i%d-", i), 3*time.Hour+time.Duration(i)*time.Hour, c.accessTTL)
		if err != nil {
			return fmt.Errorf("seed idle chunk %d: %w", i, err)
		}
		if err := b.importNDJSON(ctx, res, ndjson, n); err != nil {
			return fmt.Errorf("idle chunk %d: %w", i, err)
		}
		if i%5 == 4 {
			logf("idle customers: %d imported (%.0f/s so far)", (i+1)*(c.idle/chunks), float64((i+1)*(c.idle/chunks))/res.importTime.Seconds())
		}
	}
	return nil
}

// importNDJSON pipes one seeded chunk into `tokenproxy import -`.
// seed asks walletsim for n authorized customers named prefix + number,
// their access tokens living accessTTL (refreshedTTL once refreshed), and
// returns their pairs as NDJSON; the time it took counts in res.seedTime.
func (b *bench) seed(ctx context.Context, res *result, n int, prefix string, accessTTL, refreshedTTL time.Duration) ([]byte, error) {
	req, _ := json.Marshal(map[string]any{
		"count":              n,
		"prefix":             prefix,
		"accessTtl":          accessTTL.String(),
		"refreshedAccessTtl": refreshedTTL.String(),
	})
	t0 := time.Now()
	ndjson, err := b.post(ctx, b.simURL+"/sim/seed", req, 10*time.Minute)
	res.seedTime += time.Since(t0)
	return ndjson, err
}

func (b *bench) importNDJSON(ctx context.Context, res *result, ndjson []byte, n int) error {
	cmd := exec.CommandContext(ctx, b.cfg.tokenproxy, "import", "-")
	cmd.Dir = b.dir
	cmd.Env = b.tokenproxyEnv()
	cmd.Stdin = bytes.NewReader(ndjson)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopGrace // then SIGKILL
	t1 := time.Now()
	err := cmd.Run()
	res.importTime += time.Since(t1)
	if cmd.ProcessState != nil {
		res.importCPU += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	text := strings.TrimSpace(out.String())
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("tokenproxy import: %v\n%s", err, tail(text, 4096))
	}
	if m := importedRE.FindStringSubmatch(text); m == nil || m[1] != strconv.Itoa(n) {
		return fmt.Errorf("tokenproxy import wrote other than %d pairs:\n%s", n, tail(text, 4096))
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// importedRE finds the count in the import's report ("imported N, ...").
var importedRE = regexp.MustCompile(`\bimported (\d+)\b`)

// expiries counts the NDJSON lines and returns the earliest and latest
// accessTokenExpiryTime.
func expiries(ndjson []byte) (n int, lo, hi time.Time, all []time.Time, err error) {
	sc := bufio.NewScanner(bytes.NewReader(ndjson))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		n++
		var l struct {
			AccessTokenExpiryTime string `json:"accessTokenExpiryTime"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return 0, lo, hi, nil, fmt.Errorf("line %d: %v", n, err)
		}
		t, err := wallet.ParseDateTime(l.AccessTokenExpiryTime)
		if err != nil {
			return 0, lo, hi, nil, fmt.Errorf("line %d: accessTokenExpiryTime: %v", n, err)
		}
		all = append(all, t)
		if lo.IsZero() || t.Before(lo) {
			lo = t
		}
		if t.After(hi) {
			hi = t
		}
	}
	return n, lo, hi, all, sc.Err()
}

// fixedLeadLate simulates, on the run's own expiry times and import
// times, the schedule without a plan: each token due at expiry − lead −
// random(0..jitter), the lead capped at half its remaining life when
// imported (refresher.NextRefresh), served in order of due time by the
// fleet at replicas × rate per second, one after the other. It returns how
// many would have been refreshed after their expiry.
func fixedLeadLate(expiry, imported []time.Time, c config) int {
	type job struct{ due, exp time.Time }
	jobs := make([]job, len(expiry))
	for i, e := range expiry {
		lead := c.lead
		if c.jitter > 0 {
			lead += time.Duration(mrand.Int64N(int64(c.jitter)))
		}
		if half := e.Sub(imported[i]) / 2; lead > half {
			lead = max(half, 0)
		}
		jobs[i] = job{e.Add(-lead), e}
	}
	sort.SliceStable(jobs, func(a, b int) bool { return jobs[a].due.Before(jobs[b].due) })
	step := time.Duration(float64(time.Second) / (c.rate * float64(c.replicas)))
	var t time.Time
	late := 0
	for _, j := range jobs {
		if t.Before(j.due) {
			t = j.due
		}
		t = t.Add(step)
		if t.After(j.exp) {
			late++
		}
	}
	return late
}

// tokenproxyEnv is what every tokenproxy process gets, import included.
func (b *bench) tokenproxyEnv() []string {
	c := b.cfg
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"TOKENPROXY_WALLET_URL=" + b.simURL,
		"TOKENPROXY_CLIENT_ID=" + clientID,
		"TOKENPROXY_PRIVATE_KEY_FILE=" + b.keyFile,
		"TOKENPROXY_WALLET_PUBLIC_KEY_FILE=" + b.simPub,
		"TOKENPROXY_REDIS_URL=redis://" + b.redisAddr + "/0",
		"TOKENPROXY_ENCRYPTION_KEYS=" + b.encKey,
		"TOKENPROXY_REFRESH_BEFORE=" + c.lead.String(),
		"TOKENPROXY_REFRESH_JITTER=" + c.jitter.String(),
		// The import plans with it too.
		"TOKENPROXY_REFRESH_RATE=" + strconv.FormatFloat(c.rate, 'f', -1, 64),
	}
}

// simStats is the part of walletsim's /sim/stats the benchmark reads.
type simStats struct {
	Calls                       map[string]map[string]int64 `json:"calls"`
	RefreshTokensReused         int64                       `json:"refreshTokensReused"`
	BadSignatures               int64                       `json:"badSignatures"`
	Refreshes                   int64                       `json:"refreshes"`
	RefreshesBeforeAccessExpiry *int64                      `json:"refreshesBeforeAccessExpiry"`
	RefreshesAfterAccessExpiry  int64                       `json:"refreshesAfterAccessExpiry"`
	MaxRefreshLatenessMs        int64                       `json:"maxRefreshLatenessMs"`
}

// refreshCalls counts REFRESH_TOKEN calls on every applyToken path.
func (s simStats) refreshCalls() int64 {
	var n int64
	for _, m := range s.Calls {
		n += m[grantRefresh]
	}
	return n
}

// watch polls /sim/stats until every customer had a refresh call and the
// last access expiry is settle past, or the hard deadline.
func (b *bench) watch(ctx context.Context, res *result) error {
	c := b.cfg
	deadline := res.replicasUp.Add(c.deadline())
	doneAfter := res.lastExpiry.Add(c.settle)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	var (
		prev      int64
		lastPrint = time.Now()
		lastCalls int64
		failures  int
	)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		for _, p := range b.procs {
			if p.Exited() {
				return fmt.Errorf("%s (pid %d) exited during the run", p.Name(), p.PID())
			}
		}
		var st simStats
		if err := b.get(ctx, b.simURL+"/sim/stats", &st); err != nil {
			if failures++; failures >= 10 {
				return fmt.Errorf("GET /sim/stats: %w", err)
			}
			continue
		}
		failures = 0
		if st.RefreshesBeforeAccessExpiry == nil {
			return errors.New("walletsim's /sim/stats has no refreshesBeforeAccessExpiry: rebuild it (make build)")
		}
		now := time.Now()
		calls := st.refreshCalls()
		if calls > prev {
			if res.firstRefresh.IsZero() {
				res.firstRefresh = now
			}
			res.lastRefresh, prev = now, calls
		}
		res.stats = st
		if now.Sub(lastPrint) >= progressEach {
			logf("refresh calls %d/%d, %.1f/s over the last %s; before expiry %d, late %d, duplicates %d",
				calls, c.customers, float64(calls-lastCalls)/now.Sub(lastPrint).Seconds(), round(now.Sub(lastPrint)),
				*st.RefreshesBeforeAccessExpiry, st.RefreshesAfterAccessExpiry, st.RefreshTokensReused)
			lastPrint, lastCalls = now, calls
		}
		if calls >= int64(c.customers) && !now.Before(doneAfter) {
			res.ended = fmt.Sprintf("every customer had a refresh call and the last expiry is %s past", c.settle)
			return nil
		}
		if now.After(deadline) {
			res.ended = fmt.Sprintf("hard deadline (head + window + lead + 5m = %s after the replicas started)", c.deadline())
			logf("%s reached", res.ended)
			return nil
		}
	}
}

// collect reads CPU times, memory and metrics while every process still runs.
func (b *bench) collect(ctx context.Context, res *result, rdb *redis.Client, sim, rp *child) {
	for _, r := range b.replicas {
		rr := replicaResult{name: r.name}
		rr.procCPU, rr.procErr = proc.CPUSeconds(r.p.PID())
		rr.rssKiB = proc.PeakRSSKiB(r.p.PID())
		body, err := b.getRaw(ctx, "http://"+r.ops+"/metrics")
		if err != nil {
			rr.metricsErr = err
		} else {
			rr.metricsCPU, rr.metricsErr = metricValue(body, "process_cpu_seconds_total")
			rr.refreshes = sumMetric(body, "tokenproxy_refreshes_total")
			rr.lostRotations, _ = metricValue(body, "tokenproxy_lost_rotations_total")
			rr.shortfall, _ = metricValue(body, "tokenproxy_refresh_plan_shortfall_total")
		}
		res.replicas = append(res.replicas, rr)
	}
	if err := b.get(ctx, b.simURL+"/sim/ledger", &res.ledger); err != nil {
		logf("warning: GET /sim/ledger: %v", err)
	}
	res.simCPU, _ = proc.CPUSeconds(sim.PID())
	res.redisCPU, _ = proc.CPUSeconds(rp.PID())
	if info, err := rdb.Info(ctx, "memory").Result(); err == nil {
		res.redisMemory = infoField(info, "used_memory_human")
		res.redisPeak = infoField(info, "used_memory_peak_human")
	}
	if n, err := rdb.DBSize(ctx).Result(); err == nil {
		res.redisKeys = n
	}
}

// result is everything the summary shows.
type result struct {
	cfg          config
	args         []string
	date         time.Time
	version      string
	redisVersion string

	seedTime, importTime, importCPU time.Duration
	importOutput                    string
	redisKeysAfterImport            int64
	firstExpiry, lastExpiry         time.Time
	expiryTimes, importedAt         []time.Time // every seeded token's access expiry, and when its import began
	fixedLate                       int         // fixedLeadLate of the run's inputs
	ledger                          simLedger
	// Counters before the import, after it, at the start of the refresh
	// phase (after the idle measurement) and at the end.
	atStart, afterImport, phaseStart, atEnd snapshot
	idleDelta                               delta
	memorySample                            string
	replicasUp                              time.Time
	firstRefresh, lastRefresh               time.Time
	stats                                   simStats
	ended                                   string

	replicas               []replicaResult
	simCPU, redisCPU       float64
	redisMemory, redisPeak string
	redisKeys              int64
	wall                   time.Duration
}

type replicaResult struct {
	name          string
	procCPU       float64
	procErr       error
	metricsCPU    float64
	metricsErr    error
	rssKiB        int64
	refreshes     map[string]float64 // tokenproxy_refreshes_total by label set
	lostRotations float64
	shortfall     float64 // tokenproxy_refresh_plan_shortfall_total
}

// simLedger is the part of walletsim's /sim/ledger the benchmark reads.
type simLedger struct {
	Presentations         int64 `json:"presentations"`
	Represented           int64 `json:"represented"`
	RepresentedAfterKnown int64 `json:"representedAfterKnownOutcome"`
	Overlapping           int64 `json:"overlapping"`
}

func (r *result) before() int64 {
	if r.stats.RefreshesBeforeAccessExpiry == nil {
		return 0
	}
	return *r.stats.RefreshesBeforeAccessExpiry
}

// failures lists how the run missed the target.
func (r *result) failures() []string {
	var out []string
	if n := r.stats.RefreshTokensReused; n > 0 {
		out = append(out, fmt.Sprintf("%d refresh tokens presented again (USED_REFRESH_TOKEN)", n))
	}
	if n := r.ledger.Represented; n > 0 {
		out = append(out, fmt.Sprintf("%d refresh-token presentations of a token processed before (walletsim's ledger)", n))
	}
	if b := r.before(); b < int64(r.cfg.customers) {
		out = append(out, fmt.Sprintf("%d of %d customers refreshed before their access token expired (%s)",
			b, r.cfg.customers, pct(b, int64(r.cfg.customers))))
	}
	return out
}

func beyond(calls, customers int64) string {
	if calls < customers {
		return fmt.Sprintf("%d fewer than customers", customers-calls)
	}
	return fmt.Sprintf("%d beyond customers", calls-customers)
}

func pct(n, of int64) string {
	if of == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f %%", 100*float64(n)/float64(of))
}

// rows is the summary, one metric a row.
func (r *result) rows() [][2]string {
	c, st := r.cfg, r.stats
	cust := int64(c.customers)
	calls := st.refreshCalls()
	refreshed := r.before() + st.RefreshesAfterAccessExpiry
	rows := [][2]string{
		{"customers", fmt.Sprintf("%d in %d batches (profile %s), access expiries %s to %s after the start",
			c.customers, batches, c.profile, round(r.firstExpiry.Sub(r.date)), round(r.lastExpiry.Sub(r.date)))},
		{"replicas × refresh rate", fmt.Sprintf("%d × %g/s (lead %s, jitter %s)", c.replicas, c.rate, c.lead, c.jitter)},
		{"refreshed before expiry", fmt.Sprintf("%d (%s)", r.before(), pct(r.before(), cust))},
		{"late refreshes", fmt.Sprintf("%d, worst %d ms after expiry", st.RefreshesAfterAccessExpiry, st.MaxRefreshLatenessMs)},
		{"customers never refreshed", fmt.Sprintf("%d", max(0, cust-refreshed))},
		{"duplicates (refreshTokensReused)", fmt.Sprintf("%d", st.RefreshTokensReused)},
		{"walletsim ledger", fmt.Sprintf("%d presentations, %d of a token presented before, %d after a known outcome, %d overlapping",
			r.ledger.Presentations, r.ledger.Represented, r.ledger.RepresentedAfterKnown, r.ledger.Overlapping)},
		{"a fixed lead would have missed", fmt.Sprintf("%d of %d (%s; simulated on these expiry times at %d × %g/s, due order, lead %s + random jitter up to %s)",
			r.fixedLate, c.customers, pct(int64(r.fixedLate), cust), c.replicas, c.rate, c.lead, c.jitter)},
		{"plan shortfall (tokenproxy_refresh_plan_shortfall_total)", fmt.Sprintf("%.0f in the replicas (the import's own are in its log)", r.shortfall())},
		{"REFRESH_TOKEN calls", fmt.Sprintf("%d (%s; %d answered S)", calls, beyond(calls, cust), st.Refreshes)},
	}
	rate := "n/a"
	if span := r.lastRefresh.Sub(r.firstRefresh); span > 0 {
		rate = fmt.Sprintf("%.1f/s over %s (first to last refresh, ±%s)", float64(calls)/span.Seconds(), round(span), pollEvery)
	}
	rows = append(rows, [2]string{"wallet refresh calls/s", rate})
	if d := r.idleDelta; d.span > 0 {
		rows = append(rows, [2]string{"idle scheduler (nothing due)", fmt.Sprintf("%.1f Redis commands/s per replica over %s (%d replicas, %d refreshes in it; %s per second in all); Redis CPU %.1f %%, tokenproxy CPU %.1f %% (both replicas)",
			float64(d.total)/d.span.Seconds()/float64(c.replicas), round(d.span), c.replicas, d.refreshes, d.byCommand(d.span.Seconds()), 100*d.redisCPU/d.span.Seconds(), 100*d.proxyCPU/d.span.Seconds())})
	}

	var procSum, metSum float64
	var procParts, metParts, rss, split []string
	for _, rr := range r.replicas {
		procSum += rr.procCPU
		procParts = append(procParts, fmt.Sprintf("%.1f", rr.procCPU))
		if rr.metricsErr == nil {
			metSum += rr.metricsCPU
			metParts = append(metParts, fmt.Sprintf("%.1f", rr.metricsCPU))
		} else {
			metParts = append(metParts, "?")
		}
		rss = append(rss, fmt.Sprintf("%d MiB", rr.rssKiB/1024))
		var ok float64
		for labels, v := range rr.refreshes {
			if strings.Contains(labels, `result="success"`) {
				ok += v
			}
		}
		split = append(split, fmt.Sprintf("%.0f", ok))
	}
	rows = append(rows,
		[2]string{"tokenproxy CPU", fmt.Sprintf("%.1f s (/proc utime+stime: %s; process_cpu_seconds_total: %.1f = %s)",
			procSum, strings.Join(procParts, " + "), metSum, strings.Join(metParts, " + "))},
		[2]string{"tokenproxy peak RSS", strings.Join(rss, ", ")},
		[2]string{"successful refreshes per replica", strings.Join(split, ", ")},
	)
	if other := r.refreshOutcomes(); other != "" {
		rows = append(rows, [2]string{"tokenproxy_refreshes_total", other})
	}
	rows = append(rows,
		[2]string{"walletsim CPU", fmt.Sprintf("%.1f s", r.simCPU)},
		[2]string{"redis-server CPU", fmt.Sprintf("%.1f s", r.redisCPU)},
		[2]string{"import", fmt.Sprintf("%d pairs in %s (%.0f/s; %.1f s CPU; /sim/seed took %s)",
			c.customers+c.idle, round2(r.importTime), float64(c.customers+c.idle)/r.importTime.Seconds(), r.importCPU.Seconds(), round2(r.seedTime))},
		[2]string{"redis memory", fmt.Sprintf("used_memory_human %s (peak %s), %d keys (%d after import)", r.redisMemory, r.redisPeak, r.redisKeys, r.redisKeysAfterImport)},
		[2]string{"redis bytes per customer", fmt.Sprintf("%.0f (used_memory after the import and -idle-wait − before the import, / %d customers)",
			float64(r.afterImport.usedMemory-r.atStart.usedMemory)/float64(c.customers+c.idle), c.customers+c.idle)},
		[2]string{"redis MEMORY USAGE", r.memorySample},
		[2]string{"per refresh (refresh phase, all-in)", r.phaseStart.to(r.atEnd).perRefresh()},
		[2]string{"wall time", fmt.Sprintf("%s (%s)", round(r.wall), r.ended)},
	)
	return rows
}

func (r *result) shortfall() float64 {
	var n float64
	for _, rr := range r.replicas {
		n += rr.shortfall
	}
	return n
}

// refreshOutcomes sums tokenproxy_refreshes_total over the replicas, by
// label set, non-zero ones only.
func (r *result) refreshOutcomes() string {
	sum := map[string]float64{}
	var lost float64
	for _, rr := range r.replicas {
		for k, v := range rr.refreshes {
			sum[k] += v
		}
		lost += rr.lostRotations
	}
	var parts []string
	for k, v := range sum {
		if v != 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", k, v))
		}
	}
	sort.Strings(parts)
	if lost > 0 {
		parts = append(parts, fmt.Sprintf("lost rotations %.0f", lost))
	}
	return strings.Join(parts, "; ")
}

func (r *result) print(w io.Writer) {
	fmt.Fprintln(w, "\n== Proactive refresh benchmark")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, row := range r.rows() {
		fmt.Fprintf(tw, "%s\t%s\n", row[0], row[1])
	}
	_ = tw.Flush()

	fmt.Fprintln(w, "\n== Markdown for docs/benchmarks.md")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "### %s, %s\n\n", r.date.Format("2006-01-02"), orUnknown(r.version))
	fmt.Fprintf(w, "`go run ./internal/bench/refresh %s` (%s)\n\n", strings.Join(r.args, " "), orUnknown(r.redisVersion))
	fmt.Fprintln(w, "| metric | value |")
	fmt.Fprintln(w, "|---|---|")
	for _, row := range r.rows() {
		fmt.Fprintf(w, "| %s | %s |\n", row[0], strings.ReplaceAll(row[1], "|", `\|`))
	}
	verdict := "**pass**: 100 % refreshed before expiry, 0 duplicates"
	if f := r.failures(); len(f) > 0 {
		verdict = "**FAIL**: " + strings.Join(f, "; ")
	}
	fmt.Fprintf(w, "\n%s\n", verdict)
}

func orUnknown(s string) string {
	if s == "" {
		return "version unknown"
	}
	return s
}

// ---- processes ----

// child is a started program and its log file in the temporary directory.
// child is a process the benchmark started, its output in a log file.
type child = proc.Logged

// startProc starts bin with args and env (beyond the inherited PATH and
// HOME), its output in a log file of the temporary directory.
func (b *bench) startProc(name, bin string, args, env []string) (*child, error) {
	return proc.StartInto(&b.procs, b.dir, name, bin, args, env, stopGrace)
}

// stopAll stops every process, the last started first (the replicas
// before walletsim and Redis).
func (b *bench) stopAll() { proc.StopAll(b.procs) }

func (b *bench) cleanup() { proc.Cleanup(b.procs, b.dir, b.cfg.keep, "bench") }

// showLogs prints the end of every process log, for a failed run.
func (b *bench) showLogs() { proc.ShowLogs(os.Stderr, b.procs, 2048) }

// waitUntil polls ok until it holds, p exits, ctx ends or within passes.
func waitUntil(ctx context.Context, within time.Duration, p *child, ok func() bool) error {
	deadline := time.Now().Add(within)
	for !ok() {
		if p.Exited() {
			return fmt.Errorf("%s exited", p.Name())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %s", within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// metricValue is the value of an unlabelled series in Prometheus text.
func metricValue(body []byte, name string) (float64, error) {
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("no %s in /metrics", name)
}

// sumMetric returns every series of a labelled family: labels -> value.
func sumMetric(body []byte, name string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		end := strings.LastIndexByte(rest, '}')
		if end < 0 {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest[end+1:]), 64)
		if err == nil {
			out[rest[:end]] += v
		}
	}
	return out
}

func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return "?"
}

// ---- HTTP ----

func (b *bench) get(ctx context.Context, url string, out any) error {
	body, err := b.getRaw(ctx, url)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(body, out)
}

func (b *bench) getRaw(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return proc.Fetch(ctx, b.http, http.MethodGet, url, nil)
}

func (b *bench) post(ctx context.Context, url string, body []byte, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return proc.Fetch(ctx, b.http, http.MethodPost, url, body)
}

// ---- output ----

// started is the benchmark's start, the origin of every time it prints.
var started = time.Now()

// logf prints a progress line to stderr, stamped with the time since the start.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%8s] %s\n", round(time.Since(started)), fmt.Sprintf(format, args...))
}

func round(d time.Duration) time.Duration  { return d.Round(time.Second) }
func round2(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
