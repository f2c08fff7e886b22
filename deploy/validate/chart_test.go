package validate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// TestTypoValuesRefused: a key the chart does not know fails helm template
// and helm lint, wherever it is (values.schema.json has
// additionalProperties: false on every object).
func TestTypoValuesRefused(t *testing.T) {
	helm := helmBin(t)
	cases := map[string]string{
		"testdata":        "", // testdata/typo-values.yaml, the file make test-deploy uses
		"top level":       "replicaCount: 2\n",
		"image":           "image:\n  tags: latest\n",
		"sidecar":         "sidecar:\n  nativ: false\n",
		"securityContext": "sidecar:\n  securityContext:\n    readOnlyRootFileSystem: true\n",
		"probe":           "sidecar:\n  livenessProbe:\n    initialDelay: 5\n",
		"secrets":         "secrets:\n  existingSecrets: x\n",
		"secret values":   "secrets:\n  values:\n    privateKeyPem: x\n",
		"redis":           "redis:\n  sentinelMaster: m\n",
		"redis tls":       "redis:\n  tls:\n    ca: x\n",
		"monitoring":      "monitoring:\n  podMonitor:\n    enable: true\n",
		"network policy":  "networkPolicy:\n  walletCidrs: [1.2.3.4/32]\n",
		"wrong type":      "config:\n  maxBodyBytes: lots\n",
		"bad enum":        "config:\n  logFormat: xml\n",
		"example":         "example:\n  replica: 2\n",
	}
	dir := t.TempDir()
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(repoRoot, "deploy", "validate", "testdata", "typo-values.yaml")
			if content != "" {
				file = filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".yaml")
				if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			for _, args := range [][]string{
				{"template", "tp", chartDir, "--kube-version", kubeVersion, "-f", file},
				{"lint", "--strict", "--kube-version", kubeVersion, chartDir, "-f", file},
			} {
				out, errOut, err := runErr(repoRoot, helm, args...)
				if err == nil {
					t.Errorf("helm %s accepted it", args[0])
					continue
				}
				if msg := string(out) + string(errOut); !strings.Contains(msg, "schema") {
					t.Errorf("helm %s failed, but not on the schema:\n%s", args[0], msg)
				}
			}
		})
	}
}

// leafPaths lists the dotted paths of values.yaml's leaves: a map is walked,
// an empty map, a list or a scalar is a leaf.
func leafPaths(prefix string, v any, out map[string]any) {
	m, ok := v.(map[string]any)
	if !ok || len(m) == 0 || isFreeForm(prefix) {
		out[prefix] = v
		return
	}
	for k, sub := range m {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		leafPaths(p, sub, out)
	}
}

// isFreeForm: maps whose keys are names chosen by the user (labels), one row.
func isFreeForm(path string) bool {
	return slices.Contains([]string{"podLabels", "monitoring.labels", "example.nodeSelector", "example.podAnnotations", "networkPolicy.redisPodLabels"}, path)
}

func chartValues(t testing.TB) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

var valuesRow = regexp.MustCompile("^\\| `([^`]+)` \\| `(.*)` \\| (.+) \\|$")

// TestChartReadmeValuesTable keeps the chart README's values table in step
// with values.yaml: one row per leaf, in any order, with its default as
// JSON; a missing, extra or stale row fails and prints the row to write.
func TestChartReadmeValuesTable(t *testing.T) {
	leaves := map[string]any{}
	leafPaths("", chartValues(t), leaves)
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(string(readme), "\n") {
		if m := valuesRow.FindStringSubmatch(line); m != nil {
			if _, dup := rows[m[1]]; dup {
				t.Errorf("README: row %s twice", m[1])
			}
			rows[m[1]] = m[2]
		}
	}
	var paths []string
	for p := range leaves {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		want := jsonString(leaves[p])
		got, ok := rows[p]
		switch {
		case !ok:
			t.Errorf("README values table lacks %s; add:\n| `%s` | `%s` | ... |", p, p, want)
		case got != want:
			t.Errorf("README values table: %s default is `%s`, values.yaml has `%s`", p, got, want)
		}
	}
	for p := range rows {
		if _, ok := leaves[p]; !ok {
			t.Errorf("README values table has %s, which values.yaml does not", p)
		}
	}
}

