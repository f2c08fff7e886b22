package tokencache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultHeartbeatEvery is RedisConfig.HeartbeatEvery when zero.
const DefaultHeartbeatEvery = 2 * time.Second

// heartbeatPrefix starts a heartbeat's payload on DoneChannel. A customer
// id never starts with NUL (HTTP header values cannot hold one), so no
// heartbeat is taken for a customer; releases that do not know heartbeats
// wake the watchers of no one with it.
const heartbeatPrefix = "\x00hb:"

// Pauses between two subscription attempts after a failure.
const (
	resubscribeMin = 50 * time.Millisecond
	resubscribeMax = 2 * time.Second
)

// redisSub is a Redis store's one subscription to its done channel,
// started by the first Watch or Invalidations and ended by Close, with the
// heartbeat that proves it still hears: every HeartbeatEvery the store
// publishes a numbered heartbeat of its own on the channel and expects to
// have heard the previous one by then.
type redisSub struct {
	mu      sync.Mutex
	started bool
	closed  bool
	cancel  context.CancelFunc
	ps      *redis.PubSub
	done    chan struct{} // closed when the subscription's goroutines return
	ready   chan struct{} // closed at the first confirmed subscription

	id         string        // names this store's heartbeats
	heard      atomic.Uint64 // the highest own heartbeat heard
	subscribed atomic.Bool   // a subscription is confirmed on the current connection
}

// Watch wakes on Complete, Put and Delete of the customer by any store
// sharing this Redis and prefix; see Store.Watch. The first Watch
// starts the store's subscription to DoneChannel (one connection for all
// watches, established again after a failure; messages published
// meanwhile are lost, which is why callers also poll). After Close, Watch
// returns channels that never fire.
func (s *Redis) Watch(customerID string) (<-chan struct{}, func()) {
	s.startSubscription()
	return s.hub.add(customerID)
}

// Invalidations registers l for every change of a record on any replica
// sharing this Redis and prefix; see Invalidations. It starts the
// subscription if no Watch has. l hears Reset(true) at each confirmed
// (re)subscription and when a heartbeat is heard after a silence, and
// Reset(false) when the subscription fails, a heartbeat is not heard back
// within HeartbeatEvery of the next, or the store closes.
func (s *Redis) Invalidations(l InvalidationListener) func() {
	stop := s.inv.add(l)
	s.startSubscription()
	return stop
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
	var b [8]byte
	_, _ = rand.Read(b[:])
	s.sub.id = hex.EncodeToString(b[:])
	ctx, cancel := context.WithCancel(context.Background())
	s.sub.cancel = cancel
	s.sub.done = make(chan struct{})
	go s.receive(ctx, s.sub.ready, s.sub.done)
	return s.sub.ready
}

// receive runs the subscription and its heartbeat until Close: it
// subscribes, fans each published customer id out to that customer's
// watchers and to the invalidation listeners, and on any failure tells
// the listeners, drops the connection and subscribes again (pausing
// between failed attempts).
func (s *Redis) receive(ctx context.Context, ready, done chan struct{}) {
	defer close(done)
	var hb sync.WaitGroup
	hb.Go(func() { s.heartbeat(ctx) })
	defer hb.Wait()
	var once sync.Once
	pause := resubscribeMin
	for ctx.Err() == nil {
		// Subscribe dials (bounded by the client's dial timeout, or
		// Close); a failure shows in the first receive.
		ps := s.client.Subscribe(ctx, s.DoneChannel())
		s.sub.mu.Lock()
		if s.sub.closed {
			s.sub.mu.Unlock()
			_ = ps.Close()
			return
		}
		s.sub.ps = ps
		s.sub.mu.Unlock()
		confirmed := s.listen(ctx, ps, func() { once.Do(func() { close(ready) }) })
		s.sub.subscribed.Store(false)
		s.inv.reset(false)
		s.sub.mu.Lock()
		if s.sub.ps == ps {
			s.sub.ps = nil
		}
		s.sub.mu.Unlock()
		_ = ps.Close()
		if confirmed {
			pause = resubscribeMin
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		pause = min(2*pause, resubscribeMax)
	}
}

// listen reads ps until it fails, or hears nothing (not even its own
// heartbeats) for three heartbeat periods. It reports whether the
// subscription had been confirmed.
func (s *Redis) listen(ctx context.Context, ps *redis.PubSub, ready func()) (confirmed bool) {
	silence := max(3*s.heartbeatEvery, time.Second)
	own := heartbeatPrefix + s.sub.id + ":"
	for {
		msg, err := ps.ReceiveTimeout(ctx, silence)
		if err != nil {
			return confirmed
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				// Whatever was published before this went unheard.
				confirmed = true
				s.sub.subscribed.Store(true)
				s.inv.reset(true)
				ready()
			}
		case *redis.Message:
			if n, ok := strings.CutPrefix(m.Payload, own); ok {
				if k, err := strconv.ParseUint(n, 10, 64); err == nil && k > s.sub.heard.Load() {
					s.sub.heard.Store(k)
				}
				if !s.inv.isHearing() && s.sub.subscribed.Load() {
					s.inv.reset(true) // heard again after a silence
				}
				continue
			}
			if strings.HasPrefix(m.Payload, heartbeatPrefix) {
				continue // another replica's heartbeat
			}
			s.hub.notify(m.Payload)
			s.inv.heard(m.Payload)
		}
	}
}

// heartbeat publishes a numbered heartbeat every heartbeatEvery and, each
// time, checks that the previous one was heard; else (or when the publish
// fails) the listeners hear Reset(false) until one is heard again.
func (s *Redis) heartbeat(ctx context.Context) {
	t := time.NewTicker(s.heartbeatEvery)
	defer t.Stop()
	var sent uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if sent > 0 && s.sub.heard.Load() < sent {
			s.inv.reset(false)
		}
		sent++
		pctx, cancel := context.WithTimeout(ctx, s.heartbeatEvery)
		err := s.client.Publish(pctx, s.DoneChannel(), heartbeatPrefix+s.sub.id+":"+strconv.FormatUint(sent, 10)).Err()
		cancel()
		if err != nil && ctx.Err() == nil {
			s.inv.reset(false)
		}
	}
}

// Close stops the subscription behind Watch and Invalidations (whose
// listeners hear Reset(false)) and waits for its goroutines. The store
// stays usable otherwise; the client is the caller's to close.
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
	s.inv.reset(false)
	return err
}
