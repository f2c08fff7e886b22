// Command tokenproxy is the token-managing sidecar: see README.md.
//
//	tokenproxy            serve (settings from the environment)
//	tokenproxy -h         print every setting with its default
//	tokenproxy version    print the version
//	tokenproxy import FILE  import NDJSON token pairs (- for standard input)
//	tokenproxy app-key    print the public half of TOKENPROXY_APP_SIGNING_KEY
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/sethvargo/go-envconfig"

	"github.com/tokenproxy/tokenproxy/internal/events"
	"github.com/tokenproxy/tokenproxy/proxy"
	"github.com/tokenproxy/tokenproxy/refresher"
	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(context.Background(), os.Args[1:], envconfig.OsLookuper(), os.Stdout, os.Stderr))
}

// run is main with its inputs made explicit; it returns the exit code: 0
// ok, 1 failure while running, 2 bad settings or usage.
func run(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help", "help":
			fmt.Fprintln(stdout, "tokenproxy: token-managing sidecar for wallet OpenAPIs.\n\nUsage:\n  tokenproxy               serve\n  tokenproxy version       print the version\n  tokenproxy import FILE   import NDJSON token pairs (- for standard input)\n  tokenproxy app-key [-pem] print the public half of TOKENPROXY_APP_SIGNING_KEY (bare base64, as the wallet's SDKs take it)\n\nSettings (environment):")
			printSettings(stdout)
			return 0
		case "import":
			return runImport(ctx, args[1:], env, os.Stdin, stdout, stderr)
		case "app-key":
			return runAppKey(ctx, args[1:], env, stdout, stderr)
		case "version", "-version", "--version":
			fmt.Fprintln(stdout, "tokenproxy", version)
			return 0
		default:
			fmt.Fprintf(stderr, "tokenproxy: unknown command %q (try -h)\n", args[0])
			return 2
		}
	}
	cfg, err := loadConfig(ctx, env, true)
	if err != nil {
		fmt.Fprintln(stderr, "tokenproxy: configuration:", err)
		return 2
	}
	log := newLogger(cfg, stderr)
	redis.SetLogger(redisLogger{log})
	if err := serve(ctx, cfg, log); err != nil {
		var ce *configError
		if errors.As(err, &ce) {
			fmt.Fprintln(stderr, "tokenproxy: configuration:", ce)
			return 2
		}
		log.Error("tokenproxy stopped", "err", err)
		return 1
	}
	return 0
}

func newLogger(cfg *Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// redisLogger routes go-redis's own messages (dial failures, reconnects)
// into the process's structured log. They carry addresses, never data.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.Log(ctx, slog.LevelWarn, "redis client", "detail", fmt.Sprintf(format, v...))
}

