// Package refresher decides when and how a customer's tokens are refreshed,
// and makes sure each refresh token is presented to the wallet once: it
// hands the proxy a usable access token for a customer, refreshes one that
// has expired (the caller waits) or is due (in the background, and ahead of
// time by the scheduler, without app traffic), and handles a token the
// wallet rejected. Across replicas sharing a store, a refresh runs under a
// lease claimed in the store: the protocol's steps are tokencache's
// decisions (tokencache.Claim, Renew, Release, Complete over a
// tokencache.Store), and this package decides when to take them (see
// refresh.go); within a process, callers of one customer join one refresh.
package refresher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// Outcomes callers branch on.
var (
	// ErrNotAuthorized: no tokens are stored for the customer.
	ErrNotAuthorized = errors.New("customer not authorized")
	// ErrReauthorizationRequired: the refresh token is expired, used or
	// invalid; only a new exchange (a new authCode from the user) helps.
	ErrReauthorizationRequired = errors.New("reauthorization required")
)

// CooldownError: the customer's last refresh failed transiently and no
// presentation may start before the cooldown ends. It unwraps to
// wallet.ErrTimeout when that failure was a timeout, else to
// wallet.ErrUnavailable, so callers answer it as they would the failure.
type CooldownError struct {
	LastError string
	Remaining time.Duration
}

func (e *CooldownError) Error() string {
	return fmt.Sprintf("refresh cooling down for %s after %s", e.Remaining.Round(time.Millisecond), e.LastError)
}

func (e *CooldownError) Unwrap() error {
	if e.LastError == wallet.CodeWalletTimeout {
		return wallet.ErrTimeout
	}
	return wallet.ErrUnavailable
}

// Store is where records live and the refresh protocol's steps are
// applied (see tokencache.Store).
type Store = tokencache.Store

// Wallet presents a refresh token: an applyToken call.
type Wallet interface {
	ApplyToken(ctx context.Context, path string, body []byte, header http.Header) (*wallet.TokenResponse, *wallet.Response, error)
}

// Config configures a Refresher.
type Config struct {
	Store  Store
	Wallet Wallet
	// TokenPaths, when set, are the only paths a refresh token is
	// presented to: a record naming another path (damaged or written by
	// hand) is refused as corrupt, before any wallet call.
	TokenPaths []string
	// Owner names this replica in leases; a random id when empty.
	Owner string
	// RefreshBefore: a token is due this long before its expiry, less a
	// random spread of up to RefreshJitter (see NextRefresh).
	RefreshBefore time.Duration
	RefreshJitter time.Duration
	// RefreshRate bounds refresh calls per second from this process.
	RefreshRate float64
	// Lease is how long a claim to refresh one customer lasts unless
	// renewed; it is renewed every third of that while the call runs.
	Lease time.Duration
	// IdleAfter: customers without app calls this long are refreshed only
	// on their next call (plus a keep-alive before the refresh token
	// expires). Zero: never idle.
	IdleAfter time.Duration
	// UpstreamTimeout bounds one refresh call to the wallet.
	UpstreamTimeout time.Duration
	// CacheMaxEntries bounds the opened records kept in memory.
	CacheMaxEntries int
	// Workers bounds concurrent background and scheduled refreshes
	// (default 32).
	Workers int
	// ScheduleEvery is the scheduler's tick (default 1s); CensusEvery the
	// recount of tokenproxy_tokens (default 30s).
	ScheduleEvery time.Duration
	CensusEvery   time.Duration
	// FullCheckEvery is how long the scheduler takes to check the
	// schedule hint of every bucket once, in small steps (default 5 min;
	// only with a store that keeps a hint, see tokencache.DueHints).
	FullCheckEvery time.Duration
	// Plan, when set, keeps the fleet's refresh plan (both stores are
	// tokencache.PlanBooks): refresh times are then chosen against the
	// fleet's rate (plan.go); nil: a fixed lead (NextRefresh).
	Plan tokencache.PlanBook
	// Census counts the store's customers by state for tokenproxy_tokens
	// (the stores' Census methods); nil: not counted.
	Census  func(ctx context.Context) (tokencache.Census, error)
	Metrics *Metrics
	Logger  *slog.Logger
	// Now is the local clock for token expiry checks (default time.Now).
	// Leases, backoff and schedules use the store's clock.
	Now func() time.Time
}

