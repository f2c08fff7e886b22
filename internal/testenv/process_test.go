package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// sleeperBuild builds testdata/sleeper, the stand-in server, with the same
// helper as Binaries.
var sleeperBuild = &buildSet{pkgs: []string{"./testdata/sleeper"}, race: true}

func sleeper(t *testing.T) string {
	t.Helper()
	return sleeperBuild.get(t)["./testdata/sleeper"]
}

// recordingTB is a testing.TB whose failures, logs and cleanups are
// recorded instead of acted on, to test what the helpers do to a test.
// Fatal ends the goroutine, as it does in a test: call helpers that may
// fail through run.
type recordingTB struct {
	testing.TB // the real test: TempDir, Name, Setenv...

	mu       sync.Mutex
	failed   bool
	fatal    bool
	logs     []string
	errors   []string
	cleanups []func()
}

func newRecordingTB(t *testing.T) *recordingTB { return &recordingTB{TB: t} }

func (r *recordingTB) Helper() {}

func (r *recordingTB) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

func (r *recordingTB) Log(args ...any) { r.Logf("%s", fmt.Sprint(args...)) }
func (r *recordingTB) Logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
}

func (r *recordingTB) Error(args ...any) { r.Errorf("%s", fmt.Sprint(args...)) }
func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = true
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *recordingTB) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	r.mu.Lock()
	r.fatal = true
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recordingTB) Fail() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = true
}
func (r *recordingTB) FailNow() { r.Fail(); runtime.Goexit() }

func (r *recordingTB) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

// run calls f on a goroutine of its own, so that a Fatal ends only f.
func (r *recordingTB) run(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	<-done
}

// runCleanups runs the recorded cleanups, last first, as the testing package does.
func (r *recordingTB) runCleanups() {
	r.mu.Lock()
	cs := r.cleanups
	r.cleanups = nil
	r.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		r.run(cs[i])
	}
}

func (r *recordingTB) text() (errs, logs string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.errors, "\n"), strings.Join(r.logs, "\n")
}

func TestBuildOnce(t *testing.T) {
	first := sleeper(t)
	second := sleeper(t)
	if first != second {
		t.Errorf("two builds: %s and %s", first, second)
	}
	if sleeperBuild.builds != 1 {
		t.Errorf("go build ran %d times, want once", sleeperBuild.builds)
	}
	if st, err := os.Stat(first); err != nil || st.Mode()&0o111 == 0 {
		t.Errorf("%s is not an executable: %v", first, err)
	}
	// -race: the binary's race detector reports a race and exits with 66.
	code, _, stderr := runRecorded(t, first, nil, "race")
	if code != 66 || !strings.Contains(stderr, raceReport) {
		t.Errorf("race mode exited %d with stderr %q: not built with -race", code, stderr)
	}
}

// runRecorded is RunCommand under a recordingTB (a race is expected, not a failure).
func runRecorded(t *testing.T, bin string, env []string, args ...string) (int, string, string) {
	rt := newRecordingTB(t)
	var code int
	var stdout, stderr string
	rt.run(func() { code, stdout, stderr = RunCommand(rt, bin, env, args...) })
	return code, stdout, stderr
}

func TestBuildFailure(t *testing.T) {
	b := &buildSet{pkgs: []string{"./testdata/sleeper", "./testdata/no-such-command"}, race: true}
	for i := range 2 {
		rt := newRecordingTB(t)
		rt.run(func() { b.get(rt) })
		errs, _ := rt.text()
		if !rt.fatal || !strings.Contains(errs, "go build -race") || !strings.Contains(errs, "no-such-command") {
			t.Errorf("attempt %d: fatal=%v, error %q; want a fatal error with the build output", i, rt.fatal, errs)
		}
	}
	if b.builds != 1 {
		t.Errorf("go build ran %d times, want once", b.builds)
	}
}

func TestBuildNotMain(t *testing.T) {
	b := &buildSet{pkgs: []string{"github.com/tokenproxy/tokenproxy/wallet"}, race: true}
	rt := newRecordingTB(t)
	rt.run(func() { b.get(rt) })
	if errs, _ := rt.text(); !rt.fatal || !strings.Contains(errs, "wallet") {
		t.Errorf("fatal=%v, error %q; want a fatal error naming the package", rt.fatal, errs)
	}
}

