package events

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/tokencache"
)

var testSecret = Secret("test-events-secret")

// store is a tokencache store with an outbox.
type store interface {
	tokencache.Store
	Outbox
}

// receiver is a test receiver: it checks every signature, records the
// events it acknowledged (and every attempt), and fails while fail says so.
type receiver struct {
	t   *testing.T
	srv *httptest.Server

	mu       sync.Mutex
	attempts []string // event ids, every POST
	acked    []map[string]any
	fail     func(n int) int // n: attempts so far (1 for the first); the status to answer
	hold     chan struct{}   // when set, each POST waits for it (or the client's hang-up)
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{t: t}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	if err := Verify(testSecret, req.Header.Get(SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
		r.t.Errorf("receiver: %v", err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if req.Header.Get("Content-Type") != "application/json" {
		r.t.Errorf("receiver: Content-Type %q", req.Header.Get("Content-Type"))
	}
	var ev map[string]any
	if err := json.Unmarshal(body, &ev); err != nil || len(ev) != 5 {
		r.t.Errorf("receiver: body %s: want the five fields", body)
	}
	id, _ := ev["id"].(string)
	r.mu.Lock()
	r.attempts = append(r.attempts, id)
	n, fail, hold := len(r.attempts), r.fail, r.hold
	r.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-req.Context().Done():
			return
		}
	}
	if fail != nil {
		if code := fail(n); code != 0 {
			w.WriteHeader(code)
			return
		}
	}
	r.mu.Lock()
	r.acked = append(r.acked, ev)
	r.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) events() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.acked...)
}

// waitFor polls until the receiver acknowledged n events.
func (r *receiver) waitFor(t *testing.T, n int, within time.Duration) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		evs := r.events()
		if len(evs) >= n {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("receiver got %d events, want %d", len(evs), n)
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
}

func memStore() store {
	return tokencache.NewMemory(tokencache.MemoryConfig{Buckets: 16,
		Events: tokencache.EventsConfig{Enabled: true, ExpiryHorizon: time.Hour}})
}

var prefixSeq struct {
	sync.Mutex
	n int
}

