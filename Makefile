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
# PROFILE: make bench's profile: wave (default), burst (a wave a fixed lead
# cannot make, about 9 minutes) or million (1,000,000 customers, 1 % due).
PROFILE     ?= wave
# BENCH_PROXY_FLAGS: flags of internal/bench/proxy, e.g. -duration 5s -rounds 5
BENCH_PROXY_FLAGS ?=
SOAK_FLAGS  ?=
# FUZZTIME: how long `make fuzz` runs each fuzz target.
FUZZTIME    ?= 5s

.PHONY: all build demo run test lint bench bench-go bench-proxy soak check-go check-redis clean \
        test-monitoring check-promtool test-deploy helm kustomize sync-alerts fuzz

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

# demo: walletsim + tokenproxy (in-memory store), a real exchange and a proxied call, a refresh ahead of expiry and a forced one, then stop.
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
	$(MAKE) test-monitoring
	$(MAKE) test-deploy
	$(MAKE) fuzz
	$(MAKE) check-release

# fuzz: each fuzz target for FUZZTIME, one at a time (go test takes one
# -fuzz target per run); their seed corpora under testdata/fuzz/ also run
# in every go test. A failure writes its input to the package's
# testdata/fuzz/<Target>/: commit it with the fix. What the fuzzer learns
# meanwhile stays in the build cache (`go env GOCACHE`/fuzz), not here.
fuzz: check-go
	$(GO) test -run '^$$' -fuzz '^FuzzCanonicalPath$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzBodyRewrite$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzExchangeAnswer$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzScrub$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzSignatureHeader$$' -fuzztime $(FUZZTIME) ./wallet
	$(GO) test -run '^$$' -fuzz '^FuzzParseKey$$' -fuzztime $(FUZZTIME) ./wallet
	$(GO) test -run '^$$' -fuzz '^FuzzParseObjectMatchesReference$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzReadResult$$' -fuzztime $(FUZZTIME) ./wallet

lint: check-go
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd deploy/monitoring && $(GO) vet ./...
	cd deploy/validate && $(GO) vet ./...

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
# before expiry with 0 duplicates. Takes about 22 minutes with the defaults;
# PROFILE=burst about 9, PROFILE=million about 12 (docs/benchmarks.md).
bench: build check-redis
	$(GO) run ./internal/bench/refresh -tokenproxy $(BIN)/tokenproxy -walletsim $(BIN)/walletsim -profile $(PROFILE) $(BENCH_FLAGS)

# soak: the chaos soak of docs/reliability.md (not CI): 3 replicas, walletsim
# with rotating faults, SIGKILLs of replicas and redis-server, 2000 customers,
# 10 minutes by default. SOAK_FLAGS: flags of internal/soak, e.g.
#   make soak SOAK_FLAGS='-duration 2m -customers 300'
soak: build check-redis
	$(GO) run ./internal/soak -tokenproxy $(BIN)/tokenproxy -walletsim $(BIN)/walletsim $(SOAK_FLAGS)

# bench-go: the Go micro-benchmarks (the hot path's pieces: proxy's body
# rewrite and handler, wallet's sign, verify and call, refresher's token
# lookup from the L1 cache; docs/benchmarks.md).
bench-go: check-go check-redis
	$(GO) test -run '^$$' -bench . -benchmem ./...

# bench-proxy: tokenproxy side by side with a do-it-yourself signing proxy
# and a bare two-hop proxy, memory and Redis stores, wallet over HTTP and
# HTTPS, TCP and Unix socket (docs/benchmarks.md); about 2.5 minutes.
bench-proxy: build check-redis
	$(GO) build -o $(BIN)/bench-diy ./internal/bench/proxy/diy
	$(GO) build -o $(BIN)/bench-bare ./internal/bench/proxy/bare
	$(GO) run ./internal/bench/proxy -tokenproxy $(BIN)/tokenproxy -walletsim $(BIN)/walletsim \
	  -diy $(BIN)/bench-diy -bare $(BIN)/bench-bare $(BENCH_PROXY_FLAGS)

clean:
	rm -rf $(BIN)

# --- Kubernetes: deploy/, charts/tokenproxy ---------------------------------
# test-deploy: helm lint and template of the chart (defaults and every
# ci/*-values.yaml), a typo'd value refused by the schema, the kustomize
# overlay, then the deploy/validate module: every manifest decoded strictly
# into the Kubernetes and Prometheus Operator types, Pod Security
# "restricted", and the rendered sidecar started for real with its probes.
HELM_VERSION := v3.22.0
TOOLS_BIN    := $(CURDIR)/.tools/bin
HELM         := $(TOOLS_BIN)/helm
CHART        := charts/tokenproxy
KUBE_VERSION := 1.33.0
OVERLAYS     := deploy/kubernetes/overlays/example deploy/kubernetes/overlays/example-servicemonitor
# KUSTOMIZE: `kubectl kustomize` when kubectl is installed, else kustomize
# itself, built into $(TOOLS_BIN) (the version kubectl 1.32 embeds).
KUSTOMIZE_VERSION := v5.5.0
KUSTOMIZE ?= $(if $(shell command -v kubectl 2>/dev/null),kubectl kustomize,$(TOOLS_BIN)/kustomize build)