func TestFreeAddr(t *testing.T) {
	addr := FreeAddr(t)
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("FreeAddr = %q", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	l.Close()
}

func startSleeper(t *testing.T, tb testing.TB, env []string, args ...string) *Process {
	t.Helper()
	return Start(tb, "sleeper", sleeper(t), env, args...)
}

func TestStartServeStop(t *testing.T) {
	addr := FreeAddr(t)
	// The server listens only after a delay, so WaitHTTP has to poll.
	p := startSleeper(t, t, []string{"SLEEPER_ADDR=" + addr, "SLEEPER_LISTEN_DELAY=200ms"})
	if p.PID() <= 0 || p.Name() != "sleeper" {
		t.Errorf("PID %d, name %q", p.PID(), p.Name())
	}
	WaitHTTP(t, "http://"+addr+"/", 10*time.Second, p)
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET / = %d", resp.StatusCode)
	}
	if p.Exited() {
		t.Fatal("Exited() while serving")
	}
	if code := p.Stop(); code != 0 {
		t.Errorf("Stop = %d, want 0", code)
	}
	if !p.Exited() {
		t.Error("not Exited() after Stop")
	}
	if code := p.Stop(); code != 0 {
		t.Errorf("second Stop = %d, want 0 again", code)
	}
	logs := string(p.Logs())
	for _, want := range []string{"sleeper: listening on " + addr, "sleeper: terminating"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	if err := p.Signal(syscall.SIGTERM); err != os.ErrProcessDone {
		t.Errorf("Signal after exit = %v, want os.ErrProcessDone", err)
	}
}

func TestStopExitCodes(t *testing.T) {
	tests := []struct {
		name  string
		env   []string
		args  []string
		stop  func(p *Process) int
		grace time.Duration
		want  int
	}{
		{
			name: "SIGTERM, exit 3",
			env:  []string{"SLEEPER_TERM_CODE=3"},
			stop: (*Process).Stop,
			want: 3,
		},
		{
			name:  "SIGTERM ignored: killed after the grace",
			args:  []string{"ignore-term"},
			stop:  (*Process).Stop,
			grace: 100 * time.Millisecond,
			want:  128 + int(syscall.SIGKILL),
		},
		{
			name: "Kill",
			stop: func(p *Process) int { p.Kill(); code, _ := p.Wait(0); return code },
			want: 128 + int(syscall.SIGKILL),
		},
		{
			name: "SIGINT, not handled",
			stop: func(p *Process) int {
				if err := p.Signal(syscall.SIGINT); err != nil {
					return -2
				}
				code, _ := p.Wait(10 * time.Second)
				return code
			},
			want: 128 + int(syscall.SIGINT),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := append([]string{"SLEEPER_ADDR=" + FreeAddr(t)}, tt.env...)
			p := startSleeper(t, t, env, tt.args...)
			if tt.grace > 0 {
				p.SetStopGrace(tt.grace)
			}
			// Signal only once the process is set up to handle it.
			ready := "sleeper: listening"
			if len(tt.args) > 0 && tt.args[0] == "ignore-term" {
				ready = "ignoring SIGTERM"
			}
			if err := p.WaitLog(ready, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if got := tt.stop(p); got != tt.want {
				t.Errorf("exit code %d, want %d", got, tt.want)
			}
			if code, err := p.Wait(0); err != nil || code != tt.want {
				t.Errorf("Wait(0) = %d, %v; want %d", code, err, tt.want)
			}
		})
	}
}

func TestWait(t *testing.T) {
	p := startSleeper(t, t, nil, "exit", "5")
	code, err := p.Wait(10 * time.Second)
	if err != nil || code != 5 {
		t.Fatalf("Wait = %d, %v; want 5", code, err)
	}
	if !p.Exited() {
		t.Error("not Exited()")
	}
	if logs := string(p.Logs()); !strings.Contains(logs, "sleeper: to stdout") || !strings.Contains(logs, "sleeper: to stderr") {
		t.Errorf("logs do not hold both streams: %q", logs)
	}

	running := startSleeper(t, t, []string{"SLEEPER_ADDR=" + FreeAddr(t)})
	if code, err := running.Wait(10 * time.Millisecond); err == nil || code != -1 {
		t.Errorf("Wait on a running process = %d, %v; want -1 and an error", code, err)
	}
	if code, err := running.Wait(0); err == nil || code != -1 {
		t.Errorf("Wait(0) on a running process = %d, %v; want -1 and an error", code, err)
	}
}

func TestSignalAndWaitLog(t *testing.T) {
	p := startSleeper(t, t, []string{"SLEEPER_ADDR=" + FreeAddr(t)})
	if err := p.WaitLog("sleeper: listening", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitLog("sleeper: hangup", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if p.Exited() {
		t.Error("SIGHUP ended the process")
	}
	if err := p.WaitLog("never written", 50*time.Millisecond); err == nil {
		t.Error("WaitLog found what was never written")
	}
	exited := startSleeper(t, t, nil, "exit", "0")
	if err := exited.WaitLog("never written", 10*time.Second); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("WaitLog on a process that exits = %v, want an error saying it exited", err)
	}
}

func TestStartEnvironment(t *testing.T) {
	t.Setenv("TESTENV_MUST_NOT_LEAK", "1")
	t.Setenv("GORACE", "") // present: passed on as it is
	p := startSleeper(t, t, []string{"SLEEPER_A=1", "HOME=/nonexistent-home"}, "env")
	if _, err := p.Wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSpace(string(p.Logs())), "\n")
	slices.Sort(got)
	want := []string{"GORACE=", "HOME=/nonexistent-home", "PATH=" + os.Getenv("PATH"), "SLEEPER_A=1"}
	if !slices.Equal(got, want) {
		t.Errorf("environment =\n%q\nwant\n%q", got, want)
	}

	code, stdout, _ := RunCommand(t, sleeper(t), []string{"SLEEPER_B=2"}, "env")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	slices.Sort(lines)
	want = []string{"GORACE=", "HOME=" + os.Getenv("HOME"), "PATH=" + os.Getenv("PATH"), "SLEEPER_B=2"}
	if code != 0 || !slices.Equal(lines, want) {
		t.Errorf("RunCommand environment = %d,\n%q\nwant\n%q", code, lines, want)
	}
}

func TestStartMissingBinary(t *testing.T) {
	rt := newRecordingTB(t)
	rt.run(func() { Start(rt, "ghost", "/nonexistent/bin", nil) })
	if errs, _ := rt.text(); !rt.fatal || !strings.Contains(errs, "ghost") {
		t.Errorf("fatal=%v, error %q; want a fatal error naming the process", rt.fatal, errs)
	}
}

// A failed test shows the last 100 lines of each process's output; a
// passing one shows nothing. The cleanup stops what still runs.
func TestCleanupLogs(t *testing.T) {
	for _, failed := range []bool{true, false} {
		t.Run(fmt.Sprintf("failed=%v", failed), func(t *testing.T) {
			rt := newRecordingTB(t)
			a := startSleeper(t, rt, nil, "lines", "300")
			b := startSleeper(t, rt, nil, "exit", "4")
			if err := a.WaitLog("line 300\n", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Wait(10 * time.Second); err != nil {
				t.Fatal(err)
			}
			if failed {
				rt.Fail()
			}
			rt.runCleanups()
			if !a.Exited() {
				t.Fatal("the cleanup did not stop the process")
			}
			errs, logs := rt.text()
			if errs != "" {
				t.Errorf("cleanup failed the test: %s", errs)
			}
			if !failed {
				if logs != "" {
					t.Errorf("cleanup of a passing test logged:\n%s", logs)
				}
				return
			}
			for _, want := range []string{
				"line 201\n", "line 300", "sleeper: to stderr",
				fmt.Sprintf("sleeper (pid %d) exited with code 0", a.PID()), // lines mode returns on SIGTERM
				fmt.Sprintf("sleeper (pid %d) exited with code 4", b.PID()),
			} {
				if !strings.Contains(logs, want) {
					t.Errorf("cleanup logs lack %q", want)
				}
			}
			if strings.Contains(logs, "line 200\n") {
				t.Error("cleanup logs more than the last 100 lines")
			}
		})
	}
}

func TestCleanupReportsDataRace(t *testing.T) {
	rt := newRecordingTB(t)
	p := startSleeper(t, rt, nil, "race")
	if code, err := p.Wait(10 * time.Second); err != nil || code != 66 {
		t.Fatalf("Wait = %d, %v; want 66", code, err)
	}
	rt.runCleanups()
	errs, logs := rt.text()
	if !strings.Contains(errs, "data race") {
		t.Errorf("cleanup errors = %q, want a data race report", errs)
	}
	if !strings.Contains(logs, raceReport) {
		t.Errorf("cleanup did not show the race report:\n%s", logs)
	}
}

func TestWaitHTTP(t *testing.T) {
	addr := FreeAddr(t)
	p := startSleeper(t, t, []string{"SLEEPER_ADDR=" + addr, "SLEEPER_NOT_READY_FOR=3"})
	base := "http://" + addr
	WaitHTTP(t, base+"/status/503", 10*time.Second, p) // any answer will do
	WaitReady(t, base+"/ready", 10*time.Second, p)     // 503 three times, then 200

	tests := []struct {
		name    string
		wait    func(tb testing.TB, url string, timeout time.Duration, procs ...*Process)
		url     string
		wantErr string
	}{
		{"ready: 503 never turns 200", WaitReady, base + "/status/503", "HTTP 503"},
		{"ready: redirect is not 200", WaitReady, base + "/status/302", "HTTP 302"},
		{"http: nobody listens", WaitHTTP, "http://" + FreeAddr(t) + "/", "connection refused"},
		{"ready: nobody listens", WaitReady, "http://" + FreeAddr(t) + "/", "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rt := newRecordingTB(t)
			rt.run(func() { tt.wait(rt, tt.url, time.Second) })
			errs, _ := rt.text()
			if !rt.fatal || !strings.Contains(errs, tt.wantErr) || !strings.Contains(errs, tt.url) {
				t.Errorf("fatal=%v, error %q; want a fatal error with %q and the URL", rt.fatal, errs, tt.wantErr)
			}
		})
	}
}

// A process that dies while a test waits for it fails the wait at once,
// not at the timeout.
func TestWaitHTTPProcessExited(t *testing.T) {
	p := startSleeper(t, t, nil, "exit", "3")
	rt := newRecordingTB(t)
	start := time.Now()
	rt.run(func() { WaitHTTP(rt, "http://"+FreeAddr(t)+"/", time.Minute, p) })
	errs, _ := rt.text()
	if !rt.fatal || !strings.Contains(errs, "exited with code 3") {
		t.Errorf("fatal=%v, error %q; want one saying the process exited with 3", rt.fatal, errs)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("took %v: waited for the timeout", d)
	}
}

func TestRunCommand(t *testing.T) {
	for _, want := range []int{0, 2, 7} {
		t.Run(fmt.Sprint(want), func(t *testing.T) {
			code, stdout, stderr := RunCommand(t, sleeper(t), nil, "exit", fmt.Sprint(want))
			if code != want || stdout != "sleeper: to stdout\n" || stderr != "sleeper: to stderr\n" {
				t.Errorf("RunCommand = %d, %q, %q", code, stdout, stderr)
			}
		})
	}
	t.Run("data race fails the test", func(t *testing.T) {
		rt := newRecordingTB(t)
		rt.run(func() { RunCommand(rt, sleeper(t), nil, "race") })
		if errs, _ := rt.text(); !strings.Contains(errs, "data race") || rt.fatal {
			t.Errorf("fatal=%v, errors %q; want a (non-fatal) data race error", rt.fatal, errs)
		}
	})
	t.Run("missing binary", func(t *testing.T) {
		rt := newRecordingTB(t)
		rt.run(func() { RunCommand(rt, "/nonexistent/bin", nil) })
		if !rt.fatal {
			t.Error("RunCommand of a missing binary did not fail the test")
		}
	})
}

func TestLastLines(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"", 3, ""},
		{"a", 3, "a"},
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 2, "b\nc"},
		{"a\nb\nc", 3, "a\nb\nc"},
		{"a\nb\nc\n\n\n", 1, "c"},
	}
	for _, tt := range tests {
		if got := string(lastLines([]byte(tt.in), tt.n)); got != tt.want {
			t.Errorf("lastLines(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

// hasMain reports whether every package is a main package that builds
// here; the project's commands are written alongside these helpers.
func hasMain(t *testing.T, pkgs ...string) bool {
	t.Helper()
	out, err := exec.Command("go", append([]string{"list", "-f", "{{.Name}}"}, pkgs...)...).CombinedOutput()
	if err != nil {
		t.Logf("go list %s: %v\n%s", strings.Join(pkgs, " "), err, out)
		return false
	}
	for _, name := range strings.Fields(string(out)) {
		if name != "main" {
			return false
		}
	}
	return true
}

func TestBinaries(t *testing.T) {
	if !hasMain(t, tokenproxyPkg, walletsimPkg) {
		t.Fatal("cmd/tokenproxy or cmd/walletsim is not a main package")
	}
	bins := Binaries(t)
	for _, bin := range []string{bins.Tokenproxy, bins.Walletsim} {
		if st, err := os.Stat(bin); err != nil || st.Mode()&0o111 == 0 {
			t.Errorf("%q is not an executable: %v", bin, err)
		}
	}
	if again := Binaries(t); again != bins {
		t.Errorf("second Binaries = %+v, want %+v", again, bins)
	}
}

// walletsim, built and run by the helpers, with the test keys: one signed
// applyToken round trip, a graceful stop, a configuration error.
func TestWalletsim(t *testing.T) {
	if !hasMain(t, walletsimPkg) {
		t.Fatal("cmd/walletsim is not a main package")
	}
	bin := (&buildSet{pkgs: []string{walletsimPkg}, race: true}).get(t)[walletsimPkg]
	keys := WriteKeyFiles(t)
	addr := FreeAddr(t)
	p := Start(t, "walletsim", bin, []string{
		"WALLETSIM_LISTEN_ADDR=" + addr,
		"WALLETSIM_CLIENT_PUBLIC_KEY_FILE=" + keys.MerchantPublic,
		"WALLETSIM_PRIVATE_KEY_FILE=" + keys.WalletPrivate,
	})
	base := "http://" + addr
	WaitReady(t, base+"/sim/stats", 30*time.Second, p)

	resp, err := http.Post(base+"/sim/authcodes", "application/json", strings.NewReader(`{"customerId":"c-1"}`))
	if err != nil {
		t.Fatal(err)
	}
	var code struct{ AuthCode string }
	err = json.NewDecoder(resp.Body).Decode(&code)
	resp.Body.Close()
	if err != nil || code.AuthCode == "" {
		t.Fatalf("POST /sim/authcodes: %d, %v", resp.StatusCode, err)
	}

	merchantKey, err := wallet.ParsePrivateKey(MerchantPrivateKeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	walletPub, err := wallet.ParsePublicKey(WalletPublicKeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(base)
	c := &wallet.Client{BaseURL: u, ClientID: "TEST_CLIENT", Keys: wallet.StaticKey{Key: merchantKey, Version: "1"}, WalletKey: walletPub, Timeout: 10 * time.Second}
	body, _ := json.Marshal(map[string]string{"grantType": "AUTHORIZATION_CODE", "authCode": code.AuthCode})
	tr, _, err := c.ApplyToken(context.Background(), "/v1/authorizations/applyToken", body, nil)
	if err != nil {
		t.Fatalf("applyToken against walletsim: %v", err)
	}
	if tr.CustomerID != "c-1" {
		t.Errorf("customerId %q, want c-1", tr.CustomerID)
	}

	if code := p.Stop(); code != 0 {
		t.Errorf("walletsim stopped with code %d, want 0", code)
	}
	if !bytes.Contains(p.Logs(), []byte("walletsim")) {
		t.Errorf("no walletsim logs captured: %q", p.Logs())
	}

	exit, _, stderr := RunCommand(t, bin, nil)
	if exit != 2 || !strings.Contains(stderr, "WALLETSIM_CLIENT_PUBLIC_KEY") {
		t.Errorf("walletsim without configuration: exit %d, stderr %q; want 2 naming the setting", exit, stderr)
	}
}
