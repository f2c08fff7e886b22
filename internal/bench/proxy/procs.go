package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/proc"
)

const stopGrace = 10 * time.Second

// child is a process the benchmark started (internal/proc), its output in
// a log file of the run's directory; it is only ever signalled by its PID.
// child is a process the benchmark started, its output in a log file.
type child = proc.Logged

// startProc starts bin with args and env (plus PATH and HOME) in the run's
// directory.
func (b *bench) startProc(name, bin string, args, env []string) (*child, error) {
	return proc.StartInto(&b.procs, b.dir, name, bin, args, env, stopGrace)
}

// waitUntil polls ok every 2 ms until it holds, p exits, ctx ends or
// within passes; it returns how long it took from p's start.
func waitUntil(ctx context.Context, within time.Duration, p *child, ok func() bool) (time.Duration, error) {
	deadline := time.Now().Add(within)
	for !ok() {
		if p.Exited() {
			return 0, fmt.Errorf("%s exited (log %s)", p.Name(), p.Log)
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s not ready within %s (log %s)", p.Name(), within, p.Log)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return time.Since(p.Started), nil
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