// Token is a customer's access token and the record generation it came from.
type Token struct {
	CustomerID string
	Value      wallet.Secret
	Expiry     time.Time
	Generation int64
	// Refresh is the refresh token stored with Value. It is never sent
	// with a call: the proxy only searches the wallet's answer for it, so
	// that a wallet echoing it cannot hand it to the app.
	Refresh wallet.Secret
	// AccessHandle is the handle the app holds for the customer's access
	// token (TOKENPROXY_APP_TOKENS=handles), "" when it holds none.
	AccessHandle wallet.Secret
}

// Handles are what the app of TOKENPROXY_APP_TOKENS=handles holds for a
// customer, with the expiry times it is told.
type Handles struct {
	Access, Refresh    wallet.Secret
	AccessTokenExpiry  time.Time
	RefreshTokenExpiry time.Time // zero: none given
}

// Refresher is safe for concurrent use. Run drives the scheduler; Close
// stops background work and waits for it.
type Refresher struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	limiter *rate.Limiter
	urgent  atomic.Int64 // refreshes with a caller waiting, queued for the rate limiter
	cache   *l1
	stopL1  func() // unregisters cache from the store's invalidations
	pending *pendingWrites
	planner *Planner // nil: no plan
	flights singleflight.Group
	reads   singleflight.Group // app calls missing L1 for one customer share one store read
	slots   chan struct{}      // worker slots for background and scheduled refreshes

	mu       sync.Mutex
	inflight map[string]int
	// closed is set when Close begins: no detached work starts after it,
	// so wg.Add never races the wg.Wait of Close (see track).
	closed bool

	ctx    context.Context // parent of all detached refresh work
	cancel context.CancelFunc
	// calls is the parent of wallet calls in flight: Close cancels it only
	// after they had time to finish, so shutting down does not turn their
	// outcomes into unknown ones.
	calls       context.Context
	cancelCalls context.CancelFunc
	wg          sync.WaitGroup
}

// New returns a Refresher. Store, Wallet and Metrics are required.
func New(cfg Config) *Refresher {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Owner == "" {
		b := make([]byte, 6)
		_, _ = rand.Read(b)
		cfg.Owner = hex.EncodeToString(b)
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = 10 * time.Second
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 5 * time.Second
	}
	if cfg.RefreshRate <= 0 {
		cfg.RefreshRate = 50
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 32
	}
	if cfg.ScheduleEvery <= 0 {
		cfg.ScheduleEvery = time.Second
	}
	if cfg.CensusEvery <= 0 {
		cfg.CensusEvery = 30 * time.Second
	}
	if cfg.FullCheckEvery <= 0 {
		cfg.FullCheckEvery = 5 * time.Minute
	}
	ctx, cancel := context.WithCancel(context.Background())
	calls, cancelCalls := context.WithCancel(context.Background())
	r := &Refresher{
		calls:       calls,
		cancelCalls: cancelCalls,
		cfg:         cfg,
		log:         cfg.Logger.With("replica", cfg.Owner),
		now:         cfg.Now,
		limiter:     rate.NewLimiter(rate.Limit(cfg.RefreshRate), max(1, int(cfg.RefreshRate))),
		cache:       newL1(cfg.CacheMaxEntries, cfg.Now),
		slots:       make(chan struct{}, cfg.Workers),
		inflight:    make(map[string]int),
		ctx:         ctx,
		cancel:      cancel,
	}
	r.pending = newPendingWrites(r)
	if cfg.Plan != nil {
		r.planner = NewPlanner(PlanConfig{
			Book: cfg.Plan, Before: cfg.RefreshBefore, Jitter: cfg.RefreshJitter, Rate: cfg.RefreshRate,
			Shortfall: cfg.Metrics.planShortfall, Logger: r.log,
		})
	}
	r.stopL1 = func() {}
	if inv, ok := cfg.Store.(tokencache.Invalidations); ok {
		r.stopL1 = inv.Invalidations(r.cache)
	}
	return r
}

