// Command proxy is the hot-path benchmark that `make bench-proxy` runs: in
// one run, on loopback ports of its own, it measures side by side, at the
// same concurrency and in alternation (A B C A B C ...):
//
//	A  app -> tokenproxy -> walletsim
//	B  app -> diy (a do-it-yourself signing proxy holding one token) -> walletsim
//	C  app -> bare (a two-hop httputil.ReverseProxy, no signing) -> walletsim
//
// over plain HTTP and over TLS to the wallet (walletsim's HTTPS listener,
// trusted through SSL_CERT_FILE), with tokenproxy's memory store and with
// Redis (a redis-server it starts), and with the memory store also through
// tokenproxy's Unix socket listener. A, B and C make the same wallet call
// (inquiryUserInfo with a valid token): walletsim verifies and signs every
// one. While one proxy is measured the other proxies of its group are
// paused (SIGSTOP, by PID), so that their idle work does not load the
// machine; tokenproxy's own idle work (its refresh scheduler) counts in
// its phases.
//
// It prints, per variant, medians over the rounds: calls/s, p50 and p99
// latency, CPU per call of the proxy process (/proc utime+stime), the same
// without the RSA share (one signature and one verification, timed in this
// process by a calibration loop each round), allocations per call (the
// proxy's malloc counter), Redis commands per call (INFO commandstats),
// TLS handshakes per 1,000 calls (walletsim's tlsHandshakes), peak RSS
// (VmHWM) and, for tokenproxy, the time from exec to /readyz 200; then the
// issue's targets as ratios measured in the same rounds.
//
// Every process it starts is stopped by its PID (SIGTERM, then SIGKILL
// after 10 s), on errors and on Ctrl-C too. docs/benchmarks.md shows a run.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenproxy/tokenproxy/internal/keygen"
	"github.com/tokenproxy/tokenproxy/internal/proc"
	"github.com/tokenproxy/tokenproxy/wallet"
)

const (
	clientID = "BENCH_CLIENT"
	apiPath  = "/v1/users/inquiryUserInfo"
	customer = "bench-a"
)

type config struct {
	duration    time.Duration
	warmup      time.Duration
	rounds      int
	concurrency int
	stores      string
	wallets     string
	tokenproxy  string
	baseline    string
	walletsim   string
	diy         string
	bare        string
	redisServer string
	keep        bool
}

func main() {
	var c config
	flag.DurationVar(&c.duration, "duration", 2*time.Second, "measured time of each phase")
	flag.DurationVar(&c.warmup, "warmup", 500*time.Millisecond, "unmeasured calls before each phase")
	flag.IntVar(&c.rounds, "rounds", 3, "rounds of A B C (medians are over the rounds)")
	flag.IntVar(&c.concurrency, "concurrency", 32, "callers at once, in every phase")
	flag.StringVar(&c.stores, "stores", "memory,redis", "tokenproxy stores to measure")
	flag.StringVar(&c.wallets, "wallets", "http,https", "ways to reach the wallet")
	flag.StringVar(&c.tokenproxy, "tokenproxy", "bin/tokenproxy", "tokenproxy binary")
	flag.StringVar(&c.baseline, "baseline", "", "another tokenproxy binary (an earlier build) measured in the same rounds as \"A0 baseline\"; empty: none")
	flag.StringVar(&c.walletsim, "walletsim", "bin/walletsim", "walletsim binary")
	flag.StringVar(&c.diy, "diy", "bin/bench-diy", "the do-it-yourself signing proxy (internal/bench/proxy/diy)")
	flag.StringVar(&c.bare, "bare", "bin/bench-bare", "the bare two-hop proxy (internal/bench/proxy/bare)")
	flag.StringVar(&c.redisServer, "redis-server", "redis-server", "redis-server binary (looked up in PATH)")
	flag.BoolVar(&c.keep, "keep", false, "keep the temporary directory (keys, process logs) and print its path")
	proc.ParseFlags("bench-proxy", c.check)
	os.Exit(run(c))
}

