package proxy

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Routes of the request families.
const (
	routeExchange = "exchange"
	routeAPI      = "api"
	routeAdmin    = "admin"
)

// Metrics are the app-facing request families.
type Metrics struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	redactions prometheus.Counter
}

// NewMetrics registers the request families on reg, every route and the
// usual status codes initialised at 0.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenproxy_requests_total",
			Help: "App requests answered, by route (exchange, api, admin) and HTTP status.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenproxy_request_duration_seconds",
			Help:    "Time to answer an app request, by route.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route"}),
		redactions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenproxy_redactions_total",
			Help: "Wallet answers in which a token was found and redacted before they reached the app.",
		}),
	}
	reg.MustRegister(m.requests, m.duration, m.redactions)
	for _, r := range []string{routeExchange, routeAPI, routeAdmin} {
		m.duration.WithLabelValues(r)
		for _, c := range []int{200, 204, 400, 401, 404, 405, 413, 500, 502, 503, 504} {
			m.requests.WithLabelValues(r, strconv.Itoa(c))
		}
	}
	return m
}