// Close stops background work and waits for every refresh this Refresher
// started to end: waiting and scheduling stop at once, wallet calls in
// flight get up to UpstreamTimeout to finish (and their outcomes are
// written), and pair writes still pending (the store was down) get one last
// try.
func (r *Refresher) Close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	t := time.NewTimer(r.cfg.UpstreamTimeout + storeWriteTimeout)
	select {
	case <-done:
	case <-t.C:
		r.cancelCalls()
		<-done
	}
	t.Stop()
	r.cancelCalls()
	r.pending.flush()
	r.stopL1()
}

// Token returns a usable access token for the customer. A token that is
// due but not yet expired is returned at once and refreshed in the
// background; an expired one is refreshed first, the caller waiting at most
// until ctx ends. Errors: ErrNotAuthorized, ErrReauthorizationRequired,
// *CooldownError, a wallet error of the refresh (wallet.ErrTimeout,
// wallet.ErrUnavailable, *wallet.Error, ...), or tokencache.ErrUnavailable
// / *tokencache.SealError.
//
// A customer whose record this process holds fresh (see l1) is served
// without reading the store.
func (r *Refresher) Token(ctx context.Context, customerID string) (Token, error) {
	rec, err := r.loadForCall(ctx, customerID)
	if err != nil {
		if errors.Is(err, ErrNotAuthorized) {
			r.cfg.Metrics.lookups.WithLabelValues(lookupMiss).Inc()
		}
		return Token{}, err
	}
	if rec.State == tokencache.StateReauthorizationRequired {
		r.cfg.Metrics.lookups.WithLabelValues(lookupReauth).Inc()
		return Token{}, ErrReauthorizationRequired
	}
	r.touch(rec)
	now := r.now()
	if now.Before(rec.AccessTokenExpiry) {
		if !rec.NextRefresh.IsZero() && !now.Before(rec.NextRefresh) {
			r.refreshInBackground(customerID)
		}
		r.cfg.Metrics.lookups.WithLabelValues(lookupHit).Inc()
		return tokenOf(rec), nil
	}
	rec, err = r.refresh(ctx, customerID, TriggerOnDemand, func(cur *tokencache.Record) bool {
		return r.now().Before(cur.AccessTokenExpiry)
	})
	if err != nil {
		if errors.Is(err, ErrReauthorizationRequired) {
			r.cfg.Metrics.lookups.WithLabelValues(lookupReauth).Inc()
		}
		return Token{}, err
	}
	r.cfg.Metrics.lookups.WithLabelValues(lookupRefresh).Inc()
	return tokenOf(rec), nil
}

// Rejected is called when the wallet rejected tok (EXPIRED_ACCESS_TOKEN or
// INVALID_ACCESS_TOKEN). If the store still holds that token it is
// refreshed (once across all replicas); if the store already holds another
// one (refreshed meanwhile), that one is returned without a wallet call.
func (r *Refresher) Rejected(ctx context.Context, tok Token) (Token, error) {
	replaced := func(cur *tokencache.Record) bool {
		return cur.AccessToken.Reveal() != tok.Value.Reveal() && r.now().Before(cur.AccessTokenExpiry)
	}
	// The rejected token is served no more: the next calls read the store
	// until it holds what replaced it.
	r.cache.reject(tok.CustomerID, tok.Generation, tok.Expiry)
	rec, err := r.load(ctx, tok.CustomerID)
	if err != nil {
		return Token{}, err
	}
	if rec.State == tokencache.StateReauthorizationRequired {
		return Token{}, ErrReauthorizationRequired
	}
	if !replaced(rec) {
		if rec, err = r.refresh(ctx, tok.CustomerID, TriggerRetry, replaced); err != nil {
			return Token{}, err
		}
	}
	return tokenOf(rec), nil
}

// Exchange is a successful authorization-code exchange to store.
type Exchange struct {
	Path   string                     // the applyToken path used; refreshes replay it
	Replay map[string]json.RawMessage // request fields refreshes replay (v2 fields, extendInfo)
	Pair   *wallet.TokenResponse
	// AccessHandle and RefreshHandle, when set, are the app's handles for
	// the pair; they replace any earlier ones.
	AccessHandle, RefreshHandle wallet.Secret
}