// TestSchemaCoversValues: every leaf of values.yaml is declared in
// values.schema.json, and every object the schema declares properties for
// refuses others (additionalProperties: false), so a typo anywhere fails.
// The schema is self-contained: no $ref to anything remote.
func TestSchemaCoversValues(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(`"$ref"`)) {
		t.Error("values.schema.json uses $ref: keep it self-contained (a remote $ref fails offline)")
	}
	var schema map[string]any
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	var walk func(path string, s map[string]any)
	walk = func(path string, s map[string]any) {
		props, ok := s["properties"].(map[string]any)
		if !ok {
			return
		}
		if s["additionalProperties"] != false {
			t.Errorf("schema %q: properties without additionalProperties: false", path)
		}
		for k, sub := range props {
			if m, ok := sub.(map[string]any); ok {
				walk(strings.TrimPrefix(path+"."+k, "."), m)
			}
		}
	}
	walk("", schema)

	leaves := map[string]any{}
	leafPaths("", chartValues(t), leaves)
	for p := range leaves {
		s := schema
		for _, part := range strings.Split(p, ".") {
			props, _ := s["properties"].(map[string]any)
			next, ok := props[part].(map[string]any)
			if !ok {
				t.Errorf("values.yaml %s is not in values.schema.json", p)
				break
			}
			s = next
		}
	}
}

// settingNames reads the variables of the root README's configuration
// table, with their defaults ("-": none).
func settingNames(t testing.TB) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `(TOKENPROXY_[A-Z0-9_]+)` \\| (`[^`]*`|-|[^|]*) \\|")
	out := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			out[m[1]] = strings.Trim(strings.TrimSpace(m[2]), "`")
		}
	}
	if len(out) < 30 {
		t.Fatalf("read only %d settings from README.md's configuration table", len(out))
	}
	return out
}

// newerSettings are the contract's settings the README table may not list
// yet, with the contract's defaults.
var newerSettings = map[string]string{
	"TOKENPROXY_MAX_INFLIGHT":          "",
	"TOKENPROXY_MEMORY_LIMIT":          "",
	"TOKENPROXY_EVENTS_URL":            "-",
	"TOKENPROXY_EVENTS_SECRET":         "-",
	"TOKENPROXY_EVENTS_SECRET_FILE":    "-",
	"TOKENPROXY_EVENTS_EXPIRY_HORIZON": "72h",
	"TOKENPROXY_APP_SIGNING_KEY":       "-",
	"TOKENPROXY_APP_SIGNING_KEY_FILE":  "-",
	"TOKENPROXY_APP_TOKENS":            "none",
}

// fileOnly are settings the chart sets only through their _FILE form:
// secrets belong in a Secret's files, not in the pod spec.
var fileOnly = []string{"TOKENPROXY_PRIVATE_KEY", "TOKENPROXY_KEY_VERSION", "TOKENPROXY_WALLET_PUBLIC_KEY",
	"TOKENPROXY_ENCRYPTION_KEYS", "TOKENPROXY_EVENTS_SECRET", "TOKENPROXY_APP_SIGNING_KEY"}

// sidecarOf finds the tokenproxy container of a rendered workload.
func sidecarOf(t testing.TB, objs []Object) (*corev1.PodTemplateSpec, *corev1.Container, bool) {
	t.Helper()
	for _, o := range objs {
		tmpl, ok := PodTemplate(o)
		if !ok {
			continue
		}
		for _, list := range [][]corev1.Container{tmpl.Spec.InitContainers, tmpl.Spec.Containers} {
			for i := range list {
				if list[i].Name == "tokenproxy" {
					return tmpl, &list[i], true
				}
			}
		}
	}
	return nil, nil, false
}

