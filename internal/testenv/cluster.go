// A Redis Cluster with replicas, for failover tests.

package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClusterNodeTimeout is the cluster-node-timeout of the nodes
// StartClusterWithReplicas starts: a master unreachable this long is
// suspected, and failed over once a majority of masters agree. Small, so
// that a test sees a failover within seconds; not so small that a node
// starved of CPU on a loaded machine is taken for dead.
const ClusterNodeTimeout = 2 * time.Second

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// clusterWait bounds how long the cluster may take to form, to fail over
// or to take a restarted node back: many times what it takes on an idle
// machine (well under a second to form, about 2 * ClusterNodeTimeout to
// fail over), for a machine at a load of 4 on 2 cores.
const clusterWait = 60 * time.Second

// Cluster is a Redis Cluster of redis-server child processes owned by one
// test (see StartClusterWithReplicas). Nodes keep their port, directory and
// node id (nodes.conf) across Stop and Restart, so a node restarted after
// a failover rejoins as a replica of the node that took its slots. Every
// process is killed by its PID when the test ends; if the test failed, the
// end of every node's log is logged.
type Cluster struct {
	// Nodes are every node in start order: the masters first (master i
	// held the i-th of equal slot ranges at start), then their replicas
	// (replica j of master i is Nodes[masters+i*replicasPerMaster+j]).
	// Roles change with failovers; ask Master and Role.
	Nodes []*Redis

	t                          testing.TB
	ids                        []string // node ids, by index into Nodes
	masters, replicasPerMaster int

	clients []*redis.Client // one per node, by index into Nodes

	mu      sync.Mutex
	oldLogs map[int][]byte // earlier incarnations' logs, by index
}

// StartClusterWithReplicas starts masters masters holding every slot in
// equal ranges and replicasPerMaster replicas of each, on free loopback
// ports (the cluster bus on a free port of its own), with
// ClusterNodeTimeout, and waits until the cluster is healthy (see
// WaitHealthy). Nodes keep no data on disk: a master restarted before its
// replica took over would come back empty, so tests restart a killed node
// only after the failover (see WaitFailover).
func StartClusterWithReplicas(t testing.TB, masters, replicasPerMaster int) *Cluster {
	t.Helper()
	if masters < 1 || replicasPerMaster < 0 {
		t.Fatalf("cluster of %d masters with %d replicas each: need at least one master", masters, replicasPerMaster)
	}
	c := &Cluster{t: t, masters: masters, replicasPerMaster: replicasPerMaster, oldLogs: map[int][]byte{}}
	n := masters * (1 + replicasPerMaster)
	for range n {
		node := startRedis(t, func() []string {
			return []string{
				"--cluster-enabled", "yes",
				"--cluster-port", strconv.Itoa(freeRedisPort(t)),
				"--cluster-node-timeout", strconv.FormatInt(ClusterNodeTimeout.Milliseconds(), 10),
				// A replica may take over however long its link was down
				// (under load it may have lagged): the test kills masters
				// on purpose and wants the failover.
				"--cluster-replica-validity-factor", "0",
				"--repl-diskless-sync-delay", "0",
			}
		})
		c.Nodes = append(c.Nodes, node)
		// Short timeouts: the test's looks at a stopped node fail fast.
		cl := redis.NewClient(&redis.Options{Addr: node.Addr, DialTimeout: time.Second,
			ReadTimeout: time.Second, WriteTimeout: time.Second, MaxRetries: -1})
		t.Cleanup(func() { cl.Close() })
		c.clients = append(c.clients, cl)
	}
	// Registered after the nodes, so it runs before their directories go.
	t.Cleanup(c.logOnFailure)

	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	for i, node := range c.Nodes {
		id, err := c.clients[i].Do(ctx, "cluster", "myid").Text()
		if err != nil {
			t.Fatalf("cluster myid of %s: %v", node.Addr, err)
		}
		c.ids = append(c.ids, id)
		if i >= masters {
			continue
		}
		lo, hi := i*clusterSlots/masters, (i+1)*clusterSlots/masters-1
		// Distinct config epochs, as redis-cli --cluster create sets them,
		// so that no epoch collision has to be resolved first.
		if err := c.clients[i].Do(ctx, "cluster", "set-config-epoch", i+1).Err(); err != nil {
			t.Fatalf("cluster set-config-epoch on %s: %v", node.Addr, err)
		}
		if err := c.clients[i].Do(ctx, "cluster", "addslotsrange", lo, hi).Err(); err != nil {
			t.Fatalf("cluster addslotsrange %d %d on %s: %v", lo, hi, node.Addr, err)
		}
	}
	first := c.clients[0]
	for _, node := range c.Nodes[1:] {
		host, port, _ := net.SplitHostPort(node.Addr)
		if err := first.Do(ctx, "cluster", "meet", host, port, node.busPort()).Err(); err != nil {
			t.Fatalf("cluster meet %s: %v", node.Addr, err)
		}
	}
	c.poll(ctx, "every node knowing every other", func() error {
		for _, node := range c.Nodes {
			view, err := c.view(ctx, node)
			if err != nil {
				return err
			}
			if len(view) != n {
				return fmt.Errorf("%s knows %d of %d nodes", node.Addr, len(view), n)
			}
			for _, v := range view {
				if v.has("handshake") || v.has("noaddr") {
					return fmt.Errorf("%s sees %s in %s", node.Addr, v.addr, v.flags)
				}
			}
		}
		return nil
	})
	for i := range masters {
		for j := range replicasPerMaster {
			k := masters + i*replicasPerMaster + j
			r := c.Nodes[k]
			if err := c.clients[k].Do(ctx, "cluster", "replicate", c.ids[i]).Err(); err != nil {
				t.Fatalf("cluster replicate on %s: %v", r.Addr, err)
			}
		}
	}
	c.WaitHealthy()
	return c
}