// Install stores the pair of a new exchange for its customer, replacing
// whatever was stored (a reauthorization_required state included).
func (r *Refresher) Install(ctx context.Context, ex Exchange) error {
	rec := NewRecord(ex, r.now(), r.cfg.RefreshBefore, r.cfg.RefreshJitter)
	rec.NextRefresh = r.nextRefresh(ctx, rec.LastUsed, rec.AccessTokenExpiry)
	snap := r.cache.snapshot(rec.CustomerID)
	gen, err := tokencache.Put(ctx, r.cfg.Store, rec)
	if err != nil {
		r.storeFailed("put")
		return fmt.Errorf("store exchange: %w", err)
	}
	r.storeOK()
	rec.Generation = gen
	r.pending.drop(rec.CustomerID)
	// A store that announces changes has announced this one too, so this
	// put is refused and the next call reads the record back; a store that
	// does not keeps it for outages only.
	r.cache.put(rec, snap)
	return nil
}

// NewRecord is the record a new exchange (or an import of its pair, at
// now) stores: the pair, what refreshes replay, used at now, due
// NextRefresh(now, expiry, before, jitter).
func NewRecord(ex Exchange, now time.Time, before, jitter time.Duration) *tokencache.Record {
	return &tokencache.Record{
		CustomerID:         ex.Pair.CustomerID,
		AccessToken:        ex.Pair.AccessToken,
		AccessTokenExpiry:  ex.Pair.AccessTokenExpiry,
		RefreshToken:       ex.Pair.RefreshToken,
		RefreshTokenExpiry: ex.Pair.RefreshTokenExpiry,
		AccessHandle:       ex.AccessHandle,
		RefreshHandle:      ex.RefreshHandle,
		ExchangePath:       ex.Path,
		Replay:             ex.Replay,
		LastUsed:           now,
		NextRefresh:        NextRefresh(now, ex.Pair.AccessTokenExpiry, before, jitter),
	}
}

// Status returns what the admin API shows of a customer, ErrNotAuthorized
// when unknown.
func (r *Refresher) Status(ctx context.Context, customerID string) (Status, error) {
	rec, err := r.load(ctx, customerID)
	if err != nil {
		return Status{}, err
	}
	return statusOf(rec, r.now(), r.refreshing(customerID)), nil
}

// Handles returns the app's handles of a customer and its expiry times,
// without calling the wallet: ErrNotAuthorized when unknown,
// ErrReauthorizationRequired when only a new exchange helps.
func (r *Refresher) Handles(ctx context.Context, customerID string) (Handles, error) {
	rec, err := r.load(ctx, customerID)
	if err != nil {
		return Handles{}, err
	}
	if rec.State == tokencache.StateReauthorizationRequired {
		return Handles{}, ErrReauthorizationRequired
	}
	return Handles{
		Access:             wallet.Secret(rec.AccessHandle.Reveal()),
		Refresh:            wallet.Secret(rec.RefreshHandle.Reveal()),
		AccessTokenExpiry:  rec.AccessTokenExpiry,
		RefreshTokenExpiry: rec.RefreshTokenExpiry,
	}, nil
}

// Forget deletes the customer's tokens everywhere (the user unlinked). A
// refresh in flight, on any replica, cannot write them back.
func (r *Refresher) Forget(ctx context.Context, customerID string) error {
	r.cache.remove(customerID)
	if err := tokencache.Delete(ctx, r.cfg.Store, customerID); err != nil {
		// Not deleted: a refreshed pair waiting for the store is still
		// the customer's only valid one, so it stays.
		r.storeFailed("delete")
		return fmt.Errorf("forget customer: %w", err)
	}
	r.storeOK()
	r.pending.drop(customerID)
	r.cache.remove(customerID)
	return nil
}

