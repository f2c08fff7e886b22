// Package testenv starts the real programs that integration tests run
// against. Everything here is for tests only.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisStartTimeout bounds how long a starting redis-server may take to answer
// PING.
const redisStartTimeout = 10 * time.Second

// Redis is a redis-server child process owned by one test. It listens on a
// loopback port of its own (never 6379) and keeps no data on disk beyond the
// test's temporary directory. The process is killed when the test ends.
type Redis struct {
	Addr string // 127.0.0.1:<port>
	URL  string // redis://127.0.0.1:<port>/0
	// PID of the running process; Start changes it.
	PID int

	t    testing.TB
	args []string
	dir  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// StartRedis starts redis-server on a free loopback port and waits until it
// answers PING. extraArgs are appended to the command line (for example
// "--replicaof", "127.0.0.1 6380"). A missing redis-server fails the test;
// it is never skipped, so CI cannot pass without running these tests.
func StartRedis(t testing.TB, extraArgs ...string) *Redis {
	t.Helper()
	return startRedis(t, func() []string { return extraArgs })
}

// startRedis is StartRedis with the extra arguments made anew for every
// try, so that a try can pick other free ports of its own (a Cluster
// node's bus port).
func startRedis(t testing.TB, extraArgs func() []string) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server not found: install it with `apt-get install -y redis-server`")
	}
	dir := t.TempDir()
	r := &Redis{t: t, dir: dir}
	t.Cleanup(r.Stop)
	// Another process may take the free port before redis-server binds
	// it (the machine is shared): then try another.
	for try := 1; ; try++ {
		port := freeRedisPort(t)
		r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		r.URL = fmt.Sprintf("redis://127.0.0.1:%d/0", port)
		r.args = append([]string{
			bin,
			"--bind", "127.0.0.1",
			"--port", strconv.Itoa(port),
			"--save", "",
			"--appendonly", "no",
			"--dir", dir,
			"--daemonize", "no",
		}, extraArgs()...)
		log, err := r.start()
		if err == nil {
			return r
		}
		if try == 3 || !bytes.Contains(log, []byte("Address already in use")) {
			t.Fatalf("redis-server on %s: %v\n%s", r.Addr, err, redisLogTail(log, 2048))
		}
	}
}

// freeRedisPort asks the kernel for a free loopback port. Another process could
// take it before redis-server binds it; that shows as a start failure, not
// as a test talking to a stranger's server, because the port is never a
// fixed one.
func freeRedisPort(t testing.TB) int {
	t.Helper()
	for range 10 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if port != 6379 { // a developer's own Redis may want it back
			return port
		}
	}
	t.Fatal("find a free port: only got 6379")
	return 0
}

// Start starts the server again after Stop, on the same port and directory
// (for outage tests), and waits until it answers PING. It does nothing if
// the server runs. Call it from the test's goroutine: it fails the test.
func (r *Redis) Start() {
	r.t.Helper()
	if log, err := r.start(); err != nil {
		r.t.Fatalf("redis-server on %s: %v\n%s", r.Addr, err, redisLogTail(log, 2048))
	}
}

// start starts the server unless it runs; on failure it returns the
// server's log.
func (r *Redis) start() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return nil, nil
	}
	logPath := filepath.Join(r.dir, "redis.log")
	_ = os.Remove(logPath) // a failed try's
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("redis log: %w", err)
	}
	cmd := exec.Command(r.args[0], r.args[1:]...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	logFile.Close() // the child has its own descriptor
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	r.cmd, r.exited, r.PID = cmd, exited, cmd.Process.Pid

	if err := waitForRedisPing(r.Addr, exited); err != nil {
		r.killLocked()
		out, _ := os.ReadFile(logPath)
		return out, err
	}
	return nil, nil
}

// waitForRedisPing polls until the server answers PING, it exits, or
// redisStartTimeout passes.
func waitForRedisPing(addr string, exited <-chan struct{}) error {
	c := redis.NewClient(&redis.Options{
		Addr:        addr,
		DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 200 * time.Millisecond,
		MaxRetries:  -1,
	})
	defer c.Close()
	deadline := time.Now().Add(redisStartTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PING answer within %v: %w", redisStartTimeout, err)
		}
		select {
		case <-exited:
			return errors.New("exited before answering PING")
		case <-tick.C:
		}
	}
}

// Stop kills the server by its PID and waits until it has exited. It does
// nothing if the server is not running.
func (r *Redis) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.killLocked()
}

func (r *Redis) killLocked() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.exited
	r.cmd, r.exited = nil, nil
}

// Client returns a client of the server, closed when the test ends.
func (r *Redis) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { c.Close() })
	return c
}

// KeyValue is one key and everything stored under it, as raw bytes: a
// string's value, a hash's fields and values, a set's or sorted set's
// members (and scores), a list's elements, a stream's field names and
// values.
type KeyValue struct {
	Key    string
	Type   string
	Values [][]byte
}

