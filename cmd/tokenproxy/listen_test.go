package main

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestLimitListenerHeaderTimeoutFromFirstByte: a connection dialed ahead of
// need and idle for longer than ReadHeaderTimeout still serves its first
// request; one that starts a request and stalls is cut at ReadHeaderTimeout.
func TestLimitListenerHeaderTimeoutFromFirstByte(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const header = 300 * time.Millisecond
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) }),
		ReadHeaderTimeout: header,
		IdleTimeout:       time.Minute,
	}
	go func() { _ = srv.Serve(limitListener(ln, 2, time.Minute)) }()
	t.Cleanup(func() { _ = srv.Close() })
	addr := ln.Addr().String()

	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	time.Sleep(3 * header) // idle past the header timeout: the case under test, not synchronisation
	_ = idle.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := idle.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(idle), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request after idling: %v", err)
	}
	resp.Body.Close()

	stall, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stall.Close()
	if _, err := stall.Write([]byte("GET / HTTP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = stall.SetReadDeadline(time.Now().Add(30 * time.Second))
	start := time.Now()
	buf := make([]byte, 512)
	n, err := stall.Read(buf)
	// The server answers a timed-out header read with its own 408 or just
	// closes: either way the connection ends, long before our 30 s.
	if err == nil && !strings.Contains(string(buf[:n]), "408") {
		t.Fatalf("a stalled request got %q", buf[:n])
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("a stalled request held its connection %s", d)
	}
}
