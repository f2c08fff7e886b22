// Building the project's binaries and running them as child processes that
// belong to one test.

package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/proc"
)

// Import paths of the project's commands.
const (
	tokenproxyPkg = "github.com/tokenproxy/tokenproxy/cmd/tokenproxy"
	walletsimPkg  = "github.com/tokenproxy/tokenproxy/cmd/walletsim"
)

// Bins are the paths of the project's binaries, built with -race.
type Bins struct {
	Tokenproxy string
	Walletsim  string
}

var (
	projectBuild = &buildSet{pkgs: []string{tokenproxyPkg, walletsimPkg}, race: true}
	plainBuild   = &buildSet{pkgs: []string{tokenproxyPkg, walletsimPkg}}
)

// Binaries builds cmd/tokenproxy and cmd/walletsim with `go build -race`, once
// per test binary, into a temporary directory that outlives the test (and is
// left behind: it is one small directory per test binary). A failed build
// fails every test that asks, with the compiler's output. A data race in
// a process started from these binaries fails its test: see Start.
func Binaries(t testing.TB) Bins {
	t.Helper()
	paths := projectBuild.get(t)
	return Bins{Tokenproxy: paths[tokenproxyPkg], Walletsim: paths[walletsimPkg]}
}

// PlainBinaries is Binaries without -race, for tests that measure the
// processes' memory or CPU (the race detector multiplies both).
func PlainBinaries(t testing.TB) Bins {
	t.Helper()
	paths := plainBuild.get(t)
	return Bins{Tokenproxy: paths[tokenproxyPkg], Walletsim: paths[walletsimPkg]}
}

// buildSet builds a list of main packages once.
type buildSet struct {
	pkgs []string // import paths, or paths relative to the test's directory
	race bool

	once   sync.Once
	builds int // how many times go build ran: 0 or 1
	paths  map[string]string
	err    error
}

func (b *buildSet) get(t testing.TB) map[string]string {
	t.Helper()
	b.once.Do(func() {
		b.builds++
		b.paths, b.err = build(b.pkgs, b.race)
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.paths
}

// build builds each main package (with -race when race) into a new
// temporary directory and returns the binaries' paths by package.
func build(pkgs []string, race bool) (map[string]string, error) {
	dir, err := os.MkdirTemp("", "tokenproxy-bin-")
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	args := []string{"build"}
	if race {
		args = append(args, "-race")
	}
	args = append(append(args, "-o", dir+string(filepath.Separator)), pkgs...)
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	paths := make(map[string]string, len(pkgs))
	for _, p := range pkgs {
		// go build names a binary after the last element of its package path.
		bin := filepath.Join(dir, path.Base(filepath.ToSlash(p)))
		if _, err := os.Stat(bin); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("go build wrote no binary for %s (not a main package?): %v", p, err)
		}
		paths[p] = bin
	}
	return paths, nil
}

// FreeAddr returns "127.0.0.1:N" for a port that was free a moment ago.
// Another process may take it before the caller binds it; that shows as a
// failed start, never as a test talking to a stranger, since N is never a
// fixed port.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// logLinesOnFailure is how much of a process's output a failed test shows.
const logLinesOnFailure = 100

// raceReport is what the race detector prints when it finds a data race.
const raceReport = "WARNING: DATA RACE"

// Process is a child process owned by one test: a proc.Process (stdout
// and stderr interleaved in one in-memory log) whose end the test sees to.
type Process struct {
	*proc.Process
}

// Start starts bin with args and exactly the environment env plus PATH and
// HOME (taken from the test's environment unless env sets them) and GORACE
// when the test's environment sets it. It does not wait for the process to
// be ready: see WaitHTTP and WaitReady.
//
// When the test ends, a cleanup stops the process if it still runs (SIGTERM,
// then SIGKILL after 10s); if the test failed, it logs the last 100 lines of
// the process's output; and if the race detector reported a data race in
// the output, it fails the test.
func Start(t testing.TB, name, bin string, env []string, args ...string) *Process {
	t.Helper()
	pp, err := proc.Start(name, bin, args, proc.Options{Env: env})
	if err != nil {
		t.Fatal(err)
	}
	p := &Process{pp}
	t.Cleanup(func() { p.cleanup(t) })
	return p
}

func (p *Process) cleanup(t testing.TB) {
	if !p.Exited() {
		if _, killed := p.Process.Stop(); killed {
			t.Logf("%s (pid %d) did not stop within %v of SIGTERM and was killed", p.Name(), p.PID(), p.StopGrace())
		}
	}
	logs := p.Logs()
	if bytes.Contains(logs, []byte(raceReport)) {
		t.Errorf("%s (pid %d): the race detector reported a data race; see its output", p.Name(), p.PID())
	}
	if t.Failed() {
		t.Logf("%s (pid %d) %s; last %d lines of its output:\n%s",
			p.Name(), p.PID(), p.describeExit(), logLinesOnFailure, lastLines(logs, logLinesOnFailure))
	}
}

func (p *Process) describeExit() string {
	code, err := p.Wait(0)
	if err != nil {
		return "still running"
	}
	return fmt.Sprintf("exited with code %d", code)
}

// Stop sends SIGTERM, waits up to 10s for the process to exit, then sends
// SIGKILL, and returns the exit code (see proc.Process.Wait). On a process
// that already exited it only returns the exit code.
func (p *Process) Stop() int {
	code, _ := p.Process.Stop()
	return code
}

// WaitLog waits up to timeout until the process's output contains substr.
// It returns an error if the process exits or the time passes first.
func (p *Process) WaitLog(substr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if bytes.Contains(p.Logs(), []byte(substr)) {
			return nil
		}
		if p.Exited() {
			// Its last words may have come with the exit.
			if bytes.Contains(p.Logs(), []byte(substr)) {
				return nil
			}
			code, _ := p.Wait(0)
			return fmt.Errorf("%s exited with code %d before writing %q", p.Name(), code, substr)
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%s did not write %q within %v", p.Name(), substr, timeout)
		}
		pause(deadline, p.Done())
	}
}

