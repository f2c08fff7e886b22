package monitoring

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// promtool finds promtool (Debian's package "prometheus"); the tests need
// it and say how to get it rather than skip.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is required: install it with 'apt-get install -y prometheus' (Debian/Ubuntu), or run 'make test-monitoring', which does as root")
	}
	return p
}

func runPromtool(t *testing.T, stdin []byte, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool(t), args...)
	cmd.Dir = repoRoot(t)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
}

// TestPromtoolRules runs promtool on both copies of the rules and their
// unit tests.
func TestPromtoolRules(t *testing.T) {
	runPromtool(t, nil, "check", "rules", alertsFile, chartAlerts)
	runPromtool(t, nil, "test", "rules", alertsTestFile)
}

// contractFamilies: the families of the contract's "Ops listener" metrics
// list (shared/docs/contract.md), with their type and label names, plus
// the families issue 15 added.
var contractFamilies = map[string]struct {
	typ    dto.MetricType
	labels []string
}{
	"tokenproxy_requests_total":            {dto.MetricType_COUNTER, []string{"route", "code"}},
	"tokenproxy_request_duration_seconds":  {dto.MetricType_HISTOGRAM, []string{"route"}},
	"tokenproxy_upstream_requests_total":   {dto.MetricType_COUNTER, []string{"path", "result_status", "result_code"}},
	"tokenproxy_upstream_duration_seconds": {dto.MetricType_HISTOGRAM, []string{"path"}},
	"tokenproxy_token_lookups_total":       {dto.MetricType_COUNTER, []string{"result"}},
	"tokenproxy_refreshes_total":           {dto.MetricType_COUNTER, []string{"trigger", "result", "code"}},
	"tokenproxy_refresh_duration_seconds":  {dto.MetricType_HISTOGRAM, nil},
	"tokenproxy_lost_rotations_total":      {dto.MetricType_COUNTER, nil},
	"tokenproxy_store_errors_total":        {dto.MetricType_COUNTER, []string{"op"}},
	"tokenproxy_store_up":                  {dto.MetricType_GAUGE, nil},
	"tokenproxy_tokens":                    {dto.MetricType_GAUGE, []string{"state"}},
	"tokenproxy_redactions_total":          {dto.MetricType_COUNTER, nil},
	// the Go and process collectors
	"go_goroutines":                 {dto.MetricType_GAUGE, nil},
	"go_memstats_heap_inuse_bytes":  {dto.MetricType_GAUGE, nil},
	"process_cpu_seconds_total":     {dto.MetricType_COUNTER, nil},
	"process_resident_memory_bytes": {dto.MetricType_GAUGE, nil},
	"process_open_fds":              {dto.MetricType_GAUGE, nil},
	// issue 15
	"tokenproxy_refresh_headroom_seconds": {dto.MetricType_HISTOGRAM, []string{"trigger"}},
	"tokenproxy_refresh_claims_total":     {dto.MetricType_COUNTER, []string{"result"}},
	"tokenproxy_refresh_waits_total":      {dto.MetricType_COUNTER, []string{"result"}},
	"tokenproxy_build_info":               {dto.MetricType_GAUGE, []string{"version", "goversion"}},
}

// contractValues: label values the contract enumerates, each present from
// the start (initialised at 0).
var contractValues = map[string]map[string][]string{
	"tokenproxy_requests_total":      {"route": {"exchange", "api", "admin"}},
	"tokenproxy_token_lookups_total": {"result": {"hit", "miss", "refreshed", "reauthorization_required"}},
	"tokenproxy_refreshes_total": {"trigger": {"scheduled", "on_demand", "forced", "retry"},
		"result": {"success", "failure", "unknown"}},
	"tokenproxy_tokens":                   {"state": {"valid", "refreshing", "expired", "reauthorization_required"}},
	"tokenproxy_refresh_headroom_seconds": {"trigger": {"scheduled", "on_demand", "forced", "retry"}},
	"tokenproxy_refresh_claims_total":     {"result": {"won", "held", "conflict", "cooldown", "ended", "error"}},
	"tokenproxy_refresh_waits_total":      {"result": {"joined", "claimed", "timeout", "failed"}},
}

