package refresher

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// Lookup results of tokenproxy_token_lookups_total.
const (
	lookupHit     = "hit"
	lookupMiss    = "miss"
	lookupRefresh = "refreshed"
	lookupReauth  = "reauthorization_required"
)

// Triggers of tokenproxy_refreshes_total.
const (
	TriggerScheduled = "scheduled" // ahead of expiry, no caller waiting
	TriggerOnDemand  = "on_demand" // a caller waits: its token has expired
	TriggerForced    = "forced"    // POST /tokenproxy/customers/{id}/refresh
	TriggerRetry     = "retry"     // the wallet rejected the access token
)

// Metrics are the refresher's and the store's Prometheus families. Every
// family is registered with its known label values at 0, so dashboards and
// alerts see series before the first event.
type Metrics struct {
	lookups        *prometheus.CounterVec
	refreshes      *prometheus.CounterVec
	refreshSeconds prometheus.Histogram
	lostRotations  prometheus.Counter
	tokens         *prometheus.GaugeVec
	storeErrors    *prometheus.CounterVec
	storeUp        prometheus.Gauge
}

// Store operations of tokenproxy_store_errors_total.
var storeOps = []string{"get", "put", "cas", "delete", "ping", "claim", "complete", "due", "census"}

// NewMetrics creates the families and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenproxy_token_lookups_total",
			Help: "Access-token lookups for app calls, by result.",
		}, []string{"result"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenproxy_refreshes_total",
			Help: "Refresh-token presentations to the wallet, by trigger, result (success, failure, unknown) and result code.",
		}, []string{"trigger", "result", "code"}),
		refreshSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tokenproxy_refresh_duration_seconds",
			Help:    "Duration of refresh calls to the wallet.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		lostRotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenproxy_lost_rotations_total",
			Help: "Refreshes whose outcome was unknown and whose one re-presentation got USED_REFRESH_TOKEN: the wallet rotated the token but the answer was lost.",
		}),
		tokens: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenproxy_tokens",
			Help: "Customers by token state, recounted periodically.",
		}, []string{"state"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenproxy_store_errors_total",
			Help: "Token store operations that failed, by operation.",
		}, []string{"op"}),
		storeUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenproxy_store_up",
			Help: "1 when the last token store operation succeeded, 0 when it failed.",
		}),
	}
	reg.MustRegister(m.lookups, m.refreshes, m.refreshSeconds, m.lostRotations, m.tokens, m.storeErrors, m.storeUp)
	for _, r := range []string{lookupHit, lookupMiss, lookupRefresh, lookupReauth} {
		m.lookups.WithLabelValues(r)
	}
	for _, t := range []string{TriggerScheduled, TriggerOnDemand, TriggerForced, TriggerRetry} {
		m.refreshes.WithLabelValues(t, "success", wallet.CodeSuccess)
		m.refreshes.WithLabelValues(t, "failure", wallet.CodeInvalidRefreshToken)
		m.refreshes.WithLabelValues(t, "failure", wallet.CodeExpiredRefreshToken)
		m.refreshes.WithLabelValues(t, "failure", wallet.CodeUsedRefreshToken)
		m.refreshes.WithLabelValues(t, "unknown", wallet.CodeWalletTimeout)
		m.refreshes.WithLabelValues(t, "unknown", wallet.CodeWalletUnavailable)
		m.refreshes.WithLabelValues(t, "unknown", wallet.CodeUnknownException)
	}
	for _, s := range AllStates {
		m.tokens.WithLabelValues(string(s))
	}
	for _, op := range storeOps {
		m.storeErrors.WithLabelValues(op)
	}
	return m
}
