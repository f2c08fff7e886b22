package monitoring

import (
	"fmt"
	"regexp"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// series indexes a scrape by series name (a histogram's _bucket, _sum and
// _count, a summary's name, _sum and _count): the label names each
// carries, and the values seen of each label.
type series map[string]map[string]map[string]bool

func indexScrape(fams map[string]*dto.MetricFamily) series {
	idx := series{}
	add := func(name string, m *dto.Metric, extra ...*dto.LabelPair) {
		ls := idx[name]
		if ls == nil {
			ls = map[string]map[string]bool{}
			idx[name] = ls
		}
		for _, lp := range append(m.GetLabel(), extra...) {
			if ls[lp.GetName()] == nil {
				ls[lp.GetName()] = map[string]bool{}
			}
			ls[lp.GetName()][lp.GetValue()] = true
		}
	}
	str := func(s string) *string { return &s }
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				for _, b := range m.GetHistogram().GetBucket() {
					add(name+"_bucket", m, &dto.LabelPair{Name: str("le"), Value: str(formatBound(b.GetUpperBound()))})
				}
				add(name+"_bucket", m, &dto.LabelPair{Name: str("le"), Value: str("+Inf")})
				add(name+"_sum", m)
				add(name+"_count", m)
			case dto.MetricType_SUMMARY:
				for _, q := range m.GetSummary().GetQuantile() {
					add(name, m, &dto.LabelPair{Name: str("quantile"), Value: str(formatBound(q.GetQuantile()))})
				}
				add(name+"_sum", m)
				add(name+"_count", m)
			default:
				add(name, m)
			}
		}
	}
	return idx
}

// formatBound writes a bucket bound as the text format does ("30", "0.5").
func formatBound(f float64) string { return fmt.Sprint(f) }

// Labels a selector may use that the target, not the binary, carries.
var (
	// matcherTargetLabels: label matchers may select by the scrape
	// target's job and instance (Prometheus adds them to every series).
	matcherTargetLabels = map[string]bool{"job": true, "instance": true}
	// groupingTargetLabels: aggregations may also keep the Kubernetes
	// target labels a PodMonitor/ServiceMonitor adds. Grouping by a label
	// a setup lacks only merges groups; matching on one selects nothing,
	// hence the narrower set above.
	groupingTargetLabels = map[string]bool{"job": true, "instance": true, "namespace": true, "pod": true,
		"container": true, "service": true, "endpoint": true}
	// syntheticSeries are series Prometheus makes itself for every target.
	syntheticSeries = map[string]bool{"up": true}
	// unseededValues: label values the contract names that are not
	// initialised at 0 because they only occur with traffic.
	unseededValues = map[string][]string{"result_status": {"F", "U", "OTHER"}}
)

// grafanaVar matches a Grafana variable in a query: $__rate_interval and
// the other interval variables, ${name}, ${name:format} and $name.
var (
	grafanaInterval = regexp.MustCompile(`\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}`)
	grafanaVar      = regexp.MustCompile(`\$\{(\w+)(?::\w+)?\}|\$(\w+)`)
)

// varValue is what a template variable becomes before parsing; a matcher
// whose value is exactly this uses the variable.
func varValue(name string) string { return "__grafana_var_" + name + "__" }

// expandGrafana turns a dashboard query into PromQL: interval variables
// become 5m, every other variable the placeholder of varValue.
func expandGrafana(q string) string {
	q = grafanaInterval.ReplaceAllString(q, "5m")
	return grafanaVar.ReplaceAllStringFunc(q, func(m string) string {
		sub := grafanaVar.FindStringSubmatch(m)
		name := sub[1]
		if name == "" {
			name = sub[2]
		}
		return varValue(name)
	})
}

// selectorUse is one vector selector of an expression.
type selectorUse struct {
	name     string
	matchers []*labels.Matcher
}

