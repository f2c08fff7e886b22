package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, tt := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// The ratio of two variants is the median of the per-round ratios, not the
// ratio of the medians.
func TestRatioPerRound(t *testing.T) {
	s := func(ok int) sample { return sample{load: loadResult{ok: ok, wall: time.Second}} }
	g := &groupResult{samples: map[string][]sample{
		"A": {s(90), s(200), s(50)},
		"B": {s(100), s(100), s(100)},
	}}
	got, ok := g.ratio("A", "B", func(x sample) float64 { return x.rate() })
	if !ok || got != 0.9 {
		t.Errorf("ratio = %v, %v; want 0.9 (the median of 0.9, 2, 0.5)", got, ok)
	}
	if _, ok := g.ratio("A", "C", func(x sample) float64 { return x.rate() }); ok {
		t.Error("a ratio to a variant without samples")
	}
}

// runLoad counts only 200 answers with resultCode SUCCESS, and its
// callers each make one call at a time.
func TestRunLoad(t *testing.T) {
	var n, inFlight, most atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cur := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := most.Load()
			if cur <= m || most.CompareAndSwap(m, cur) {
				break
			}
		}
		if n.Add(1)%4 == 0 {
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte(`{"result":{"resultStatus":"U","resultCode":"WALLET_UNAVAILABLE"}}`))
			return
		}
		_, _ = w.Write([]byte(`{"result":{"resultStatus":"S","resultCode":"SUCCESS"}}`))
	}))
	defer srv.Close()
	res := runLoad(context.Background(), target{client: appClient(4, ""), url: srv.URL, body: []byte(`{}`)}, 4, 300*time.Millisecond)
	if res.ok == 0 || res.failed == 0 || int64(res.ok+res.failed) != n.Load() {
		t.Errorf("ok %d, failed %d; the server answered %d", res.ok, res.failed, n.Load())
	}
	if res.failed < (res.ok+res.failed)/4-4 || res.failed > (res.ok+res.failed)/4+4 {
		t.Errorf("failed %d of %d, want about a quarter", res.failed, res.ok+res.failed)
	}
	if most.Load() > 4 {
		t.Errorf("%d calls in flight at once, want at most 4", most.Load())
	}
	if len(res.latencies) != res.ok || res.quantile(0.5) > res.quantile(0.99) {
		t.Errorf("%d latencies for %d calls, p50 %v p99 %v", len(res.latencies), res.ok, res.quantile(.5), res.quantile(.99))
	}
}
