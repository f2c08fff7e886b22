package refresher

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// fakeWallet answers refreshes with a new pair, or with err when set. A
// non-nil gate blocks each call until closed. Pure logic tests only: the
// strict wallet is exercised by the integration tests.
type fakeWallet struct {
	calls atomic.Int64
	gate  chan struct{}
	mu    sync.Mutex
	err   error
	ttl   time.Duration
	now   func() time.Time
}

func (f *fakeWallet) ApplyToken(ctx context.Context, path string, body []byte, _ http.Header) (*wallet.TokenResponse, *wallet.Response, error) {
	n := f.calls.Add(1)
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return nil, nil, wallet.ErrTimeout
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, nil, f.err
	}
	return &wallet.TokenResponse{
		CustomerID:        "c1",
		AccessToken:       wallet.Secret("access-" + string(rune('0'+n))),
		AccessTokenExpiry: f.now().Add(f.ttl),
		RefreshToken:      wallet.Secret("refresh-" + string(rune('0'+n))),
	}, nil, nil
}

func (f *fakeWallet) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type fixture struct {
	r       *Refresher
	store   *tokencache.Memory
	wallet  *fakeWallet
	clock   *clock
	metrics *Metrics
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	f := &fixture{clock: c, wallet: &fakeWallet{ttl: time.Hour, now: c.now}}
	f.store = tokencache.NewMemory(tokencache.MemoryConfig{Now: c.now})
	f.metrics = NewMetrics(prometheus.NewRegistry())
	f.r = f.replica(t, "r1", f.metrics)
	return f
}

// replica is another Refresher (a replica) on the fixture's store and wallet.
func (f *fixture) replica(t *testing.T, owner string, m *Metrics) *Refresher {
	r := New(Config{
		Store: f.store, Wallet: f.wallet, Metrics: m, Now: f.clock.now, Owner: owner,
		RefreshBefore: 5 * time.Minute, RefreshRate: 1000, UpstreamTimeout: 5 * time.Second,
		Lease: 5 * time.Second, CacheMaxEntries: 10,
	})
	t.Cleanup(r.Close)
	return r
}

func (f *fixture) install(t *testing.T, ttl time.Duration, refreshExpiry time.Time) {
	t.Helper()
	err := f.r.Install(context.Background(), Exchange{
		Path: "/v1/authorizations/applyToken",
		Pair: &wallet.TokenResponse{CustomerID: "c1", AccessToken: "access-0", AccessTokenExpiry: f.clock.now().Add(ttl),
			RefreshToken: "refresh-0", RefreshTokenExpiry: refreshExpiry},
	})
	if err != nil {
		t.Fatal(err)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestTokenHitAndMiss(t *testing.T) {
	f := newFixture(t)
	if _, err := f.r.Token(ctx(t), "c1"); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("unknown customer: %v", err)
	}
	f.install(t, time.Hour, time.Time{})
	tok, err := f.r.Token(ctx(t), "c1")
	if err != nil || tok.Value.Reveal() != "access-0" {
		t.Fatalf("token %v, err %v", tok, err)
	}
	if f.wallet.calls.Load() != 0 {
		t.Fatal("a valid token caused a wallet call")
	}
	if got := testutil.ToFloat64(f.metrics.lookups.WithLabelValues(lookupHit)); got != 1 {
		t.Fatalf("hits %v", got)
	}
}

func TestExpiredTokenRefreshedOnceForConcurrentCallers(t *testing.T) {
	f := newFixture(t)
	f.install(t, time.Minute, time.Time{})
	f.clock.add(2 * time.Minute)
	f.wallet.gate = make(chan struct{})
	const callers = 50
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := f.r.Token(ctx(t), "c1")
			if err == nil && tok.Value.Reveal() != "access-1" {
				err = errors.New("got " + tok.Value.Reveal())
			}
			errs <- err
		}()
	}
	// Let the callers pile up on the one refresh, then let it finish.
	deadline := time.Now().Add(5 * time.Second)
	for !f.r.refreshing("c1") && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(f.wallet.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := f.wallet.calls.Load(); n != 1 {
		t.Fatalf("%d refresh calls for %d concurrent callers, want 1", n, callers)
	}
	rec, _ := f.store.Get(ctx(t), "c1")
	if rec.RefreshToken.Reveal() != "refresh-1" || rec.LastRefresh.IsZero() {
		t.Fatalf("stored record not refreshed")
	}
}

