// Package monitoring holds the tests of tokenproxy's monitoring in the box:
// the alerting rules (deploy/prometheus), their copy in the chart, the
// runbook they link to, and the Grafana dashboard (deploy/grafana), checked
// against a live scrape of the real binary. It is a module of its own so
// that the Prometheus parser stays out of the sidecar's dependencies.
package monitoring
