package events

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the deliverer's families. No customer id is a label.
type Metrics struct {
	total   *prometheus.CounterVec
	pending prometheus.Gauge
}

// Types and Results are the label values of tokenproxy_events_total,
// every pair present from the start at 0.
var (
	Types   = []string{"reauthorization_required", "reauthorized", "refresh_token_expiring"}
	Results = []string{"delivered", "failed", "dropped"}
)

// NewMetrics creates the families and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenproxy_events_total",
			Help: "Re-authorization event delivery attempts by event type and result: delivered (acknowledged with a 2xx), failed (retried later), dropped (not acknowledged within the retry period, or malformed).",
		}, []string{"type", "result"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenproxy_events_pending",
			Help: "Events waiting in the outboxes as last seen by this replica (best effort: refreshed by deliveries and the sweep).",
		}),
	}
	for _, t := range Types {
		for _, r := range Results {
			m.total.WithLabelValues(t, r)
		}
	}
	reg.MustRegister(m.total, m.pending)
	return m
}
