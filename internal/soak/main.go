// Command soak is the chaos soak that `make soak` runs (not in CI): the
// exactly-once refresh promise under faults, for a given duration.
//
// On loopback ports of its own it starts a redis-server with persistence
// (appendonly yes, appendfsync always, in a temporary directory), walletsim
// and -replicas tokenproxy processes on that Redis, and exchanges
// -customers authorization codes whose access tokens live -min-ttl to
// -max-ttl, so that the replicas refresh them all the time. Then, until
// -duration has passed:
//   - walletsim's faults rotate every -fault-every through latency (below
//     and above the proxies' upstream timeout), unknownRate,
//     dropAfterProcessing, resetRate, html5xxRate, rateLimitPerSecond,
//     badSignatureRate and quiet spells;
//   - a random replica is SIGKILLed and restarted every -kill-every, and
//     redis-server every -redis-kill-every;
//   - a bounded app loop calls inquiryUserInfo for random customers through
//     random replicas (at most -app-rate calls a second).
//
// At the end the faults are cleared, every replica is up, and every
// customer gets one forced refresh through a replica (so that a pair a
// replica lost shows as USED_REFRESH_TOKEN); it prints walletsim's ledger
// (presentations, re-presentations and whether each followed an unknown
// outcome, lost rotations, S pairs lost), the proxies' counters and the
// customers by state, and exits 1 unless 0 presentations came after a known
// outcome, 0 overlapped and 0 S pairs were lost.
package main

import (
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
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/keygen"
	"github.com/tokenproxy/tokenproxy/internal/walletsim"

	"github.com/tokenproxy/tokenproxy/internal/proc"
)

const clientID = "SOAK_CLIENT"

type config struct {
	duration, minTTL, maxTTL, faultEvery, killEvery, redisKillEvery time.Duration
	customers, replicas                                             int
	appRate                                                         float64
	tokenproxy, walletsim, redisServer                              string
	upstreamTimeout                                                 time.Duration
}

