// Command sleeper stands in for the project's servers in the tests of the
// testenv process helpers. Its first argument picks what it does:
//
//	serve        serve HTTP on $SLEEPER_ADDR until SIGTERM (the default):
//	             GET /            200 "ok"
//	             GET /status/N    answers with status N
//	             GET /ready       503 for the first $SLEEPER_NOT_READY_FOR requests, then 200
//	             it starts listening only after $SLEEPER_LISTEN_DELAY (a Go duration),
//	             logs "hangup" on SIGHUP, and exits with $SLEEPER_TERM_CODE
//	             (default 0) on SIGTERM
//	exit N       write a line to stdout and one to stderr, exit with N
//	env          print its environment, one variable a line
//	lines N      print "line 1" to "line N", then wait for SIGTERM
//	ignore-term  ignore SIGTERM, say so, and wait for SIGKILL
//	race         run into a data race (a -race build reports it and exits with 66)
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	mode := "serve"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case "serve":
		serve()
	case "exit":
		fmt.Println("sleeper: to stdout")
		fmt.Fprintln(os.Stderr, "sleeper: to stderr")
		os.Exit(intArg(2))
	case "env":
		for _, kv := range os.Environ() {
			fmt.Println(kv)
		}
	case "lines":
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		for i := 1; i <= intArg(2); i++ {
			fmt.Printf("line %d\n", i)
		}
		<-term
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("sleeper: ignoring SIGTERM")
		select {}
	case "race":
		race()
	default:
		fmt.Fprintf(os.Stderr, "sleeper: unknown mode %q\n", mode)
		os.Exit(2)
	}
}

func intArg(i int) int {
	if len(os.Args) <= i {
		fmt.Fprintln(os.Stderr, "sleeper: missing number")
		os.Exit(2)
	}
	n, err := strconv.Atoi(os.Args[i])
	if err != nil {
		fmt.Fprintln(os.Stderr, "sleeper:", err)
		os.Exit(2)
	}
	return n
}

func serve() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP)
	if d := os.Getenv("SLEEPER_LISTEN_DELAY"); d != "" {
		delay, err := time.ParseDuration(d)
		if err != nil {
			fmt.Fprintln(os.Stderr, "sleeper:", err)
			os.Exit(2)
		}
		time.Sleep(delay) // a slow start is the behaviour under test
	}
	notReadyFor, _ := strconv.Atoi(os.Getenv("SLEEPER_NOT_READY_FOR"))
	var readyCalls atomic.Int64

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil || code < 200 || code > 599 {
			code = http.StatusBadRequest
		}
		w.WriteHeader(code)
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if readyCalls.Add(1) <= int64(notReadyFor) {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	l, err := net.Listen("tcp", os.Getenv("SLEEPER_ADDR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "sleeper:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "sleeper: listening on", l.Addr())
	srv := &http.Server{Handler: mux}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "sleeper:", err)
			os.Exit(1)
		}
	}()
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			fmt.Println("sleeper: hangup")
			continue
		}
		fmt.Println("sleeper: terminating")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = srv.Shutdown(ctx)
		cancel()
		code, _ := strconv.Atoi(strings.TrimSpace(os.Getenv("SLEEPER_TERM_CODE")))
		os.Exit(code)
	}
}

// race writes one variable from two goroutines without synchronisation.
func race() {
	var n int
	done := make(chan struct{})
	go func() {
		n++
		close(done)
	}()
	n++
	<-done
	fmt.Println("sleeper: raced to", n)
}