// TestEverySettingRendered: each setting of the configuration table (and
// the contract's newer ones) is rendered by some ci values file (its _FILE
// form for secrets), and with the chart's defaults each rendered value
// equals the documented default.
func TestEverySettingRendered(t *testing.T) {
	settings := settingNames(t)
	for k, v := range newerSettings {
		if _, ok := settings[k]; !ok {
			settings[k] = v
		}
	}
	seen := map[string]bool{}
	for _, r := range allRenderings(t) {
		if !strings.HasPrefix(r.name, "chart ") {
			continue
		}
		objs, err := DecodeAll(r.stream)
		if err != nil {
			t.Fatal(err)
		}
		_, c, ok := sidecarOf(t, objs)
		if !ok {
			t.Fatalf("%s: no tokenproxy container", r.name)
		}
		for _, e := range c.Env {
			seen[e.Name] = true
		}
		if r.name != "chart defaults" {
			continue
		}
		for _, e := range c.Env {
			def, ok := settings[e.Name]
			if !ok || e.ValueFrom != nil || strings.HasSuffix(e.Name, "_FILE") {
				continue
			}
			if e.Name == "TOKENPROXY_WALLET_URL" || e.Name == "TOKENPROXY_CLIENT_ID" {
				continue // required: the chart's examples stand in until set
			}
			if def == "-" || def == "" {
				t.Errorf("defaults render %s=%q, which has no default: leave it unset", e.Name, e.Value)
			} else if e.Value != def {
				t.Errorf("defaults render %s=%q, the documented default is %q", e.Name, e.Value, def)
			}
		}
	}
	for name := range settings {
		if seen[name] || (slices.Contains(fileOnly, name) && seen[name+"_FILE"]) {
			continue
		}
		if slices.Contains(fileOnly, strings.TrimSuffix(name, "_FILE")) && seen[name] {
			continue
		}
		if slices.Contains(fileOnly, name) {
			continue // its _FILE form is checked as a setting of its own
		}
		t.Errorf("no ci values file renders %s", name)
	}
}

// TestSidecarShape checks what the probes and Secret updates depend on, in
// every rendering: native sidecars are init containers with restartPolicy
// Always and a startup probe; probes name a declared port; liveness is
// /healthz and readiness /readyz; key files come from a whole-volume Secret
// mount (subPath mounts miss updates); the memory limit comes from the
// container's own limit.
func TestSidecarShape(t *testing.T) {
	for _, r := range allRenderings(t) {
		t.Run(r.name, func(t *testing.T) {
			objs, err := DecodeAll(r.stream)
			if err != nil {
				t.Fatal(err)
			}
			tmpl, c, ok := sidecarOf(t, objs)
			if !ok {
				t.Fatal("no tokenproxy container")
			}
			native := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
			inInit := slices.ContainsFunc(tmpl.Spec.InitContainers, func(x corev1.Container) bool { return x.Name == c.Name })
			if inInit != native {
				t.Errorf("in initContainers=%v but restartPolicy Always=%v", inInit, native)
			}
			wantNative := !strings.Contains(r.name, "classic")
			if native != wantNative {
				t.Errorf("native sidecar = %v, want %v", native, wantNative)
			}
			if native && len(tmpl.Spec.InitContainers) != 1 {
				t.Errorf("the sidecar should be the only init container, got %d", len(tmpl.Spec.InitContainers))
			}
			for name, p := range map[string]*corev1.Probe{"startupProbe": c.StartupProbe, "livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe} {
				if p == nil || p.HTTPGet == nil {
					t.Errorf("%s: want an httpGet probe", name)
					continue
				}
				if _, err := portOf(c, p.HTTPGet.Port.String()); err != nil {
					t.Errorf("%s: %v", name, err)
				}
			}
			if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path != "/healthz" {
				t.Errorf("livenessProbe path %s, want /healthz", c.LivenessProbe.HTTPGet.Path)
			}
			for _, p := range []*corev1.Probe{c.ReadinessProbe, c.StartupProbe} {
				if p != nil && p.HTTPGet != nil && p.HTTPGet.Path != "/readyz" {
					t.Errorf("readiness/startup probe path %s, want /readyz", p.HTTPGet.Path)
				}
			}
			secretMounts := map[string]bool{}
			for _, m := range c.VolumeMounts {
				if m.SubPath != "" || m.SubPathExpr != "" {
					t.Errorf("volumeMount %s uses subPath: Secret updates would not reach it", m.Name)
				}
				if !m.ReadOnly {
					t.Errorf("volumeMount %s is writable", m.Name)
				}
				for _, v := range tmpl.Spec.Volumes {
					if v.Name == m.Name && v.Secret != nil {
						secretMounts[m.MountPath] = true
					}
				}
			}
			files := 0
			for _, e := range c.Env {
				switch {
				case strings.HasSuffix(e.Name, "_FILE") && e.Name != "TOKENPROXY_REDIS_CA_FILE":
					files++
					if !secretMounts[filepath.Dir(e.Value)] {
						t.Errorf("%s=%s is not in a mounted Secret volume", e.Name, e.Value)
					}
				case e.Name == "TOKENPROXY_MEMORY_LIMIT" && e.ValueFrom != nil:
					rf := e.ValueFrom.ResourceFieldRef
					if rf == nil || rf.Resource != "limits.memory" || (rf.ContainerName != "" && rf.ContainerName != c.Name) {
						t.Errorf("TOKENPROXY_MEMORY_LIMIT should come from this container's limits.memory, got %+v", e.ValueFrom)
					}
					if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
						t.Error("TOKENPROXY_MEMORY_LIMIT from limits.memory, but the container has no memory limit")
					}
				}
			}
			if files < 2 {
				t.Errorf("want at least the private key and key version files, got %d *_FILE settings", files)
			}
			if g := tmpl.Spec.TerminationGracePeriodSeconds; g == nil || *g <= 20 {
				t.Errorf("terminationGracePeriodSeconds must exceed TOKENPROXY_SHUTDOWN_TIMEOUT (20s)")
			}
		})
	}
}

