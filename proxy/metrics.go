package proxy

import (
	"strconv"
	"time"

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
	// routes holds each route's series resolved once, so that a call
	// looks no label values up (codes other than the usual ones are).
	routes map[string]*routeMetrics
}

type routeMetrics struct {
	duration prometheus.Observer
	codes    map[int]prometheus.Counter
}

// usualCodes are the statuses whose series exist from the start.
var usualCodes = []int{200, 204, 400, 401, 404, 405, 413, 500, 502, 503, 504}

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
	m.routes = make(map[string]*routeMetrics)
	for _, r := range []string{routeExchange, routeAPI, routeAdmin} {
		rm := &routeMetrics{duration: m.duration.WithLabelValues(r), codes: make(map[int]prometheus.Counter)}
		for _, c := range usualCodes {
			rm.codes[c] = m.requests.WithLabelValues(r, strconv.Itoa(c))
		}
		m.routes[r] = rm
	}
	return m
}

// observe counts one answered request.
func (m *Metrics) observe(route string, status int, d time.Duration) {
	rm := m.routes[route]
	if c, ok := rm.codes[status]; ok {
		c.Inc()
	} else {
		m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	}
	rm.duration.Observe(d.Seconds())
}
