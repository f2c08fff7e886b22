package tokencache_test

import (
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/tokencache/storetest"
)

// TestRedisClusterFollowsFailover: on a Redis Cluster of 3 masters with 2
// replicas each, a record written with WaitReplicas 1 is read back, and
// written again, soon after its master is SIGKILLed and a replica has
// taken over, although the killed master never comes back. go-redis
// alone re-reads the slot map only on MOVED (which a dead node never
// answers) and once a minute, so the store kept asking the dead node for
// up to a minute; NewRedisClient's client re-reads it on the first
// connection error.
func TestRedisClusterFollowsFailover(t *testing.T) {
	cluster := testenv.StartClusterWithReplicas(t, 3, 2)
	client, err := tokencache.NewRedisClient(tokencache.RedisOptions{Addrs: cluster.Seeds()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	s := newRedisStore(t, tokencache.RedisConfig{Client: client, Keyring: mustKeyring(t, newKey(t)), WaitReplicas: 1})
	// The client's slot map is read now; go-redis would read it again by
	// itself a minute later.
	loaded := time.Now()
	gen, err := tokencache.Put(ctxTimeout(t, 5*time.Second), s, storetest.FullRecord("c1"))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}

	master := cluster.Master(s.RecordKey("c1"))
	master.Stop() // SIGKILL, by PID
	cluster.WaitFailover(master, s.RecordKey("c1"))
	promoted := time.Now()

	// Well before go-redis's own reload a minute after loaded.
	deadline := promoted.Add(20 * time.Second)
	if d := loaded.Add(50 * time.Second); d.Before(deadline) {
		deadline = d
	}
	var lastErr error
	for {
		got, err := s.Get(ctxTimeout(t, 2*time.Second), "c1")
		if err == nil {
			if got.Generation != gen {
				t.Fatalf("after the failover: generation %d, want the acknowledged %d", got.Generation, gen)
			}
			_, err = tokencache.Put(ctxTimeout(t, 2*time.Second), s, storetest.FullRecord("c1"))
		}
		if err == nil {
			break
		}
		lastErr = err
		if time.Now().After(deadline) {
			t.Fatalf("store still failing %v after the failover (%v after the slot map was read): %v",
				time.Since(promoted).Round(time.Millisecond), time.Since(loaded).Round(time.Millisecond), lastErr)
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
	t.Logf("store served again %v after the failover was complete (last error before: %v)", time.Since(promoted).Round(time.Millisecond), lastErr)
}