// pollInterval is the pause between two looks at something a test waits for.
const pollInterval = 20 * time.Millisecond

// pause waits pollInterval, or less when deadline is nearer or wake closes.
func pause(deadline time.Time, wake <-chan struct{}) {
	d := min(pollInterval, time.Until(deadline))
	if d <= 0 {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-wake:
	}
}

// WaitHTTP polls url with GET until it gets any HTTP answer, whatever the
// status. When timeout passes first it fails the test (and the cleanup of
// every started process prints its logs). When procs are given, it fails as
// soon as one of them exits, rather than waiting out the timeout.
func WaitHTTP(t testing.TB, url string, timeout time.Duration, procs ...*Process) {
	t.Helper()
	waitHTTP(t, url, timeout, "HTTP answer", func(int) bool { return true }, procs)
}

// WaitReady is WaitHTTP that waits for a 200 answer (a readiness probe).
func WaitReady(t testing.TB, url string, timeout time.Duration, procs ...*Process) {
	t.Helper()
	waitHTTP(t, url, timeout, "200 OK", func(status int) bool { return status == http.StatusOK }, procs)
}

func waitHTTP(t testing.TB, url string, timeout time.Duration, want string, ok func(int) bool, procs []*Process) {
	t.Helper()
	client := &http.Client{
		Transport: &http.Transport{DisableKeepAlives: true}, // no proxy from the environment
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	last := "" // what the latest attempt got
	for {
		for _, p := range procs {
			if p.Exited() {
				code, _ := p.Wait(0)
				t.Fatalf("GET %s: %s exited with code %d before %s", url, p.Name(), code, want)
			}
		}
		status, err := get(client, url, deadline)
		switch {
		case err != nil:
			// An attempt cut short by the deadline says less than the one before.
			if last == "" || time.Now().Before(deadline) {
				last = err.Error()
			}
		case ok(status):
			return
		default:
			last = fmt.Sprintf("HTTP %d", status)
		}
		if !time.Now().Before(deadline) {
			t.Fatalf("GET %s: no %s within %v; last: %s", url, want, timeout, last)
		}
		pause(deadline, nil)
	}
}

// get does one GET bounded by deadline (and by a second, so that one stuck
// attempt does not use up the whole wait).
func get(client *http.Client, url string, deadline time.Time) (int, error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	ctx, cancel2 := context.WithTimeout(ctx, time.Second)
	defer cancel2()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// runTimeout bounds a RunCommand: a one-shot run that hangs is a failure.
const runTimeout = 2 * time.Minute

// RunCommand runs bin once to completion with args and the environment of
// Start (exactly env, plus PATH, HOME and GORACE) and returns its exit code
// (see Process.Wait), stdout and stderr. It fails the test if bin cannot be
// started, if it runs for more than two minutes, or if the race detector
// reported a data race.
func RunCommand(t testing.TB, bin string, env []string, args ...string) (exitCode int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = proc.Environ(env)
	var outBuf, errBuf bytes.Buffer
	cmd.Stdout = &outBuf
	cmd.Stderr = &errBuf
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	stdout, stderr = outBuf.String(), errBuf.String()
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%s %s: still running after %v; stderr:\n%s", bin, strings.Join(args, " "), runTimeout, lastLines([]byte(stderr), logLinesOnFailure))
	case err != nil && !errors.As(err, &exitErr):
		t.Fatalf("run %s: %v", bin, err)
	}
	if strings.Contains(stderr, raceReport) {
		t.Errorf("%s %s: the race detector reported a data race:\n%s", bin, strings.Join(args, " "), stderr)
	}
	return proc.ExitStatus(cmd.ProcessState), stdout, stderr
}

// lastLines returns the last n lines of b.
func lastLines(b []byte, n int) []byte {
	b = bytes.TrimRight(b, "\n")
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			n--
			if n == 0 {
				return b[i+1:]
			}
		}
	}
	return b
}