// serve runs the sidecar until ctx ends or SIGTERM/SIGINT, then drains.
func serve(ctx context.Context, cfg *Config, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	keys, err := cfg.keySource()
	if err != nil {
		return err
	}
	walletKey, err := cfg.walletKey()
	if err != nil {
		return err
	}
	signer, err := cfg.appSigner()
	if err != nil {
		return err
	}
	var eventsSecret []byte
	if cfg.EventsURL != "" {
		if eventsSecret, err = cfg.eventsSecret(); err != nil {
			return err
		}
	}
	inject, _ := proxy.ParseInject(cfg.Inject) // validated
	base, _ := url.Parse(cfg.WalletURL)        // validated

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerBuildInfo(reg, version)

	store, closeStore, err := openStore(cfg, log)
	if err != nil {
		return err
	}
	defer closeStore()
	deliverer, err := newDeliverer(cfg, eventsSecret, store, reg, log)
	if err != nil {
		return err
	}

	client := &wallet.Client{
		BaseURL:          base,
		ClientID:         cfg.ClientID,
		Keys:             keys,
		WalletKey:        walletKey,
		HTTP:             wallet.NewHTTPClient(),
		Timeout:          cfg.UpstreamTimeout,
		MaxResponseBytes: cfg.MaxResponseBytes,
		Metrics:          wallet.NewMetrics(reg, cfg.TokenPaths...),
	}
	if walletKey == nil {
		log.Warn("no wallet public key set: wallet responses are not verified")
	}
	ref := refresher.New(refresher.Config{
		Store:           store,
		Wallet:          client,
		TokenPaths:      cfg.TokenPaths,
		RefreshBefore:   cfg.RefreshBefore,
		RefreshJitter:   cfg.RefreshJitter,
		RefreshRate:     cfg.RefreshRate,
		Lease:           cfg.RefreshLease,
		IdleAfter:       cfg.RefreshIdleAfter,
		UpstreamTimeout: cfg.UpstreamTimeout,
		CacheMaxEntries: cfg.CacheMaxEntries,
		Census:          store.Census,
		Plan:            store,
		Metrics:         refresher.NewMetrics(reg),
		Logger:          log,
	})
	defer ref.Close()

	mem := planMemory(int64(cfg.MemoryLimit), cfg.MaxInflight, cgroupMemoryLimit)
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(int64(float64(mem.limit) * gcShare))
	}
	log.Info("memory plan", "limit_bytes", mem.limit, "from_cgroup", mem.fromCgroup,
		"body_budget_bytes", mem.bodyBudget, "max_inflight", mem.maxInflight)

	handler := proxy.New(proxy.Config{
		Tokens:         ref,
		Wallet:         client,
		CustomerHeader: cfg.CustomerHeader,
		Inject:         inject,
		TokenPaths:     cfg.TokenPaths,
		PathPrefix:     base.Path,
		MaxBodyBytes:   cfg.MaxBodyBytes,
		Limiter:        proxy.NewLimiter(mem.maxInflight, mem.bodyBudget),
		Signer:         signer,
		Handles:        cfg.AppTokens == "handles",
		Metrics:        proxy.NewMetrics(reg),
		Logger:         log,
	})

	var ready readiness
	appLn, cleanupApp, err := listenApp(cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listen on TOKENPROXY_LISTEN_ADDR: %w", err)
	}
	defer cleanupApp()
	// Connections beyond what the calls in flight need wait in the
	// kernel's accept queue instead of costing memory here.
	appLn = limitListener(appLn, 2*mem.maxInflight+16, appIdleTimeout)
	opsLn, err := net.Listen("tcp", cfg.OpsAddr)
	if err != nil {
		appLn.Close()
		return fmt.Errorf("listen on TOKENPROXY_OPS_ADDR: %w", err)
	}
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	app := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		// A call may wait for a refresh, call the wallet and retry once.
		WriteTimeout:   3*cfg.UpstreamTimeout + cfg.RefreshLease + 10*time.Second,
		IdleTimeout:    appIdleTimeout,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       errLog,
	}
	ops := &http.Server{
		Handler:           opsHandler(reg, &ready),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          errLog,
	}
	serveErr := make(chan error, 2)
	go func() { serveErr <- app.Serve(appLn) }()
	go func() { serveErr <- ops.Serve(opsLn) }()
	log.Info("tokenproxy serving", "version", version, "listen", appLn.Addr().String(), "ops", opsLn.Addr().String(),
		"wallet", base.Redacted(), "store", storeKind(cfg))

	bgDone := make(chan struct{}, 3)
	bgCtx, stopBackground := context.WithCancel(ctx)
	go func() {
		defer func() { bgDone <- struct{}{} }()
		if deliverer != nil {
			deliverer.Run(bgCtx)
		}
	}()
	go func() {
		defer func() { bgDone <- struct{}{} }()
		pingStore(bgCtx, ref, &ready, log)
	}()
	go func() {
		defer func() { bgDone <- struct{}{} }()
		backfillCensus(bgCtx, store, log)
		ref.Run(bgCtx)
	}()

	select {
	case <-ctx.Done():
		log.Info("shutting down: draining in-flight requests", "timeout", cfg.ShutdownTimeout)
	case err = <-serveErr:
		log.Error("listener failed", "err", err)
	}
	ready.shuttingDown.Store(true)
	stopBackground()
	<-bgDone
	<-bgDone
	<-bgDone

	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if derr := app.Shutdown(drainCtx); derr != nil {
		log.Warn("in-flight requests cut at the shutdown timeout", "err", derr)
	}
	_ = ops.Shutdown(drainCtx)
	ref.Close()
	log.Info("tokenproxy stopped")
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func storeKind(cfg *Config) string {
	switch {
	case cfg.RedisURL != "":
		return "redis"
	case cfg.RedisMasterName != "":
		return "redis-sentinel"
	case cfg.RedisAddrs != "":
		return "redis-cluster"
	default:
		return "memory"
	}
}

// countingStore is a store that can also count its customers by state
// (tokenproxy_tokens), keep the events' outbox and the refresh plan, and
// list customers by state: both stores can.
type countingStore interface {
	tokencache.Store
	tokencache.PlanBook
	events.Outbox
	Census(ctx context.Context) (tokencache.Census, error)
}

