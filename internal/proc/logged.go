package proc

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Logged is a child process of a run (a benchmark, a soak) whose output
// goes to a log file of the run's directory.
type Logged struct {
	*Process
	Log     string    // its log file
	Started time.Time // when it was started
}

// StartLogged starts bin with args and env (beyond the inherited PATH and
// HOME) in dir, its output in dir/name.log; grace is how long Stop waits
// after SIGTERM before SIGKILL.
func StartLogged(dir, name, bin string, args, env []string, grace time.Duration) (*Logged, error) {
	l := &Logged{Log: filepath.Join(dir, name+".log")}
	f, err := os.Create(l.Log)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own descriptor
	l.Started = time.Now()
	if l.Process, err = Start(name, bin, args, Options{Dir: dir, Env: env, Output: f, StopGrace: grace}); err != nil {
		return nil, err
	}
	return l, nil
}

// StopAll stops every process by its PID, the last started first (the
// proxies before what they depend on): SIGCONT (it may be paused), SIGTERM,
// then SIGKILL after its grace.
func StopAll(ps []*Logged) {
	for i := len(ps) - 1; i >= 0; i-- {
		_ = ps[i].Signal(syscall.SIGCONT)
		ps[i].Stop()
	}
}

// Cleanup stops every process and removes dir, unless keep: then it says
// where the keys and logs were kept (label names the program).
func Cleanup(ps []*Logged, dir string, keep bool, label string) {
	StopAll(ps)
	if dir == "" {
		return
	}
	if keep {
		fmt.Fprintln(os.Stderr, label+": keys and process logs kept in", dir)
		return
	}
	_ = os.RemoveAll(dir)
}

// ShowLogs prints the end (at most max bytes) of every process log to w,
// for a failed run.
func ShowLogs(w io.Writer, ps []*Logged, max int) {
	for _, p := range ps {
		out, _ := os.ReadFile(p.Log)
		s := strings.TrimSpace(string(out))
		if len(s) > max {
			s = "…" + s[len(s)-max:]
		}
		if s != "" {
			fmt.Fprintf(w, "\n-- %s (pid %d) log, last lines:\n%s\n", p.Name(), p.PID(), s)
		}
	}
}
