// Package refresher decides when and how a customer's tokens are refreshed:
// it hands the proxy a usable access token for a customer, refreshes one
// that has expired (the caller waits) or is due (in the background), and
// handles a token the wallet rejected. One refresh per customer runs at a
// time in this process; callers that arrive meanwhile join it.
package refresher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
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

// Store is what the refresher needs of the token store.
type Store interface {
	Get(ctx context.Context, customerID string) (*tokencache.Record, error)
	Put(ctx context.Context, rec *tokencache.Record) (int64, error)
	CompareAndSwap(ctx context.Context, rec *tokencache.Record, expect int64) (int64, error)
	Delete(ctx context.Context, customerID string) error
	Ping(ctx context.Context) error
}

// Wallet presents a refresh token: an applyToken call.
type Wallet interface {
	ApplyToken(ctx context.Context, path string, body []byte, header http.Header) (*wallet.TokenResponse, *wallet.Response, error)
}

// Config configures a Refresher.
type Config struct {
	Store  Store
	Wallet Wallet
	// RefreshBefore: a token is due this long before its expiry, less a
	// random spread of up to RefreshJitter. The lead is capped at half the
	// token's lifetime so that short-lived tokens are not refreshed on every
	// call.
	RefreshBefore time.Duration
	RefreshJitter time.Duration
	// RefreshRate bounds refresh calls per second from this process.
	RefreshRate float64
	// UpstreamTimeout bounds one refresh call to the wallet.
	UpstreamTimeout time.Duration
	// CacheMaxEntries bounds the opened records kept in memory.
	CacheMaxEntries int
	// MaxBackground bounds concurrent background refreshes (default 16).
	MaxBackground int
	Metrics       *Metrics
	Logger        *slog.Logger
	Now           func() time.Time
}

// Token is a customer's access token and the record generation it came from.
type Token struct {
	CustomerID string
	Value      wallet.Secret
	Expiry     time.Time
	Generation int64
}

// Refresher is safe for concurrent use. Close stops its background work.
type Refresher struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	limiter *rate.Limiter
	cache   *recordCache
	flights singleflight.Group
	urgent  atomic.Int64 // refreshes with a caller waiting, queued for the rate limiter

	mu        sync.Mutex
	inflight  map[string]bool
	cooldowns map[string]cooldown

	ctx    context.Context // parent of all detached refresh work
	cancel context.CancelFunc
	wg     sync.WaitGroup
	bg     chan struct{} // background refresh slots
}

type cooldown struct {
	until   time.Time
	err     error
	attempt int
}

// New returns a Refresher. Store, Wallet and Metrics are required.
func New(cfg Config) *Refresher {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = 10 * time.Second
	}
	if cfg.RefreshRate <= 0 {
		cfg.RefreshRate = 50
	}
	if cfg.MaxBackground <= 0 {
		cfg.MaxBackground = 16
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Refresher{
		cfg:       cfg,
		log:       cfg.Logger,
		now:       cfg.Now,
		limiter:   rate.NewLimiter(rate.Limit(cfg.RefreshRate), max(1, int(cfg.RefreshRate))),
		cache:     newRecordCache(cfg.CacheMaxEntries),
		inflight:  make(map[string]bool),
		cooldowns: make(map[string]cooldown),
		ctx:       ctx,
		cancel:    cancel,
		bg:        make(chan struct{}, cfg.MaxBackground),
	}
}

// Close cancels background refreshes and waits for every refresh this
// Refresher started to end.
func (r *Refresher) Close() {
	r.cancel()
	r.wg.Wait()
}