// Refresh refreshes the customer's tokens now (joining a refresh already in
// flight on any replica) and returns the new status. It ignores the
// cooldown of earlier failures.
func (r *Refresher) Refresh(ctx context.Context, customerID string) (Status, error) {
	rec, err := r.get(ctx, customerID)
	if err != nil {
		return Status{}, err
	}
	if rec.State == tokencache.StateReauthorizationRequired {
		return Status{}, ErrReauthorizationRequired
	}
	spent := rec.RefreshTokenHash
	if _, err := r.refresh(ctx, customerID, TriggerForced, func(cur *tokencache.Record) bool {
		return cur.RefreshTokenHash != spent
	}); err != nil {
		return Status{}, err
	}
	return r.Status(ctx, customerID)
}

// Ping checks that the store answers, keeping tokenproxy_store_up current.
func (r *Refresher) Ping(ctx context.Context) error {
	if err := r.cfg.Store.Ping(ctx); err != nil {
		r.storeFailed("ping")
		return fmt.Errorf("ping store: %w", err)
	}
	r.storeOK()
	return nil
}

// loadForCall is load for an app call: a record held fresh serves without
// reading the store.
func (r *Refresher) loadForCall(ctx context.Context, customerID string) (*tokencache.Record, error) {
	if rec, ok := r.pending.get(customerID); ok {
		return rec, nil
	}
	if rec, ok := r.cache.fresh(customerID); ok {
		return rec, nil
	}
	// Callers that miss together (a cold L1, a customer just invalidated)
	// share one read, detached from the first caller's deadline; each
	// waits at most until its own ctx ends, and gets its own copy.
	ch := r.reads.DoChan(customerID, func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeWriteTimeout)
		defer cancel()
		return r.load(rctx, customerID)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		rec := *res.Val.(*tokencache.Record)
		return &rec, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("read customer: %w: %w", tokencache.ErrUnavailable, ctx.Err())
	}
}

// load reads the record: a pair not yet written to the store (it was down)
// comes first; when the store cannot be reached, the local copy serves if
// it still holds a usable access token.
func (r *Refresher) load(ctx context.Context, customerID string) (*tokencache.Record, error) {
	if rec, ok := r.pending.get(customerID); ok {
		return rec, nil
	}
	rec, err := r.get(ctx, customerID)
	if err == nil || !errors.Is(err, tokencache.ErrUnavailable) {
		return rec, err
	}
	if cached, ok := r.cache.held(customerID); ok && r.now().Before(cached.AccessTokenExpiry) &&
		cached.State != tokencache.StateReauthorizationRequired {
		r.log.Warn("token store unavailable, serving the locally held token", "customer", customerID)
		return cached, nil
	}
	return nil, err
}

func (r *Refresher) get(ctx context.Context, customerID string) (*tokencache.Record, error) {
	snap := r.cache.snapshot(customerID)
	rec, err := r.cfg.Store.Get(ctx, customerID)
	switch {
	case err == nil:
		r.storeOK()
		r.cache.put(rec, snap)
		return rec, nil
	case errors.Is(err, tokencache.ErrNotFound):
		r.storeOK()
		r.cache.remove(customerID)
		return nil, ErrNotAuthorized
	default:
		r.storeFailed("get")
		return nil, fmt.Errorf("read customer: %w", err)
	}
}

// touch records an app call for idle detection, at most once per quarter
// of IdleAfter (and at most once a minute) per customer and replica: the
// copy held in l1 notes it, so calls served from there do not record it
// again. It is one store write in the background, never on the call's
// path.
func (r *Refresher) touch(rec *tokencache.Record) {
	if r.cfg.IdleAfter <= 0 {
		return
	}
	every := min(r.cfg.IdleAfter/4, time.Minute)
	now := r.now()
	if now.Sub(rec.LastUsed) < every {
		return
	}
	rec.LastUsed = now // this copy: no second touch from it
	r.cache.touched(rec.CustomerID, rec.Generation, now)
	r.goBackground(func(ctx context.Context) {
		if err := tokencache.Touch(ctx, r.cfg.Store, rec.CustomerID, every); err != nil {
			r.log.Debug("could not record the app call", "customer", rec.CustomerID, "err", err)
		}
	})
}