// busPort is the --cluster-port the node was started with.
func (r *Redis) busPort() string {
	if i := slices.Index(r.args, "--cluster-port"); i >= 0 && i+1 < len(r.args) {
		return r.args[i+1]
	}
	return ""
}

// Log returns the server's log (of its current incarnation: Start begins
// a new one).
func (r *Redis) Log() []byte {
	b, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
	return b
}

// Seeds returns every node's address, for a Cluster client's seed list.
func (c *Cluster) Seeds() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return out
}

// Master returns the node that every running node names as the master of
// key's slot, waiting until they agree.
func (c *Cluster) Master(key string) *Redis {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	var owner *Redis
	c.poll(ctx, "the nodes agreeing on the master of "+key, func() (err error) {
		owner, err = c.master(ctx, key)
		return err
	})
	return owner
}

// master is the node every running node names as the master of key's slot,
// or an error saying why there is none.
func (c *Cluster) master(ctx context.Context, key string) (*Redis, error) {
	up := c.running()
	if len(up) == 0 {
		return nil, fmt.Errorf("no node running")
	}
	slot, err := c.client(up[0]).ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return nil, err
	}
	var owner *Redis
	for _, node := range up {
		view, err := c.view(ctx, node)
		if err != nil {
			return nil, err
		}
		m := view.masterOf(int(slot))
		if m == nil {
			return nil, fmt.Errorf("%s knows no live master of slot %d", node.Addr, slot)
		}
		o := c.byID(m.id)
		if owner != nil && o != owner {
			return nil, fmt.Errorf("%s names %s the master of slot %d, another node %s", node.Addr, o.Addr, slot, owner.Addr)
		}
		owner = o
	}
	return owner, nil
}

// WaitFailover waits until dead, the master of key's slot until the test
// stopped it, has been failed over: every running node names another
// node the master of that slot, sees every slot served by a master it
// does not think failed, and says cluster_state:ok. It returns the
// promoted node.
func (c *Cluster) WaitFailover(dead *Redis, key string) *Redis {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	var promoted *Redis
	c.poll(ctx, "failover of "+dead.Addr, func() error {
		m, err := c.master(ctx, key)
		if err != nil {
			return err
		}
		if m == dead {
			return fmt.Errorf("%s still named the master", dead.Addr)
		}
		for _, node := range c.running() {
			info, err := c.client(node).ClusterInfo(ctx).Result()
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return fmt.Errorf("%s: cluster not ok", node.Addr)
			}
			view, err := c.view(ctx, node)
			if err != nil {
				return err
			}
			served := 0
			for _, v := range view {
				if v.has("master") && !v.has("fail") && !v.has("fail?") {
					served += v.slots
				}
			}
			if served != clusterSlots {
				return fmt.Errorf("%s sees %d slots served by live masters", node.Addr, served)
			}
		}
		promoted = m
		return nil
	})
	return promoted
}

// Restart starts a stopped node again on its port, with its node id; a
// master that was failed over meanwhile comes back as a replica of the
// node that took its slots. Wait for it with WaitHealthy.
func (c *Cluster) Restart(node *Redis) {
	c.t.Helper()
	i := slices.Index(c.Nodes, node)
	c.mu.Lock()
	c.oldLogs[i] = append(c.oldLogs[i], node.Log()...)
	c.mu.Unlock()
	node.Start()
}

