package validate

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"debug/elf"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// There is no Docker engine here: these tests check what deploy/Dockerfile
// ships without building the image. The binary comes from the same script
// the Dockerfile runs; it must be static (distroless "static" has no libc),
// print its version, and serve with nothing but its environment, as the
// image's nonroot user would on a read-only root filesystem.

func TestDockerfileUsesTheBuildScript(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(raw)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^\s+VERSION=\$\{VERSION\} deploy/build-static\.sh /out/tokenproxy\s*$`),
		regexp.MustCompile(`(?m)^COPY --from=build /out/tokenproxy /tokenproxy\s*$`),
		regexp.MustCompile(`(?m)^FROM gcr\.io/distroless/static[^ ]*:nonroot\s*$`),
		regexp.MustCompile(`(?m)^USER 65532:65532\s*$`),
		regexp.MustCompile(`(?m)^ENTRYPOINT \["/tokenproxy"\]\s*$`),
	} {
		if !want.MatchString(df) {
			t.Errorf("deploy/Dockerfile lacks %s", want)
		}
	}
	script, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "build-static.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=", "./cmd/$cmd", "cmd=${2:-tokenproxy}"} {
		if !strings.Contains(string(script), want) {
			t.Errorf("deploy/build-static.sh lacks %s", want)
		}
	}
}

func TestReleaseBinaryIsStatic(t *testing.T) {
	f, err := elf.Open(tokenproxyBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has an ELF interpreter: it is dynamically linked and will not run on distroless static")
		}
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
	if f.Section(".debug_info") != nil {
		t.Error("debug info present: build-static.sh strips it (-s -w)")
	}
}

func TestReleaseBinaryStarts(t *testing.T) {
	bin := tokenproxyBinary(t)
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "tokenproxy "+testVersion {
		t.Fatalf("tokenproxy version: %q %v, want %q", out, err, "tokenproxy "+testVersion)
	}

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	app, ops := freePort(t), freePort(t)
	// Only what a pod would set: no HOME, no PATH, no TMPDIR; the in-memory
	// store; the working directory is /, which the process cannot write to
	// when it runs as the image's user.
	env := []string{
		"TOKENPROXY_WALLET_URL=https://wallet.example.com",
		"TOKENPROXY_CLIENT_ID=example-client-id",
		"TOKENPROXY_PRIVATE_KEY=" + string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		fmt.Sprintf("TOKENPROXY_LISTEN_ADDR=127.0.0.1:%d", app),
		fmt.Sprintf("TOKENPROXY_OPS_ADDR=127.0.0.1:%d", ops),
	}
	p := startIn(t, "/", "tokenproxy", bin, env)
	waitFor(t, p, 30*time.Second, "/healthz", func() bool {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", ops))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	waitFor(t, p, 30*time.Second, "/readyz", func() bool {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", ops))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if code, killed := p.stop(30 * time.Second); killed || code != 0 {
		t.Errorf("on SIGTERM: exit %d, killed %v", code, killed)
	}
}
