package validate

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// testKeys writes throwaway keys, generated for this run: the merchant's
// RSA-2048 private key (PKCS#8 PEM), a wallet public key (PKIX PEM) and one
// 32-byte encryption key (base64).
func testKeys(t *testing.T) (privPEM, walletPubPEM, encKeys string) {
	t.Helper()
	k := newTestKeys(t)
	return k.merchantPriv, k.walletPub, k.encKeys
}

// keySet is one set of throwaway keys.
type keySet struct {
	merchantPriv, merchantPub, walletPriv, walletPub, encKeys string
}

// newTestKeys generates the merchant's and the wallet's RSA-2048 key pairs
// (private PKCS#8 PEM, public PKIX PEM) and one 32-byte encryption key.
func newTestKeys(t *testing.T) keySet {
	t.Helper()
	privPEM := func(k *rsa.PrivateKey) string {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}
	pubPEM := func(k *rsa.PrivateKey) string {
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	}
	merchant, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	wallet, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return keySet{
		merchantPriv: privPEM(merchant), merchantPub: pubPEM(merchant),
		walletPriv: privPEM(wallet), walletPub: pubPEM(wallet),
		encKeys: base64.StdEncoding.EncodeToString(key) + "\n",
	}
}

// pod is what the kubelet would have for the sidecar: the rendered objects
// the container refers to.
type pod struct {
	tmpl       *corev1.PodTemplateSpec
	c          *corev1.Container
	secrets    map[string]map[string]string // rendered Secrets and the test's own
	configMaps map[string]map[string]string
}

// localRun is the sidecar container mapped onto this machine: env with mount
// paths moved into a temp dir and listen ports onto free loopback ports.
type localRun struct {
	env     []string
	args    []string
	ports   map[int]int       // container port -> loopback port
	volumes map[string]string // volume name -> local directory
}

// writeVolume writes a Secret or ConfigMap volume the way the kubelet's
// atomic writer does: the files in a timestamped directory, a ..data
// symlink to it, and each key a symlink through ..data. Called again on the
// same dir it is a Secret update: a new directory, then ..data swapped in
// one rename, so a reader sees either all old or all new files.
func writeVolume(t *testing.T, dir string, data map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	ts, err := os.MkdirTemp(dir, ".."+time.Now().UTC().Format("2006_01_02_15_04_05."))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range data {
		if err := os.WriteFile(filepath.Join(ts, k), []byte(v), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for k := range data {
		link := filepath.Join(dir, k)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", k), link); err != nil {
			t.Fatal(err)
		}
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
			t.Fatal(err)
		}
	}
}

var listenAddr = regexp.MustCompile(`^(|0\.0\.0\.0|127\.0\.0\.1|localhost|\[::\]):([0-9]+)$`)