func TestDueTokenServedAndRefreshedInBackground(t *testing.T) {
	f := newFixture(t)
	f.install(t, time.Hour, time.Time{})
	f.clock.add(58 * time.Minute) // due (5 min before expiry), not expired
	tok, err := f.r.Token(ctx(t), "c1")
	if err != nil || tok.Value.Reveal() != "access-0" {
		t.Fatalf("due token not served as is: %v %v", tok, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		rec, _ := f.store.Get(ctx(t), "c1")
		if rec.AccessToken.Reveal() == "access-1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("background refresh did not happen")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := f.wallet.calls.Load(); n != 1 {
		t.Fatalf("%d calls", n)
	}
}

func TestRefreshTokenRejectionEndsCustomer(t *testing.T) {
	for _, code := range []string{wallet.CodeInvalidRefreshToken, wallet.CodeExpiredRefreshToken, wallet.CodeUsedRefreshToken} {
		t.Run(code, func(t *testing.T) {
			f := newFixture(t)
			f.install(t, time.Minute, time.Time{})
			f.clock.add(2 * time.Minute)
			f.wallet.err = &wallet.Error{HTTPStatus: 200, Result: wallet.Result{ResultStatus: "F", ResultCode: code}}
			if _, err := f.r.Token(ctx(t), "c1"); !errors.Is(err, ErrReauthorizationRequired) {
				t.Fatalf("err %v", err)
			}
			st, err := f.r.Status(ctx(t), "c1")
			if err != nil || st.State != StateReauthorizationRequired || st.LastError == nil || *st.LastError != code {
				t.Fatalf("status %+v %v", st, err)
			}
			// Never presented again.
			if _, err := f.r.Token(ctx(t), "c1"); !errors.Is(err, ErrReauthorizationRequired) {
				t.Fatalf("err %v", err)
			}
			if n := f.wallet.calls.Load(); n != 1 {
				t.Fatalf("%d calls", n)
			}
			// A new exchange clears it.
			f.install(t, time.Hour, time.Time{})
			st, _ = f.r.Status(ctx(t), "c1")
			if st.State != StateValid || st.LastError != nil {
				t.Fatalf("after a new exchange: %+v", st)
			}
		})
	}
}

func TestTransientFailuresCoolDownAndNeverEndCustomer(t *testing.T) {
	for name, werr := range map[string]error{
		"U":            &wallet.Error{HTTPStatus: 200, Result: wallet.Result{ResultStatus: "U", ResultCode: wallet.CodeUnknownException}},
		"rate limit":   &wallet.Error{HTTPStatus: 200, Result: wallet.Result{ResultStatus: "F", ResultCode: wallet.CodeTrafficExceedLimit}},
		"bad sig F":    &wallet.Error{HTTPStatus: 200, Result: wallet.Result{ResultStatus: "F", ResultCode: wallet.CodeInvalidSignature}},
		"timeout":      wallet.ErrTimeout,
		"unavailable":  wallet.ErrUnavailable,
		"bad response": wallet.ErrBadSignature,
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			f.install(t, time.Minute, time.Time{})
			f.clock.add(2 * time.Minute)
			f.wallet.setErr(werr)
			if _, err := f.r.Token(ctx(t), "c1"); err == nil || errors.Is(err, ErrReauthorizationRequired) {
				t.Fatalf("err %v", err)
			}
			for range 5 { // within the cooldown: a fast error, no further wallet call
				_, err := f.r.Token(ctx(t), "c1")
				var cd *CooldownError
				if !errors.As(err, &cd) {
					t.Fatalf("err %v, want a cooldown", err)
				}
				if name == "timeout" && !errors.Is(err, wallet.ErrTimeout) || name != "timeout" && !errors.Is(err, wallet.ErrUnavailable) {
					t.Fatalf("cooldown error %v unwraps to the wrong class", err)
				}
			}
			if n := f.wallet.calls.Load(); n != 1 {
				t.Fatalf("%d calls during the cooldown, want 1", n)
			}
			st, _ := f.r.Status(ctx(t), "c1")
			if st.State != StateExpired || st.LastError == nil {
				t.Fatalf("status %+v", st)
			}
			// After the cooldown the next call tries again, and recovers on S.
			f.clock.add(backoffMax)
			f.wallet.setErr(nil)
			if _, err := f.r.Token(ctx(t), "c1"); err != nil {
				t.Fatalf("after the cooldown: %v", err)
			}
			st, _ = f.r.Status(ctx(t), "c1")
			if st.State != StateValid || st.LastError != nil {
				t.Fatalf("status %+v", st)
			}
			if n := f.wallet.calls.Load(); n != 2 {
				t.Fatalf("%d calls, want 2", n)
			}
		})
	}
}

