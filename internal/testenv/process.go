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
	"syscall"
	"testing"
	"time"
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

// defaultStopGrace is how long Stop waits after SIGTERM before SIGKILL.
const defaultStopGrace = 10 * time.Second

// logLinesOnFailure is how much of a process's output a failed test shows.
const logLinesOnFailure = 100

// raceReport is what the race detector prints when it finds a data race.
const raceReport = "WARNING: DATA RACE"

// Process is a child process owned by one test. Its stdout and stderr go,
// interleaved, to one in-memory log. The methods are safe for concurrent use.
// A process is only ever signalled through its own PID while it has not been
// reaped, so a signal never reaches a process that reused the number.
type Process struct {
	name      string
	cmd       *exec.Cmd
	out       *lockedBuffer
	done      chan struct{} // closed once the process has exited and been reaped
	stopGrace time.Duration
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
	cmd := exec.Command(bin, args...)
	cmd.Env = childEnv(env)
	out := &lockedBuffer{}
	cmd.Stdout = out
	cmd.Stderr = out
	// A grandchild holding the output pipe must not keep Wait from returning.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Process{name: name, cmd: cmd, out: out, done: make(chan struct{}), stopGrace: defaultStopGrace}
	go func() {
		_ = cmd.Wait() // the outcome is in cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(func() { p.cleanup(t) })
	return p
}

func childEnv(env []string) []string {
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	if v, ok := os.LookupEnv("GORACE"); ok {
		base = append(base, "GORACE="+v)
	}
	// exec.Cmd keeps the last value of a repeated variable: env wins.
	return append(base, env...)
}

func (p *Process) cleanup(t testing.TB) {
	if !p.Exited() {
		if _, killed := p.stop(); killed {
			t.Logf("%s (pid %d) did not stop within %v of SIGTERM and was killed", p.name, p.PID(), p.stopGrace)
		}
	}
	logs := p.Logs()
	if bytes.Contains(logs, []byte(raceReport)) {
		t.Errorf("%s (pid %d): the race detector reported a data race; see its output", p.name, p.PID())
	}
	if t.Failed() {
		t.Logf("%s (pid %d) %s; last %d lines of its output:\n%s",
			p.name, p.PID(), p.describeExit(), logLinesOnFailure, lastLines(logs, logLinesOnFailure))
	}
}

func (p *Process) describeExit() string {
	code, err := p.Wait(0)
	if err != nil {
		return "still running"
	}
	return fmt.Sprintf("exited with code %d", code)
}

// Name is the name given to Start.
func (p *Process) Name() string { return p.name }

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Logs returns a copy of everything the process wrote to stdout and stderr
// so far.
func (p *Process) Logs() []byte { return p.out.Bytes() }

// Signal sends sig to the process. It returns os.ErrProcessDone once the
// process has exited.
func (p *Process) Signal(sig os.Signal) error {
	if p.Exited() {
		return os.ErrProcessDone
	}
	return p.cmd.Process.Signal(sig)
}

// Kill sends SIGKILL and waits until the process has exited.
func (p *Process) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM, waits up to 10s for the process to exit, then sends
// SIGKILL, and returns the exit code (see Wait). On a process that already
// exited it only returns the exit code.
func (p *Process) Stop() int {
	code, _ := p.stop()
	return code
}

func (p *Process) stop() (exitCode int, killed bool) {
	_ = p.Signal(syscall.SIGTERM)
	if code, err := p.Wait(p.stopGrace); err == nil {
		return code, false
	}
	p.Kill()
	code, _ := p.Wait(0)
	return code, true
}

// Wait waits up to timeout for the process to exit and returns its exit
// code: the status it passed to exit, or 128+N when signal N ended it (as
// a shell reports it: 143 for SIGTERM, 137 for SIGKILL). A race-enabled
// binary that found a data race exits with 66. If the process still runs
// after timeout, Wait returns -1 and an error.
func (p *Process) Wait(timeout time.Duration) (exitCode int, err error) {
	if timeout <= 0 {
		select {
		case <-p.done:
			return exitStatus(p.cmd.ProcessState), nil
		default:
			return -1, fmt.Errorf("%s (pid %d) is still running", p.name, p.PID())
		}
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return exitStatus(p.cmd.ProcessState), nil
	case <-timer.C:
		return -1, fmt.Errorf("%s (pid %d) still running after %v", p.name, p.PID(), timeout)
	}
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
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
			return fmt.Errorf("%s exited with code %d before writing %q", p.name, code, substr)
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%s did not write %q within %v", p.name, substr, timeout)
		}
		pause(deadline, p.done)
	}
}

func exitStatus(st *os.ProcessState) int {
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
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
				t.Fatalf("GET %s: %s exited with code %d before %s", url, p.name, code, want)
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
	cmd.Env = childEnv(env)
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
	return exitStatus(cmd.ProcessState), stdout, stderr
}

// lockedBuffer is a bytes.Buffer safe for one writer and many readers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
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
