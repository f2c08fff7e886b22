package validate

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
)

// kubeVersion is the Kubernetes version the chart is rendered for; helm
// assumes 1.20 without it.
const kubeVersion = "1.33.0"

var (
	repoRoot = func() string {
		_, file, _, _ := runtime.Caller(0)
		return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	}()
	chartDir = filepath.Join(repoRoot, "charts", "tokenproxy")
	// overlays are the kustomize overlays users apply; both are checked.
	overlays = []string{"deploy/kubernetes/overlays/example", "deploy/kubernetes/overlays/example-servicemonitor"}
)

// helmBin is the helm to use: $HELM (make test-deploy passes its own), else
// the repository's .tools/bin/helm, else helm on PATH. A missing helm fails:
// these tests are never skipped.
func helmBin(t testing.TB) string {
	t.Helper()
	for _, c := range []string{os.Getenv("HELM"), filepath.Join(repoRoot, ".tools", "bin", "helm")} {
		if c == "" {
			continue
		}
		if _, err := os.Stat(c); err == nil {
			return c
		}
	}
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	t.Fatal("helm not found: run `make helm` (or `make test-deploy`), or set HELM")
	return ""
}

// kustomize is the command that builds an overlay: $KUSTOMIZE (make
// test-deploy passes `kubectl kustomize`, or kustomize's own `build` where
// kubectl is missing), else kubectl kustomize.
func kustomize(t testing.TB, overlay string) []byte {
	t.Helper()
	out, errOut, err := kustomizeErr(overlay)
	if err != nil {
		t.Fatalf("kustomize %s: %v\n%s", overlay, err, errOut)
	}
	return out
}

func kustomizeErr(overlay string) (stdout, stderr []byte, err error) {
	cmd := strings.Fields(os.Getenv("KUSTOMIZE"))
	if len(cmd) == 0 {
		cmd = []string{"kubectl", "kustomize"}
	}
	return runErr(repoRoot, cmd[0], append(cmd[1:], overlay)...)
}

// run runs a command and returns its standard output; a failure fails the
// test with standard error.
func run(t testing.TB, dir, name string, args ...string) []byte {
	t.Helper()
	out, errOut, err := runErr(dir, name, args...)
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, errOut)
	}
	return out
}

func runErr(dir, name string, args ...string) (stdout, stderr []byte, err error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
}

// helmTemplate renders the chart for kubeVersion with the given extra args.
func helmTemplate(t testing.TB, args ...string) []byte {
	t.Helper()
	return run(t, repoRoot, helmBin(t), append([]string{"template", "tp", chartDir, "--kube-version", kubeVersion}, args...)...)
}

// ciValues lists charts/tokenproxy/ci/*-values.yaml.
func ciValues(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no ci/*-values.yaml in %s (%v)", chartDir, err)
	}
	sort.Strings(files)
	return files
}

// rendering is one set of manifests: a chart rendering or an overlay build.
type rendering struct {
	name   string
	stream []byte
}

var (
	renderOnce sync.Once
	renderings []rendering
	renderErr  error
)

// allRenderings renders the chart with its defaults and each ci values file,
// and builds each overlay, once per test binary.
func allRenderings(t testing.TB) []rendering {
	t.Helper()
	renderOnce.Do(func() {
		helm := helmBin(t)
		render := func(name string, args ...string) {
			out, errOut, err := runErr(repoRoot, helm, append([]string{"template", "tp", chartDir, "--kube-version", kubeVersion}, args...)...)
			if err != nil && renderErr == nil {
				renderErr = fmt.Errorf("helm template %s: %v\n%s", name, err, errOut)
			}
			renderings = append(renderings, rendering{"chart " + name, out})
		}
		render("defaults")
		for _, f := range ciValues(t) {
			render(filepath.Base(f), "-f", f)
		}
		for _, o := range overlays {
			out, errOut, err := kustomizeErr(o)
			if err != nil && renderErr == nil {
				renderErr = fmt.Errorf("kubectl kustomize %s: %v\n%s", o, err, errOut)
			}
			renderings = append(renderings, rendering{"kustomize " + o, out})
		}
	})
	if renderErr != nil {
		t.Fatal(renderErr)
	}
	return renderings
}