// Dump returns every key of every database with all its contents, so a
// test can search the whole server, for example for a token stored in the
// clear.
func (r *Redis) Dump(t testing.TB) []KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := r.Client(t)
	dbs := 16
	if cfg, err := c.ConfigGet(ctx, "databases").Result(); err == nil {
		if n, err := strconv.Atoi(cfg["databases"]); err == nil {
			dbs = n
		}
	}
	var out []KeyValue
	for db := range dbs {
		conn := c.Conn()
		if err := conn.Select(ctx, db).Err(); err != nil {
			conn.Close()
			t.Fatalf("dump: select %d: %v", db, err)
		}
		kvs, err := dumpRedisDB(ctx, conn)
		conn.Close()
		if err != nil {
			t.Fatalf("dump db %d: %v", db, err)
		}
		out = append(out, kvs...)
	}
	return out
}

func dumpRedisDB(ctx context.Context, c *redis.Conn) ([]KeyValue, error) {
	var keys []string
	var cursor uint64
	for {
		batch, next, err := c.Scan(ctx, cursor, "*", 1000).Result()
		if err != nil {
			return nil, fmt.Errorf("scan: %w", err)
		}
		keys = append(keys, batch...)
		if cursor = next; cursor == 0 {
			break
		}
	}
	slices.Sort(keys)
	keys = slices.Compact(keys) // SCAN may return a key twice

	var out []KeyValue
	for _, k := range keys {
		typ, err := c.Type(ctx, k).Result()
		if err != nil {
			return nil, fmt.Errorf("type: %w", err)
		}
		kv := KeyValue{Key: k, Type: typ}
		var vals []string
		switch typ {
		case "none": // expired since SCAN
			continue
		case "string":
			var v string
			v, err = c.Get(ctx, k).Result()
			vals = []string{v}
		case "hash":
			var m map[string]string
			m, err = c.HGetAll(ctx, k).Result()
			for f, v := range m {
				vals = append(vals, f, v)
			}
		case "list":
			vals, err = c.LRange(ctx, k, 0, -1).Result()
		case "set":
			vals, err = c.SMembers(ctx, k).Result()
		case "zset":
			var zs []redis.Z
			zs, err = c.ZRangeWithScores(ctx, k, 0, -1).Result()
			for _, z := range zs {
				vals = append(vals, fmt.Sprint(z.Member), strconv.FormatFloat(z.Score, 'f', -1, 64))
			}
		case "stream":
			var msgs []redis.XMessage
			msgs, err = c.XRange(ctx, k, "-", "+").Result()
			for _, m := range msgs {
				for f, v := range m.Values {
					vals = append(vals, f, fmt.Sprint(v))
				}
			}
		default:
			return nil, fmt.Errorf("key %q: type %s not supported", k, typ)
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("read %s %q: %w", typ, k, err)
		}
		for _, v := range vals {
			kv.Values = append(kv.Values, []byte(v))
		}
		out = append(out, kv)
	}
	return out, nil
}

func redisLogTail(b []byte, n int) []byte {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return bytes.TrimSpace(b)
}

// StartReplicated starts a master and one replica of it, and waits until
// the replica is in sync (for WAIT).
func StartReplicated(t testing.TB) (master, replica *Redis) {
	t.Helper()
	// Without a delay the master starts the (diskless) sync at once instead
	// of waiting 5 s for more replicas.
	master = StartRedis(t, "--repl-diskless-sync-delay", "0")
	host, port, err := net.SplitHostPort(master.Addr)
	if err != nil {
		t.Fatal(err)
	}
	replica = StartRedis(t, "--replicaof", host, port)
	waitInfo(t, master.Client(t), "replication", "the replica in sync", "connected_slaves:1", "state=online")
	return master, replica
}

// StartCluster starts a one-node Redis Cluster holding every slot.
func StartCluster(t testing.TB) *Redis {
	t.Helper()
	r := StartRedis(t, "--cluster-enabled", "yes")
	raw := r.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := raw.Do(ctx, "cluster", "addslotsrange", 0, 16383).Err(); err != nil {
		t.Fatalf("assign slots: %v", err)
	}
	waitInfo(t, raw, "cluster", "the cluster ok", "cluster_state:ok")
	return r
}

// waitInfo polls INFO section (CLUSTER INFO for "cluster") until it holds
// every want, for at most 10 s.
func waitInfo(t testing.TB, c *redis.Client, section, what string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var info string
		var err error
		if section == "cluster" {
			info, err = c.ClusterInfo(ctx).Result()
		} else {
			info, err = c.Info(ctx, section).Result()
		}
		cancel()
		ok := err == nil
		for _, w := range want {
			ok = ok && bytes.Contains([]byte(info), []byte(w))
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not %s after 10s: %v\n%s", what, err, info)
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
}