// TestLiveScrape builds the real tokenproxy, starts it with a memory store,
// scrapes /metrics once, and checks the scrape against promtool, the
// contract, the README and every PromQL expression of the alerts and the
// dashboard.
func TestLiveScrape(t *testing.T) {
	raw := scrapeLive(t)
	tp := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := tp.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("the scrape does not parse: %v", err)
	}
	idx := indexScrape(fams)

	t.Run("promtool check metrics", func(t *testing.T) {
		runPromtool(t, raw, "check", "metrics")
	})

	t.Run("contract families", func(t *testing.T) {
		for name, want := range contractFamilies {
			f, ok := fams[name]
			if !ok {
				t.Errorf("%s is not served", name)
				continue
			}
			if f.GetType() != want.typ {
				t.Errorf("%s is a %v, want %v", name, f.GetType(), want.typ)
			}
			if len(f.GetMetric()) == 0 {
				t.Errorf("%s has no series at start", name)
			}
			for _, m := range f.GetMetric() {
				var got []string
				for _, lp := range m.GetLabel() {
					got = append(got, lp.GetName())
				}
				if strings.Join(sorted(got), ",") != strings.Join(sorted(want.labels), ",") {
					t.Errorf("%s series has labels %v, want %v", name, got, want.labels)
					break
				}
			}
			for label, values := range contractValues[name] {
				have := map[string]bool{}
				for _, m := range f.GetMetric() {
					for _, lp := range m.GetLabel() {
						if lp.GetName() == label {
							have[lp.GetValue()] = true
						}
					}
				}
				for _, v := range values {
					if !have[v] {
						t.Errorf("%s{%s=%q} is not initialised at start", name, label, v)
					}
				}
			}
		}
		if f := fams["tokenproxy_build_info"]; f != nil && len(f.GetMetric()) == 1 && f.GetMetric()[0].GetGauge().GetValue() != 1 {
			t.Errorf("tokenproxy_build_info is %v, want 1", f.GetMetric()[0].GetGauge().GetValue())
		}
	})

	t.Run("README metrics table", func(t *testing.T) {
		rows := regexp.MustCompile("(?m)^\\| `(tokenproxy_[a-z_]+)` \\|").FindAllStringSubmatch(string(readFile(t, readmeFile)), -1)
		listed := map[string]bool{}
		for _, r := range rows {
			listed[r[1]] = true
			if _, ok := fams[r[1]]; !ok {
				t.Errorf("README lists %s, which /metrics does not serve", r[1])
			}
		}
		for name := range fams {
			if strings.HasPrefix(name, "tokenproxy_") && !listed[name] {
				t.Errorf("/metrics serves %s, which the README's metrics table does not list", name)
			}
		}
	})

	t.Run("alert expressions", func(t *testing.T) {
		n := 0
		for _, r := range alertRules(t) {
			_, problems := checkExpr(r.Expr, idx)
			for _, p := range problems {
				t.Errorf("alert %s: %s", r.Alert, p)
			}
			n++
		}
		t.Logf("%d alert expressions parsed and checked against the scrape", n)
	})

	t.Run("dashboard expressions", func(t *testing.T) {
		d := loadDashboard(t)
		n := 0
		for _, p := range allPanels(d.Panels) {
			for _, tg := range p.Targets {
				if tg.Expr == "" {
					continue
				}
				n++
				uses, problems := checkExpr(expandGrafana(tg.Expr), idx)
				for _, pr := range problems {
					t.Errorf("panel %q target %s: %s", p.Title, tg.RefID, pr)
				}
				// Every selector follows the job and instance variables.
				for _, u := range uses {
					for _, v := range []string{"job", "instance"} {
						if !usesVar(u, v) {
							t.Errorf("panel %q target %s: %s does not select %s=~\"$%s\"", p.Title, tg.RefID, u.name, v, v)
						}
					}
				}
				for _, l := range legendLabels(tg.LegendFormat) {
					if !resultHasLabel(expandGrafana(tg.Expr), l, idx) {
						t.Errorf("panel %q target %s: legend names {{%s}}, which the result does not carry", p.Title, tg.RefID, l)
					}
				}
			}
		}
		for _, v := range d.Templating.List {
			if v.Type != "query" {
				continue
			}
			q := v.Definition
			var s string
			if json.Unmarshal(v.Query, &s) == nil && s != "" {
				q = s
			}
			m := labelValues.FindStringSubmatch(q)
			if m == nil {
				t.Errorf("variable %s: query %q is not label_values(<selector>, <label>)", v.Name, q)
				continue
			}
			n++
			expr, label := expandGrafana(m[1]), m[2]
			_, problems := checkExpr(expr, idx)
			for _, pr := range problems {
				t.Errorf("variable %s: %s", v.Name, pr)
			}
			if !resultHasLabel(expr, label, idx) {
				t.Errorf("variable %s: %s carries no label %q", v.Name, m[1], label)
			}
		}
		t.Logf("%d dashboard expressions (panel targets and variable queries) parsed and checked against the scrape", n)
	})
}

