package main

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestBuildInfo(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	registerBuildInfo(reg, "v1.2.3-4-gabcdef")
	want := fmt.Sprintf(`# HELP tokenproxy_build_info A constant 1, labelled with the tokenproxy version and the Go version it was built with.
# TYPE tokenproxy_build_info gauge
tokenproxy_build_info{goversion=%q,version="v1.2.3-4-gabcdef"} 1
`, runtime.Version())
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tokenproxy_build_info"); err != nil {
		t.Fatal(err)
	}
}
