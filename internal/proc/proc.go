// Package proc runs the child processes of the demo, the benchmark, the
// soak and the tests (through internal/testenv): one way to start a
// program, read its output, signal it by its own PID and stop it.
package proc

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultStopGrace is how long Stop waits after SIGTERM before SIGKILL.
const DefaultStopGrace = 10 * time.Second

// Options are the optional settings of Start.
type Options struct {
	// Env is the child's environment beyond PATH, HOME and GORACE (taken
	// from this process unless Env sets them).
	Env []string
	// Dir is the working directory; "" for this process's.
	Dir string
	// Output receives stdout and stderr, interleaved; nil keeps them in
	// memory (Logs).
	Output io.Writer
	// StopGrace is how long Stop waits after SIGTERM; DefaultStopGrace
	// when zero.
	StopGrace time.Duration
}

// Process is a started child process. Its methods are safe for concurrent
// use. It is only ever signalled through its own PID while it has not been
// reaped, so a signal never reaches a process that reused the number.
type Process struct {
	name      string
	cmd       *exec.Cmd
	logs      *Buffer       // nil when Options.Output was given
	done      chan struct{} // closed once the process has exited and been reaped
	stopGrace atomic.Int64  // time.Duration
}

// Start starts bin with args. It does not wait for the program to be
// ready.
func Start(name, bin string, args []string, opt Options) (*Process, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = opt.Dir
	cmd.Env = Environ(opt.Env)
	p := &Process{name: name, cmd: cmd, done: make(chan struct{})}
	p.SetStopGrace(opt.StopGrace)
	out := opt.Output
	if out == nil {
		p.logs = &Buffer{}
		out = p.logs
	}
	cmd.Stdout, cmd.Stderr = out, out
	// A grandchild holding the output pipe must not keep Wait from returning.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		_ = cmd.Wait() // the outcome is in cmd.ProcessState
		close(p.done)
	}()
	return p, nil
}

// Environ is a child's environment: PATH, HOME and GORACE (when set) of
// this process, then extra.
func Environ(extra []string) []string {
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	if v, ok := os.LookupEnv("GORACE"); ok {
		base = append(base, "GORACE="+v)
	}
	// exec.Cmd keeps the last value of a repeated variable: extra wins.
	return append(base, extra...)
}

// Name is the name given to Start.
func (p *Process) Name() string { return p.name }

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Logs returns a copy of what the process wrote so far (nil when its
// output went to Options.Output).
func (p *Process) Logs() []byte {
	if p.logs == nil {
		return nil
	}
	return p.logs.Bytes()
}

// Signal sends sig to the process; os.ErrProcessDone once it has exited.
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

// Stop sends SIGTERM, waits up to the stop grace for the process to exit,
// then kills it; it returns the exit code (see Wait) and whether it had to
// kill. On a process that already exited it only returns the exit code.
func (p *Process) Stop() (exitCode int, killed bool) {
	_ = p.Signal(syscall.SIGTERM)
	if code, err := p.Wait(p.StopGrace()); err == nil {
		return code, false
	}
	p.Kill()
	code, _ := p.Wait(0)
	return code, true
}

// StopGrace is how long Stop waits after SIGTERM.
func (p *Process) StopGrace() time.Duration { return time.Duration(p.stopGrace.Load()) }

// SetStopGrace changes how long Stop waits after SIGTERM; DefaultStopGrace
// when d is not positive.
func (p *Process) SetStopGrace(d time.Duration) {
	if d <= 0 {
		d = DefaultStopGrace
	}
	p.stopGrace.Store(int64(d))
}

// Wait waits up to timeout for the process to exit and returns its exit
// code: the status it passed to exit, or 128+N when signal N ended it (as
// a shell reports it: 143 for SIGTERM, 137 for SIGKILL). If the process
// still runs after timeout, Wait returns -1 and an error.
func (p *Process) Wait(timeout time.Duration) (exitCode int, err error) {
	if timeout <= 0 {
		select {
		case <-p.done:
			return ExitStatus(p.cmd.ProcessState), nil
		default:
			return -1, fmt.Errorf("%s (pid %d) is still running", p.name, p.PID())
		}
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return ExitStatus(p.cmd.ProcessState), nil
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

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitStatus is the exit code of a finished process as a shell reports
// it (128+N for signal N); -1 when st is nil.
func ExitStatus(st *os.ProcessState) int {
	if st == nil {
		return -1
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}

// Buffer is a bytes.Buffer safe for a process's concurrent writers.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes returns a copy of what was written.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// String returns what was written.
func (b *Buffer) String() string { return string(b.Bytes()) }