// mapToLocal writes each volume the container mounts into root (Secret and
// ConfigMap contents as files) and resolves the container's env exactly as
// the kubelet would, rewriting mount paths to their local directories and
// listen addresses to free loopback ports.
func mapToLocal(t *testing.T, p pod, root string) localRun {
	t.Helper()
	mounts := map[string]string{}  // mount path -> local dir
	volumes := map[string]string{} // volume name -> local dir
	for _, m := range p.c.VolumeMounts {
		var vol *corev1.Volume
		for i := range p.tmpl.Spec.Volumes {
			if p.tmpl.Spec.Volumes[i].Name == m.Name {
				vol = &p.tmpl.Spec.Volumes[i]
			}
		}
		if vol == nil {
			t.Fatalf("volumeMount %s: no such volume", m.Name)
		}
		var data map[string]string
		var ok bool
		switch {
		case vol.Secret != nil:
			data, ok = p.secrets[vol.Secret.SecretName]
		case vol.ConfigMap != nil:
			data, ok = p.configMaps[vol.ConfigMap.Name]
		default:
			t.Fatalf("volume %s: only Secret and ConfigMap volumes are mapped", m.Name)
		}
		if !ok {
			t.Fatalf("volume %s: its Secret/ConfigMap is neither rendered nor provided by the test", m.Name)
		}
		dir := filepath.Join(root, m.Name)
		writeVolume(t, dir, data)
		mounts[m.MountPath] = dir
		volumes[m.Name] = dir
	}
	run := localRun{ports: map[int]int{}, volumes: volumes, args: append(slices.Clone(p.c.Command), p.c.Args...)}
	if len(p.c.Command) > 0 {
		t.Fatalf("the sidecar overrides the image's entrypoint with %v", p.c.Command)
	}
	rewrite := func(v string) string {
		for mp, dir := range mounts {
			if v == mp || strings.HasPrefix(v, mp+"/") {
				return dir + strings.TrimPrefix(v, mp)
			}
		}
		if m := listenAddr.FindStringSubmatch(v); m != nil {
			port, _ := strconv.Atoi(m[2])
			if _, ok := run.ports[port]; !ok {
				run.ports[port] = freePort(t)
			}
			return fmt.Sprintf("127.0.0.1:%d", run.ports[port])
		}
		return v
	}
	add := func(name, value string) { run.env = append(run.env, name+"="+rewrite(value)) }
	for _, ef := range p.c.EnvFrom {
		var data map[string]string
		switch {
		case ef.ConfigMapRef != nil:
			data = p.configMaps[ef.ConfigMapRef.Name]
		case ef.SecretRef != nil:
			data = p.secrets[ef.SecretRef.Name]
		}
		for k, v := range data {
			add(ef.Prefix+k, v)
		}
	}
	for _, e := range p.c.Env {
		if e.ValueFrom == nil {
			add(e.Name, e.Value)
			continue
		}
		switch vf := e.ValueFrom; {
		case vf.SecretKeyRef != nil:
			v, ok := p.secrets[vf.SecretKeyRef.Name][vf.SecretKeyRef.Key]
			if !ok {
				if vf.SecretKeyRef.Optional != nil && *vf.SecretKeyRef.Optional {
					continue
				}
				t.Fatalf("%s: Secret %s key %s is neither rendered nor provided by the test", e.Name, vf.SecretKeyRef.Name, vf.SecretKeyRef.Key)
			}
			add(e.Name, v)
		case vf.ConfigMapKeyRef != nil:
			v, ok := p.configMaps[vf.ConfigMapKeyRef.Name][vf.ConfigMapKeyRef.Key]
			if !ok {
				t.Fatalf("%s: ConfigMap %s key %s not rendered", e.Name, vf.ConfigMapKeyRef.Name, vf.ConfigMapKeyRef.Key)
			}
			add(e.Name, v)
		case vf.ResourceFieldRef != nil:
			add(e.Name, resourceField(t, p, vf.ResourceFieldRef))
		default:
			t.Fatalf("%s: valueFrom %+v is not mapped by this test", e.Name, vf)
		}
	}
	return run
}

// resourceField is the downward API's value: the quantity divided by the
// divisor (default 1), rounded up, as an integer.
func resourceField(t *testing.T, p pod, rf *corev1.ResourceFieldSelector) string {
	t.Helper()
	c := p.c
	if rf.ContainerName != "" && rf.ContainerName != c.Name {
		t.Fatalf("resourceFieldRef names container %s, not the sidecar", rf.ContainerName)
	}
	kind, name, _ := strings.Cut(rf.Resource, ".")
	list := map[string]corev1.ResourceList{"limits": c.Resources.Limits, "requests": c.Resources.Requests}[kind]
	q, ok := list[corev1.ResourceName(name)]
	if !ok {
		t.Fatalf("resourceFieldRef %s: the container does not set it", rf.Resource)
	}
	divisor := rf.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	v := (q.Value() + divisor.Value() - 1) / divisor.Value()
	return strconv.FormatInt(v, 10)
}

// probe GETs a probe's endpoint on the mapped port with the probe's timeout.
func probe(t *testing.T, p pod, run localRun, pr *corev1.Probe) (int, string, error) {
	t.Helper()
	port, err := portOf(p.c, pr.HTTPGet.Port.String())
	if err != nil {
		t.Fatal(err)
	}
	local, ok := run.ports[int(port)]
	if !ok {
		t.Fatalf("probe port %d: tokenproxy is not configured to listen there", port)
	}
	if pr.HTTPGet.Scheme != "" && pr.HTTPGet.Scheme != corev1.URISchemeHTTP {
		t.Fatalf("probe scheme %s", pr.HTTPGet.Scheme)
	}
	timeout := time.Duration(max(pr.TimeoutSeconds, 1)) * time.Second
	c := http.Client{Timeout: timeout}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", local, pr.HTTPGet.Path))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(body), nil
}

// kubeletSuccess is what the kubelet counts as a successful httpGet probe.
func kubeletSuccess(code int) bool { return code >= 200 && code < 400 }