// Token returns a usable access token for the customer. A token that is
// due but not yet expired is returned at once and refreshed in the
// background; an expired one is refreshed first, the caller waiting at most
// until ctx ends. Errors: ErrNotAuthorized, ErrReauthorizationRequired, a
// wallet error of the refresh (wallet.ErrTimeout, wallet.ErrUnavailable,
// *wallet.Error, ...), or tokencache.ErrUnavailable / *tokencache.SealError.
func (r *Refresher) Token(ctx context.Context, customerID string) (Token, error) {
	rec, err := r.load(ctx, customerID)
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
	now := r.now()
	if now.Before(rec.AccessTokenExpiry) {
		if !rec.NextRefresh.IsZero() && !now.Before(rec.NextRefresh) {
			r.refreshInBackground(customerID)
		}
		r.cfg.Metrics.lookups.WithLabelValues(lookupHit).Inc()
		return tokenOf(rec), nil
	}
	rec, err = r.refresh(ctx, customerID, TriggerOnDemand, rec.Generation)
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
// refreshed; if the store already holds another one (refreshed meanwhile),
// that one is returned without a wallet call.
func (r *Refresher) Rejected(ctx context.Context, tok Token) (Token, error) {
	rec, err := r.load(ctx, tok.CustomerID)
	if err != nil {
		return Token{}, err
	}
	if rec.State == tokencache.StateReauthorizationRequired {
		return Token{}, ErrReauthorizationRequired
	}
	if rec.AccessToken.Reveal() != tok.Value.Reveal() && r.now().Before(rec.AccessTokenExpiry) {
		return tokenOf(rec), nil
	}
	rec, err = r.refresh(ctx, tok.CustomerID, TriggerRetry, rec.Generation)
	if err != nil {
		return Token{}, err
	}
	return tokenOf(rec), nil
}

// Exchange is a successful authorization-code exchange to store.
type Exchange struct {
	Path   string                     // the applyToken path used; refreshes replay it
	Replay map[string]json.RawMessage // request fields refreshes replay (v2 fields, extendInfo)
	Pair   *wallet.TokenResponse
}

// Install stores the pair of a new exchange for its customer, replacing
// whatever was stored (a reauthorization_required state included).
func (r *Refresher) Install(ctx context.Context, ex Exchange) error {
	now := r.now()
	rec := &tokencache.Record{
		CustomerID:         ex.Pair.CustomerID,
		AccessToken:        tokencache.Secret(ex.Pair.AccessToken.Reveal()),
		AccessTokenExpiry:  ex.Pair.AccessTokenExpiry,
		RefreshToken:       tokencache.Secret(ex.Pair.RefreshToken.Reveal()),
		RefreshTokenExpiry: ex.Pair.RefreshTokenExpiry,
		ExchangePath:       ex.Path,
		Replay:             ex.Replay,
		NextRefresh:        r.nextRefresh(now, ex.Pair.AccessTokenExpiry),
	}
	gen, err := r.cfg.Store.Put(ctx, rec)
	if err != nil {
		r.storeFailed("put")
		return fmt.Errorf("store exchange: %w", err)
	}
	r.storeOK()
	rec.Generation = gen
	r.cache.put(rec)
	r.clearCooldown(rec.CustomerID)
	return nil
}

// Status returns what the admin API shows of a customer, ErrNotAuthorized
// when unknown.
func (r *Refresher) Status(ctx context.Context, customerID string) (Status, error) {
	rec, err := r.get(ctx, customerID)
	if err != nil {
		return Status{}, err
	}
	return statusOf(rec, r.now(), r.refreshing(customerID)), nil
}

// Forget deletes the customer's tokens everywhere (the user unlinked). A
// refresh in flight cannot write them back.
func (r *Refresher) Forget(ctx context.Context, customerID string) error {
	r.cache.remove(customerID)
	if err := r.cfg.Store.Delete(ctx, customerID); err != nil {
		r.storeFailed("delete")
		return fmt.Errorf("forget customer: %w", err)
	}
	r.storeOK()
	r.cache.remove(customerID)
	r.clearCooldown(customerID)
	return nil
}

// Refresh refreshes the customer's tokens now (joining a refresh already in
// flight) and returns the new status.
func (r *Refresher) Refresh(ctx context.Context, customerID string) (Status, error) {
	rec, err := r.get(ctx, customerID)
	if err != nil {
		return Status{}, err
	}
	if rec.State == tokencache.StateReauthorizationRequired {
		return Status{}, ErrReauthorizationRequired
	}
	if _, err := r.refresh(ctx, customerID, TriggerForced, rec.Generation); err != nil {
		return Status{}, err
	}
	return r.Status(ctx, customerID)
}

// load reads the record, falling back to the local copy when the store
// cannot be reached and that copy still holds a usable access token.
func (r *Refresher) load(ctx context.Context, customerID string) (*tokencache.Record, error) {
	rec, err := r.get(ctx, customerID)
	if err == nil || !errors.Is(err, tokencache.ErrUnavailable) {
		return rec, err
	}
	if cached, ok := r.cache.get(customerID); ok && r.now().Before(cached.AccessTokenExpiry) &&
		cached.State != tokencache.StateReauthorizationRequired {
		r.log.Warn("token store unavailable, serving the locally held token", "customer", customerID)
		return cached, nil
	}
	return nil, err
}

func (r *Refresher) get(ctx context.Context, customerID string) (*tokencache.Record, error) {
	rec, err := r.cfg.Store.Get(ctx, customerID)
	switch {
	case err == nil:
		r.storeOK()
		r.cache.put(rec)
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

// refresh runs one refresh of the customer, or joins the one in flight, and
// waits for it at most until ctx ends. The refresh itself runs detached from
// ctx, so a caller that gives up does not cut a wallet call in half (which
// would leave its outcome unknown).
func (r *Refresher) refresh(ctx context.Context, customerID, trigger string, seenGen int64) (*tokencache.Record, error) {
	ch := r.flights.DoChan(customerID, func() (any, error) {
		return r.runRefresh(customerID, trigger, seenGen)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*tokencache.Record), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for refresh: %w: %w", wallet.ErrTimeout, ctx.Err())
	}
}

func (r *Refresher) refreshInBackground(customerID string) {
	select {
	case r.bg <- struct{}{}:
	default:
		return // all slots busy: a later call or the scheduler will pick it up
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() { <-r.bg }()
		ctx, cancel := context.WithTimeout(r.ctx, r.cfg.UpstreamTimeout+5*time.Second)
		defer cancel()
		if _, err := r.refresh(ctx, customerID, TriggerScheduled, 0); err != nil {
			r.log.Info("background refresh failed", "customer", customerID, "err", err)
		}
	}()
}

func (r *Refresher) runRefresh(customerID, trigger string, seenGen int64) (*tokencache.Record, error) {
	r.wg.Add(1)
	defer r.wg.Done()
	r.setRefreshing(customerID, true)
	defer r.setRefreshing(customerID, false)

	// Store operations get their own budget on top of the wallet call's.
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.UpstreamTimeout+5*time.Second)
	defer cancel()

	rec, err := r.get(ctx, customerID)
	if err != nil {
		return nil, err
	}
	now := r.now()
	switch {
	case rec.State == tokencache.StateReauthorizationRequired:
		return nil, ErrReauthorizationRequired
	case trigger == TriggerScheduled && (rec.NextRefresh.IsZero() || now.Before(rec.NextRefresh)):
		return rec, nil // refreshed meanwhile
	case (trigger == TriggerOnDemand || trigger == TriggerRetry) && rec.Generation != seenGen &&
		now.Before(rec.AccessTokenExpiry):
		return rec, nil // replaced meanwhile
	}
	if cd, ok := r.inCooldown(customerID, now); ok && trigger != TriggerForced {
		return nil, cd.err
	}
	if !rec.RefreshTokenExpiry.IsZero() && !now.Before(rec.RefreshTokenExpiry) {
		// Never present a refresh token past its expiry: the answer is known.
		return nil, r.endCustomer(ctx, rec, trigger, wallet.CodeExpiredRefreshToken, false)
	}
	if err := r.takeRate(ctx, trigger != TriggerScheduled); err != nil {
		return nil, fmt.Errorf("refresh rate: %w", err)
	}

	body, err := wallet.RefreshBody(wallet.Secret(rec.RefreshToken.Reveal()), rec.Replay)
	if err != nil {
		return nil, fmt.Errorf("build refresh body: %w", err)
	}
	callCtx, callCancel := context.WithTimeout(ctx, r.cfg.UpstreamTimeout)
	start := time.Now()
	pair, _, err := r.cfg.Wallet.ApplyToken(callCtx, rec.ExchangePath, body, nil)
	callCancel()
	r.cfg.Metrics.refreshSeconds.Observe(time.Since(start).Seconds())

	var werr *wallet.Error
	switch {
	case err == nil:
		return r.storeRefreshed(ctx, rec, pair, trigger)
	case errors.As(err, &werr) && werr.ResultStatus == wallet.StatusFailed && wallet.IsRefreshTokenRejection(werr.ResultCode):
		return nil, r.endCustomer(ctx, rec, trigger, werr.ResultCode, true)
	default:
		return nil, r.transientFailure(ctx, rec, trigger, err)
	}
}

func (r *Refresher) storeRefreshed(ctx context.Context, old *tokencache.Record, pair *wallet.TokenResponse, trigger string) (*tokencache.Record, error) {
	r.cfg.Metrics.refreshes.WithLabelValues(trigger, "success", wallet.CodeSuccess).Inc()
	now := r.now()
	rec := *old
	rec.AccessToken = tokencache.Secret(pair.AccessToken.Reveal())
	rec.AccessTokenExpiry = pair.AccessTokenExpiry
	rec.RefreshToken = tokencache.Secret(pair.RefreshToken.Reveal())
	rec.RefreshTokenExpiry = pair.RefreshTokenExpiry
	rec.State = tokencache.StateActive
	rec.LastError = ""
	rec.LastRefresh = now
	rec.NextRefresh = r.nextRefresh(now, pair.AccessTokenExpiry)
	if pair.CustomerID != old.CustomerID {
		r.log.Warn("wallet refreshed a token for another customer id; kept under the original", "customer", old.CustomerID)
	}
	gen, err := r.writeOver(ctx, &rec, old)
	if err != nil {
		return nil, err
	}
	rec.Generation = gen
	r.cache.put(&rec)
	r.clearCooldown(rec.CustomerID)
	r.log.Info("tokens refreshed", "customer", rec.CustomerID, "trigger", trigger, "access_token_expiry", rec.AccessTokenExpiry)
	return &rec, nil
}

// writeOver writes rec over old: only while the store still holds the
// refresh token old held (a bookkeeping write in between is fine; a new
// exchange or a delete wins).
func (r *Refresher) writeOver(ctx context.Context, rec, old *tokencache.Record) (int64, error) {
	expect := old.Generation
	for range 3 {
		gen, err := r.cfg.Store.CompareAndSwap(ctx, rec, expect)
		switch {
		case err == nil:
			r.storeOK()
			return gen, nil
		case errors.Is(err, tokencache.ErrNotFound):
			return 0, ErrNotAuthorized
		case !errors.Is(err, tokencache.ErrConflict):
			r.storeFailed("cas")
			return 0, fmt.Errorf("store refreshed tokens: %w", err)
		}
		cur, err := r.get(ctx, rec.CustomerID)
		if err != nil {
			return 0, err
		}
		if cur.RefreshToken != old.RefreshToken {
			return 0, fmt.Errorf("store refreshed tokens: %w", tokencache.ErrConflict)
		}
		expect = cur.Generation
	}
	return 0, fmt.Errorf("store refreshed tokens: %w", tokencache.ErrConflict)
}

// endCustomer records a refresh-token rejection: the customer needs a new
// authorization. presented tells whether the wallet was called.
func (r *Refresher) endCustomer(ctx context.Context, old *tokencache.Record, trigger, code string, presented bool) error {
	if presented {
		r.cfg.Metrics.refreshes.WithLabelValues(trigger, "failure", code).Inc()
	}
	rec := *old
	rec.State = tokencache.StateReauthorizationRequired
	rec.LastError = code
	rec.NextRefresh = time.Time{}
	if gen, err := r.writeOver(ctx, &rec, old); err != nil {
		r.log.Warn("could not record reauthorization_required", "customer", old.CustomerID, "err", err)
	} else {
		rec.Generation = gen
		r.cache.put(&rec)
	}
	r.log.Warn("refresh token refused: customer must authorize again", "customer", old.CustomerID, "code", code)
	return ErrReauthorizationRequired
}

// transientFailure handles every outcome but S and the three refresh-token
// codes: the customer keeps its tokens, cools down, and the error goes back
// to waiting callers.
func (r *Refresher) transientFailure(ctx context.Context, old *tokencache.Record, trigger string, err error) error {
	code, result := failureCode(err)
	r.cfg.Metrics.refreshes.WithLabelValues(trigger, result, code).Inc()
	r.startCooldown(old.CustomerID, err)
	rec := *old
	rec.LastError = code
	if _, werr := r.writeOver(ctx, &rec, old); werr != nil {
		r.log.Debug("could not record the refresh error", "customer", old.CustomerID, "err", werr)
	}
	r.log.Warn("refresh failed, will retry", "customer", old.CustomerID, "trigger", trigger, "code", code, "err", err)
	return fmt.Errorf("refresh: %w", err)
}

// failureCode names a failed refresh for metrics and lastError: the wallet's
// code when it answered, else the proxy's own.
func failureCode(err error) (code, result string) {
	var werr *wallet.Error
	switch {
	case errors.As(err, &werr):
		if werr.ResultStatus == wallet.StatusFailed {
			return werr.ResultCode, "failure"
		}
		return werr.ResultCode, "unknown"
	case errors.Is(err, wallet.ErrTimeout):
		return wallet.CodeWalletTimeout, "unknown"
	case errors.Is(err, wallet.ErrBadSignature):
		return wallet.CodeInvalidWalletSignature, "unknown"
	default:
		return wallet.CodeWalletUnavailable, "unknown"
	}
}

// nextRefresh is when a token expiring at expiry is due; see NextRefresh.
func (r *Refresher) nextRefresh(now, expiry time.Time) time.Time {
	return NextRefresh(now, expiry, r.cfg.RefreshBefore, r.cfg.RefreshJitter)
}

// NextRefresh is when a token expiring at expiry is due: before plus a
// random spread of up to jitter ahead of expiry, the lead capped at half
// the token's remaining life (so that short-lived tokens are not refreshed
// on every call).
func NextRefresh(now, expiry time.Time, before, jitter time.Duration) time.Time {
	lead := before
	if jitter > 0 {
		lead += rand.N(jitter)
	}
	if life := expiry.Sub(now); lead > life/2 {
		lead = max(life/2, 0)
	}
	return expiry.Add(-lead)
}

// takeRate waits for the refresh rate limiter. Urgent refreshes (a caller
// waits) go ahead: scheduled ones wait while any urgent one is queued.
func (r *Refresher) takeRate(ctx context.Context, urgent bool) error {
	if urgent {
		r.urgent.Add(1)
		defer r.urgent.Add(-1)
		return r.limiter.Wait(ctx)
	}
	for r.urgent.Load() > 0 {
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return r.limiter.Wait(ctx)
}

func (r *Refresher) setRefreshing(id string, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if on {
		r.inflight[id] = true
	} else {
		delete(r.inflight, id)
	}
}

func (r *Refresher) refreshing(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inflight[id]
}

const (
	cooldownMin = time.Second
	cooldownMax = 30 * time.Second
)

func (r *Refresher) startCooldown(id string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cd := r.cooldowns[id]
	cd.attempt++
	d := cooldownMin << min(cd.attempt-1, 5)
	d = min(d, cooldownMax)
	d = d/2 + rand.N(d/2+1) // jitter: spread retries of customers that failed together
	cd.until = r.now().Add(d)
	cd.err = err
	r.cooldowns[id] = cd
}

func (r *Refresher) inCooldown(id string, now time.Time) (cooldown, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cd, ok := r.cooldowns[id]
	return cd, ok && now.Before(cd.until)
}

func (r *Refresher) clearCooldown(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.cooldowns, id)
}

func (r *Refresher) storeOK() { r.cfg.Metrics.storeUp.Set(1) }

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
	}
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