func (c *config) check() error {
	switch {
	case c.duration <= 0 || c.warmup < 0:
		return errors.New("-duration must be positive, -warmup not negative")
	case c.rounds < 1 || c.rounds > 20:
		return errors.New("-rounds must be 1 to 20")
	case c.concurrency < 1 || c.concurrency > 512:
		return errors.New("-concurrency must be 1 to 512")
	}
	for _, s := range strings.Split(c.stores, ",") {
		if s != "memory" && s != "redis" {
			return fmt.Errorf("-stores: %q is neither memory nor redis", s)
		}
	}
	for _, w := range strings.Split(c.wallets, ",") {
		if w != "http" && w != "https" {
			return fmt.Errorf("-wallets: %q is neither http nor https", w)
		}
	}
	for _, bin := range []*string{&c.tokenproxy, &c.baseline, &c.walletsim, &c.diy, &c.bare} {
		if *bin == "" && bin == &c.baseline {
			continue
		}
		abs, err := filepath.Abs(*bin)
		if err != nil {
			return err
		}
		if _, err := os.Stat(abs); err != nil {
			return fmt.Errorf("%w (run `make bench-proxy`, which builds it)", err)
		}
		*bin = abs
	}
	if strings.Contains(c.stores, "redis") {
		p, err := exec.LookPath(c.redisServer)
		if err != nil {
			return fmt.Errorf("%w (install it with `apt-get install -y redis-server`)", err)
		}
		if c.redisServer, err = filepath.Abs(p); err != nil {
			return err
		}
	}
	return nil
}

func run(c config) int {
	ctx, stopSignals := proc.Interruptible()
	defer stopSignals()

	b := &bench{cfg: c, ops: &http.Client{Timeout: 10 * time.Second}}
	defer b.cleanup()
	rep, err := b.run(ctx)
	b.stopAll()
	if err != nil {
		return proc.Failed(ctx, "bench-proxy", err, b.showLogs)
	}
	rep.print(os.Stdout)
	return 0
}

type bench struct {
	cfg   config
	dir   string
	procs []*child
	ops   *http.Client // for /readyz, /metrics, /sim/*: trusts walletsim's certificate

	keyFile, pubFile string
	merchantKey      *rsa.PrivateKey
	walletPub        *rsa.PublicKey
	simPubFile       string
	certFile         string
	encKey           string
	sims             map[string]string // "http"/"https" -> walletsim base URL
	rdb              *redis.Client
	redisAddr        string
	tokens           map[string]string // "http"/"https" -> a seeded access token (B and C)
}

// variant is one proxy of a group under measurement.
type variant struct {
	name    string // "A tokenproxy", "A tokenproxy unix", "B diy", "C bare"
	p       *child
	target  target
	mallocs func(context.Context) (float64, error)
	rsa     bool // signs and verifies (A, B)
	tp      bool // a tokenproxy
	ready   time.Duration
	// presign makes the target's header and body afresh (C: the app signs).
	presign func() (http.Header, []byte, error)
}

// sample is one phase of one variant.
type sample struct {
	load       loadResult
	cpu        float64 // seconds of the proxy process
	rsa        float64 // seconds of one sign + verify, this round
	mallocs    float64
	redisCmds  map[string]float64
	handshakes float64
}

func (s sample) calls() float64 { return float64(s.load.ok + s.load.failed) }
func (s sample) rate() float64  { return float64(s.load.ok) / s.load.wall.Seconds() }
func (s sample) cpuPerCall() float64 {
	if s.calls() == 0 {
		return 0
	}
	return s.cpu / s.calls()
}

type groupResult struct {
	store, wallet string
	variants      []*variant
	samples       map[string][]sample // by variant name, one per round
	rssKiB        map[string]int64
	load          []string // load average at the start of each round
}

type report struct {
	cfg     config
	started time.Time
	ended   time.Time
	version string
	redis   string
	groups  []*groupResult
}

