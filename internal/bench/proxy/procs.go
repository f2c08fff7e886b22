package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/proc"
)

// clkTck is USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s.
const clkTck = 100

const stopGrace = 10 * time.Second

// child is a process the benchmark started (internal/proc), its output in
// a log file of the run's directory; it is only ever signalled by its PID.
type child struct {
	*proc.Process
	name    string
	pid     int
	log     string
	started time.Time
}

// startProc starts bin with args and env (plus PATH and HOME) in the run's
// directory.
func (b *bench) startProc(name, bin string, args, env []string) (*child, error) {
	c := &child{name: name, log: filepath.Join(b.dir, name+".log")}
	f, err := os.Create(c.log)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own descriptor
	c.started = time.Now()
	if c.Process, err = proc.Start(name, bin, args, proc.Options{Env: env, Dir: b.dir, Output: f, StopGrace: stopGrace}); err != nil {
		return nil, err
	}
	c.pid = c.PID()
	b.procs = append(b.procs, c)
	return c, nil
}

func (c *child) exited() bool { return c.Exited() }

// stop ends the process by its PID: SIGCONT (it may be paused), SIGTERM,
// then SIGKILL after stopGrace.
func (c *child) stop() {
	_ = c.Signal(syscall.SIGCONT)
	c.Stop()
}

// waitUntil polls ok every 2 ms until it holds, p exits, ctx ends or
// within passes; it returns how long it took from p's start.
func waitUntil(ctx context.Context, within time.Duration, p *child, ok func() bool) (time.Duration, error) {
	deadline := time.Now().Add(within)
	for !ok() {
		if p.exited() {
			return 0, fmt.Errorf("%s exited (log %s)", p.name, p.log)
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s not ready within %s (log %s)", p.name, within, p.log)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return time.Since(p.started), nil
}

// freePorts asks the kernel for n distinct free loopback ports, never 6379.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		if p := l.Addr().(*net.TCPAddr).Port; p != 6379 {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// procCPU is utime+stime of a running process, in seconds.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')') // the command name may hold spaces
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	// f[0] is field 3 (state): utime and stime are fields 14 and 15.
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return (ut + st) / clkTck, nil
}

// procHWM is the peak resident set size (VmHWM) in KiB, 0 if unknown.
func procHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// loadAvg is /proc/loadavg's first three fields.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
