package validate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestNotes renders NOTES.txt (helm template skips it, and helm install
// needs a cluster) through tpl in a copy of the chart, and checks what it
// tells the user in each situation.
func TestNotes(t *testing.T) {
	chart := filepath.Join(t.TempDir(), "tokenproxy")
	copyDir(t, chartDir, chart)
	notes, err := os.ReadFile(filepath.Join(chartDir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(chart, "notes-check.txt"), notes, 0o644); err != nil {
		t.Fatal(err)
	}
	check := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-check\ndata:\n  notes: {{ tpl (.Files.Get \"notes-check.txt\") . | quote }}\n"
	if err := os.WriteFile(filepath.Join(chart, "templates", "zz-notes-check.yaml"), []byte(check), 0o644); err != nil {
		t.Fatal(err)
	}
	render := func(t *testing.T, args ...string) string {
		t.Helper()
		out := run(t, repoRoot, helmBin(t), append([]string{"template", "tp", chart, "--kube-version", kubeVersion, "--show-only", "templates/zz-notes-check.yaml"}, args...)...)
		o, err := Decode(out)
		if err != nil {
			t.Fatal(err)
		}
		return o.Value.(*corev1.ConfigMap).Data["notes"]
	}
	for _, c := range []struct {
		name        string
		args        []string
		want, avoid []string
	}{
		{
			name: "defaults",
			want: []string{"native sidecar", "Example Deployment: tp-tokenproxy-example", "WARNING: no merchant private key", "WARNING: no Redis", "still the chart's examples", "Alerts: PrometheusRule tp-tokenproxy"},
		},
		{
			name: "configured",
			args: []string{"-f", filepath.Join(chartDir, "ci", "existing-secret-values.yaml"),
				"--set", "config.walletURL=https://open.wallet.example.com", "--set", "config.clientId=2022"},
			want:  []string{"Keys: Secret shop-tokenproxy-keys"},
			avoid: []string{"WARNING"},
		},
		{
			name:  "redis without encryption keys",
			args:  []string{"--set", "redis.url=redis://r:6379/0", "--set", "secrets.values.privateKey=x"},
			want:  []string{"WARNING: a Redis store needs encryption keys"},
			avoid: []string{"WARNING: no merchant private key", "WARNING: no Redis"},
		},
		{
			name:  "own chart",
			args:  []string{"--set", "example.enabled=false", "-f", filepath.Join(chartDir, "ci", "classic-sidecar-values.yaml")},
			want:  []string{"classic sidecar container", `include "tokenproxy.sidecarContainer"`},
			avoid: []string{"Example Deployment"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			notes := render(t, c.args...)
			for _, w := range c.want {
				if !strings.Contains(notes, w) {
					t.Errorf("NOTES lack %q:\n%s", w, notes)
				}
			}
			for _, a := range c.avoid {
				if strings.Contains(notes, a) {
					t.Errorf("NOTES say %q:\n%s", a, notes)
				}
			}
		})
	}
}
