package tokencache

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Redis store's reads across customers (Due, Census) and its watches.

// dueScript lists a bucket's due customers by the server's clock.
//
//	KEYS:  bucket schedule
//	ARGV:  limit
//	reply: {customer id, score, ...}
var dueScript = redis.NewScript(`
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', '0', ARGV[1])
`)

// Due lists the customers due for refresh; see Store.Due.
//
// Each bucket is read by a script that takes "now" from the TIME of the
// master holding that bucket, the same clock that set the cooldown-based
// scores (Refused, Unknown), so no replica's clock and no cross-master
// skew decides what is due. The buckets' scripts go in one pipeline
// (go-redis splits it per node in a Cluster): one round trip per master.
func (s *Redis) Due(ctx context.Context, buckets []int, limit int) ([]DueEntry, error) {
	const op = "list due"
	if err := checkBuckets(buckets, s.buckets); err != nil {
		return nil, err
	}
	if limit <= 0 || len(buckets) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.Cmd, len(buckets))
	pipeline := func(idx []int, eval bool) {
		// Errors are read from each command.
		_, _ = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range idx {
				keys := []string{s.DueKey(buckets[i])}
				if eval {
					cmds[i] = dueScript.Eval(ctx, p, keys, limit)
				} else {
					cmds[i] = dueScript.EvalSha(ctx, p, keys, limit)
				}
			}
			return nil
		})
	}
	all := make([]int, len(buckets))
	for i := range all {
		all[i] = i
	}
	pipeline(all, false)
	// A master that does not know the script yet (new, restarted,
	// flushed) gets its source once.
	var missing []int
	for i, c := range cmds {
		if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		pipeline(missing, true)
	}
	var out []DueEntry
	for _, c := range cmds {
		reply, err := c.Result()
		if err != nil {
			return nil, unavailable(op, err)
		}
		r, ok := reply.([]any)
		if !ok {
			return nil, fmt.Errorf("%s: unexpected script reply %T", op, reply)
		}
		for j := 0; j+1 < len(r); j += 2 {
			id, _ := r[j].(string)
			score, _ := r[j+1].(string)
			ms, err := strconv.ParseFloat(score, 64)
			if err != nil {
				return nil, fmt.Errorf("%s: malformed score", op)
			}
			out = append(out, DueEntry{CustomerID: id, Due: time.UnixMilli(int64(ms)).UTC()})
		}
	}
	return mergeDue(out, limit), nil
}

// censusBatch is how many records Census reads per round trip.
const censusBatch = 1000

// Census counts the customers by state; see Store.Census.
//
// Cost: it SCANs the whole keyspace of every master (MATCH filters after
// the scan, so keys of other prefixes and this store's tombstones, leases
// and journal entries are walked too), COUNT 1000 a call, and reads each
// record's state and access expiry plus its lease's existence in pipelines
// of 1000: about (keys / 1000) SCAN calls and (records / 1000) pipelines
// per call. For 100k customers that is a few hundred round trips and well
// under a second of Redis time, spread in small steps; call it every tens
// of seconds, not per request. Counts are a snapshot only approximately
// (SCAN may visit a key twice or miss one written meanwhile).
func (s *Redis) Census(ctx context.Context) (Census, error) {
	var (
		mu    sync.Mutex
		total Census
	)
	count := func(ctx context.Context, node redis.Cmdable) error {
		c, err := s.censusNode(ctx, node)
		if err != nil {
			return err
		}
		mu.Lock()
		total.Valid += c.Valid
		total.Expired += c.Expired
		total.Refreshing += c.Refreshing
		total.ReauthorizationRequired += c.ReauthorizationRequired
		mu.Unlock()
		return nil
	}
	var err error
	switch c := s.client.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return count(ctx, node) })
	case *redis.Ring:
		err = c.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error { return count(ctx, node) })
	default:
		err = count(ctx, s.client)
	}
	if err != nil {
		return Census{}, unavailable("census", err)
	}
	return total, nil
}