// WaitHealthy waits until every node runs and every running node sees the
// cluster as started: cluster_state:ok, the same number of masters holding
// every slot, each with replicasPerMaster replicas linked to it and in
// sync (so that WAIT 1 is answered), and no node flagged as failing.
func (c *Cluster) WaitHealthy() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	c.poll(ctx, "the cluster healthy", func() error {
		if len(c.running()) != len(c.Nodes) {
			return fmt.Errorf("%d of %d nodes running", len(c.running()), len(c.Nodes))
		}
		for _, node := range c.Nodes {
			cl := c.client(node)
			info, err := cl.ClusterInfo(ctx).Result()
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return fmt.Errorf("%s: cluster not ok", node.Addr)
			}
			view, err := c.view(ctx, node)
			if err != nil {
				return err
			}
			masters, slots := 0, 0
			for _, v := range view {
				if v.has("fail") || v.has("fail?") || v.link != "connected" {
					return fmt.Errorf("%s sees %s as %s, link %s", node.Addr, v.addr, v.flags, v.link)
				}
				if v.has("master") && v.slots > 0 {
					masters++
					slots += v.slots
					if reps := view.replicasOf(v.id); reps != c.replicasPerMaster {
						return fmt.Errorf("%s sees %d replicas of %s", node.Addr, reps, v.addr)
					}
				}
			}
			if masters != c.masters || slots != clusterSlots {
				return fmt.Errorf("%s sees %d masters holding %d slots", node.Addr, masters, slots)
			}
			repl, err := cl.Info(ctx, "replication").Result()
			if err != nil {
				return err
			}
			if strings.Contains(repl, "role:master") {
				if online := strings.Count(repl, "state=online"); online != c.replicasPerMaster {
					return fmt.Errorf("%s has %d replicas online", node.Addr, online)
				}
			} else if !strings.Contains(repl, "master_link_status:up") {
				return fmt.Errorf("replica %s not linked to its master", node.Addr)
			}
		}
		return nil
	})
}

// running returns the nodes whose process runs.
func (c *Cluster) running() []*Redis {
	var out []*Redis
	for _, n := range c.Nodes {
		n.mu.Lock()
		up := n.cmd != nil
		n.mu.Unlock()
		if up {
			out = append(out, n)
		}
	}
	return out
}

// client is the test's own client of node.
func (c *Cluster) client(node *Redis) *redis.Client {
	return c.clients[slices.Index(c.Nodes, node)]
}

func (c *Cluster) byID(id string) *Redis {
	if i := slices.Index(c.ids, id); i >= 0 {
		return c.Nodes[i]
	}
	return nil
}

// poll calls check until it returns nil, failing the test with its last
// error when ctx ends.
func (c *Cluster) poll(ctx context.Context, what string, check func() error) {
	c.t.Helper()
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("redis cluster: no %s within %v: %v", what, clusterWait, err)
		case <-time.After(50 * time.Millisecond): // polling with a deadline
		}
	}
}

func (c *Cluster) logOnFailure() {
	if !c.t.Failed() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, node := range c.Nodes {
		log := append(append([]byte(nil), c.oldLogs[i]...), node.Log()...)
		c.t.Logf("redis cluster node %s (pid %d), last %d lines of its log:\n%s",
			node.Addr, node.PID, logLinesOnFailure/2, lastLines(log, logLinesOnFailure/2))
	}
}

// clusterView is one node's CLUSTER NODES.
type clusterView []clusterNode

type clusterNode struct {
	id, addr, flags, master, link string
	slots                         int // how many slots it serves
	slotRanges                    [][2]int
}

func (n clusterNode) has(flag string) bool {
	return slices.Contains(strings.Split(n.flags, ","), flag)
}

func (c *Cluster) view(ctx context.Context, node *Redis) (clusterView, error) {
	raw, err := c.client(node).ClusterNodes(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("cluster nodes on %s: %w", node.Addr, err)
	}
	var out clusterView
	for _, line := range strings.Split(strings.TrimSpace(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			return nil, fmt.Errorf("cluster nodes on %s: malformed line %q", node.Addr, line)
		}
		n := clusterNode{id: f[0], addr: f[1], flags: f[2], master: f[3], link: f[7]}
		if i := strings.IndexAny(n.addr, "@,"); i >= 0 {
			n.addr = n.addr[:i]
		}
		for _, s := range f[8:] {
			if strings.HasPrefix(s, "[") { // a slot being migrated
				continue
			}
			lo, hi, ok := strings.Cut(s, "-")
			if !ok {
				hi = lo
			}
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("cluster nodes on %s: malformed slots %q", node.Addr, s)
			}
			n.slotRanges = append(n.slotRanges, [2]int{a, b})
			n.slots += b - a + 1
		}
		out = append(out, n)
	}
	return out, nil
}

// masterOf is the master serving slot that this view does not think
// failed, or nil.
func (v clusterView) masterOf(slot int) *clusterNode {
	for i, n := range v {
		if !n.has("master") || n.has("fail") || n.has("fail?") {
			continue
		}
		for _, r := range n.slotRanges {
			if r[0] <= slot && slot <= r[1] {
				return &v[i]
			}
		}
	}
	return nil
}

// replicasOf counts the replicas of master id with a connected link.
func (v clusterView) replicasOf(id string) int {
	n := 0
	for _, r := range v {
		if r.master == id && r.has("slave") && r.link == "connected" {
			n++
		}
	}
	return n
}

// Client returns a Cluster client seeded with every node, closed when the
// test ends.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Seeds()})
	t.Cleanup(func() { cc.Close() })
	return cc
}