func TestExpiredRefreshTokenNeverPresented(t *testing.T) {
	f := newFixture(t)
	f.install(t, time.Minute, f.clock.now().Add(90*time.Second))
	f.clock.add(2 * time.Minute)
	if _, err := f.r.Token(ctx(t), "c1"); !errors.Is(err, ErrReauthorizationRequired) {
		t.Fatalf("err %v", err)
	}
	if n := f.wallet.calls.Load(); n != 0 {
		t.Fatalf("%d wallet calls", n)
	}
	st, _ := f.r.Status(ctx(t), "c1")
	if st.LastError == nil || *st.LastError != wallet.CodeExpiredRefreshToken {
		t.Fatalf("status %+v", st)
	}
}

func TestRejectedUsesNewerTokenWithoutRefresh(t *testing.T) {
	f := newFixture(t)
	f.install(t, time.Hour, time.Time{})
	stale, _ := f.r.Token(ctx(t), "c1")
	// Another replica refreshed meanwhile.
	if _, err := f.r.Refresh(ctx(t), "c1"); err != nil {
		t.Fatal(err)
	}
	tok, err := f.r.Rejected(ctx(t), stale)
	if err != nil || tok.Value.Reveal() != "access-1" {
		t.Fatalf("got %v %v", tok, err)
	}
	if n := f.wallet.calls.Load(); n != 1 {
		t.Fatalf("%d calls, want only the forced one", n)
	}
	// The current token rejected: refreshed exactly once.
	tok, err = f.r.Rejected(ctx(t), tok)
	if err != nil || tok.Value.Reveal() != "access-2" || f.wallet.calls.Load() != 2 {
		t.Fatalf("got %v %v after %d calls", tok, err, f.wallet.calls.Load())
	}
}

func TestForgetDuringRefreshIsNotWrittenBack(t *testing.T) {
	f := newFixture(t)
	f.install(t, time.Minute, time.Time{})
	f.clock.add(2 * time.Minute)
	f.wallet.gate = make(chan struct{})
	done := make(chan error, 1)
	go func() { _, err := f.r.Token(ctx(t), "c1"); done <- err }()
	deadline := time.Now().Add(5 * time.Second)
	for f.wallet.calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := f.r.Forget(ctx(t), "c1"); err != nil {
		t.Fatal(err)
	}
	close(f.wallet.gate)
	if err := <-done; !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("caller got %v", err)
	}
	if _, err := f.store.Get(ctx(t), "c1"); !errors.Is(err, tokencache.ErrNotFound) {
		t.Fatalf("customer written back: %v", err)
	}
}

