package wallet_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// series returns the value of every tokenproxy_upstream_requests_total
// series, keyed "path status code".
func series(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "tokenproxy_upstream_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			out[l["path"]+" "+l["result_status"]+" "+l["result_code"]] = m.GetCounter().GetValue()
		}
	}
	return out
}

func TestClientMetrics(t *testing.T) {
	const applyToken = "/v1/authorizations/applyToken"
	tests := []struct {
		name   string
		path   string
		answer func(fw *fakeWallet, w http.ResponseWriter, r *http.Request)
		want   string // the series that counts the call
	}{
		{"S", applyToken, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
			fw.reply(w, r, 200, wallet.Envelope("S", "SUCCESS", ""), signGood)
		}, applyToken + " S SUCCESS"},
		{"F", applyToken, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
			fw.reply(w, r, 200, wallet.Envelope("F", "USED_REFRESH_TOKEN", ""), signGood)
		}, applyToken + " F USED_REFRESH_TOKEN"},
		{"answered on a new path", "/v1/users/inquiryUserInfo", func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
			fw.reply(w, r, 200, wallet.Envelope("U", "UNKNOWN_EXCEPTION", ""), signGood)
		}, "/v1/users/inquiryUserInfo U UNKNOWN_EXCEPTION"},
		{"unavailable on a known path", applyToken, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(502)
			io.WriteString(w, "<html>502</html>")
		}, applyToken + " U WALLET_UNAVAILABLE"},
		{"unavailable on a new path", "/v1/never-answered", func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(502)
		}, "other U WALLET_UNAVAILABLE"},
		{"bad signature", applyToken, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
			fw.reply(w, r, 200, wallet.Envelope("S", "SUCCESS", ""), signOtherBody)
		}, applyToken + " U INVALID_WALLET_SIGNATURE"},
		{"code outside the wallet's alphabet", applyToken, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request) {
			fw.reply(w, r, 200, wallet.Envelope("F", "bad code!", ""), signGood)
		}, applyToken + " F OTHER"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			fw := newFakeWallet(t, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request, _ []byte) { tt.answer(fw, w, r) })
			c := newClient(t, fw, "")
			c.Metrics = wallet.NewMetrics(reg, applyToken)
			if got := series(t, reg); got[applyToken+" S SUCCESS"] != 0 || len(got) != 2 {
				t.Fatalf("before any call: %v, want the known path and other at 0", got)
			}
			_, _ = c.Call(context.Background(), tt.path, "", []byte(`{}`), nil)
			got := series(t, reg)
			if got[tt.want] != 1 {
				t.Errorf("series = %v, want %q at 1", got, tt.want)
			}
		})
	}
}

// A wallet that answers on endless paths with endless codes does not make
// endless series.
func TestClientMetricsBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	fw := newFakeWallet(t, func(fw *fakeWallet, w http.ResponseWriter, r *http.Request, _ []byte) {
		fw.reply(w, r, 200, wallet.Envelope("F", "CODE_"+strings.ReplaceAll(strings.TrimPrefix(r.URL.Path, "/"), "/", "_"), ""), signGood)
	})
	c := newClient(t, fw, "")
	c.Metrics = wallet.NewMetrics(reg)
	const calls = 200
	for i := range calls {
		if _, err := c.Call(context.Background(), fmt.Sprintf("/P%d", i), "", []byte(`{}`), nil); err != nil {
			t.Fatal(err)
		}
	}
	paths, codes := map[string]bool{}, map[string]bool{}
	var total float64
	for k, v := range series(t, reg) {
		f := strings.Fields(k)
		paths[f[0]], codes[f[len(f)-1]] = true, true
		total += v
	}
	if total != calls {
		t.Errorf("counted %v calls, want %d", total, calls)
	}
	if len(paths) > 66 || !paths["other"] {
		t.Errorf("%d path labels (other: %v), want at most 64 + other (+ the initial series)", len(paths), paths["other"])
	}
	if len(codes) > 130 || !codes["OTHER"] {
		t.Errorf("%d code labels (OTHER: %v), want a bound", len(codes), codes["OTHER"])
	}
}