// checkExpr parses expr with the Prometheus parser and checks every series
// and label it names against the live scrape. It returns the selectors it
// found and the problems.
func checkExpr(expr string, idx series) ([]selectorUse, []string) {
	node, err := parserFor().ParseExpr(expr)
	if err != nil {
		return nil, []string{fmt.Sprintf("does not parse: %v", err)}
	}
	var uses []selectorUse
	var problems []string
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			u, errs := checkSelector(n, idx)
			uses = append(uses, u)
			problems = append(problems, errs...)
		case *parser.AggregateExpr:
			problems = append(problems, checkGrouping(n, idx)...)
		case *parser.BinaryExpr:
			if vm := n.VectorMatching; vm != nil && len(vm.MatchingLabels) > 0 {
				known := labelsUnder(n, idx)
				for _, l := range vm.MatchingLabels {
					if !known[l] && !groupingTargetLabels[l] {
						problems = append(problems, fmt.Sprintf("on/ignoring label %q is on no series it matches", l))
					}
				}
			}
		}
		return nil
	})
	return uses, problems
}

func checkSelector(vs *parser.VectorSelector, idx series) (selectorUse, []string) {
	name := vs.Name
	for _, m := range vs.LabelMatchers {
		if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
			name = m.Value
		}
	}
	u := selectorUse{name: name}
	if name == "" {
		return u, []string{fmt.Sprintf("selector %s names no metric", vs)}
	}
	var problems []string
	have, ok := idx[name]
	if !ok && !syntheticSeries[name] {
		return u, []string{fmt.Sprintf("series %s is not in the live scrape", name)}
	}
	for _, m := range vs.LabelMatchers {
		if m.Name == labels.MetricName {
			continue
		}
		u.matchers = append(u.matchers, m)
		if matcherTargetLabels[m.Name] {
			continue
		}
		if syntheticSeries[name] {
			problems = append(problems, fmt.Sprintf("%s: label %q is not a target label", name, m.Name))
			continue
		}
		values, ok := have[m.Name]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s has no label %q", name, m.Name))
			continue
		}
		// A positive matcher must be able to select something: a value
		// seeded at 0, or one the contract names for later.
		switch m.Type {
		case labels.MatchEqual, labels.MatchRegexp:
			if !matchesAny(m, values, unseededValues[m.Name]) {
				problems = append(problems, fmt.Sprintf("%s{%s}: no value of %q in the scrape matches (values: %s)",
					name, m, m.Name, strings.Join(sortedKeys(values), ", ")))
			}
		}
	}
	return u, problems
}

func matchesAny(m *labels.Matcher, values map[string]bool, extra []string) bool {
	for v := range values {
		if m.Matches(v) {
			return true
		}
	}
	for _, v := range extra {
		if m.Matches(v) {
			return true
		}
	}
	return false
}

// checkGrouping: by/without labels of an aggregation must be on a series
// it aggregates, or a target label.
func checkGrouping(a *parser.AggregateExpr, idx series) []string {
	if len(a.Grouping) == 0 {
		return nil
	}
	known := labelsUnder(a.Expr, idx)
	var problems []string
	for _, l := range a.Grouping {
		if !known[l] && !groupingTargetLabels[l] {
			problems = append(problems, fmt.Sprintf("%s by/without %q: no series it aggregates has that label", a.Op, l))
		}
	}
	return problems
}

// labelsUnder is every label name of the series selected below n.
func labelsUnder(n parser.Node, idx series) map[string]bool {
	known := map[string]bool{}
	parser.Inspect(n, func(c parser.Node, _ []parser.Node) error {
		if vs, ok := c.(*parser.VectorSelector); ok {
			name := vs.Name
			for _, m := range vs.LabelMatchers {
				if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
					name = m.Value
				}
			}
			for l := range idx[name] {
				known[l] = true
			}
		}
		return nil
	})
	return known
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func parserFor() parser.Parser { return parser.NewParser(parser.Options{}) }

// groupingOf returns the by-labels of the aggregation n's result labels
// come from: through parentheses, function calls (their first non-literal
// argument) and the left side of binary operators.
func groupingOf(n parser.Node) ([]string, bool) {
	switch n := n.(type) {
	case *parser.AggregateExpr:
		if n.Without {
			return nil, false
		}
		return n.Grouping, true
	case *parser.ParenExpr:
		return groupingOf(n.Expr)
	case *parser.Call:
		for _, a := range n.Args {
			switch a.(type) {
			case *parser.NumberLiteral, *parser.StringLiteral:
				continue
			}
			return groupingOf(a)
		}
	case *parser.BinaryExpr:
		if _, ok := n.LHS.(*parser.NumberLiteral); ok {
			return groupingOf(n.RHS)
		}
		return groupingOf(n.LHS)
	}
	return nil, false
}