func (b *bench) run(ctx context.Context) (*report, error) {
	c := b.cfg
	rep := &report{cfg: c, started: time.Now()}
	var err error
	if b.dir, err = os.MkdirTemp("", "tokenproxy-bench-proxy-"); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, c.tokenproxy, "version").Output(); err == nil {
		rep.version = strings.TrimSpace(string(out))
	}
	if b.keyFile, b.pubFile, err = keygen.WriteKeyPair(b.dir); err != nil {
		return nil, err
	}
	raw, _ := os.ReadFile(b.keyFile)
	if b.merchantKey, err = wallet.ParsePrivateKey(raw); err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	b.encKey = base64.StdEncoding.EncodeToString(key)
	b.certFile = filepath.Join(b.dir, "walletsim.crt")
	b.simPubFile = filepath.Join(b.dir, "wallet-public.pem")
	walletPriv := filepath.Join(b.dir, "wallet-private.pem")
	if err := writeWalletKey(walletPriv, b.simPubFile); err != nil {
		return nil, err
	}
	raw, _ = os.ReadFile(b.simPubFile)
	if b.walletPub, err = wallet.ParsePublicKey(raw); err != nil {
		return nil, err
	}

	// walletsim: one over HTTP, one over HTTPS, the same keys.
	b.sims = map[string]string{}
	for _, scheme := range strings.Split(c.wallets, ",") {
		ports, err := proc.FreePorts(1)
		if err != nil {
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
		env := []string{
			"WALLETSIM_LISTEN_ADDR=" + addr,
			"WALLETSIM_CLIENT_PUBLIC_KEY_FILE=" + b.pubFile,
			"WALLETSIM_PRIVATE_KEY_FILE=" + walletPriv,
			"WALLETSIM_CLIENT_ID=" + clientID,
			"WALLETSIM_LOG_LEVEL=warn",
		}
		if scheme == "https" {
			env = append(env, "WALLETSIM_TLS_CERT_OUT="+b.certFile)
		}
		p, err := b.startProc("walletsim-"+scheme, c.walletsim, nil, env)
		if err != nil {
			return nil, err
		}
		if scheme == "https" {
			if _, err := waitUntil(ctx, 20*time.Second, p, func() bool { _, err := os.Stat(b.certFile); return err == nil }); err != nil {
				return nil, err
			}
			if err := b.trustCert(); err != nil {
				return nil, err
			}
		}
		base := scheme + "://" + addr
		if _, err := waitUntil(ctx, 20*time.Second, p, func() bool { return b.get(ctx, base+"/sim/stats", nil) == nil }); err != nil {
			return nil, err
		}
		b.sims[scheme] = base
	}

	// Tokens for B and C: seeded, no exchange needed.
	b.tokens = map[string]string{}
	for scheme, base := range b.sims {
		tok, err := b.seedToken(ctx, base)
		if err != nil {
			return nil, err
		}
		b.tokens[scheme] = tok
	}

	if strings.Contains(c.stores, "redis") {
		ports, err := proc.FreePorts(1)
		if err != nil {
			return nil, err
		}
		b.redisAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
		rp, err := b.startProc("redis-server", c.redisServer, []string{
			"--bind", "127.0.0.1", "--port", strconv.Itoa(ports[0]),
			"--save", "", "--appendonly", "no", "--dir", b.dir, "--daemonize", "no",
		}, nil)
		if err != nil {
			return nil, err
		}
		b.rdb = redis.NewClient(&redis.Options{Addr: b.redisAddr, MaxRetries: -1, DialTimeout: time.Second})
		defer b.rdb.Close()
		if _, err := waitUntil(ctx, 10*time.Second, rp, func() bool { return b.rdb.Ping(ctx).Err() == nil }); err != nil {
			return nil, err
		}
		if out, err := exec.CommandContext(ctx, c.redisServer, "--version").Output(); err == nil {
			rep.redis = strings.TrimSpace(string(out))
		}
	}

	for _, store := range strings.Split(c.stores, ",") {
		for _, scheme := range strings.Split(c.wallets, ",") {
			g, err := b.runGroup(ctx, store, scheme)
			if err != nil {
				return nil, fmt.Errorf("%s store, %s wallet: %w", store, scheme, err)
			}
			rep.groups = append(rep.groups, g)
		}
	}
	rep.ended = time.Now()
	return rep, nil
}

