package validate

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// readmeBlocks returns the chart README's ```yaml blocks keyed by their first
// line's comment (# Chart.yaml, # values.yaml, # templates/deployment.yaml).
func readmeBlocks(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[string]string{}
	for _, m := range regexp.MustCompile("(?s)```yaml\n# ([^\n]+)\n(.*?)```").FindAllStringSubmatch(string(raw), -1) {
		blocks[m[1]] = m[2]
	}
	return blocks
}

// TestParentChartIncludesSidecar builds the app chart of the chart README
// (its Chart.yaml, values.yaml and deployment template, with this chart as
// the dependency), renders it, and checks the app's pod carries the sidecar
// as documented, natively and classically, strictly decoded and restricted.
func TestParentChartIncludesSidecar(t *testing.T) {
	blocks := readmeBlocks(t)
	parent := filepath.Join(t.TempDir(), "shop")
	files := map[string]string{}
	for _, name := range []string{"Chart.yaml", "values.yaml", "templates/deployment.yaml"} {
		b, ok := blocks[name]
		if !ok {
			t.Fatalf("chart README has no ```yaml block starting with # %s", name)
		}
		files[name] = b
	}
	files["Chart.yaml"] = "apiVersion: v2\nname: shop\nversion: 1.0.0\n" + files["Chart.yaml"]
	for name, content := range files {
		p := filepath.Join(parent, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	copyDir(t, chartDir, filepath.Join(parent, "charts", "tokenproxy"))

	for _, native := range []bool{true, false} {
		name := map[bool]string{true: "native", false: "classic"}[native]
		t.Run(name, func(t *testing.T) {
			args := []string{"template", "shop", parent, "--kube-version", kubeVersion}
			if !native {
				args = append(args, "--set", "tokenproxy.sidecar.native=false")
			}
			objs, err := DecodeAll(run(t, repoRoot, helmBin(t), args...))
			if err != nil {
				t.Fatal(err)
			}
			var app *appsv1.Deployment
			kinds := map[string]int{}
			for _, o := range objs {
				kinds[o.Kind]++
				if d, ok := o.Value.(*appsv1.Deployment); ok {
					if d.Name != "shop-shop" {
						t.Errorf("unexpected Deployment %s: the example should be off", d.Name)
					}
					app = d
				}
			}
			if app == nil {
				t.Fatal("no app Deployment rendered")
			}
			if kinds["Secret"] != 0 {
				t.Errorf("with existingSecret the dependency must not create a Secret, got %d", kinds["Secret"])
			}
			for _, k := range []string{"PodMonitor", "PrometheusRule", "Service", "PodDisruptionBudget"} {
				if kinds[k] != 1 {
					t.Errorf("want one %s from the dependency, got %d", k, kinds[k])
				}
			}
			tmpl := &app.Spec.Template
			for _, v := range Restricted(tmpl) {
				t.Error(v)
			}
			_, c, ok := sidecarOf(t, objs)
			if !ok {
				t.Fatal("the app's pod has no tokenproxy container")
			}
			inInit := len(tmpl.Spec.InitContainers) == 1 && tmpl.Spec.InitContainers[0].Name == "tokenproxy"
			if inInit != native {
				t.Errorf("tokenproxy in initContainers = %v, want %v", inInit, native)
			}
			env := map[string]corev1.EnvVar{}
			for _, e := range c.Env {
				env[e.Name] = e
			}
			for name, want := range map[string]string{
				"TOKENPROXY_WALLET_URL":             "https://open.wallet.example.com/api",
				"TOKENPROXY_REDIS_URL":              "redis://redis.shop.svc:6379/0",
				"TOKENPROXY_ENCRYPTION_KEYS_FILE":   "/etc/tokenproxy/keys/encryption-keys",
				"TOKENPROXY_WALLET_PUBLIC_KEY_FILE": "/etc/tokenproxy/keys/wallet-public-key.pem",
			} {
				if env[name].Value != want {
					t.Errorf("%s = %q, want %q", name, env[name].Value, want)
				}
			}
			vol := false
			for _, v := range tmpl.Spec.Volumes {
				vol = vol || (v.Secret != nil && v.Secret.SecretName == "shop-tokenproxy-keys")
			}
			if !vol {
				t.Error("no volume of the existing Secret shop-tokenproxy-keys")
			}
			if tmpl.Labels["tokenproxy.io/instance"] != "shop-tokenproxy" {
				t.Errorf("pod labels %v lack tokenproxy.io/instance=shop-tokenproxy (the monitors select it)", tmpl.Labels)
			}
		})
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		if strings.HasSuffix(p, "~") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}
