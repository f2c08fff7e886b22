package main

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// registerBuildInfo registers tokenproxy_build_info{version,goversion}, a
// constant 1, so that a dashboard shows which build each replica runs and
// a rollout can be followed replica by replica.
func registerBuildInfo(reg prometheus.Registerer, version string) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "tokenproxy_build_info",
		Help:        "A constant 1, labelled with the tokenproxy version and the Go version it was built with.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	g.Set(1)
	reg.MustRegister(g)
}