// writeWalletKey makes walletsim's RSA key, so that the benchmark knows
// the public half before walletsim runs.
func writeWalletKey(priv, pub string) error {
	dir, err := os.MkdirTemp(filepath.Dir(priv), "walletkey-")
	if err != nil {
		return err
	}
	k, p, err := keygen.WriteKeyPair(dir)
	if err != nil {
		return err
	}
	if err := os.Rename(k, priv); err != nil {
		return err
	}
	return os.Rename(p, pub)
}

func (b *bench) trustCert() error {
	pemBytes, err := os.ReadFile(b.certFile)
	if err != nil {
		return err
	}
	tr, err := certTransport(pemBytes)
	if err != nil {
		return err
	}
	b.ops = &http.Client{Timeout: 10 * time.Second, Transport: tr}
	return nil
}

func (b *bench) seedToken(ctx context.Context, base string) (string, error) {
	body, err := b.post(ctx, base+"/sim/seed", []byte(`{"count":1,"prefix":"bench-seed-"}`))
	if err != nil {
		return "", fmt.Errorf("seed a token: %w", err)
	}
	var pair struct {
		AccessToken string `json:"accessToken"`
	}
	line, _, _ := bytes.Cut(body, []byte("\n"))
	if err := json.Unmarshal(line, &pair); err != nil || pair.AccessToken == "" {
		return "", fmt.Errorf("seed a token: no accessToken in the answer")
	}
	return pair.AccessToken, nil
}

