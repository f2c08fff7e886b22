package monitoring

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The files under test, relative to the repository root.
const (
	alertsFile     = "deploy/prometheus/alerts.yaml"
	alertsTestFile = "deploy/prometheus/alerts_test.yaml"
	chartAlerts    = "charts/tokenproxy/files/alerts.yaml"
	runbookFile    = "docs/runbook.md"
	dashboardFile  = "deploy/grafana/tokenproxy.json"
	readmeFile     = "README.md"

	runbookURL = "https://github.com/tokenproxy/tokenproxy/blob/main/docs/runbook.md"
)

// repoRoot is the root of the tokenproxy repository: this module lives in
// deploy/monitoring.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.HasPrefix(gomod, []byte("module github.com/tokenproxy/tokenproxy\n")) {
		t.Fatalf("%s is not the tokenproxy repository root (go.mod: %v)", root, err)
	}
	return root
}

func readFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ruleFile is a Prometheus rules file; unknown fields are refused, so a
// typo such as "annotation:" fails instead of silently dropping them.
type ruleFile struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         *string           `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func decodeStrict(t *testing.T, name string, b []byte, v any) {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// alertRules returns the alerting rules of deploy/prometheus/alerts.yaml.
func alertRules(t *testing.T) []rule {
	t.Helper()
	var f ruleFile
	decodeStrict(t, alertsFile, readFile(t, alertsFile), &f)
	var out []rule
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out = append(out, r)
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s holds no alerts", alertsFile)
	}
	return out
}

// TestAlertCopiesIdentical: the chart's PrometheusRule renders
// charts/tokenproxy/files/alerts.yaml under spec:, so it must be the very
// same rules as deploy/prometheus/alerts.yaml.
func TestAlertCopiesIdentical(t *testing.T) {
	a, b := readFile(t, alertsFile), readFile(t, chartAlerts)
	if !bytes.Equal(a, b) {
		t.Fatalf("%s and %s differ: copy the first over the second (cp %s %s)", alertsFile, chartAlerts, alertsFile, chartAlerts)
	}
	// A plain rules document: the template puts it under spec: as is.
	var doc map[string]any
	decodeStrict(t, chartAlerts, b, &doc)
	if len(doc) != 1 || doc["groups"] == nil {
		t.Fatalf("%s must be a plain `groups:` document, has keys %v", chartAlerts, doc)
	}
}

var alertName = regexp.MustCompile(`^Tokenproxy[A-Z][A-Za-z0-9]+$`)

// TestAlertsAnnotatedWithRunbook: every alert has for, a severity, a
// summary, a description and a runbook_url whose anchor is a section of
// docs/runbook.md saying what it means, what to look at and what to do;
// and the runbook has no section for an alert that does not exist.
func TestAlertsAnnotatedWithRunbook(t *testing.T) {
	sections := runbookSections(t)
	seen := map[string]bool{}
	for _, r := range alertRules(t) {
		if !alertName.MatchString(r.Alert) {
			t.Errorf("alert %q: name must be Tokenproxy<CamelCase>", r.Alert)
		}
		if seen[r.Alert] {
			t.Errorf("alert %s defined twice", r.Alert)
		}
		seen[r.Alert] = true
		if r.For == nil || *r.For == "" {
			t.Errorf("%s: no for:", r.Alert)
		}
		switch r.Labels["severity"] {
		case "critical", "warning":
		default:
			t.Errorf("%s: severity %q, want critical or warning", r.Alert, r.Labels["severity"])
		}
		for _, a := range []string{"summary", "description", "runbook_url"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("%s: no %s annotation", r.Alert, a)
			}
		}
		anchor := strings.ToLower(r.Alert)
		if want := runbookURL + "#" + anchor; r.Annotations["runbook_url"] != want {
			t.Errorf("%s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
		}
		body, ok := sections[anchor]
		if !ok {
			t.Errorf("%s: %s has no section with anchor #%s", r.Alert, runbookFile, anchor)
			continue
		}
		for _, part := range []string{"**What it means.**", "**What to look at.**", "**What to do.**"} {
			if !strings.Contains(body, part) {
				t.Errorf("%s: its runbook section lacks %s", r.Alert, part)
			}
		}
	}
	for anchor, body := range sections {
		if strings.HasPrefix(anchor, "tokenproxy") && !seen[strings.TrimSpace(strings.SplitN(body, "\n", 2)[0])] {
			t.Errorf("%s: section #%s names no alert of %s", runbookFile, anchor, alertsFile)
		}
	}
	t.Logf("%d alerts, each with a runbook section", len(seen))
}

// runbookSections maps the GitHub anchor of every "## " heading of the
// runbook to its section (the heading text, a newline, then the body).
func runbookSections(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	var cur string
	var body strings.Builder
	flush := func() {
		if cur != "" {
			out[githubAnchor(cur)] = cur + "\n" + body.String()
		}
		body.Reset()
	}
	for _, line := range strings.Split(string(readFile(t, runbookFile)), "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			flush()
			cur = strings.TrimSpace(h)
			continue
		}
		body.WriteString(line + "\n")
	}
	flush()
	return out
}

// githubAnchor is the anchor GitHub gives a Markdown heading: lower case,
// spaces to hyphens, punctuation other than - and _ dropped.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

func TestGithubAnchor(t *testing.T) {
	for in, want := range map[string]string{
		"TokenproxyStoreDown":    "tokenproxystoredown",
		"Tools used below":       "tools-used-below",
		"What `le` means, 2.x!":  "what-le-means-2x",
		"token_store up-or-down": "token_store-up-or-down",
	} {
		if got := githubAnchor(in); got != want {
			t.Errorf("githubAnchor(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestEveryAlertUnitTestedFiringAndNot: alerts_test.yaml has, for every
// alert, a case where it fires and a case where it must not.
func TestEveryAlertUnitTestedFiringAndNot(t *testing.T) {
	var f struct {
		RuleFiles          []string `yaml:"rule_files"`
		EvaluationInterval string   `yaml:"evaluation_interval"`
		Tests              []struct {
			Name        string           `yaml:"name"`
			Interval    string           `yaml:"interval"`
			InputSeries []map[string]any `yaml:"input_series"`
			AlertTests  []struct {
				EvalTime  string           `yaml:"eval_time"`
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	decodeStrict(t, alertsTestFile, readFile(t, alertsTestFile), &f)
	if len(f.RuleFiles) != 1 || f.RuleFiles[0] != "alerts.yaml" {
		t.Fatalf("%s tests rule files %v, want [alerts.yaml]", alertsTestFile, f.RuleFiles)
	}
	firing, quiet := map[string]int{}, map[string]int{}
	for _, tc := range f.Tests {
		for _, a := range tc.AlertTests {
			if len(a.ExpAlerts) > 0 {
				firing[a.Alertname]++
			} else {
				quiet[a.Alertname]++
			}
		}
	}
	alerts := map[string]bool{}
	for _, r := range alertRules(t) {
		alerts[r.Alert] = true
		if firing[r.Alert] == 0 {
			t.Errorf("%s: no unit test where it fires", r.Alert)
		}
		if quiet[r.Alert] == 0 {
			t.Errorf("%s: no unit test where it must not fire", r.Alert)
		}
	}
	for name := range firing {
		if !alerts[name] {
			t.Errorf("%s tests %s, which is no alert", alertsTestFile, name)
		}
	}
	for name := range quiet {
		if !alerts[name] {
			t.Errorf("%s tests %s, which is no alert", alertsTestFile, name)
		}
	}
	t.Logf("%d test groups; %d alerts each tested firing and not firing", len(f.Tests), len(alerts))
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	Targets    []struct {
		Expr         string         `json:"expr"`
		LegendFormat string         `json:"legendFormat"`
		RefID        string         `json:"refId"`
		Datasource   *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readFile(t, dashboardFile), &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// allPanels flattens rows.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// TestDashboardShape: the datasource, job and instance variables exist,
// every panel and target queries through the datasource variable, panel
// ids are unique, and every panel that is not a row has a query.
func TestDashboardShape(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Fatal("dashboard without uid or title")
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type == "query" && (v.Datasource == nil || v.Datasource.UID != "${datasource}") {
			t.Errorf("variable %s does not query through ${datasource}", v.Name)
		}
	}
	for name, typ := range map[string]string{"datasource": "datasource", "job": "query", "instance": "query"} {
		if vars[name] != typ {
			t.Errorf("variable %s: type %q, want %q", name, vars[name], typ)
		}
	}
	ids := map[int]string{}
	for _, p := range allPanels(d.Panels) {
		if prev, ok := ids[p.ID]; ok {
			t.Errorf("panel id %d used by %q and %q", p.ID, prev, p.Title)
		}
		ids[p.ID] = p.Title
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use ${datasource}", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q target %s does not use ${datasource}", p.Title, tg.RefID)
			}
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q target %s has no expr", p.Title, tg.RefID)
			}
		}
	}
}