// newDeliverer builds the events' deliverer when TOKENPROXY_EVENTS_URL is
// set (nil otherwise). Its metric families are registered either way, so
// dashboards see them from the start.
func newDeliverer(cfg *Config, secret []byte, store events.Outbox, reg prometheus.Registerer, log *slog.Logger) (*events.Deliverer, error) {
	metrics := events.NewMetrics(reg)
	if cfg.EventsURL == "" {
		return nil, nil
	}
	u, _ := url.Parse(cfg.EventsURL) // validated
	log.Info("re-authorization events enabled", "url", u.Redacted(), "expiry_horizon", cfg.EventsExpiryHorizon)
	return events.New(events.Config{
		URL:           cfg.EventsURL,
		Secret:        events.Secret(secret),
		Outbox:        store,
		ExpiryHorizon: cfg.EventsExpiryHorizon,
		Lease:         cfg.RefreshLease,
		Timeout:       cfg.UpstreamTimeout,
		Metrics:       metrics,
		Logger:        log,
	})
}

// eventsConfig is the store's part of the events: recorded only when
// someone delivers them.
func eventsConfig(cfg *Config) tokencache.EventsConfig {
	return tokencache.EventsConfig{Enabled: cfg.EventsURL != "", ExpiryHorizon: cfg.EventsExpiryHorizon}
}

// openStore builds the token store the settings name.
func openStore(cfg *Config, log *slog.Logger) (countingStore, func(), error) {
	if !cfg.usesRedis() {
		log.Warn("no Redis configured: using the in-memory token store; tokens are not shared between replicas and are lost on restart (run one replica only)")
		return tokencache.NewMemory(tokencache.MemoryConfig{Events: eventsConfig(cfg)}), func() {}, nil
	}
	kr, err := cfg.keyring()
	if err != nil {
		return nil, nil, err
	}
	var addrs []string
	for _, a := range strings.Split(cfg.RedisAddrs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	rc, err := tokencache.NewRedisClient(tokencache.RedisOptions{
		URL:        cfg.RedisURL,
		Addrs:      addrs,
		MasterName: cfg.RedisMasterName,
		Username:   cfg.RedisUsername,
		Password:   cfg.RedisPassword,
		CAFile:     cfg.RedisCAFile,
	})
	if err != nil {
		return nil, nil, bad("TOKENPROXY_REDIS_URL", "unusable: "+err.Error())
	}
	store, err := tokencache.NewRedis(tokencache.RedisConfig{
		Client:       rc,
		Prefix:       cfg.KeyPrefix,
		Keyring:      kr,
		WaitReplicas: cfg.RedisWaitReplicas,
		Events:       eventsConfig(cfg),
	})
	if err != nil {
		rc.Close()
		return nil, nil, fmt.Errorf("redis store: %w", err)
	}
	return store, func() { store.Close(); rc.Close() }, nil
}

// appIdleTimeout is how long an app connection may wait for its next
// request (or its first).
const appIdleTimeout = 2 * time.Minute

// readiness is /readyz: ready once the store has answered once since
// start, not ready again while shutting down. A later store outage does not
// make the pod unready (every replica shares the store); it shows in
// tokenproxy_store_up.
type readiness struct {
	storeAnswered atomic.Bool
	shuttingDown  atomic.Bool
}

func (r *readiness) reason() string {
	switch {
	case r.shuttingDown.Load():
		return "shutting down"
	case !r.storeAnswered.Load():
		return "token store has not answered yet"
	}
	return ""
}

// pingStore pings the store every few seconds (each ping bounded) until
// ctx ends, keeping tokenproxy_store_up current and marking readiness.
func pingStore(ctx context.Context, ref *refresher.Refresher, ready *readiness, log *slog.Logger) {
	const every, timeout = 5 * time.Second, 2 * time.Second
	interval := 200 * time.Millisecond // quick until the first answer
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := ref.Ping(pctx)
		cancel()
		switch {
		case err == nil && !ready.storeAnswered.Load():
			ready.storeAnswered.Store(true)
			interval = every
			log.Info("token store answered: ready")
		case err != nil && ctx.Err() == nil:
			log.Warn("token store ping failed", "err", err)
		}
		t.Reset(interval)
	}
}

func opsHandler(reg *prometheus.Registry, ready *readiness) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if reason := ready.reason(); reason != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", reason)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}