# helm: $(HELM) at exactly $(HELM_VERSION). Reuses a helm already built at that
# version ($$GOBIN or $$GOPATH/bin, e.g. by a warm-up), else builds it with
# go install (about 8 minutes cold; the Go build cache makes it seconds later).
helm: check-go
	@mkdir -p $(TOOLS_BIN)
	@want='helm.sh/helm/v3 $(HELM_VERSION)'; \
	ver() { $(GO) version -m "$$1" 2>/dev/null | awk '$$1=="mod"{print $$2" "$$3}'; }; \
	if [ -x $(HELM) ] && [ "$$(ver $(HELM))" = "$$want" ]; then exit 0; fi; \
	for h in "$$($(GO) env GOBIN)/helm" "$$($(GO) env GOPATH)/bin/helm"; do \
	  if [ -x "$$h" ] && [ "$$(ver "$$h")" = "$$want" ]; then ln -sf "$$h" $(HELM); echo "helm: using $$h"; exit 0; fi; \
	done; \
	echo "helm: building $(HELM_VERSION) into $(TOOLS_BIN)"; \
	rm -f $(HELM); GOBIN=$(TOOLS_BIN) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

kustomize: check-go
ifeq ($(KUSTOMIZE),$(TOOLS_BIN)/kustomize build)
	@[ -x $(TOOLS_BIN)/kustomize ] || { echo "kubectl not found: building kustomize $(KUSTOMIZE_VERSION) into $(TOOLS_BIN)"; \
	  mkdir -p $(TOOLS_BIN); GOBIN=$(TOOLS_BIN) $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION); }
endif

test-deploy: check-go check-redis helm kustomize
	$(HELM) lint --strict --kube-version $(KUBE_VERSION) $(CHART)
	@set -e; for f in $(CHART)/ci/*-values.yaml; do \
	  echo "helm lint/template -f $$f"; \
	  $(HELM) lint --strict --kube-version $(KUBE_VERSION) -f $$f $(CHART) >/dev/null; \
	  $(HELM) template tp $(CHART) --kube-version $(KUBE_VERSION) -f $$f >/dev/null; \
	done
	$(HELM) template tp $(CHART) --kube-version $(KUBE_VERSION) >/dev/null
	@if $(HELM) template tp $(CHART) --kube-version $(KUBE_VERSION) -f deploy/validate/testdata/typo-values.yaml >/dev/null 2>&1; then \
	  echo "a typo'd values file was accepted: values.schema.json must reject it"; exit 1; \
	else echo "typo'd values file refused by the schema: ok"; fi
	@set -e; for o in $(OVERLAYS); do echo "$(KUSTOMIZE) $$o"; $(KUSTOMIZE) $$o >/dev/null; done
	cd deploy/validate && HELM=$(HELM) KUSTOMIZE='$(KUSTOMIZE)' $(GO) test -race -count=1 ./...

# sync-alerts: copy deploy/prometheus/alerts.yaml (the one source of the
# alerting rules) into the chart and the kustomize PrometheusRule. Run it after
# changing the rules; TestAlertCopiesInSync fails until you do.
sync-alerts:
	cp deploy/prometheus/alerts.yaml $(CHART)/files/alerts.yaml
	{ printf '%s\n' \
	  '# GENERATED by `make sync-alerts` from deploy/prometheus/alerts.yaml: do not edit.' \
	  'apiVersion: monitoring.coreos.com/v1' 'kind: PrometheusRule' 'metadata:' \
	  '  name: tokenproxy' '  labels:' '    app.kubernetes.io/name: tokenproxy' 'spec:'; \
	  sed -e 's/^/  /' -e 's/^ *$$//' deploy/prometheus/alerts.yaml; } > deploy/kubernetes/base/prometheusrule.yaml

# --- Release binaries: bin/release/ -----------------------------------------
# release: tokenproxy and walletsim for every RELEASE_PLATFORMS, static (no
# cgo), -trimpath, VERSION stamped (`tokenproxy version`, `walletsim
# version`), built by the same script as the images (deploy/build-static.sh),
# into bin/release/NAME-OS-ARCH.
# check-release (in make test): the linux/arm64 build compiles and links, and
# the binaries say they are static, trimmed, arm64 and stamped.
RELEASE_PLATFORMS ?= linux/amd64 linux/arm64
RELEASE_CMDS      := tokenproxy walletsim
.PHONY: release check-release

release: check-go
	@set -e; mkdir -p $(BIN)/release; \
	for p in $(RELEASE_PLATFORMS); do \
	  for c in $(RELEASE_CMDS); do \
	    out=$(BIN)/release/$$c-$${p%/*}-$${p#*/}; \
	    echo "$$out ($(VERSION))"; \
	    GOOS=$${p%/*} GOARCH=$${p#*/} VERSION=$(VERSION) deploy/build-static.sh $$out $$c; \
	  done; \
	done

check-release: check-go
	@set -e; dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
	for c in $(RELEASE_CMDS); do \
	  bin=$$dir/$$c; \
	  GOOS=linux GOARCH=arm64 VERSION=check-release deploy/build-static.sh $$bin $$c; \
	  info=$$($(GO) version -m $$bin); \
	  for want in 'GOARCH=arm64' 'GOOS=linux' 'CGO_ENABLED=0' '-trimpath=true'; do \
	    grep -qF -- "$$want" <<<"$$info" || { echo "$$c linux/arm64: no $$want in its build info:"; echo "$$info"; exit 1; }; \
	  done; \
	  grep -aqF 'check-release' $$bin || { echo "$$c linux/arm64: VERSION is not stamped in the binary"; exit 1; }; \
	  echo "$$c linux/arm64: builds static, trimmed, stamped: ok"; \
	done
