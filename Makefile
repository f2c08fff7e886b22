# tokenproxy: `make demo` runs the quick start, `make test` the tests,
# `make bench` the proactive-refresh benchmark (docs/benchmarks.md), `make soak`
# the chaos soak (docs/reliability.md).
SHELL       := /bin/bash
GO          ?= go
BIN         := bin
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X main.version=$(VERSION)
TEST_FLAGS  ?= -race -count=1 -timeout 40m
# BENCH_FLAGS: flags of internal/bench/refresh, e.g. a quick try:
#   make bench BENCH_FLAGS='-customers 2000 -window 1m -lead 20s -jitter 5s'
BENCH_FLAGS ?=
# BENCH_PROXY_FLAGS: flags of internal/bench/proxy, e.g. -duration 5s -rounds 5
BENCH_PROXY_FLAGS ?=
SOAK_FLAGS  ?=

.PHONY: all build demo run test lint bench bench-go bench-proxy soak check-go check-redis clean \
        test-monitoring check-promtool

all: build

check-go:
	@command -v $(GO) >/dev/null || { echo "Go is required: install Go 1.26 or newer from https://go.dev/dl/"; exit 1; }

# check-redis: the tests start redis-server themselves on free ports; as
# root with apt-get it is installed when missing, otherwise the command is
# printed.
check-redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "redis-server missing: apt-get install -y redis-server"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y --no-install-recommends redis-server >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y --no-install-recommends redis-server >/dev/null; } || exit 1; \
	  else \
	    echo "redis-server is required for the tests: install it with 'sudo apt-get install -y redis-server' (Debian/Ubuntu) or 'brew install redis'"; exit 1; \
	  fi; }

build: check-go
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/tokenproxy ./cmd/walletsim

# demo: walletsim + tokenproxy (in-memory store), a real exchange and a proxied call, then stop.
demo: build
	$(GO) run ./internal/demo -tokenproxy $(BIN)/tokenproxy -walletsim $(BIN)/walletsim

# run: the same two servers in the foreground, with curl lines to try.
run: build
	$(GO) run ./internal/demo -serve -tokenproxy $(BIN)/tokenproxy -walletsim $(BIN)/walletsim

# test: every test, then the state-machine checker with each known bug
# planted (build tag plantbugs), which must catch them all.
test: check-go check-redis
	$(GO) test $(TEST_FLAGS) ./...
	$(GO) test -race -count=1 -tags plantbugs -run TestPlantedBugsCaught ./refresher/...
	$(MAKE) test-monitoring

lint: check-go
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd deploy/monitoring && $(GO) vet ./...

# test-monitoring: the monitoring in the box (deploy/monitoring, a module of
# its own): promtool check/test rules on deploy/prometheus (every alert tested
# firing and not firing), the chart's copy of the rules, the runbook anchors,
# and every PromQL expression of the alerts and the Grafana dashboard checked
# against a live scrape of the real binary (plus promtool check metrics on it).
test-monitoring: check-go check-promtool
	cd deploy/monitoring && $(GO) test -count=1 -timeout 15m ./...

# check-promtool: promtool comes with Debian's "prometheus" package; as root
# with apt-get it is installed (the package also ships the Prometheus server,
# which systemd starts where it runs), otherwise the command is printed.
check-promtool:
	@command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "promtool missing: apt-get install -y prometheus"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y --no-install-recommends prometheus >/dev/null; } || exit 1; \
	  else \
	    echo "promtool is required for the monitoring tests: install it with 'sudo apt-get install -y prometheus' (Debian/Ubuntu)"; exit 1; \
	  fi; }

# bench: 100,000 customers' tokens imported into one Redis, 2 replicas refresh
# them ahead of expiry with no app traffic; fails unless 100 % are refreshed
# before expiry with 0 duplicates. Takes about 22 minutes with the defaults.
bench: build check-redis
	$(GO) run ./internal/bench/refresh -tokenproxy $(BIN)/tokenproxy -walletsim $(BIN)/walletsim $(BENCH_FLAGS)

# soak: the chaos soak of docs/reliability.md (not CI): 3 replicas, walletsim
# with rotating faults, SIGKILLs of replicas and redis-server, 2000 customers,
# 10 minutes by default. SOAK_FLAGS: flags of internal/soak, e.g.
#   make soak SOAK_FLAGS='-duration 2m -customers 300'
soak: build check-redis
	$(GO) run ./internal/soak -tokenproxy $(BIN)/tokenproxy -walletsim $(BIN)/walletsim $(SOAK_FLAGS)

# bench-go: the Go micro-benchmarks (the hot path's pieces: proxy's body
# rewrite and handler, wallet's sign, verify and call; docs/benchmarks.md).
bench-go: check-go check-redis
	$(GO) test -run '^$$' -bench . -benchmem ./...

# bench-proxy: tokenproxy side by side with a do-it-yourself signing proxy
# and a bare two-hop proxy, memory and Redis stores, wallet over HTTP and
# HTTPS, TCP and Unix socket (docs/benchmarks.md); about 3 minutes.
bench-proxy: build check-redis
	$(GO) build -o $(BIN)/bench-diy ./internal/bench/proxy/diy
	$(GO) build -o $(BIN)/bench-bare ./internal/bench/proxy/bare
	$(GO) run ./internal/bench/proxy -tokenproxy $(BIN)/tokenproxy -walletsim $(BIN)/walletsim \
	  -diy $(BIN)/bench-diy -bare $(BIN)/bench-bare $(BENCH_PROXY_FLAGS)

clean:
	rm -rf $(BIN)
