package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/proc"
)

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