// runGroup starts the proxies of one store × wallet, runs the rounds and
// stops them.
func (b *bench) runGroup(ctx context.Context, store, scheme string) (*groupResult, error) {
	c := b.cfg
	g := &groupResult{store: store, wallet: scheme, samples: map[string][]sample{}, rssKiB: map[string]int64{}}
	logf("group: %s store, wallet over %s", store, scheme)
	walletURL := b.sims[scheme]
	extraEnv := []string{}
	if scheme == "https" {
		extraEnv = append(extraEnv, "SSL_CERT_FILE="+b.certFile)
	}
	name := func(s string) string { return fmt.Sprintf("%s-%s-%s", s, store, scheme) }

	// A: tokenproxy over TCP, and over a Unix socket with the memory store.
	listeners := []string{"tcp"}
	if store == "memory" {
		listeners = append(listeners, "unix")
	}
	for _, l := range listeners {
		label := "A tokenproxy"
		if l == "unix" {
			label = "A tokenproxy unix"
		}
		v, err := b.startTokenproxy(ctx, c.tokenproxy, label, name("tokenproxy-"+l), store, walletURL, l, extraEnv)
		if err != nil {
			return nil, err
		}
		g.variants = append(g.variants, v)
	}
	if c.baseline != "" {
		v, err := b.startTokenproxy(ctx, c.baseline, "A0 baseline", name("baseline"), store, walletURL, "tcp", extraEnv)
		if err != nil {
			return nil, err
		}
		g.variants = append(g.variants, v)
	}
	// B: diy.
	{
		ports, err := proc.FreePorts(1)
		if err != nil {
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
		tokFile := filepath.Join(b.dir, name("diy")+".token")
		if err := os.WriteFile(tokFile, []byte(b.tokens[scheme]), 0o600); err != nil {
			return nil, err
		}
		p, err := b.startProc(name("diy"), c.diy, []string{"-listen", addr, "-wallet", walletURL, "-client-id", clientID,
			"-key", b.keyFile, "-wallet-public-key", b.simPubFile, "-token-file", tokFile}, extraEnv)
		if err != nil {
			return nil, err
		}
		if _, err := waitUntil(ctx, 20*time.Second, p, func() bool { return b.get(ctx, "http://"+addr+"/_bench/mallocs", nil) == nil }); err != nil {
			return nil, err
		}
		g.variants = append(g.variants, &variant{name: "B diy", p: p, rsa: true,
			target:  target{client: appClient(c.concurrency, ""), url: "http://" + addr + apiPath, body: []byte(`{}`), header: jsonHeader()},
			mallocs: b.counter("http://" + addr + "/_bench/mallocs")})
	}
	// C: bare, the app signs.
	{
		ports, err := proc.FreePorts(1)
		if err != nil {
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
		p, err := b.startProc(name("bare"), c.bare, []string{"-listen", addr, "-wallet", walletURL}, extraEnv)
		if err != nil {
			return nil, err
		}
		if _, err := waitUntil(ctx, 20*time.Second, p, func() bool { return b.get(ctx, "http://"+addr+"/_bench/mallocs", nil) == nil }); err != nil {
			return nil, err
		}
		tok := b.tokens[scheme]
		g.variants = append(g.variants, &variant{name: "C bare", p: p,
			target:  target{client: appClient(c.concurrency, ""), url: "http://" + addr + apiPath},
			mallocs: b.counter("http://" + addr + "/_bench/mallocs"),
			presign: func() (http.Header, []byte, error) { return b.presign(tok) }})
	}
	defer func() {
		ps := make([]*child, len(g.variants))
		for i, v := range g.variants {
			ps[i] = v.p
		}
		proc.StopAll(ps) // paused ones too: SIGCONT first
	}()

	// Warm-up of every variant (connections, the token's first lookup),
	// then every proxy paused until its phase.
	for _, v := range g.variants {
		if v.presign != nil {
			h, body, err := v.presign()
			if err != nil {
				return nil, err
			}
			v.target.header, v.target.body = h, body
		}
		if res := runLoad(ctx, v.target, c.concurrency, max(c.warmup, time.Second)); res.ok == 0 {
			return nil, fmt.Errorf("%s: no successful call in the warm-up (%d failed: %s)", v.name, res.failed, res.firstErr)
		}
		_ = v.p.Signal(syscall.SIGSTOP)
	}

	for round := range c.rounds {
		g.load = append(g.load, loadAvg())
		rsa := b.calibrateRSA()
		for _, v := range g.variants {
			s, err := b.phase(ctx, g, v, rsa)
			if err != nil {
				return nil, err
			}
			g.samples[v.name] = append(g.samples[v.name], s)
			logf("  round %d %-18s %7.0f calls/s  p50 %6s  p99 %6s  CPU %5.0f µs/call (RSA %4.0f)  failed %d",
				round+1, v.name, s.rate(), s.load.quantile(.5).Round(10*time.Microsecond), s.load.quantile(.99).Round(10*time.Microsecond),
				1e6*s.cpuPerCall(), 1e6*s.rsa, s.load.failed)
		}
	}
	for _, v := range g.variants {
		g.rssKiB[v.name] = proc.PeakRSSKiB(v.p.PID())
	}
	return g, nil
}

func jsonHeader() http.Header {
	return http.Header{"Content-Type": {"application/json"}}
}

// startTokenproxy starts one tokenproxy, exchanges the benchmark's
// customer through it and returns its variant, ready time included.
func (b *bench) startTokenproxy(ctx context.Context, bin, label, name, store, walletURL, listener string, extraEnv []string) (*variant, error) {
	c := b.cfg
	ports, err := proc.FreePorts(2)
	if err != nil {
		return nil, err
	}
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	ops := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	socket := ""
	listenAddr := listen
	if listener == "unix" {
		socket = filepath.Join(b.dir, name+".sock")
		listenAddr = "unix:" + socket
	}
	env := append([]string{
		"TOKENPROXY_LISTEN_ADDR=" + listenAddr,
		"TOKENPROXY_OPS_ADDR=" + ops,
		"TOKENPROXY_WALLET_URL=" + walletURL,
		"TOKENPROXY_CLIENT_ID=" + clientID,
		"TOKENPROXY_PRIVATE_KEY_FILE=" + b.keyFile,
		"TOKENPROXY_WALLET_PUBLIC_KEY_FILE=" + b.simPubFile,
		"TOKENPROXY_LOG_LEVEL=warn",
	}, extraEnv...)
	if store == "redis" {
		env = append(env, "TOKENPROXY_REDIS_URL=redis://"+b.redisAddr+"/0",
			"TOKENPROXY_ENCRYPTION_KEYS="+b.encKey, "TOKENPROXY_KEY_PREFIX="+name+":")
	}
	p, err := b.startProc(name, bin, nil, env)
	if err != nil {
		return nil, err
	}
	ready, err := waitUntil(ctx, 30*time.Second, p, func() bool { return b.get(ctx, "http://"+ops+"/readyz", nil) == nil })
	if err != nil {
		return nil, err
	}
	client := appClient(c.concurrency, socket)
	base := "http://" + listen
	if socket != "" {
		base = "http://unix"
	}
	// The customer's tokens, through this tokenproxy's own exchange.
	var code struct{ AuthCode string }
	simBase := strings.TrimSuffix(walletURL, "/")
	out, err := b.post(ctx, simBase+"/sim/authcodes", []byte(`{"customerId":"`+customer+`"}`))
	if err != nil || json.Unmarshal(out, &code) != nil || code.AuthCode == "" {
		return nil, fmt.Errorf("authcode: %v %s", err, out)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/authorizations/applyToken",
		strings.NewReader(`{"grantType":"AUTHORIZATION_CODE","authCode":"`+code.AuthCode+`"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("exchange through %s: %w", name, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, success) {
		return nil, fmt.Errorf("exchange through %s: %d %s", name, resp.StatusCode, body)
	}
	h := jsonHeader()
	h.Set("X-Customer-Id", customer)
	return &variant{name: label, p: p, rsa: true, tp: true, ready: ready,
		target:  target{client: client, url: base + apiPath, body: []byte(`{}`), header: h},
		mallocs: b.metric("http://"+ops+"/metrics", "go_memstats_mallocs_total")}, nil
}

// presign makes the request the app sends through the bare proxy: the
// token in the body, signed as the wallet wants it, valid for the phase
// (walletsim accepts a Request-Time within 10 minutes).
func (b *bench) presign(token string) (http.Header, []byte, error) {
	body := []byte(`{"accessToken":"` + token + `"}`)
	rt := wallet.FormatTime(time.Now())
	sig, err := wallet.Sign(b.merchantKey, wallet.SigningContent(http.MethodPost, apiPath, clientID, rt, body))
	if err != nil {
		return nil, nil, err
	}
	h := jsonHeader()
	h.Set(wallet.HeaderClientID, clientID)
	h.Set(wallet.HeaderRequestTime, rt)
	h.Set(wallet.HeaderSignature, wallet.FormatSignatureHeader("1", sig))
	return h, body, nil
}

// phase measures one variant: resume it, warm up, read the counters, run
// the load, read them again, pause it.
func (b *bench) phase(ctx context.Context, g *groupResult, v *variant, rsa float64) (sample, error) {
	c := b.cfg
	if v.presign != nil {
		h, body, err := v.presign()
		if err != nil {
			return sample{}, err
		}
		v.target.header, v.target.body = h, body
	}
	if err := v.p.Signal(syscall.SIGCONT); err != nil {
		return sample{}, err
	}
	defer func() { _ = v.p.Signal(syscall.SIGSTOP) }()
	if c.warmup > 0 {
		runLoad(ctx, v.target, c.concurrency, c.warmup)
	}
	s := sample{rsa: 0}
	if v.rsa {
		s.rsa = rsa
	}
	hs0, err := b.handshakes(ctx, g.wallet)
	if err != nil {
		return s, err
	}
	// Two reads: the second tells what one read of the counter costs the
	// process (a /metrics page allocates), which is not the calls'.
	mRead, err := v.mallocs(ctx)
	if err != nil {
		return s, err
	}
	m0, err := v.mallocs(ctx)
	if err != nil {
		return s, err
	}
	r0, err := b.redisCommands(ctx)
	if err != nil {
		return s, err
	}
	cpu0, err := proc.CPUSeconds(v.p.PID())
	if err != nil {
		return s, err
	}
	s.load = runLoad(ctx, v.target, c.concurrency, c.duration)
	cpu1, err := proc.CPUSeconds(v.p.PID())
	if err != nil {
		return s, err
	}
	r1, err := b.redisCommands(ctx)
	if err != nil {
		return s, err
	}
	m1, err := v.mallocs(ctx)
	if err != nil {
		return s, err
	}
	hs1, err := b.handshakes(ctx, g.wallet)
	if err != nil {
		return s, err
	}
	if s.load.ok == 0 {
		return s, fmt.Errorf("%s: no successful call (%d failed: %s)", v.name, s.load.failed, s.load.firstErr)
	}
	s.cpu = cpu1 - cpu0
	s.mallocs = m1 - m0 - (m0 - mRead)
	s.handshakes = hs1 - hs0
	s.redisCmds = map[string]float64{}
	for k, n := range r1 {
		if d := n - r0[k]; d > 0 && k != "info" {
			s.redisCmds[k] = d
		}
	}
	return s, nil
}

// calibrateRSA times one merchant signature and one verification of a
// wallet answer in this process, on one locked thread (its CPU time).
func (b *bench) calibrateRSA() float64 {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	content := wallet.SigningContent(http.MethodPost, apiPath, clientID, wallet.FormatTime(time.Now()),
		[]byte(`{"accessToken":"`+strings.Repeat("x", 40)+`"}`))
	sig, _ := wallet.Sign(b.merchantKey, content)
	const n = 40
	t0 := threadCPU()
	for range n {
		_, _ = wallet.Sign(b.merchantKey, content)
		_ = wallet.Verify(&b.merchantKey.PublicKey, content, sig)
	}
	return (threadCPU() - t0) / n
}

// threadCPU is the calling thread's user+system time in seconds.
func threadCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// handshakes is the scheme's walletsim's tlsHandshakes (0 over HTTP).
func (b *bench) handshakes(ctx context.Context, scheme string) (float64, error) {
	if scheme != "https" {
		return 0, nil
	}
	var st struct {
		TLSHandshakes *float64 `json:"tlsHandshakes"`
	}
	if err := b.get(ctx, b.sims[scheme]+"/sim/stats", &st); err != nil {
		return 0, err
	}
	if st.TLSHandshakes == nil {
		return 0, errors.New("walletsim's /sim/stats has no tlsHandshakes: rebuild it")
	}
	return *st.TLSHandshakes, nil
}

// redisCommands is INFO commandstats: calls by command (nil without Redis).
func (b *bench) redisCommands(ctx context.Context) (map[string]float64, error) {
	if b.rdb == nil {
		return nil, nil
	}
	info, err := b.rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		name, rest, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		name, isCmd := strings.CutPrefix(name, "cmdstat_")
		if !ok || !isCmd {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, _ := strconv.ParseFloat(v, 64)
				out[name] = n
			}
		}
	}
	return out, nil
}

// metric reads an unlabelled series from a /metrics page.
func (b *bench) metric(url, name string) func(context.Context) (float64, error) {
	return func(ctx context.Context) (float64, error) {
		body, err := b.getRaw(ctx, url)
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return strconv.ParseFloat(strings.TrimSpace(v), 64)
			}
		}
		return 0, fmt.Errorf("no %s in %s", name, url)
	}
}

// counter reads a page holding one number.
func (b *bench) counter(url string) func(context.Context) (float64, error) {
	return func(ctx context.Context) (float64, error) {
		body, err := b.getRaw(ctx, url)
		if err != nil {
			return 0, err
		}
		return strconv.ParseFloat(strings.TrimSpace(string(body)), 64)
	}
}

func (b *bench) stopAll() { proc.StopAll(b.procs) }

func (b *bench) cleanup() { proc.Cleanup(b.procs, b.dir, b.cfg.keep, "bench-proxy") }

func (b *bench) showLogs() { proc.ShowLogs(os.Stderr, b.procs, 2048) }

// ---- HTTP to the processes' test and ops endpoints ----

func (b *bench) get(ctx context.Context, url string, out any) error {
	body, err := b.getRaw(ctx, url)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(body, out)
}

func (b *bench) getRaw(ctx context.Context, url string) ([]byte, error) {
	return proc.Fetch(ctx, b.ops, http.MethodGet, url, nil)
}

func (b *bench) post(ctx context.Context, url string, body []byte) ([]byte, error) {
	return proc.Fetch(ctx, b.ops, http.MethodPost, url, body)
}

// ---- summary ----

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func each(ss []sample, f func(sample) float64) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}

var started = time.Now()

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
}
