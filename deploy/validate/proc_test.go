package validate

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The tests here start real processes: the tokenproxy release binary (built
// once by deploy/build-static.sh, exactly as deploy/Dockerfile builds it) and
// redis-server. The root module's internal/testenv cannot be imported from
// this module, so this is its small equivalent. Processes are stopped by
// their own PID when the test ends.

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

// testVersion is stamped into the test build, to check `tokenproxy version`.
const testVersion = "validate-test"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tokenproxy-validate-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// tokenproxyBinary builds the release binary once per test run.
func tokenproxyBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		out := filepath.Join(binDir, "tokenproxy")
		cmd := exec.Command(filepath.Join(repoRoot, "deploy", "build-static.sh"), out)
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "VERSION="+testVersion)
		if b, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("deploy/build-static.sh: %v\n%s", err, b)
			return
		}
		binPath = out
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

var (
	portsMu sync.Mutex
	ported  = map[int]bool{} // ports handed out in this run
)

// freePort returns a loopback port that was free a moment ago and was not
// handed out before in this run (a port chosen for a server that starts
// later, like the test's redis-server, is not bound yet, so the kernel could
// offer it again). It is never a fixed port, so a race with another process
// shows as a failed start, not as a test talking to a stranger's server.
func freePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !ported[port] && port != 6379 {
			ported[port] = true
			return port
		}
	}
	t.Fatal("no fresh free port")
	return 0
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// process is a child process owned by one test.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

// start starts bin with exactly env (nothing inherited) and args; a cleanup
// stops it (SIGTERM, SIGKILL after 10s) and shows its output if the test
// failed.
func start(t *testing.T, name, bin string, env []string, args ...string) *process {
	t.Helper()
	return startIn(t, "", name, bin, env, args...)
}

// startIn is start with the working directory dir.
func startIn(t *testing.T, dir, name, bin string, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("%s output:\n%s", name, tail(out.String(), 60))
		}
	})
	return p
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to grace, then kills; it returns the exit
// code and whether it had to kill.
func (p *process) stop(grace time.Duration) (int, bool) {
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = p.cmd.Process.Kill()
			<-p.done
			return -1, true
		}
	}
	return p.cmd.ProcessState.ExitCode(), false
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// startRedis starts redis-server on port with a password and waits until it
// answers PING. A missing redis-server fails the test, never skips it.
func startRedis(t *testing.T, port int, password string) *process {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server not found: install it with `apt-get install -y redis-server`")
	}
	p := start(t, "redis-server", bin, nil,
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--requirepass", password,
		"--save", "", "--appendonly", "no", "--dir", t.TempDir(), "--daemonize", "no")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(15 * time.Second)
	for {
		if err := redisPing(addr, password); err == nil {
			return p
		} else if p.exited() || time.Now().After(deadline) {
			t.Fatalf("redis-server on %s did not answer PING: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func redisPing(addr, password string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "AUTH %s\r\nPING\r\n", password); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	for _, want := range []string{"+OK", "+PONG"} {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.TrimSpace(line) != want {
			return fmt.Errorf("got %q, want %s", line, want)
		}
	}
	return nil
}