// TestSidecarStartsAsRendered takes the sidecar container from the rendered
// chart (defaults, plus the values a user must give: keys, Redis URL and its
// password Secret), writes the rendered Secret's files where the container
// mounts them (moved into a temp dir), starts the real tokenproxy with
// exactly that container's env and args and a real redis-server, and checks
// its probes the way the kubelet would: not ready while the store has not
// answered (so a native sidecar holds the app back), then the startup probe
// passes within its budget, liveness and readiness pass, /metrics serves
// every family the alerts name, the app's address answers, and SIGTERM ends
// it cleanly within the pod's grace period.
func TestSidecarStartsAsRendered(t *testing.T) {
	bin := tokenproxyBinary(t)
	const redisPassword = "s3cret-for-this-test"
	type inputs struct{ priv, walletPub, enc, dir string }
	helmCase := func(values string) func(t *testing.T, in inputs, redisURL string) pod {
		return func(t *testing.T, in inputs, redisURL string) pod {
			args := []string{
				"--set", "redis.url=" + redisURL,
				"--set", "redis.auth.existingSecret=redis-auth",
				"--set-file", "secrets.values.privateKey=" + filepath.Join(in.dir, "priv.pem"),
				"--set-file", "secrets.values.walletPublicKey=" + filepath.Join(in.dir, "wallet.pem"),
				"--set-file", "secrets.values.encryptionKeys=" + filepath.Join(in.dir, "enc"),
			}
			if values != "" {
				args = append(args, "-f", filepath.Join(chartDir, "ci", values))
			}
			return podOf(t, helmTemplate(t, args...), map[string]map[string]string{"redis-auth": {"password": redisPassword}})
		}
	}
	for _, tc := range []struct {
		name   string
		render func(t *testing.T, in inputs, redisURL string) pod
	}{
		{"chart native", helmCase("")},
		{"chart classic", helmCase("classic-sidecar-values.yaml")},
		// The kustomize example: the Secrets are the ones its comments tell
		// the user to create; the Redis URL of its ConfigMap is pointed at
		// the test's redis-server.
		{"kustomize example", func(t *testing.T, in inputs, redisURL string) pod {
			p := podOf(t, kustomize(t, overlays[0]), map[string]map[string]string{
				"tokenproxy-keys":  {"private-key.pem": in.priv, "key-version": "1", "wallet-public-key.pem": in.walletPub, "encryption-keys": in.enc},
				"tokenproxy-redis": {"password": redisPassword},
			})
			n := 0
			for _, data := range p.configMaps {
				if _, ok := data["TOKENPROXY_REDIS_URL"]; ok {
					data["TOKENPROXY_REDIS_URL"] = redisURL
					n++
				}
			}
			if n != 1 {
				t.Fatalf("want one ConfigMap with TOKENPROXY_REDIS_URL, got %d", n)
			}
			return p
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			priv, walletPub, enc := testKeys(t)
			for name, content := range map[string]string{"priv.pem": priv, "wallet.pem": walletPub, "enc": enc} {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			redisPort := freePort(t)
			p := tc.render(t, inputs{priv, walletPub, enc, dir}, fmt.Sprintf("redis://127.0.0.1:%d/0", redisPort))
			run := mapToLocal(t, p, filepath.Join(dir, "mounts"))
			for _, want := range []string{"TOKENPROXY_PRIVATE_KEY_FILE=", "TOKENPROXY_WALLET_PUBLIC_KEY_FILE=", "TOKENPROXY_ENCRYPTION_KEYS_FILE=", "TOKENPROXY_REDIS_PASSWORD=", "TOKENPROXY_MEMORY_LIMIT=268435456"} {
				if !slices.ContainsFunc(run.env, func(e string) bool { return strings.HasPrefix(e, want) }) {
					t.Errorf("the rendered env lacks %s", want)
				}
			}

			tp := start(t, "tokenproxy", bin, run.env, run.args...)

			// Before the store answers: alive, but neither started nor ready.
			// (The kubelet would keep the app container waiting.)
			waitFor(t, tp, 30*time.Second, "liveness before the store is up", func() bool {
				code, _, err := probe(t, p, run, p.c.LivenessProbe)
				return err == nil && code == http.StatusOK
			})
			for name, pr := range map[string]*corev1.Probe{"startup": p.c.StartupProbe, "readiness": p.c.ReadinessProbe} {
				if code, body, err := probe(t, p, run, pr); err != nil || kubeletSuccess(code) {
					t.Errorf("%s probe before the store answered: %d %q %v, want a failure", name, code, body, err)
				}
			}

			startRedis(t, redisPort, redisPassword)
			sp := p.c.StartupProbe
			budget := time.Duration(sp.InitialDelaySeconds+sp.PeriodSeconds*sp.FailureThreshold) * time.Second
			waitFor(t, tp, budget, "startup probe", func() bool {
				code, _, err := probe(t, p, run, sp)
				return err == nil && kubeletSuccess(code)
			})
			for name, pr := range map[string]*corev1.Probe{"liveness": p.c.LivenessProbe, "readiness": p.c.ReadinessProbe} {
				if code, body, err := probe(t, p, run, pr); err != nil || code != http.StatusOK {
					t.Errorf("%s probe: %d %q %v, want 200", name, code, body, err)
				}
			}

			// /metrics on the port the PodMonitor scrapes.
			opsLocal := run.ports[int(p.c.Ports[0].ContainerPort)]
			var metrics string
			waitFor(t, tp, 30*time.Second, "tokenproxy_store_up 1", func() bool {
				metrics = get(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", opsLocal), http.StatusOK)
				return strings.Contains(metrics, "\ntokenproxy_store_up 1\n")
			})
			for _, family := range alertFamilies(t) {
				if !strings.Contains(metrics, "# TYPE "+family+" ") {
					t.Errorf("/metrics lacks %s, which the alerts query", family)
				}
			}

			// The app's address: a customer nobody authorized.
			var listen string
			for _, e := range run.env {
				if v, ok := strings.CutPrefix(e, "TOKENPROXY_LISTEN_ADDR="); ok {
					listen = v
				}
			}
			body := get(t, "http://"+listen+"/tokenproxy/customers/nobody", http.StatusNotFound)
			var answer struct{ Result struct{ ResultCode string } }
			if err := json.Unmarshal([]byte(body), &answer); err != nil || answer.Result.ResultCode != "CUSTOMER_NOT_AUTHORIZED" {
				t.Errorf("app listener answered %q", body)
			}

			grace := 30 * time.Second
			if g := p.tmpl.Spec.TerminationGracePeriodSeconds; g != nil {
				grace = time.Duration(*g) * time.Second
			}
			if code, killed := tp.stop(grace); killed || code != 0 {
				t.Errorf("on SIGTERM: exit %d, killed after the grace period %v: %v", code, grace, killed)
			}
			if logs := tp.out.String(); strings.Contains(logs, strings.TrimSpace(enc)) || strings.Contains(logs, redisPassword) {
				t.Error("a secret appears in tokenproxy's output")
			}
		})
	}
}

// podOf decodes a rendering and gathers what the sidecar refers to: its
// pod, its container, the rendered Secrets and ConfigMaps, and the Secrets
// the test supplies as the user would have created them.
func podOf(t *testing.T, stream []byte, userSecrets map[string]map[string]string) pod {
	t.Helper()
	objs, err := DecodeAll(stream)
	if err != nil {
		t.Fatal(err)
	}
	p := pod{secrets: userSecrets, configMaps: map[string]map[string]string{}}
	for _, o := range objs {
		switch v := o.Value.(type) {
		case *corev1.Secret:
			data := map[string]string{}
			for k, b := range v.Data {
				data[k] = string(b)
			}
			for k, s := range v.StringData {
				data[k] = s
			}
			p.secrets[v.Name] = data
		case *corev1.ConfigMap:
			p.configMaps[v.Name] = v.Data
		}
	}
	var ok bool
	p.tmpl, p.c, ok = sidecarOf(t, objs)
	if !ok {
		t.Fatal("no tokenproxy container rendered")
	}
	return p
}

// waitFor polls cond until it holds, the process exits, or timeout passes.
func waitFor(t *testing.T, p *process, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if p.exited() {
			t.Fatalf("%s: tokenproxy exited (%v)", what, p.cmd.ProcessState)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func get(t *testing.T, url string, want int) string {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if resp.StatusCode != want {
		t.Fatalf("GET %s: %d %s, want %d", url, resp.StatusCode, b, want)
	}
	return string(b)
}

var metricName = regexp.MustCompile(`\btokenproxy_[a-z0-9_]+`)

// alertFamilies names the tokenproxy metric families the alerting rules
// (deploy/prometheus/alerts.yaml) and any dashboard in deploy/grafana query,
// histogram series (_bucket, _sum, _count) folded into their family. A
// rough scan: the PromQL parser check lives with the monitoring tests.
func alertFamilies(t *testing.T) []string {
	t.Helper()
	files := []string{filepath.Join(repoRoot, "deploy", "prometheus", "alerts.yaml")}
	dash, _ := filepath.Glob(filepath.Join(repoRoot, "deploy", "grafana", "*.json"))
	files = append(files, dash...)
	seen := map[string]bool{}
	var out []string
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range metricName.FindAllString(string(raw), -1) {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				m = strings.TrimSuffix(m, suffix)
			}
			if !seen[m] {
				seen[m] = true
				out = append(out, m)
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("the alerts name no tokenproxy metric")
	}
	return out
}