func redisStore(t *testing.T, client redis.UniversalClient, buckets int) *tokencache.Redis {
	t.Helper()
	kr, err := tokencache.ParseKeyring("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	if err != nil {
		t.Fatal(err)
	}
	prefixSeq.Lock()
	prefixSeq.n++
	prefix := fmt.Sprintf("t%d:", prefixSeq.n)
	prefixSeq.Unlock()
	s, err := tokencache.NewRedis(tokencache.RedisConfig{Client: client, Prefix: prefix, Keyring: kr, Buckets: buckets,
		Events: tokencache.EventsConfig{Enabled: true, ExpiryHorizon: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fastConfig is a deliverer for tests: short waits everywhere.
func fastConfig(s Outbox, url string) Config {
	return Config{URL: url, Secret: testSecret, Outbox: s, ExpiryHorizon: time.Hour, Lease: 2 * time.Second,
		Timeout: 5 * time.Second, PollEvery: 20 * time.Millisecond, SweepPeriod: time.Second,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond}
}

func runDeliverer(t *testing.T, cfg Config) (*Deliverer, context.CancelFunc) {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return d, stop
}

func record(id string, rte time.Time) *tokencache.Record {
	return &tokencache.Record{CustomerID: id, AccessToken: "at-" + tokencache.Secret(id), AccessTokenExpiry: time.Now().Add(time.Hour),
		RefreshToken: "rt-" + tokencache.Secret(id), RefreshTokenExpiry: rte, ExchangePath: "/v1/authorizations/applyToken"}
}

// reject makes the customer reauthorization_required with code.
func reject(t *testing.T, s store, id, code string) {
	t.Helper()
	ctx := t.Context()
	rec, err := s.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tokencache.Claim(ctx, s, id, rec.Generation, "test", time.Minute, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokencache.Complete(ctx, s, l, tokencache.Outcome{Kind: tokencache.Rejected, Code: code}); err != nil {
		t.Fatal(err)
	}
}

func stores(t *testing.T) map[string]func(t *testing.T) store {
	r := testenv.StartRedis(t)
	client := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { client.Close() })
	return map[string]func(t *testing.T) store{
		"memory": func(*testing.T) store { return memStore() },
		"redis":  func(t *testing.T) store { return redisStore(t, client, 16) },
	}
}

func TestDeliverInOrder(t *testing.T) {
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			s := newStore(t)
			rcv := newReceiver(t)
			reg := prometheus.NewRegistry()
			cfg := fastConfig(s, rcv.srv.URL)
			cfg.Metrics = NewMetrics(reg)
			runDeliverer(t, cfg)
			ctx := t.Context()
			// Three customers, each rejected, re-exchanged, and the first
			// also announced as expiring.
			for i, id := range []string{"a", "b", "c"} {
				rte := time.Now().Add(30 * 24 * time.Hour)
				if i == 0 {
					rte = time.Now().Add(30 * time.Minute) // within the horizon
				}
				if _, err := tokencache.Put(ctx, s, record(id, time.Now().Add(30*24*time.Hour))); err != nil {
					t.Fatal(err)
				}
				reject(t, s, id, "EXPIRED_REFRESH_TOKEN")
				if _, err := tokencache.Put(ctx, s, record(id, rte)); err != nil {
					t.Fatal(err)
				}
			}
			evs := rcv.waitFor(t, 7, 20*time.Second)
			byCustomer := map[string][]string{}
			ids := map[string]bool{}
			for _, ev := range evs {
				c := ev["customerId"].(string)
				byCustomer[c] = append(byCustomer[c], ev["type"].(string))
				ids[ev["id"].(string)] = true
				if ev["type"] == "reauthorization_required" && ev["reason"] != "EXPIRED_REFRESH_TOKEN" {
					t.Errorf("event %v: reason", ev)
				}
				if ev["type"] != "reauthorization_required" && ev["reason"] != nil {
					t.Errorf("event %v: reason not null", ev)
				}
				if _, err := time.Parse(time.RFC3339, ev["time"].(string)); err != nil {
					t.Errorf("event %v: time: %v", ev, err)
				}
			}
			want := map[string]string{"a": "reauthorization_required reauthorized refresh_token_expiring",
				"b": "reauthorization_required reauthorized", "c": "reauthorization_required reauthorized"}
			for c, w := range want {
				if got := strings.Join(byCustomer[c], " "); got != w {
					t.Errorf("customer %s: events %q, want %q", c, got, w)
				}
			}
			if len(ids) != 7 {
				t.Errorf("%d distinct ids in 7 events", len(ids))
			}
			// Nothing more comes, and nothing is left.
			waitPolls(t, s)
			if n := len(rcv.events()); n != 7 {
				t.Errorf("receiver got %d events, want 7", n)
			}
			if got := testutil.ToFloat64(cfg.Metrics.total.WithLabelValues("reauthorized", "delivered")); got != 3 {
				t.Errorf("tokenproxy_events_total{reauthorized,delivered} = %v, want 3", got)
			}
		})
	}
}

// waitPolls waits until every outbox of s is empty and no bucket is
// hinted as due (the deliverer has done all there is).
func waitPolls(t *testing.T, s store) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	buckets := make([]int, s.Buckets())
	for i := range buckets {
		buckets[i] = i
	}
	for {
		probes, err := s.EventsProbe(t.Context(), buckets)
		if err != nil {
			t.Fatal(err)
		}
		due, _ := s.EventsDue(t.Context(), time.Now(), 100)
		pending := 0
		for _, p := range probes {
			pending += p.Pending
		}
		if pending == 0 && len(due) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %d events pending, %d buckets hinted", pending, len(due))
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
}

func TestRetryUntilAcknowledged(t *testing.T) {
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			s := newStore(t)
			rcv := newReceiver(t)
			rcv.fail = func(n int) int {
				if n <= 5 {
					return http.StatusServiceUnavailable
				}
				return 0
			}
			reg := prometheus.NewRegistry()
			cfg := fastConfig(s, rcv.srv.URL)
			cfg.Metrics = NewMetrics(reg)
			runDeliverer(t, cfg)
			if _, err := tokencache.Put(t.Context(), s, record("x", time.Time{})); err != nil {
				t.Fatal(err)
			}
			reject(t, s, "x", "USED_REFRESH_TOKEN")
			evs := rcv.waitFor(t, 1, 20*time.Second)
			waitPolls(t, s)
			rcv.mu.Lock()
			attempts := append([]string(nil), rcv.attempts...)
			rcv.mu.Unlock()
			if len(evs) != 1 || len(attempts) != 6 {
				t.Fatalf("%d events acknowledged after %d attempts, want 1 after 6", len(evs), len(attempts))
			}
			for _, id := range attempts {
				if id != evs[0]["id"] {
					t.Fatalf("attempt with id %s, want the same id %s every time", id, evs[0]["id"])
				}
			}
			if got := testutil.ToFloat64(cfg.Metrics.total.WithLabelValues("reauthorization_required", "failed")); got != 5 {
				t.Errorf("failed = %v, want 5", got)
			}
		})
	}
}

func TestDropAfterMaxAge(t *testing.T) {
	s := memStore()
	rcv := newReceiver(t)
	rcv.fail = func(int) int { return http.StatusInternalServerError }
	cfg := fastConfig(s, rcv.srv.URL)
	cfg.Metrics = NewMetrics(prometheus.NewRegistry())
	cfg.MaxAge = time.Nanosecond // every event is old at its first failure
	runDeliverer(t, cfg)
	tokencache.Put(t.Context(), s, record("x", time.Time{}))
	reject(t, s, "x", "INVALID_REFRESH_TOKEN")
	tokencache.Put(t.Context(), s, record("x", time.Time{}))
	waitPolls(t, s)
	rcv.mu.Lock()
	n := len(rcv.attempts)
	rcv.mu.Unlock()
	if n != 2 {
		t.Errorf("%d attempts, want one per event", n)
	}
	if got := testutil.ToFloat64(cfg.Metrics.total.WithLabelValues("reauthorization_required", "dropped")) +
		testutil.ToFloat64(cfg.Metrics.total.WithLabelValues("reauthorized", "dropped")); got != 2 {
		t.Errorf("dropped = %v, want 2", got)
	}
}

