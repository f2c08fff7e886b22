package testenv

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestStartRedis(t *testing.T) {
	r := StartRedis(t)
	if r.PID <= 0 {
		t.Fatalf("PID = %d", r.PID)
	}
	if strings.HasSuffix(r.Addr, ":6379") {
		t.Fatalf("Addr = %s: must never be the default port", r.Addr)
	}
	if !strings.HasPrefix(r.URL, "redis://"+r.Addr+"/") {
		t.Fatalf("URL = %q, Addr = %q", r.URL, r.Addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	opt, err := redis.ParseURL(r.URL)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("ping by URL: %v", err)
	}
}

func TestStopStart(t *testing.T) {
	r := StartRedis(t)
	c := r.Client(t)
	first := r.PID

	r.Stop()
	r.Stop() // a second Stop is harmless
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	err := c.Ping(ctx).Err()
	cancel()
	if err == nil {
		t.Fatal("ping after Stop succeeded")
	}

	r.Start()
	if r.PID == first {
		t.Fatalf("PID unchanged after restart: %d", r.PID)
	}
	// The pool may still hold connections to the old process; poll with a
	// deadline until a fresh one answers.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping after Start: %v", err)
		}
	}
}

func TestExtraArgs(t *testing.T) {
	r := StartRedis(t, "--databases", "4")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := r.Client(t).ConfigGet(ctx, "databases").Result()
	if err != nil {
		t.Fatal(err)
	}
	if got["databases"] != "4" {
		t.Fatalf("databases = %q, want 4", got["databases"])
	}
}

func TestDump(t *testing.T) {
	r := StartRedis(t)
	c := r.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.Set(ctx, "s", "string-value", 0).Err())
	must(c.HSet(ctx, "h", "hash-field", "hash-value").Err())
	must(c.ZAdd(ctx, "z", redis.Z{Score: 1.5, Member: "zset-member"}).Err())
	must(c.SAdd(ctx, "set", "set-member").Err())
	must(c.RPush(ctx, "l", "list-a", "list-b").Err())
	must(c.XAdd(ctx, &redis.XAddArgs{Stream: "x", Values: []string{"stream-field", "stream-value"}}).Err())
	conn := c.Conn()
	must(conn.Select(ctx, 3).Err())
	must(conn.Set(ctx, "in-db-3", "db3-value", 0).Err())
	conn.Close()

	want := map[string][]string{
		"s":       {"string-value"},
		"h":       {"hash-field", "hash-value"},
		"z":       {"zset-member", "1.5"},
		"set":     {"set-member"},
		"l":       {"list-a", "list-b"},
		"x":       {"stream-field", "stream-value"},
		"in-db-3": {"db3-value"},
	}
	dump := r.Dump(t)
	if len(dump) != len(want) {
		t.Fatalf("dump has %d keys, want %d: %+v", len(dump), len(want), dump)
	}
	for _, kv := range dump {
		w, ok := want[kv.Key]
		if !ok {
			t.Errorf("unexpected key %q", kv.Key)
			continue
		}
		for _, v := range w {
			if !containsValue(kv.Values, v) {
				t.Errorf("key %q (%s): %q missing from %q", kv.Key, kv.Type, v, kv.Values)
			}
		}
	}
}

func containsValue(vals [][]byte, v string) bool {
	for _, b := range vals {
		if bytes.Equal(b, []byte(v)) {
			return true
		}
	}
	return false
}

// TestClusterWithReplicasFailover: a 3-master + 3-replica cluster forms;
// a key written with WAIT 1 survives a SIGKILL of its master, whose replica
// takes over; the killed node, restarted, rejoins as a replica.
func TestClusterWithReplicasFailover(t *testing.T) {
	c := StartClusterWithReplicas(t, 3, 1)
	if len(c.Nodes) != 6 || len(c.Seeds()) != 6 {
		t.Fatalf("%d nodes, %d seeds; want 6", len(c.Nodes), len(c.Seeds()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const key = "{failover}:k"
	old := c.Master(key)
	if i := slices.Index(c.Nodes, old); i < 0 || i >= 3 {
		t.Fatalf("master of %s is node %d, want one of the first three", key, i)
	}
	direct := c.client(old)
	if err := direct.Set(ctx, key, "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := direct.Do(ctx, "wait", 1, 5000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT 1: %d, %v", n, err)
	}

	oldPID := old.PID
	old.Stop()
	promoted := c.WaitFailover(old, key)
	if promoted == old || c.Master(key) != promoted {
		t.Fatalf("promoted %s, master %s, killed %s", promoted.Addr, c.Master(key).Addr, old.Addr)
	}
	if got, err := c.client(promoted).Get(ctx, key).Result(); err != nil || got != "v" {
		t.Fatalf("after failover: GET = %q, %v; want the acknowledged write", got, err)
	}

	c.Restart(old)
	if old.PID == oldPID {
		t.Fatalf("restarted node kept pid %d", oldPID)
	}
	c.WaitHealthy()
	if c.Master(key) != promoted {
		t.Fatalf("after the restart the master of %s is %s, want %s", key, c.Master(key).Addr, promoted.Addr)
	}
	repl, err := c.client(old).Info(ctx, "replication").Result()
	if err != nil || !strings.Contains(repl, "role:slave") {
		t.Fatalf("restarted node: %v\n%s", err, repl)
	}
}