// labelValues matches Grafana's label_values(<selector>, <label>).
var labelValues = regexp.MustCompile(`^\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*$`)

func usesVar(u selectorUse, v string) bool {
	for _, m := range u.matchers {
		if m.Name == v && m.Value == varValue(v) {
			return true
		}
	}
	return false
}

// legendLabels returns the labels a legend format names ({{route}}).
func legendLabels(format string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`\{\{\s*(\w+)\s*\}\}`).FindAllStringSubmatch(format, -1) {
		out = append(out, m[1])
	}
	return out
}

// resultHasLabel tells whether the result of expr can carry label: the
// outermost aggregation keeps it (by) or the selectors below have it (no
// aggregation, or without). Target labels count as present.
func resultHasLabel(expr, label string, idx series) bool {
	if groupingTargetLabels[label] {
		return true
	}
	by, ok := outerGrouping(expr)
	if ok {
		for _, l := range by {
			if l == label {
				return true
			}
		}
		return false
	}
	uses, _ := checkExpr(expr, idx)
	for _, u := range uses {
		if _, ok := idx[u.name][label]; ok {
			return true
		}
	}
	return false
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// scrapeLive builds tokenproxy from the repository, starts it with the
// in-memory store, waits until it is ready and returns one /metrics body.
func scrapeLive(t *testing.T) []byte {
	t.Helper()
	root := repoRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "tokenproxy")
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatal("go is required to build tokenproxy")
	}
	bctx, bcancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer bcancel()
	build := exec.CommandContext(bctx, goCmd, "build", "-o", bin, "./cmd/tokenproxy")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/tokenproxy: %v\n%s", err, out)
	}
	key := privateKeyPEM(t)

	// A free port can be taken between finding and binding it: try again.
	for attempt := 1; ; attempt++ {
		ops, body, retry := startAndScrape(t, bin, key)
		if body != nil {
			t.Logf("scraped %d bytes from http://%s/metrics", len(body), ops)
			return body
		}
		if !retry || attempt == 3 {
			t.Fatal("tokenproxy did not start")
		}
	}
}

// startAndScrape starts bin and scrapes it; retry is true when it exited
// because a port was taken.
func startAndScrape(t *testing.T, bin string, key []byte) (string, []byte, bool) {
	t.Helper()
	listen, ops := freeAddr(t), freeAddr(t)
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "TOKENPROXY_") {
			env = append(env, e)
		}
	}
	env = append(env,
		"TOKENPROXY_WALLET_URL=http://127.0.0.1:1",
		"TOKENPROXY_CLIENT_ID=test",
		"TOKENPROXY_PRIVATE_KEY="+string(key),
		"TOKENPROXY_LISTEN_ADDR="+listen,
		"TOKENPROXY_OPS_ADDR="+ops,
	)
	var logs bytes.Buffer
	cmd := exec.Command(bin)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	defer stop()

	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-exited:
			stopped = true
			if strings.Contains(logs.String(), "address already in use") {
				return ops, nil, true
			}
			t.Fatalf("tokenproxy exited before it was ready (%v):\n%s", err, logs.String())
		default:
		}
		if resp, err := client.Get("http://" + ops + "/readyz"); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("tokenproxy not ready within 60s:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := client.Get("http://" + ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("/metrics Content-Type %q, want the text format", ct)
	}
	return ops, body, false
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// privateKeyPEM is a throwaway RSA-2048 merchant key, PEM PKCS#8.
func privateKeyPEM(t *testing.T) []byte {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// outerGrouping returns the by-labels of expr's outermost aggregation,
// looking through functions, parentheses and the left side of binary
// operators (what the result's labels come from); ok is false when the
// result is not a by-aggregation.
func outerGrouping(expr string) ([]string, bool) {
	n, err := parserFor().ParseExpr(expr)
	if err != nil {
		return nil, false
	}
	return groupingOf(n)
}