func TestNextRefresh(t *testing.T) {
	f := newFixture(t)
	now := f.clock.now()
	if got := f.r.nextRefresh(ctx(t), now, now.Add(time.Hour)); !got.Equal(now.Add(55 * time.Minute)) {
		t.Fatalf("one hour token due at %v", got.Sub(now))
	}
	// Short-lived tokens: the lead is capped at half the life.
	if got := f.r.nextRefresh(ctx(t), now, now.Add(time.Minute)); !got.Equal(now.Add(30 * time.Second)) {
		t.Fatalf("one minute token due at %v", got.Sub(now))
	}
}

func TestReplicasShareOneRefresh(t *testing.T) {
	f := newFixture(t)
	r2 := f.replica(t, "r2", NewMetrics(prometheus.NewRegistry()))
	f.install(t, time.Minute, time.Time{})
	f.clock.add(2 * time.Minute)
	f.wallet.gate = make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		r := f.r
		if i%2 == 1 {
			r = r2
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := r.Token(ctx(t), "c1")
			errs <- err
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.wallet.calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(f.wallet.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := f.wallet.calls.Load(); n != 1 {
		t.Fatalf("%d refresh calls from two replicas, want 1", n)
	}
}

func TestLostRotationCountedOnce(t *testing.T) {
	f := newFixture(t)
	f.install(t, time.Minute, time.Time{})
	f.clock.add(2 * time.Minute)
	f.wallet.setErr(wallet.ErrTimeout) // the answer is lost
	if _, err := f.r.Token(ctx(t), "c1"); err == nil {
		t.Fatal("no error")
	}
	f.clock.add(backoffMax)
	f.wallet.setErr(&wallet.Error{HTTPStatus: 200, Result: wallet.Result{ResultStatus: "F", ResultCode: wallet.CodeUsedRefreshToken}})
	if _, err := f.r.Token(ctx(t), "c1"); !errors.Is(err, ErrReauthorizationRequired) {
		t.Fatalf("err %v", err)
	}
	if got := testutil.ToFloat64(f.metrics.lostRotations); got != 1 {
		t.Fatalf("lost rotations %v", got)
	}
	f.clock.add(time.Hour)
	for range 3 {
		if _, err := f.r.Token(ctx(t), "c1"); !errors.Is(err, ErrReauthorizationRequired) {
			t.Fatalf("err %v", err)
		}
	}
	if n := f.wallet.calls.Load(); n != 2 {
		t.Fatalf("%d presentations, want exactly 2", n)
	}
}

func TestRefusedIsNotALostRotation(t *testing.T) {
	f := newFixture(t)
	f.install(t, time.Minute, time.Time{})
	f.clock.add(2 * time.Minute)
	f.wallet.setErr(&wallet.Error{HTTPStatus: 200, Result: wallet.Result{ResultStatus: "F", ResultCode: wallet.CodeTrafficExceedLimit}})
	_, _ = f.r.Token(ctx(t), "c1")
	f.clock.add(backoffMax)
	f.wallet.setErr(&wallet.Error{HTTPStatus: 200, Result: wallet.Result{ResultStatus: "F", ResultCode: wallet.CodeUsedRefreshToken}})
	_, _ = f.r.Token(ctx(t), "c1")
	if got := testutil.ToFloat64(f.metrics.lostRotations); got != 0 {
		t.Fatalf("lost rotations %v after a refused presentation", got)
	}
}

// failingStore fails Complete while down is set: the pair must be served
// from memory and written once the store is back.
type failingStore struct {
	*tokencache.Memory
	down atomic.Bool
}

func (s *failingStore) Update(ctx context.Context, id string, d tokencache.Decision) error {
	if d.Op == tokencache.OpComplete && s.down.Load() {
		return tokencache.ErrUnavailable
	}
	return s.Memory.Update(ctx, id, d)
}

func TestRefreshedPairNeverThrownAway(t *testing.T) {
	f := newFixture(t)
	fs := &failingStore{Memory: f.store}
	fs.down.Store(true)
	r := New(Config{Store: fs, Wallet: f.wallet, Metrics: NewMetrics(prometheus.NewRegistry()), Now: f.clock.now,
		RefreshRate: 1000, Lease: 5 * time.Second})
	t.Cleanup(r.Close)
	f.install(t, time.Minute, time.Time{})
	f.clock.add(2 * time.Minute)
	tok, err := r.Token(ctx(t), "c1")
	if err != nil || tok.Value.Reveal() != "access-1" {
		t.Fatalf("token %v, err %v", tok, err)
	}
	// Served from memory while the store does not hold it.
	if tok, err = r.Token(ctx(t), "c1"); err != nil || tok.Value.Reveal() != "access-1" {
		t.Fatalf("second call: %v %v", tok, err)
	}
	fs.down.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, _ := f.store.Get(ctx(t), "c1")
		if rec.AccessToken.Reveal() == "access-1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the kept pair was never written")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := f.wallet.calls.Load(); n != 1 {
		t.Fatalf("%d calls", n)
	}
}

func TestSchedulerRefreshesDueCustomers(t *testing.T) {
	f := newFixture(t)
	for i := range 20 {
		id := "s" + string(rune('a'+i))
		if err := f.r.Install(ctx(t), Exchange{Path: "/v1/authorizations/applyToken", Pair: &wallet.TokenResponse{
			CustomerID: id, AccessToken: "a", AccessTokenExpiry: f.clock.now().Add(time.Hour), RefreshToken: wallet.Secret("r" + id),
		}}); err != nil {
			t.Fatal(err)
		}
	}
	f.r.scheduleOnce(ctx(t)) // nothing due yet
	f.r.wg.Wait()
	if n := f.wallet.calls.Load(); n != 0 {
		t.Fatalf("%d refreshes before anything was due", n)
	}
	f.clock.add(56 * time.Minute)
	f.r.scheduleOnce(ctx(t))
	deadline := time.Now().Add(10 * time.Second)
	for f.wallet.calls.Load() < 20 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	f.r.scheduleOnce(ctx(t)) // refreshed ones are no longer due
	f.r.wg.Wait()
	if n := f.wallet.calls.Load(); n != 20 {
		t.Fatalf("%d refreshes for 20 due customers", n)
	}
}

func TestIdleCustomerNotRefreshedAhead(t *testing.T) {
	f := newFixture(t)
	r := New(Config{Store: f.store, Wallet: f.wallet, Metrics: NewMetrics(prometheus.NewRegistry()), Now: f.clock.now,
		RefreshBefore: 5 * time.Minute, RefreshRate: 1000, IdleAfter: 10 * time.Minute})
	t.Cleanup(r.Close)
	refreshExpiry := f.clock.now().Add(30 * 24 * time.Hour)
	f.install(t, time.Hour, refreshExpiry)
	f.clock.add(56 * time.Minute) // due, and idle for 56 minutes
	r.scheduled(ctx(t), "c1")
	if n := f.wallet.calls.Load(); n != 0 {
		t.Fatalf("idle customer refreshed ahead (%d calls)", n)
	}
	rec, _ := f.store.Get(ctx(t), "c1")
	if want := refreshExpiry.Add(-keepAliveLead); !rec.NextRefresh.Equal(want.Truncate(time.Millisecond)) {
		t.Fatalf("idle customer rescheduled at %v, want the keep-alive %v", rec.NextRefresh, want)
	}
	// Its next call refreshes it on demand.
	f.clock.add(10 * time.Minute)
	if _, err := r.Token(ctx(t), "c1"); err != nil || f.wallet.calls.Load() != 1 {
		t.Fatalf("on-demand refresh of an idle customer: %v, %d calls", err, f.wallet.calls.Load())
	}
}
