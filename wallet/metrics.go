package wallet

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// maxPathLabels bounds the distinct path label values of the upstream
// families; further paths are counted as "other".
const maxPathLabels = 64

// Metrics are the upstream (wallet call) families.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec

	mu    sync.Mutex
	paths map[string]bool
	codes map[string]bool
	// series holds the resolved series of every label set seen (bounded
	// by the path and code bounds), so that a call looks no label up.
	series map[seriesKey]resolved
}

type seriesKey struct{ path, status, code string }

type resolved struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

// NewMetrics registers the upstream families on reg, with the known paths
// (the token-exchange paths) initialised at 0.
func NewMetrics(reg prometheus.Registerer, knownPaths ...string) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenproxy_upstream_requests_total",
			Help: "Calls to the wallet, by path, result status and result code (the proxy's own code when the wallet gave no JSON answer).",
		}, []string{"path", "result_status", "result_code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenproxy_upstream_duration_seconds",
			Help:    "Duration of calls to the wallet, by path.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"path"}),
		paths:  make(map[string]bool),
		codes:  make(map[string]bool),
		series: make(map[seriesKey]resolved),
	}
	reg.MustRegister(m.requests, m.duration)
	for _, p := range append(knownPaths, "other") {
		m.paths[p] = true
		m.requests.WithLabelValues(p, StatusSuccess, CodeSuccess)
		m.duration.WithLabelValues(p)
	}
	return m
}

// observe counts one call. answered tells whether the wallet answered with
// a JSON result; only such paths get a label of their own, and only when
// the wallet knew the API (not INVALID_API, not HTTP 404): an app-chosen
// path (a customer id inside it, say) never becomes a label.
func (m *Metrics) observe(path string, answered bool, httpStatus int, status, code string, d time.Duration) {
	if m == nil {
		return
	}
	switch status {
	case StatusSuccess, StatusFailed, StatusUnknown:
	default:
		status = "OTHER"
	}
	r := m.resolve(path, answered && httpStatus != 404 && code != CodeInvalidAPI, status, code)
	r.requests.Inc()
	r.duration.Observe(d.Seconds())
}

// resolve returns the series of a call's labels, resolving them the first
// time the label set is seen.
func (m *Metrics) resolve(path string, answered bool, status, code string) resolved {
	m.mu.Lock()
	defer m.mu.Unlock()
	path, code = m.labels(path, answered, code)
	k := seriesKey{path, status, code}
	r, ok := m.series[k]
	if !ok {
		r = resolved{requests: m.requests.WithLabelValues(path, status, code), duration: m.duration.WithLabelValues(path)}
		m.series[k] = r
	}
	return r
}

// labels bounds the path and code labels; m.mu is held.
func (m *Metrics) labels(path string, answered bool, code string) (string, string) {
	if !m.paths[path] {
		if answered && len(m.paths) < maxPathLabels+1 { // +1: "other"
			m.paths[path] = true
		} else {
			path = "other"
		}
	}
	if !m.codes[code] {
		if validCode(code) && len(m.codes) < 128 {
			m.codes[code] = true
		} else {
			code = "OTHER"
		}
	}
	return path, code
}

// validCode accepts result codes of the wallet's shape: A-Z, 0-9 and _.
func validCode(c string) bool {
	if c == "" || len(c) > 64 {
		return false
	}
	for i := 0; i < len(c); i++ {
		if !(c[i] >= 'A' && c[i] <= 'Z' || c[i] >= '0' && c[i] <= '9' || c[i] == '_') {
			return false
		}
	}
	return true
}
