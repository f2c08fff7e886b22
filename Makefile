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
SOAK_FLAGS  ?=

.PHONY: all build demo run test lint bench bench-go soak check-go check-redis clean

all: build

check-go:
	@command -v $(GO) >/dev/null || { echo "Go is required: install Go 1.26 or newer from https://go.dev/dl/"; exit 1; }

check-redis:
	@command -v redis-server >/dev/null || { echo "redis-server is required for the tests: install it with 'apt-get install -y redis-server' (Debian/Ubuntu) or 'brew install redis'"; exit 1; }

build: check-go
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/tokenproxy ./cmd/walletsim

# demo: walletsim + tokenproxy (in-memory store), a real exchange and a proxied call, then stop.
demo: build
	$(GO) run ./internal/demo -tokenproxy $(BIN)/tokenproxy -walletsim $(BIN)/walletsim

# run: the same two servers in the foreground, with curl lines to try.
run: build
	$(GO) run ./internal/demo -serve -tokenproxy $(BIN)/tokenproxy -walletsim $(BIN)/walletsim

# test: every test. It includes the state-machine checker on every store
# backend (memory, Redis, Redis with WAIT, Redis Cluster), 1,000 histories
# each, and with each known bug planted from the test side, which it must
# catch on every backend (refresher/plantedbugs_test.go).
test: check-go check-redis
	$(GO) test $(TEST_FLAGS) ./...

lint: check-go
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

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

# bench-go: the Go micro-benchmarks.
bench-go: check-go check-redis
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf $(BIN)