// censusNode counts the records held by one node, by that node's clock.
func (s *Redis) censusNode(ctx context.Context, node redis.Cmdable) (Census, error) {
	var c Census
	now, err := node.Time(ctx).Result()
	if err != nil {
		return c, err
	}
	pattern := globEscape(s.prefix) + "{b*}:rec:*"
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		cmds := make([]*redis.SliceCmd, len(batch))
		_, err := node.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, key := range batch {
				cmds[i] = p.HMGet(ctx, key, fGeneration, fState, fAccessExp, fLeaseUntil)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, cmd := range cmds {
			v := cmd.Val()
			if len(v) < 4 || v[0] == nil {
				continue // forgotten since the scan, or a tombstone
			}
			str := func(i int) string { x, _ := v[i].(string); return x }
			exp, _ := parseUnixMilli(str(2))
			until, _ := parseUnixMilli(str(3))
			c.add(&Entry{Record: &Record{State: State(str(1)), AccessTokenExpiry: exp}, Lease: Hold{Until: until}}, now)
		}
		batch = batch[:0]
		return nil
	}
	var cursor uint64
	for {
		keys, next, err := node.Scan(ctx, cursor, pattern, censusBatch).Result()
		if err != nil {
			return c, err
		}
		for _, k := range keys {
			if _, _, ok := s.parseRecordKey(k); ok {
				batch = append(batch, k)
			}
		}
		if len(batch) >= censusBatch {
			if err := flush(); err != nil {
				return c, err
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	return c, flush()
}

// parseRecordKey splits "<prefix>{b<N>}:rec:<id>" into "<prefix>{b<N>}:"
// and id; ok is false for every other key.
func (s *Redis) parseRecordKey(key string) (bucketPrefix, id string, ok bool) {
	rest, found := strings.CutPrefix(key, s.prefix+"{b")
	if !found {
		return "", "", false
	}
	digits := 0
	for digits < len(rest) && rest[digits] >= '0' && rest[digits] <= '9' {
		digits++
	}
	if digits == 0 {
		return "", "", false
	}
	id, found = strings.CutPrefix(rest[digits:], "}:rec:")
	if !found || id == "" {
		return "", "", false
	}
	return key[:len(s.prefix)+2+digits+2], id, true
}

// globEscape quotes the characters SCAN MATCH treats specially.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// redisSub is a Redis store's one subscription to its done channel,
// started by the first Watch and ended by Close.
type redisSub struct {
	mu      sync.Mutex
	started bool
	closed  bool
	cancel  context.CancelFunc
	ps      *redis.PubSub
	done    chan struct{} // closed when the receiving goroutine returns
	ready   chan struct{} // closed at the first confirmed subscription
}

// Watch wakes on Complete, Put and Delete of the customer by any store
// sharing this Redis and prefix; see Store.Watch. The first Watch
// starts the store's subscription to DoneChannel (one connection for all
// watches, re-established by go-redis after a failure; messages published
// meanwhile are lost, which is why callers also poll). After Close, Watch
// returns channels that never fire.
func (s *Redis) Watch(customerID string) (<-chan struct{}, func()) {
	s.startSubscription()
	return s.hub.add(customerID)
}

// WatchReady waits until the subscription behind Watch is established
// (starting it if no Watch has yet), or ctx ends. Tests use it to publish
// only once a watcher can hear; a readiness check may too.
func (s *Redis) WatchReady(ctx context.Context) error {
	ready := s.startSubscription()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("watch: subscription: %w", ctx.Err())
	}
}

// startSubscription starts the subscription once and returns the channel
// closed when it is established.
func (s *Redis) startSubscription() <-chan struct{} {
	s.sub.mu.Lock()
	defer s.sub.mu.Unlock()
	if s.sub.ready == nil {
		s.sub.ready = make(chan struct{})
	}
	if s.sub.started || s.sub.closed {
		return s.sub.ready
	}
	s.sub.started = true
	ctx, cancel := context.WithCancel(context.Background())
	s.sub.cancel = cancel
	s.sub.done = make(chan struct{})
	go s.receive(ctx, s.sub.ready, s.sub.done)
	return s.sub.ready
}

// receive runs the subscription: it fans each published customer id out
// to that customer's watchers.
func (s *Redis) receive(ctx context.Context, ready, done chan struct{}) {
	defer close(done)
	// Subscribe dials (bounded by the client's dial timeout, or Close); a
	// failure here is retried by the channel below.
	ps := s.client.Subscribe(ctx, s.DoneChannel())
	s.sub.mu.Lock()
	if s.sub.closed {
		s.sub.mu.Unlock()
		_ = ps.Close()
		return
	}
	s.sub.ps = ps
	s.sub.mu.Unlock()
	var once sync.Once
	for msg := range ps.ChannelWithSubscriptions() {
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				once.Do(func() { close(ready) })
			}
		case *redis.Message:
			s.hub.notify(m.Payload)
		}
	}
}

// Close stops the subscription behind Watch and waits for its goroutine.
// The store stays usable otherwise; the client is the caller's to close.
func (s *Redis) Close() error {
	s.sub.mu.Lock()
	s.sub.closed = true
	cancel, ps, done := s.sub.cancel, s.sub.ps, s.sub.done
	s.sub.ps = nil // closed once
	s.sub.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	var err error
	if ps != nil {
		err = ps.Close()
	}
	if done != nil {
		<-done
	}
	return err
}
