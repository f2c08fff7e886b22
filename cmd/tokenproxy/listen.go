package main

import (
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// listenApp opens the app-facing listener: TCP host:port, or unix:/path,
// a Unix socket created mode 0660 (only containers that mount its volume,
// as the socket's owner or group, can call it) and removed on exit. A
// stale socket left by a crash is replaced; any other file at the path is
// an error.
func listenApp(addr string) (net.Listener, func(), error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		ln, err := net.Listen("tcp", addr)
		return ln, func() {}, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// Create the socket with no access for others from the start, so
	// there is no moment in which it is open to everyone.
	old := umask(0o117)
	ln, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("chmod socket: %w", err)
	}
	return ln, func() { _ = os.Remove(path) }, nil
}

// limitListener accepts at most n connections open at once; further ones
// wait in the kernel's accept queue until one closes.
//
// Until a connection's first byte arrives, it may stay open as long as an
// idle kept-alive one (idle); read deadlines set before then (the server's
// ReadHeaderTimeout) start counting at that first byte, as net/http does
// for every request after a connection's first. Clients dial connections
// ahead of need and keep them in their pools; closing such a connection
// after ReadHeaderTimeout races with the client picking it for a POST,
// which it cannot retry.
func limitListener(ln net.Listener, n int, idle time.Duration) net.Listener {
	return &limitedListener{Listener: ln, slots: make(chan struct{}, n), done: make(chan struct{}), idle: idle}
}

type limitedListener struct {
	net.Listener
	slots     chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	idle      time.Duration
}

func (l *limitedListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() { <-l.slots }, idle: l.idle}, nil
}

func (l *limitedListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
	idle    time.Duration

	mu      sync.Mutex
	started bool          // the first byte has arrived
	pending time.Duration // a read deadline set before it, from when it was set
}

func (c *limitedConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	if c.started || c.idle <= 0 {
		c.mu.Unlock()
		return c.Conn.SetReadDeadline(t)
	}
	c.pending = 0
	if !t.IsZero() {
		c.pending = max(time.Until(t), time.Millisecond)
	}
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(time.Now().Add(c.idle))
}

func (c *limitedConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

func (c *limitedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.mu.Lock()
		if !c.started {
			c.started = true
			if c.pending > 0 {
				_ = c.Conn.SetReadDeadline(time.Now().Add(c.pending))
			}
		}
		c.mu.Unlock()
	}
	return n, err
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
