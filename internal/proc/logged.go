package proc

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
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

// StartInto is StartLogged that adds the process to ps, the run's list.
func StartInto(ps *[]*Logged, dir, name, bin string, args, env []string, grace time.Duration) (*Logged, error) {
	l, err := StartLogged(dir, name, bin, args, env, grace)
	if err == nil {
		*ps = append(*ps, l)
	}
	return l, err
}

// ParseFlags parses the command line of a run's program (name), refuses
// arguments, and checks the settings: exit 2 with one line on either.
func ParseFlags(name string, check func() error) {
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "%s: unexpected argument %q\n", name, flag.Arg(0))
		os.Exit(2)
	}
	if err := check(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
}

// Serve serves h on addr until SIGTERM or SIGINT, then shuts down within
// 5 s: the main of the benchmark's helper proxies.
func Serve(name, addr string, h http.Handler) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: listen: %v\n", name, err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() { _ = srv.Serve(ln) }()
	fmt.Fprintf(os.Stderr, "%s: listening on %s\n", name, ln.Addr())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
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

// Interruptible returns a context that SIGINT or SIGTERM ends (a second
// one kills the program at once), for a run's main.
func Interruptible() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() { <-ctx.Done(); stop() }()
	return ctx, stop
}

// Failed reports a run that ended with err: 130 when it was interrupted
// (its processes are stopped), else 1 after showing the processes' logs.
func Failed(ctx context.Context, name string, err error, showLogs func()) int {
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, name+": interrupted; every process it started is stopped")
		return 130
	}
	fmt.Fprintln(os.Stderr, name+" failed:", err)
	showLogs()
	return 1
}