// Two deliverers sharing one Redis: every event is delivered once, in
// order per customer.
func TestTwoDeliverers(t *testing.T) {
	r := testenv.StartRedis(t)
	client := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { client.Close() })
	s := redisStore(t, client, 8)
	rcv := newReceiver(t)
	for range 2 {
		runDeliverer(t, fastConfig(s, rcv.srv.URL))
	}
	const customers = 40
	for i := range customers {
		id := fmt.Sprintf("c%02d", i)
		tokencache.Put(t.Context(), s, record(id, time.Time{}))
		reject(t, s, id, "EXPIRED_REFRESH_TOKEN")
		tokencache.Put(t.Context(), s, record(id, time.Time{}))
	}
	evs := rcv.waitFor(t, 2*customers, 30*time.Second)
	waitPolls(t, s)
	evs = rcv.events()
	if len(evs) != 2*customers {
		t.Fatalf("%d events, want %d", len(evs), 2*customers)
	}
	seen := map[string]bool{}
	order := map[string]string{}
	for _, ev := range evs {
		id := ev["id"].(string)
		if seen[id] {
			t.Fatalf("event %s delivered twice", id)
		}
		seen[id] = true
		order[ev["customerId"].(string)] += ev["type"].(string) + " "
	}
	for c, o := range order {
		if o != "reauthorization_required reauthorized " {
			t.Errorf("customer %s: order %q", c, o)
		}
	}
}

// A hint that was lost (the process died between the write and the hint)
// is found by the sweep.
func TestSweepFindsLostHint(t *testing.T) {
	r := testenv.StartRedis(t)
	client := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { client.Close() })
	s := redisStore(t, client, 64)
	tokencache.Put(t.Context(), s, record("x", time.Time{}))
	reject(t, s, "x", "INVALID_REFRESH_TOKEN")
	if err := client.Del(t.Context(), s.EventsHintKey()).Err(); err != nil {
		t.Fatal(err)
	}
	rcv := newReceiver(t)
	cfg := fastConfig(s, rcv.srv.URL)
	cfg.SweepPeriod = 500 * time.Millisecond
	runDeliverer(t, cfg)
	rcv.waitFor(t, 1, 20*time.Second)
}

// The idle cost: with 1,024 buckets and the default poll and sweep, at
// most 2 Redis commands per second of polling (counted with INFO
// commandstats on a server of its own).
func TestIdleCommands(t *testing.T) {
	r := testenv.StartRedis(t)
	client := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { client.Close() })
	s := redisStore(t, client, tokencache.DefaultBuckets)
	d, err := New(Config{URL: "http://127.0.0.1:1/", Secret: testSecret, Outbox: s})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.ConfigResetStat(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	const polls = 200
	for range polls {
		d.poll(t.Context())
	}
	info, err := client.Info(t.Context(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, line := range strings.Split(info, "\n") {
		if !strings.HasPrefix(line, "cmdstat_") || strings.HasPrefix(line, "cmdstat_config") || strings.HasPrefix(line, "cmdstat_info") {
			continue
		}
		_, rest, _ := strings.Cut(line, "calls=")
		n, _ := strconv.Atoi(strings.Split(rest, ",")[0])
		total += n
	}
	perSecond := float64(total) / (polls * d.cfg.PollEvery.Seconds())
	t.Logf("%d commands in %d polls: %.2f per second of polling", total, polls, perSecond)
	if perSecond > 2 || total < polls {
		t.Fatalf("%.2f commands per second idle, want at most 2 (and one hint read per poll)", perSecond)
	}
}

func TestSignVerify(t *testing.T) {
	body := []byte(`{"id":"x"}`)
	now := time.Unix(1700000000, 0)
	sig := Sign(testSecret, now, body)
	mac := hmac.New(sha256.New, testSecret)
	mac.Write([]byte("1700000000." + string(body)))
	if want := "t=1700000000,v1=" + hex.EncodeToString(mac.Sum(nil)); sig != want {
		t.Fatalf("Sign = %s, want %s", sig, want)
	}
	for _, tc := range []struct {
		name string
		sig  string
		body []byte
		at   time.Time
		ok   bool
	}{
		{"valid", sig, body, now, true},
		{"body changed", sig, []byte(`{"id":"y"}`), now, false},
		{"too old", sig, body, now.Add(6 * time.Minute), false},
		{"from the future", sig, body, now.Add(-6 * time.Minute), false},
		{"other secret", Sign(Secret("other"), now, body), body, now, false},
		{"no v1", "t=1700000000", body, now, false},
		{"garbage", "nonsense", body, now, false},
	} {
		err := Verify(testSecret, tc.sig, tc.body, tc.at, 5*time.Minute)
		if (err == nil) != tc.ok {
			t.Errorf("%s: Verify = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
	if s := fmt.Sprintf("%v %s %+v %#v", testSecret, testSecret, testSecret, testSecret); strings.Contains(s, "test-events") {
		t.Fatalf("secret printed: %s", s)
	}
}