// goBackground runs fn in a worker slot, detached from any caller, bounded
// in time; it gives up when every slot is busy (the work is an
// optimisation a later call or the scheduler repeats).
func (r *Refresher) goBackground(fn func(ctx context.Context)) bool {
	select {
	case r.slots <- struct{}{}:
	default:
		return false
	}
	return r.runInSlot(fn)
}

// runInSlot runs fn detached from any caller, owned by r and bounded by the
// refresh budget, in the worker slot the caller took; the slot is given
// back when fn returns, or at once (false) when r is closing.
func (r *Refresher) runInSlot(fn func(ctx context.Context)) bool {
	if !r.track() {
		<-r.slots
		return false
	}
	go func() {
		defer r.wg.Done()
		defer func() { <-r.slots }()
		ctx, cancel := context.WithTimeout(r.ctx, r.refreshBudget())
		defer cancel()
		fn(ctx)
	}()
	return true
}

func (r *Refresher) refreshInBackground(customerID string) {
	r.goBackground(func(ctx context.Context) {
		if _, err := r.refresh(ctx, customerID, TriggerScheduled, r.notDue); err != nil {
			r.log.Info("background refresh failed", "customer", customerID, "err", err)
		}
	})
}

// notDue reports a record that is no longer due: refreshed meanwhile.
func (r *Refresher) notDue(cur *tokencache.Record) bool {
	return cur.NextRefresh.IsZero() || r.now().Before(cur.NextRefresh)
}

// refreshBudget bounds one detached refresh: waiting for another replica's
// lease, the wallet call, and the store writes around it.
func (r *Refresher) refreshBudget() time.Duration {
	return 2*r.cfg.UpstreamTimeout + 2*r.cfg.Lease + 5*time.Second
}

// nextRefresh is when a token expiring at expiry is due: planned against
// the fleet's rate when there is a plan (Planner.Plan), else a fixed lead.
func (r *Refresher) nextRefresh(ctx context.Context, now, expiry time.Time) time.Time {
	if r.planner != nil {
		return r.planner.Plan(ctx, now, expiry)
	}
	return NextRefresh(now, expiry, r.cfg.RefreshBefore, r.cfg.RefreshJitter)
}

// NextRefresh is when a token expiring at expiry is due: before plus a
// random spread of up to jitter ahead of expiry, the lead capped at half
// the token's remaining life (so that short-lived tokens are not refreshed
// on every call).
func NextRefresh(now, expiry time.Time, before, jitter time.Duration) time.Time {
	lead := before
	if jitter > 0 {
		lead += randN(jitter)
	}
	if life := expiry.Sub(now); lead > life/2 {
		lead = max(life/2, 0)
	}
	return expiry.Add(-lead)
}

// track counts one more goroutine of detached work in wg, unless Close has
// begun: then it reports false and the work must not start. (A wg.Add from
// zero that races wg.Wait is a misuse that can panic: a refresh's flight
// goroutine, for one, starts after its caller and may start while Close
// waits.)
func (r *Refresher) track() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.wg.Add(1)
	return true
}

func (r *Refresher) setRefreshing(id string, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if on {
		r.inflight[id]++
	} else if r.inflight[id]--; r.inflight[id] <= 0 {
		delete(r.inflight, id)
	}
}

func (r *Refresher) refreshing(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inflight[id] > 0
}

func (r *Refresher) storeOK() { r.cfg.Metrics.storeUp.Set(1) }

func (r *Refresher) claimed(result string) { r.cfg.Metrics.claims.WithLabelValues(result).Inc() }

func (r *Refresher) storeFailed(op string) {
	r.cfg.Metrics.storeErrors.WithLabelValues(op).Inc()
	r.cfg.Metrics.storeUp.Set(0)
}

func tokenOf(rec *tokencache.Record) Token {
	return Token{
		CustomerID: rec.CustomerID,
		Value:      wallet.Secret(rec.AccessToken.Reveal()),
		Expiry:     rec.AccessTokenExpiry,
		Generation: rec.Generation,
		Refresh:    wallet.Secret(rec.RefreshToken.Reveal()),

		AccessHandle: wallet.Secret(rec.AccessHandle.Reveal()),
	}
}
