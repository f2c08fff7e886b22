// Package events delivers the re-authorization events that the token
// store records in each bucket's outbox (tokencache/events.go) to
// TOKENPROXY_EVENTS_URL: a signed POST per event, head of a bucket first,
// removed only once acknowledged (any 2xx), retried with capped
// exponential backoff and jitter for at least MaxAge, by one replica per
// bucket at a time (a delivery lease in the bucket's slot, renewed while
// delivering, whose fence every removal checks).
//
// Finding work is cheap: a hint of buckets with work (written by the
// store after each write that made some) is read once per PollEvery, and
// a slow sweep probes every bucket once per SweepPeriod, a few buckets per
// poll, to find what a lost hint hides. Idle, with the defaults and 1,024
// buckets, that is under 2 Redis commands per second per replica.
package events

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// Outbox is what the deliverer needs of a store (both tokencache stores).
type Outbox = tokencache.Outbox

// Secret is the HMAC key of the signature. It cannot print itself.
type Secret []byte

func (Secret) String() string               { return "[redacted]" }
func (Secret) GoString() string             { return "[redacted]" }
func (Secret) LogValue() slog.Value         { return slog.StringValue("[redacted]") }
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"[redacted]"`), nil }
func (Secret) Format(f fmt.State, _ rune)   { _, _ = io.WriteString(f, "[redacted]") }

// SignatureHeader is the header carrying the signature.
const SignatureHeader = "Tokenproxy-Signature"

// Sign returns the Tokenproxy-Signature value of body sent at t:
// "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">".
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte("."))
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// Config configures a Deliverer. Zero durations take the defaults named.
type Config struct {
	// URL receives the events (required).
	URL string
	// Secret signs them (required).
	Secret Secret
	Outbox Outbox
	// ExpiryHorizon: refresh_token_expiring is due this long before the
	// refresh token's expiry (default 72h).
	ExpiryHorizon time.Duration
	// Lease is the delivery lease of a bucket, renewed every third of it
	// while delivering (default 5s).
	Lease time.Duration
	// Timeout bounds one POST (default 10s).
	Timeout time.Duration
	// PollEvery is how often the hint is read (default 2s); SweepPeriod
	// how long one sweep of every bucket takes (default 25m).
	PollEvery   time.Duration
	SweepPeriod time.Duration
	// Workers bounds the buckets delivered at once (default 8).
	Workers int
	// MinBackoff and MaxBackoff bound the wait after a failed delivery
	// (defaults 1s and 5m); an event older than MaxAge (default 24h) is
	// dropped after its next failure.
	MinBackoff, MaxBackoff time.Duration
	MaxAge                 time.Duration
	// HTTP sends the POSTs (default: a client that follows no redirects).
	HTTP    *http.Client
	Metrics *Metrics
	Logger  *slog.Logger
	// Now is the local clock (default time.Now).
	Now func() time.Time
}

// Deliverer delivers the events of every bucket; see the package doc.
type Deliverer struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	busy     map[int]bool
	retry    map[int]retryState // buckets whose head failed: not before
	pending  map[int]int        // last seen outbox lengths, for the gauge
	sweepPos float64
	wg       sync.WaitGroup
}

type retryState struct {
	id       string
	attempts int
	next     time.Time
}

// New checks cfg and returns a Deliverer; Run starts it.
func New(cfg Config) (*Deliverer, error) {
	if cfg.URL == "" || len(cfg.Secret) == 0 || cfg.Outbox == nil {
		return nil, errors.New("events: a URL, a secret and an outbox are required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.ExpiryHorizon, 72*time.Hour)
	def(&cfg.Lease, 5*time.Second)
	def(&cfg.Timeout, 10*time.Second)
	def(&cfg.PollEvery, 2*time.Second)
	def(&cfg.SweepPeriod, 25*time.Minute)
	def(&cfg.MinBackoff, time.Second)
	def(&cfg.MaxBackoff, 5*time.Minute)
	def(&cfg.MaxAge, 24*time.Hour)
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Deliverer{cfg: cfg, log: cfg.Logger, busy: map[int]bool{}, retry: map[int]retryState{}, pending: map[int]int{}}, nil
}

// storeTimeout bounds one store call of the deliverer.
const storeTimeout = 5 * time.Second

// hintBatch is the most hinted buckets read per poll.
const hintBatch = 64

// moveBatch is the most expiring customers moved per script, and
// moveRounds the most scripts per bucket visit.
const (
	moveBatch  = 64
	moveRounds = 16
)

// Run delivers until ctx ends, then waits for the deliveries under way
// (their POSTs are cancelled).
func (d *Deliverer) Run(ctx context.Context) {
	t := time.NewTicker(d.cfg.PollEvery)
	defer t.Stop()
	defer d.wg.Wait()
	for {
		d.poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// poll reads the hint and sweeps the next few buckets, and starts a
// worker for each bucket with work, as far as workers are free.
func (d *Deliverer) poll(ctx context.Context) {
	now := d.cfg.Now()
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	hints, err := d.cfg.Outbox.EventsDue(sctx, now, hintBatch)
	if err != nil {
		d.log.Debug("events: reading the hint failed", "err", err)
	}
	for _, h := range hints {
		d.start(ctx, h.Bucket, h.At)
	}
	// The sweep: buckets*PollEvery/SweepPeriod buckets per poll.
	n := d.cfg.Outbox.Buckets()
	d.mu.Lock()
	from := int(d.sweepPos)
	d.sweepPos += float64(n) * float64(d.cfg.PollEvery) / float64(d.cfg.SweepPeriod)
	to := int(d.sweepPos)
	if d.sweepPos >= float64(n) {
		d.sweepPos -= float64(n)
	}
	d.mu.Unlock()
	var buckets []int
	for i := from; i < to; i++ {
		buckets = append(buckets, i%n)
	}
	if len(buckets) == 0 {
		return
	}
	probes, err := d.cfg.Outbox.EventsProbe(sctx, buckets)
	if err != nil {
		d.log.Debug("events: sweep failed", "err", err)
		return
	}
	for _, p := range probes {
		d.setPending(p.Bucket, p.Pending)
		due := !p.EarliestExpiry.IsZero() && !p.EarliestExpiry.Add(-d.cfg.ExpiryHorizon).After(now)
		switch {
		case p.Pending > 0 || due:
			d.start(ctx, p.Bucket, time.Time{})
		case !p.EarliestExpiry.IsZero() && p.EarliestExpiry.Add(-d.cfg.ExpiryHorizon).Before(now.Add(2*d.cfg.SweepPeriod)):
			// Due before the sweep comes back: make sure the hint says so.
			_ = d.cfg.Outbox.EventsHint(sctx, p.Bucket, p.EarliestExpiry.Add(-d.cfg.ExpiryHorizon))
		}
	}
}

// start runs a worker for the bucket unless one runs, it backs off, or
// every worker is busy (the hint keeps it for a later poll).
func (d *Deliverer) start(ctx context.Context, bucket int, hintAt time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.busy[bucket] || len(d.busy) >= d.cfg.Workers || d.cfg.Now().Before(d.retry[bucket].next) {
		return
	}
	d.busy[bucket] = true
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer func() {
			d.mu.Lock()
			delete(d.busy, bucket)
			d.mu.Unlock()
		}()
		d.deliverBucket(ctx, bucket, hintAt)
	}()
}

// deliverBucket takes the bucket's lease and delivers its outbox, head
// first, until it is empty or a delivery fails.
func (d *Deliverer) deliverBucket(ctx context.Context, bucket int, hintAt time.Time) {
	ob := d.cfg.Outbox
	lctx, cancel := context.WithTimeout(ctx, storeTimeout)
	fence, err := ob.EventsLease(lctx, bucket, d.cfg.Lease)
	cancel()
	if err != nil {
		if !errors.Is(err, tokencache.ErrEventsLease) {
			d.log.Debug("events: taking a bucket's lease failed", "bucket", bucket, "err", err)
		}
		return // another replica delivers it, or the store is down: the hint stays
	}
	wctx, stop := context.WithCancel(ctx)
	renewDone := make(chan struct{})
	go func() {
		defer close(renewDone)
		d.renew(wctx, stop, bucket, fence)
	}()
	defer func() {
		stop()
		<-renewDone
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
		_ = ob.EventsRelease(rctx, bucket, fence)
		cancel()
	}()

	for range moveRounds {
		sctx, cancel := context.WithTimeout(wctx, storeTimeout)
		n, err := ob.EventsMoveExpiring(sctx, bucket, d.cfg.ExpiryHorizon, moveBatch)
		cancel()
		if err != nil {
			d.log.Debug("events: moving expiring customers failed", "bucket", bucket, "err", err)
			return
		}
		if n < moveBatch {
			break
		}
	}
	for wctx.Err() == nil {
		sctx, cancel := context.WithTimeout(wctx, storeTimeout)
		ev, err := ob.EventsHead(sctx, bucket)
		cancel()
		if errors.Is(err, tokencache.ErrCorrupt) && ev != nil {
			d.log.Warn("events: dropped a malformed outbox element", "bucket", bucket)
			d.cfg.Metrics.total.WithLabelValues("unknown", "dropped").Inc()
			if !d.ack(wctx, bucket, fence, ev) {
				return
			}
			continue
		}
		if err != nil {
			d.log.Debug("events: reading an outbox failed", "bucket", bucket, "err", err)
			return
		}
		if ev == nil {
			d.finish(wctx, bucket, hintAt)
			return
		}
		if !d.deliver(wctx, bucket, fence, ev) {
			return
		}
	}
}

// renew keeps the lease while the bucket is delivered; when a renewal
// fails the delivery is cancelled (another replica may take over).
func (d *Deliverer) renew(ctx context.Context, cancel context.CancelFunc, bucket int, fence string) {
	t := time.NewTicker(d.cfg.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, c := context.WithTimeout(ctx, d.cfg.Lease/3)
		err := d.cfg.Outbox.EventsRenew(rctx, bucket, fence, d.cfg.Lease)
		c()
		if err != nil {
			if ctx.Err() == nil {
				d.log.Warn("events: lost a bucket's delivery lease; stopping its delivery", "bucket", bucket, "err", err)
			}
			cancel()
			return
		}
	}
}

// deliver POSTs one event and acknowledges it when the receiver did; it
// reports whether the bucket's next event may follow now.
func (d *Deliverer) deliver(ctx context.Context, bucket int, fence string, ev *tokencache.Event) bool {
	typ := string(ev.Type)
	d.log.Debug("delivering event", "event_id", ev.ID, "type", typ, "bucket", bucket)
	err := d.post(ctx, ev)
	if err == nil {
		d.cfg.Metrics.total.WithLabelValues(typ, "delivered").Inc()
		d.mu.Lock()
		delete(d.retry, bucket)
		d.mu.Unlock()
		d.log.Info("event delivered", "event_id", ev.ID, "type", typ, "customer", ev.CustomerID)
		return d.ack(ctx, bucket, fence, ev)
	}
	if ctx.Err() != nil {
		return false // stopping, or the lease was lost: not the receiver's failure
	}
	d.cfg.Metrics.total.WithLabelValues(typ, "failed").Inc()
	now := d.cfg.Now()
	if now.Sub(ev.Time) >= d.cfg.MaxAge {
		d.cfg.Metrics.total.WithLabelValues(typ, "dropped").Inc()
		d.log.Warn("event dropped: not acknowledged within the retry period", "event_id", ev.ID, "type", typ,
			"customer", ev.CustomerID, "age", now.Sub(ev.Time).Round(time.Second), "err", err)
		return d.ack(ctx, bucket, fence, ev)
	}
	d.mu.Lock()
	rs := d.retry[bucket]
	if rs.id != ev.ID {
		rs = retryState{id: ev.ID}
	}
	rs.attempts++
	wait := backoff(rs.attempts, d.cfg.MinBackoff, d.cfg.MaxBackoff)
	rs.next = now.Add(wait)
	d.retry[bucket] = rs
	d.mu.Unlock()
	d.log.Warn("event delivery failed; retrying later", "event_id", ev.ID, "type", typ, "customer", ev.CustomerID,
		"attempt", rs.attempts, "retry_in", wait.Round(time.Millisecond), "err", err)
	// Tell the other replicas too: the hint names the bucket again only
	// after the backoff (a new event written meanwhile names it sooner,
	// harmlessly: it waits behind the head).
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	_ = d.cfg.Outbox.EventsDefer(sctx, bucket, rs.next)
	return false
}

// ack removes a delivered (or dropped) event; it reports whether the
// lease still holds.
func (d *Deliverer) ack(ctx context.Context, bucket int, fence string, ev *tokencache.Event) bool {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	left, err := d.cfg.Outbox.EventsAck(sctx, bucket, fence, ev)
	if err != nil {
		// Not removed: it will be delivered again, with the same id.
		d.log.Warn("events: an acknowledged event could not be removed; it will be sent again", "event_id", ev.ID, "bucket", bucket, "err", err)
		return false
	}
	d.setPending(bucket, left)
	return ctx.Err() == nil
}

// finish updates the hint of a bucket whose outbox is empty: the next
// refresh token expiry to announce, or nothing; then looks once more, so
// that an event written meanwhile is not left without a hint.
func (d *Deliverer) finish(ctx context.Context, bucket int, hintAt time.Time) {
	ob := d.cfg.Outbox
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	next := func() (time.Time, bool) {
		p, err := ob.EventsProbe(sctx, []int{bucket})
		if err != nil || len(p) != 1 {
			return time.Time{}, false
		}
		d.setPending(bucket, p[0].Pending)
		if p[0].Pending > 0 {
			return d.cfg.Now(), true
		}
		if p[0].EarliestExpiry.IsZero() {
			return time.Time{}, true
		}
		return p[0].EarliestExpiry.Add(-d.cfg.ExpiryHorizon), true
	}
	at, ok := next()
	if !ok {
		return
	}
	if !hintAt.IsZero() {
		_ = ob.EventsRehint(sctx, bucket, hintAt, at)
	}
	if again, ok := next(); ok && !again.IsZero() {
		_ = ob.EventsHint(sctx, bucket, again)
	}
}

// post sends one event.
func (d *Deliverer) post(ctx context.Context, ev *tokencache.Event) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("events request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tokenproxy-events")
	req.Header.Set(SignatureHeader, Sign(d.cfg.Secret, d.cfg.Now(), body))
	resp, err := d.cfg.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("post event: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("post event: receiver answered %d", resp.StatusCode)
	}
	return nil
}

func (d *Deliverer) setPending(bucket, n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n == 0 {
		delete(d.pending, bucket)
	} else {
		d.pending[bucket] = n
	}
	sum := 0
	for _, v := range d.pending {
		sum += v
	}
	d.cfg.Metrics.pending.Set(float64(sum))
}

// backoff is the wait before attempt+1: min·2^(attempt-1), capped at max,
// with jitter (between half of it and all of it).
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	d := hi
	if attempt < 30 {
		d = min(lo<<(attempt-1), hi)
	}
	return d/2 + rand.N(d/2+1)
}

// Verify checks a Tokenproxy-Signature value against body as a receiver
// does: a v1 HMAC that matches (compared in constant time), and a
// timestamp within tolerance of now, so that a recorded event cannot be
// replayed later.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, b)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return errors.New("events: malformed signature header")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return errors.New("events: signature timestamp outside the tolerance")
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte("."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return errors.New("events: signature does not match")
}