// portOf resolves a probe's port (a number or a container port's name).
func portOf(c *corev1.Container, port string) (int32, error) {
	for _, p := range c.Ports {
		if p.Name == port || fmt.Sprint(p.ContainerPort) == port {
			return p.ContainerPort, nil
		}
	}
	return 0, fmt.Errorf("port %q is not a port of container %s", port, c.Name)
}

// TestAlertCopiesInSync: deploy/prometheus/alerts.yaml is the one source of
// the rules; the chart's files/alerts.yaml is a byte copy, and the
// PrometheusRule of the chart and of the kustomize base carry exactly its
// groups. `make sync-alerts` rewrites the copies.
func TestAlertCopiesInSync(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "prometheus", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	chartCopy, err := os.ReadFile(filepath.Join(chartDir, "files", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(src, chartCopy) {
		t.Error("charts/tokenproxy/files/alerts.yaml differs from deploy/prometheus/alerts.yaml: run make sync-alerts")
	}
	var want monitoringv1.PrometheusRuleSpec
	if err := yaml.UnmarshalStrict(src, &want); err != nil {
		t.Fatalf("deploy/prometheus/alerts.yaml is not a rules file: %v", err)
	}
	if len(want.Groups) == 0 {
		t.Fatal("deploy/prometheus/alerts.yaml has no groups")
	}
	base, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "kubernetes", "base", "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	o, err := Decode(base)
	if err != nil {
		t.Fatal(err)
	}
	if got := o.Value.(*monitoringv1.PrometheusRule).Spec; !reflect.DeepEqual(got, want) {
		t.Error("deploy/kubernetes/base/prometheusrule.yaml differs from deploy/prometheus/alerts.yaml: run make sync-alerts")
	}
	rules := 0
	for _, r := range allRenderings(t) {
		objs, err := DecodeAll(r.stream)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			if pr, ok := o.Value.(*monitoringv1.PrometheusRule); ok {
				rules++
				if !reflect.DeepEqual(pr.Spec, want) {
					t.Errorf("%s: PrometheusRule %s differs from deploy/prometheus/alerts.yaml", r.name, o.Name)
				}
			}
		}
	}
	if rules == 0 {
		t.Error("no rendering has a PrometheusRule")
	}
}

// TestImageTagIsAppVersion: the default image is the chart's appVersion
// (the named templates cannot read .Chart from a parent chart, so the tag
// is spelled out in values.yaml).
func TestImageTagIsAppVersion(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(raw, &chart); err != nil {
		t.Fatal(err)
	}
	img := chartValues(t)["image"].(map[string]any)
	if img["tag"] != chart.AppVersion {
		t.Errorf("values image.tag %v, Chart.yaml appVersion %s", img["tag"], chart.AppVersion)
	}
}

// TestMonitorsSelectThePods: the PodMonitor, the metrics Service, the PDB and
// the NetworkPolicy select the pods that carry the sidecar, and the
// ServiceMonitor selects the metrics Service, on its ops port.
func TestMonitorsSelectThePods(t *testing.T) {
	for _, r := range allRenderings(t) {
		t.Run(r.name, func(t *testing.T) {
			objs, err := DecodeAll(r.stream)
			if err != nil {
				t.Fatal(err)
			}
			tmpl, c, ok := sidecarOf(t, objs)
			if !ok {
				t.Fatal("no tokenproxy container")
			}
			matches := func(sel map[string]string, labels map[string]string) bool {
				for k, v := range sel {
					if labels[k] != v {
						return false
					}
				}
				return len(sel) > 0
			}
			var svcLabels map[string]string
			for _, o := range objs {
				switch v := o.Value.(type) {
				case *corev1.Service:
					svcLabels = v.Labels
					if !matches(v.Spec.Selector, tmpl.Labels) {
						t.Errorf("Service %s does not select the pods", o.Name)
					}
					for _, p := range v.Spec.Ports {
						if _, err := portOf(c, p.TargetPort.String()); err != nil {
							t.Errorf("Service %s: %v", o.Name, err)
						}
					}
				case *monitoringv1.PodMonitor:
					if !matches(v.Spec.Selector.MatchLabels, tmpl.Labels) {
						t.Errorf("PodMonitor %s does not select the pods", o.Name)
					}
					for _, e := range v.Spec.PodMetricsEndpoints {
						if e.Port == nil {
							t.Errorf("PodMonitor %s: endpoint without a port", o.Name)
						} else if _, err := portOf(c, *e.Port); err != nil {
							t.Errorf("PodMonitor %s: %v", o.Name, err)
						}
					}
				}
			}
			for _, o := range objs {
				switch v := o.Value.(type) {
				case *monitoringv1.ServiceMonitor:
					if !matches(v.Spec.Selector.MatchLabels, svcLabels) {
						t.Errorf("ServiceMonitor %s does not select the metrics Service", o.Name)
					}
				case *appsv1.Deployment:
					if !matches(v.Spec.Selector.MatchLabels, tmpl.Labels) {
						t.Errorf("Deployment %s selector does not match its pods", o.Name)
					}
				}
				if o.Kind == "PodDisruptionBudget" || o.Kind == "NetworkPolicy" {
					var sel map[string]string
					b, _ := json.Marshal(o.Value)
					var generic struct {
						Spec struct {
							Selector    struct{ MatchLabels map[string]string } `json:"selector"`
							PodSelector struct{ MatchLabels map[string]string } `json:"podSelector"`
						} `json:"spec"`
					}
					_ = json.Unmarshal(b, &generic)
					sel = generic.Spec.Selector.MatchLabels
					if o.Kind == "NetworkPolicy" {
						sel = generic.Spec.PodSelector.MatchLabels
					}
					if !matches(sel, tmpl.Labels) {
						t.Errorf("%s %s does not select the pods", o.Kind, o.Name)
					}
				}
			}
		})
	}
}

// TestRenderRefusals: settings that cannot work fail the rendering with a
// message saying what to do, and their working counterpart renders.
func TestRenderRefusals(t *testing.T) {
	helm := helmBin(t)
	for _, c := range []struct {
		name     string
		bad, ok  []string
		mentions string
	}{
		{"native sidecar before 1.29", []string{"--kube-version", "1.28.0"}, []string{"--kube-version", "1.28.0", "--set", "sidecar.native=false"}, "sidecar.native=false"},
		{"two monitors", []string{"--set", "monitoring.serviceMonitor.enabled=true"}, []string{"--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.podMonitor.enabled=false"}, "enable one of"},
		{"network policy without the wallet", []string{"--set", "networkPolicy.enabled=true"}, []string{"--set", "networkPolicy.enabled=true", "--set", "networkPolicy.walletCIDRs={203.0.113.0/24}"}, "walletCIDRs"},
		{"existing Secret without the private key", []string{"--set", "secrets.existingSecret=k", "--set", "secrets.existingSecretKeys.privateKey="}, []string{"--set", "secrets.existingSecret=k"}, "existingSecretKeys.privateKey"},
	} {
		t.Run(c.name, func(t *testing.T) {
			base := []string{"template", "tp", chartDir}
			withVersion := func(args []string) []string {
				if !slices.Contains(args, "--kube-version") {
					args = append([]string{"--kube-version", kubeVersion}, args...)
				}
				return append(slices.Clone(base), args...)
			}
			out, errOut, err := runErr(repoRoot, helm, withVersion(c.bad)...)
			if err == nil {
				t.Errorf("rendered:\n%s", out)
			} else if !strings.Contains(string(errOut), c.mentions) {
				t.Errorf("the error does not mention %q:\n%s", c.mentions, errOut)
			}
			if _, errOut, err := runErr(repoRoot, helm, withVersion(c.ok)...); err != nil {
				t.Errorf("the working counterpart fails: %v\n%s", err, errOut)
			}
		})
	}
}