func main() {
	var c config
	flag.DurationVar(&c.duration, "duration", 10*time.Minute, "how long the chaos runs")
	flag.IntVar(&c.customers, "customers", 2000, "customers exchanged at the start")
	flag.IntVar(&c.replicas, "replicas", 3, "tokenproxy processes")
	flag.DurationVar(&c.minTTL, "min-ttl", 20*time.Second, "shortest access token life")
	flag.DurationVar(&c.maxTTL, "max-ttl", 60*time.Second, "longest access token life")
	flag.DurationVar(&c.faultEvery, "fault-every", 30*time.Second, "how often walletsim's faults change")
	flag.DurationVar(&c.killEvery, "kill-every", 25*time.Second, "how often a replica is SIGKILLed (on average)")
	flag.DurationVar(&c.redisKillEvery, "redis-kill-every", 2*time.Minute, "how often redis-server is SIGKILLed (on average)")
	flag.Float64Var(&c.appRate, "app-rate", 40, "most app calls a second")
	flag.DurationVar(&c.upstreamTimeout, "upstream-timeout", 5*time.Second, "the proxies' TOKENPROXY_UPSTREAM_TIMEOUT")
	flag.StringVar(&c.tokenproxy, "tokenproxy", "bin/tokenproxy", "tokenproxy binary")
	flag.StringVar(&c.walletsim, "walletsim", "bin/walletsim", "walletsim binary")
	flag.StringVar(&c.redisServer, "redis-server", "redis-server", "redis-server binary")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s := &soak{cfg: c}
	err := s.run(ctx)
	s.stopAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

// alive, kill and term take nil for a process that never started; kill
// and term end only a process the soak started, by its own PID.
func alive(p *proc.Process) bool { return p != nil && !p.Exited() }

func kill(p *proc.Process) {
	if alive(p) {
		p.Kill()
	}
}

// term: SIGTERM, then SIGKILL after 10 s.
func term(p *proc.Process) {
	if alive(p) {
		p.Stop()
	}
}

type replica struct {
	i        int
	url, ops string
	env      []string
	mu       sync.Mutex
	p        *proc.Process
	// counters of incarnations that ended (scraped last before the kill)
	base, last map[string]float64
}

type soak struct {
	cfg      config
	dir      string
	redis    *proc.Process
	redisCmd []string
	redisURL string
	sim      *proc.Process
	simURL   string
	replicas []*replica
	mu       sync.Mutex
	events   []string
	kills    map[string]int
	faults   []string
	app      map[int]int64
	appMu    sync.Mutex
	started  time.Time
	killedAt []time.Time // replica SIGKILLs
	failed   bool
}

func (s *soak) logf(format string, args ...any) {
	line := fmt.Sprintf("%7.1fs  ", time.Since(s.started).Seconds()) + fmt.Sprintf(format, args...)
	fmt.Println(line)
	s.mu.Lock()
	s.events = append(s.events, line)
	s.mu.Unlock()
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// start starts a program with its output appended to <name>.log in the
// soak's directory.
func (s *soak) start(name, bin string, args, env []string) (*proc.Process, error) {
	f, err := os.OpenFile(filepath.Join(s.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own descriptor
	return proc.Start(name, bin, args, proc.Options{Env: env, Output: f})
}

func (s *soak) stopAll() {
	for _, r := range s.replicas {
		r.mu.Lock()
		term(r.p)
		r.mu.Unlock()
	}
	term(s.sim)
	term(s.redis)
	if s.dir != "" && os.Getenv("SOAK_KEEP") == "" && !s.failed {
		os.RemoveAll(s.dir)
	} else if s.dir != "" {
		fmt.Println("logs kept in", s.dir)
	}
}

func waitHTTP(ctx context.Context, url string, want int, d time.Duration, p *proc.Process) error {
	deadline := time.Now().Add(d)
	for {
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited", p.Name())
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		cancel()
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == want {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("GET %s: no %d within %v", url, want, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *soak) startRedis(ctx context.Context) error {
	p, err := s.start("redis", s.cfg.redisServer, s.redisCmd, nil)
	if err != nil {
		return err
	}
	s.redis = p
	addr := strings.TrimPrefix(strings.TrimSuffix(s.redisURL, "/0"), "redis://")
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(time.Second))
			fmt.Fprint(c, "PING\r\n")
			buf := make([]byte, 64)
			n, _ := c.Read(buf)
			c.Close()
			if strings.HasPrefix(string(buf[:n]), "+PONG") {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil || !alive(p) {
			return errors.New("redis-server did not answer PING")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *soak) startReplica(ctx context.Context, r *replica) error {
	p, err := s.start(fmt.Sprintf("tokenproxy-%d", r.i), s.cfg.tokenproxy, nil, r.env)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.p = p
	r.mu.Unlock()
	return waitHTTP(ctx, r.ops+"/readyz", 200, 60*time.Second, p)
}

func (s *soak) run(ctx context.Context) error {
	s.started = time.Now()
	s.kills = map[string]int{}
	s.app = map[int]int64{}
	dir, err := os.MkdirTemp("", "tokenproxy-soak-")
	if err != nil {
		return err
	}
	s.dir = dir
	keyFile, pubFile, err := keygen.WriteKeyPair(dir)
	if err != nil {
		return err
	}
	encKey := make([]byte, 32)
	_, _ = rand.Read(encKey)

	raddr, err := freeAddr()
	if err != nil {
		return err
	}
	host, port, _ := net.SplitHostPort(raddr)
	s.redisURL = "redis://" + raddr + "/0"
	s.redisCmd = []string{"--bind", host, "--port", port, "--dir", dir, "--appendonly", "yes", "--appendfsync", "always",
		"--save", "", "--daemonize", "no"}
	if err := s.startRedis(ctx); err != nil {
		return err
	}
	s.logf("redis-server on %s (appendonly yes, appendfsync always, dir %s)", raddr, dir)

	saddr, err := freeAddr()
	if err != nil {
		return err
	}
	s.simURL = "http://" + saddr
	walletPub := filepath.Join(dir, "wallet.pub")
	if s.sim, err = s.start("walletsim", s.cfg.walletsim, nil, []string{
		"WALLETSIM_LISTEN_ADDR=" + saddr, "WALLETSIM_CLIENT_PUBLIC_KEY_FILE=" + pubFile,
		"WALLETSIM_PUBLIC_KEY_OUT=" + walletPub, "WALLETSIM_CLIENT_ID=" + clientID, "WALLETSIM_LOG_LEVEL=warn",
	}); err != nil {
		return err
	}
	if err := waitHTTP(ctx, s.simURL+"/sim/stats", 200, 30*time.Second, s.sim); err != nil {
		return err
	}
	s.logf("walletsim on %s", saddr)

	for i := range s.cfg.replicas {
		la, _ := freeAddr()
		oa, _ := freeAddr()
		r := &replica{i: i + 1, url: "http://" + la, ops: "http://" + oa, base: map[string]float64{}, last: map[string]float64{}}
		r.env = []string{
			"TOKENPROXY_LISTEN_ADDR=" + la, "TOKENPROXY_OPS_ADDR=" + oa,
			"TOKENPROXY_WALLET_URL=" + s.simURL, "TOKENPROXY_CLIENT_ID=" + clientID,
			"TOKENPROXY_PRIVATE_KEY_FILE=" + keyFile, "TOKENPROXY_WALLET_PUBLIC_KEY_FILE=" + walletPub,
			"TOKENPROXY_REDIS_URL=" + s.redisURL, "TOKENPROXY_ENCRYPTION_KEYS=" + base64.StdEncoding.EncodeToString(encKey),
			"TOKENPROXY_UPSTREAM_TIMEOUT=" + s.cfg.upstreamTimeout.String(), "TOKENPROXY_LOG_LEVEL=warn",
			"TOKENPROXY_REFRESH_RATE=200",
		}
		s.replicas = append(s.replicas, r)
		if err := s.startReplica(ctx, r); err != nil {
			return err
		}
	}
	s.logf("%d tokenproxy replicas up", len(s.replicas))

	if err := s.exchangeAll(ctx); err != nil {
		return err
	}

	chaos, stopChaos := context.WithTimeout(ctx, s.cfg.duration)
	defer stopChaos()
	var wg sync.WaitGroup
	for _, f := range []func(context.Context){s.rotateFaults, s.killReplicas, s.killRedis, s.appTraffic, s.scrapeLoop} {
		wg.Add(1)
		go func() { defer wg.Done(); f(chaos) }()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return s.finish(ctx)
}

var client = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

func post(ctx context.Context, url, body string, hdr map[string]string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

func get(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return resp.StatusCode, b, err
}

func customerID(i int) string { return fmt.Sprintf("soak-%05d", i) }

// exchangeAll links every customer: an auth code from walletsim with a
// random access TTL, exchanged through a replica.
func (s *soak) exchangeAll(ctx context.Context) error {
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= s.cfg.customers || ctx.Err() != nil {
					return
				}
				ttl := s.cfg.minTTL + time.Duration(mrand.Int64N(int64(s.cfg.maxTTL-s.cfg.minTTL)+1))
				ok := false
				for range 5 {
					st, b, err := post(ctx, s.simURL+"/sim/authcodes",
						fmt.Sprintf(`{"customerId":%q,"accessTtl":%q}`, customerID(i), ttl.Round(time.Second).String()), nil)
					var code struct{ AuthCode string }
					if err != nil || st != 200 || json.Unmarshal(b, &code) != nil {
						continue
					}
					r := s.replicas[i%len(s.replicas)]
					st, _, err = post(ctx, r.url+"/v1/authorizations/applyToken",
						`{"grantType":"AUTHORIZATION_CODE","authCode":"`+code.AuthCode+`"}`, nil)
					if err == nil && st == 200 {
						ok = true
						break
					}
				}
				if !ok {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		return fmt.Errorf("%d customers could not be exchanged", failed.Load())
	}
	s.logf("%d customers exchanged (access tokens living %v to %v)", s.cfg.customers, s.cfg.minTTL, s.cfg.maxTTL)
	return nil
}

// faultSpecs are the walletsim fault rules the soak rotates through, all on
// refresh calls (and some on inquiryUserInfo). Latencies are well below or
// well above the proxies' upstream timeout, so that walletsim's idea of
// "delivered" matches the proxy's.
func (s *soak) faultSpecs() []string {
	long := (s.cfg.upstreamTimeout + 2*time.Second).String()
	return []string{
		``,
		`{"grantType":"REFRESH_TOKEN","path":"/v1/authorizations/applyToken","latency":"200ms"}`,
		`{"grantType":"REFRESH_TOKEN","path":"/v1/authorizations/applyToken","latency":"` + long + `","count":40}`,
		`{"grantType":"REFRESH_TOKEN","path":"/v1/authorizations/applyToken","unknownRate":0.3}`,
		`{"grantType":"REFRESH_TOKEN","path":"/v1/authorizations/applyToken","dropAfterProcessing":true,"count":30}`,
		`{"grantType":"REFRESH_TOKEN","path":"/v1/authorizations/applyToken","resetRate":0.3}`,
		`{"grantType":"REFRESH_TOKEN","path":"/v1/authorizations/applyToken","html5xxRate":0.3}`,
		`{"grantType":"REFRESH_TOKEN","path":"/v1/authorizations/applyToken","rateLimitPerSecond":20}`,
		`{"grantType":"REFRESH_TOKEN","path":"/v1/authorizations/applyToken","badSignatureRate":0.1}`,
		`{"grantType":"REFRESH_TOKEN","path":"/v1/authorizations/applyToken","unknownRate":0.2,"resetRate":0.1,"html5xxRate":0.1}`,
		`{"path":"/v1/users/inquiryUserInfo","latency":"100ms","html5xxRate":0.2}`,
	}
}

func (s *soak) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (s *soak) rotateFaults(ctx context.Context) {
	specs := s.faultSpecs()
	for {
		spec := specs[mrand.IntN(len(specs))]
		_ = s.simDo(ctx, http.MethodDelete, "/sim/faults", "")
		if spec != "" {
			if err := s.simDo(ctx, http.MethodPost, "/sim/faults", spec); err != nil {
				s.logf("fault %s: %v", spec, err)
			}
			s.logf("walletsim faults: %s", spec)
		} else {
			s.logf("walletsim faults: none")
		}
		s.mu.Lock()
		s.faults = append(s.faults, spec)
		s.mu.Unlock()
		if !s.sleep(ctx, s.cfg.faultEvery) {
			return
		}
	}
}

func (s *soak) simDo(ctx context.Context, method, path, body string) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, method, s.simURL+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return nil
}

func jitter(d time.Duration) time.Duration { return d/2 + time.Duration(mrand.Int64N(int64(d)+1)) }

func (s *soak) killReplicas(ctx context.Context) {
	for s.sleep(ctx, jitter(s.cfg.killEvery)) {
		r := s.replicas[mrand.IntN(len(s.replicas))]
		s.scrape(r) // its counters up to now
		r.mu.Lock()
		kill(r.p)
		s.mu.Lock()
		s.killedAt = append(s.killedAt, time.Now())
		s.mu.Unlock()
		for k, v := range r.last {
			r.base[k] += v
		}
		r.last = map[string]float64{}
		r.mu.Unlock()
		s.mu.Lock()
		s.kills[fmt.Sprintf("tokenproxy-%d", r.i)]++
		s.mu.Unlock()
		down := time.Duration(500+mrand.IntN(4500)) * time.Millisecond
		s.logf("SIGKILL tokenproxy-%d; restart in %v", r.i, down)
		time.Sleep(down)
		if err := s.startReplica(context.WithoutCancel(ctx), r); err != nil {
			s.logf("restart tokenproxy-%d: %v", r.i, err)
		}
	}
}

func (s *soak) killRedis(ctx context.Context) {
	for s.sleep(ctx, jitter(s.cfg.redisKillEvery)) {
		kill(s.redis)
		s.mu.Lock()
		s.kills["redis-server"]++
		s.mu.Unlock()
		down := time.Duration(500+mrand.IntN(7500)) * time.Millisecond
		s.logf("SIGKILL redis-server; restart in %v", down)
		time.Sleep(down)
		if err := s.startRedis(context.WithoutCancel(ctx)); err != nil {
			s.logf("restart redis-server: %v", err)
		}
	}
}

// appTraffic calls inquiryUserInfo for random customers through random
// replicas, at most appRate a second, four at a time.
func (s *soak) appTraffic(ctx context.Context) {
	var wg sync.WaitGroup
	every := time.Duration(float64(time.Second) / s.cfg.appRate * 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s.sleep(ctx, every) {
				r := s.replicas[mrand.IntN(len(s.replicas))]
				id := customerID(mrand.IntN(s.cfg.customers))
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				st, _, err := post(rctx, r.url+"/v1/users/inquiryUserInfo", `{}`, map[string]string{"X-Customer-Id": id})
				cancel()
				if err != nil {
					st = 0
				}
				s.appMu.Lock()
				s.app[st]++
				s.appMu.Unlock()
			}
		}()
	}
	wg.Wait()
}

var metricNames = []string{"tokenproxy_refreshes_total", "tokenproxy_lost_rotations_total"}

// scrape reads a replica's counters of interest (summed over labels but
// result) into r.last.
func (s *soak) scrape(r *replica) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, b, err := get(ctx, r.ops+"/metrics")
	if err != nil || st != 200 {
		return
	}
	cur := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		for _, name := range metricNames {
			if !strings.HasPrefix(line, name) {
				continue
			}
			key := name
			if i := strings.Index(line, `result="`); i >= 0 {
				j := strings.IndexByte(line[i+8:], '"')
				key += "{" + line[i+8:i+8+j] + "}"
			}
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err == nil {
				cur[key] += v
			}
		}
	}
	r.mu.Lock()
	r.last = cur
	r.mu.Unlock()
}

func (s *soak) scrapeLoop(ctx context.Context) {
	for s.sleep(ctx, 2*time.Second) {
		for _, r := range s.replicas {
			r.mu.Lock()
			up := alive(r.p)
			r.mu.Unlock()
			if up {
				s.scrape(r)
			}
		}
	}
}

func (s *soak) finish(ctx context.Context) error {
	s.logf("chaos over: faults cleared, every process up; forcing one refresh of every customer")
	_ = s.simDo(ctx, http.MethodDelete, "/sim/faults", "")
	if !alive(s.redis) {
		if err := s.startRedis(ctx); err != nil {
			return err
		}
	}
	for _, r := range s.replicas {
		r.mu.Lock()
		up := alive(r.p)
		r.mu.Unlock()
		if !up {
			if err := s.startReplica(ctx, r); err != nil {
				return err
			}
		}
	}
	// Let pending writes land and cooldowns (at most 30 s) pass.
	s.sleep(ctx, 35*time.Second)

	states := map[string]int{}
	forced := map[int]int{}
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= s.cfg.customers {
					return
				}
				r := s.replicas[i%len(s.replicas)]
				rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				st, _, _ := post(rctx, r.url+"/tokenproxy/customers/"+customerID(i)+"/refresh", ``, nil)
				_, b, _ := get(rctx, r.url+"/tokenproxy/customers/"+customerID(i))
				cancel()
				var status struct {
					State     string  `json:"state"`
					LastError *string `json:"lastError"`
				}
				_ = json.Unmarshal(b, &status)
				key := status.State
				if status.LastError != nil && status.State == "reauthorization_required" {
					key += " (" + *status.LastError + ")"
				}
				if key == "" {
					key = "unknown"
				}
				mu.Lock()
				states[key]++
				forced[st]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, r := range s.replicas {
		s.scrape(r)
	}

	var l walletsim.Ledger
	st, b, err := get(ctx, s.simURL+"/sim/ledger")
	if err != nil || st != 200 || json.Unmarshal(b, &l) != nil {
		return fmt.Errorf("read walletsim's ledger: %d %v", st, err)
	}
	var stats struct {
		Calls                map[string]map[string]int64 `json:"calls"`
		RefreshTokensReused  int64                       `json:"refreshTokensReused"`
		RefreshPresentations int64                       `json:"refreshPresentations"`
		Refreshes            int64                       `json:"refreshes"`
		FaultsMatched        int64                       `json:"faultsMatched"`
		Abandoned            int64                       `json:"abandoned"`
	}
	_, b, _ = get(ctx, s.simURL+"/sim/stats")
	_ = json.Unmarshal(b, &stats)

	proxy := map[string]float64{}
	for _, r := range s.replicas {
		r.mu.Lock()
		for k, v := range r.base {
			proxy[k] += v
		}
		for k, v := range r.last {
			proxy[k] += v
		}
		r.mu.Unlock()
	}

	var out bytes.Buffer
	fmt.Fprintf(&out, "\n## Soak result\n\n")
	fmt.Fprintf(&out, "duration %v, %d customers (access TTL %v-%v), %d replicas, upstream timeout %v\n",
		s.cfg.duration, s.cfg.customers, s.cfg.minTTL, s.cfg.maxTTL, s.cfg.replicas, s.cfg.upstreamTimeout)
	s.mu.Lock()
	kills := make([]string, 0, len(s.kills))
	for k, v := range s.kills {
		kills = append(kills, fmt.Sprintf("%s x%d", k, v))
	}
	sort.Strings(kills)
	fmt.Fprintf(&out, "SIGKILLs: %s; fault specs applied: %d\n", strings.Join(kills, ", "), len(s.faults))
	s.mu.Unlock()
	fmt.Fprintf(&out, "\nwalletsim ledger:\n")
	fmt.Fprintf(&out, "  refresh presentations (processed)         %d\n", l.Presentations)
	fmt.Fprintf(&out, "  re-presentations                          %d\n", l.Represented)
	fmt.Fprintf(&out, "    after an unknown outcome                %d\n", l.Represented-l.RepresentedAfterKnown)
	fmt.Fprintf(&out, "    after a known outcome (see below)       %d\n", l.RepresentedAfterKnown)
	fmt.Fprintf(&out, "  overlapping presentations (must be 0)     %d\n", l.Overlapping)
	fmt.Fprintf(&out, "  answers processed but not delivered       %d\n", l.Undelivered)
	fmt.Fprintf(&out, "  lost rotations (USED after undelivered S) %d\n", l.LostRotations)
	fmt.Fprintf(&out, "  S pairs lost (USED after delivered S)     %d\n", l.SPairsLost)
	// A replica SIGKILLed after a known answer reached it and before it
	// recorded it (at once, or, if Redis was down, once Redis is back)
	// loses that outcome with it: nothing could record it, and another
	// replica presents the token again after the lease and its grace.
	// walletsim may also still write answers into a killed replica's
	// connections for a moment after the kill (its requests were queued).
	// The ledger cannot tell which replica got an answer; the kill times
	// bound it: a re-presentation after a known outcome is explained only
	// if a replica was SIGKILLed between the delivery (less a second) and
	// the re-presentation.
	withCrash := 0
	s.mu.Lock()
	for _, lp := range l.AfterKnown {
		var kill time.Time
		for _, k := range s.killedAt {
			if !k.Before(lp.DeliveredAt.Add(-time.Second)) && k.Before(lp.RepresentedAt) {
				kill = k
				break
			}
		}
		what := "no replica SIGKILL in between"
		if !kill.IsZero() {
			what = fmt.Sprintf("a replica SIGKILLed at %s", kill.Format("15:04:05.000"))
			withCrash++
		}
		fmt.Fprintf(&out, "    %s: answer delivered at %s, presented again at %s; %s\n", lp.CustomerID,
			lp.DeliveredAt.Format("15:04:05.000"), lp.RepresentedAt.Format("15:04:05.000"), what)
	}
	s.mu.Unlock()
	fmt.Fprintf(&out, "  re-presentations after a known outcome    %d\n", l.RepresentedAfterKnown)
	fmt.Fprintf(&out, "    a replica SIGKILLed in between          %d\n", withCrash)
	fmt.Fprintf(&out, "    otherwise (must be 0)                   %d\n", l.RepresentedAfterKnown-int64(withCrash))
	fmt.Fprintf(&out, "walletsim stats: refresh calls %d, S refreshes %d, USED_REFRESH_TOKEN %d, faults matched %d, abandoned %d\n",
		stats.Calls["/v1/authorizations/applyToken"]["REFRESH_TOKEN"], stats.Refreshes, stats.RefreshTokensReused, stats.FaultsMatched, stats.Abandoned)
	fmt.Fprintf(&out, "\ntokenproxy counters (summed over replicas and their incarnations, scraped every 2s):\n")
	keys := make([]string, 0, len(proxy))
	for k := range proxy {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&out, "  %-52s %.0f\n", k, proxy[k])
	}
	fmt.Fprintf(&out, "\napp calls by HTTP status (0: no answer):")
	s.appMu.Lock()
	codes := make([]int, 0, len(s.app))
	for c := range s.app {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	for _, c := range codes {
		fmt.Fprintf(&out, " %d: %d", c, s.app[c])
	}
	s.appMu.Unlock()
	fmt.Fprintf(&out, "\nfinal forced refresh by HTTP status:")
	fcodes := make([]int, 0, len(forced))
	for c := range forced {
		fcodes = append(fcodes, c)
	}
	sort.Ints(fcodes)
	for _, c := range fcodes {
		fmt.Fprintf(&out, " %d: %d", c, forced[c])
	}
	fmt.Fprintf(&out, "\ncustomers after it:\n")
	skeys := make([]string, 0, len(states))
	for k := range states {
		skeys = append(skeys, k)
	}
	sort.Strings(skeys)
	for _, k := range skeys {
		fmt.Fprintf(&out, "  %-50s %d\n", k, states[k])
	}
	fmt.Print(out.String())
	// Every S pair lost is a re-presentation after a known outcome: those
	// not explained by a SIGKILL are violations.
	if l.RepresentedAfterKnown-int64(withCrash) != 0 || l.Overlapping != 0 || l.SPairsLost > l.RepresentedAfterKnown {
		s.failed = true
		return errors.New("exactly-once violated: see the ledger above")
	}
	return nil
}
