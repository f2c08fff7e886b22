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

var allTriggers = []string{TriggerScheduled, TriggerOnDemand, TriggerForced, TriggerRetry}

// Results of tokenproxy_refresh_claims_total: how one claim of a
// customer's lease ended.
const (
	claimWon      = "won"      // this refresh holds the lease and presents the token
	claimHeld     = "held"     // another refresh (any replica's, this one's included) holds the lease
	claimConflict = "conflict" // the record changed since it was read: read again
	claimCooldown = "cooldown" // the customer is in its backoff after a transient failure
	claimEnded    = "ended"    // the customer was deleted or needs reauthorization meanwhile
	claimError    = "error"    // the store failed (also in tokenproxy_store_errors_total{op="claim"})
)

// Results of tokenproxy_refresh_waits_total: how a refresh that found the
// lease held and waited for its holder ended, counted once per refresh.
const (
	waitJoined  = "joined"  // the holder's refresh replaced the token: used without a wallet call
	waitClaimed = "claimed" // the lease came free without a usable token (the holder failed or lapsed): this refresh claimed and presented
	waitTimeout = "timeout" // the refresh's deadline ended (or the process shut down) while waiting
	waitFailed  = "failed"  // anything else: cooldown, reauthorization, deletion, a store error
)

// headroomBuckets span "refreshed after expiry" (the 0 bucket: a caller
// waited) up to four hours ahead; the default REFRESH_BEFORE of 5m plus
// up to 30s of jitter lands between 300 and 360.
var headroomBuckets = []float64{0, 10, 30, 60, 120, 180, 240, 300, 360, 600, 900, 1800, 3600, 7200, 14400}

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
	headroom       *prometheus.HistogramVec
	claims         *prometheus.CounterVec
	waits          *prometheus.CounterVec
	planShortfall  prometheus.Counter
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
		headroom: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenproxy_refresh_headroom_seconds",
			Help:    "Time left before the old access token's expiry when a refresh succeeded, by trigger (0: refreshed at or after expiry).",
			Buckets: headroomBuckets,
		}, []string{"trigger"}),
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenproxy_refresh_claims_total",
			Help: "Claims of a customer's refresh lease, by result (won, held, conflict, cooldown, ended, error).",
		}, []string{"result"}),
		waits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenproxy_refresh_waits_total",
			Help: "Refreshes that found another refresh holding the lease and waited for it, by how the wait ended (joined, claimed, timeout, failed).",
		}, []string{"result"}),
		planShortfall: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenproxy_refresh_plan_shortfall_total",
			Help: "Refreshes the plan found no room for before their fixed-lead time within the fleet's refresh rate: due at once, the earliest expiry first; some may come after expiry.",
		}),
	}
	reg.MustRegister(m.lookups, m.refreshes, m.refreshSeconds, m.lostRotations, m.tokens, m.storeErrors, m.storeUp,
		m.headroom, m.claims, m.waits, m.planShortfall)
	for _, r := range []string{lookupHit, lookupMiss, lookupRefresh, lookupReauth} {
		m.lookups.WithLabelValues(r)
	}
	for _, t := range allTriggers {
		m.headroom.WithLabelValues(t)
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
	for _, r := range []string{claimWon, claimHeld, claimConflict, claimCooldown, claimEnded, claimError} {
		m.claims.WithLabelValues(r)
	}
	for _, r := range []string{waitJoined, waitClaimed, waitTimeout, waitFailed} {
		m.waits.WithLabelValues(r)
	}
	return m
}
