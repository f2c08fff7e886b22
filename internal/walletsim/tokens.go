package walletsim

import (
	"crypto/rand"
	"sync"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// Token and code lengths. Characters are [A-Za-z0-9].
const (
	tokenLen = 40
	codeLen  = 32
)

const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// randomString returns n characters of alphabet from crypto/rand, without
// modulo bias.
func randomString(n int) string {
	out := make([]byte, 0, n)
	var buf [64]byte
	for len(out) < n {
		_, _ = rand.Read(buf[:]) // never fails since Go 1.24
		for _, c := range buf {
			if c >= 248 { // 248 = 4*62: keep the distribution uniform
				continue
			}
			out = append(out, alphabet[c%62])
			if len(out) == n {
				break
			}
		}
	}
	return string(out)
}

// lifetimes are the TTLs of one token chain: every pair refreshed from a
// code or a seeded pair gets the same, except that a seeded chain may give
// the pairs refreshed from it another access TTL (nextAccess).
type lifetimes struct {
	access, refresh time.Duration
	// nextAccess, when set, is the access TTL of every pair refreshed from
	// this chain (0: access).
	nextAccess time.Duration
}

// next is the chain's lifetimes for the pairs refreshed from it.
func (l lifetimes) next() lifetimes {
	if l.nextAccess > 0 {
		return lifetimes{access: l.nextAccess, refresh: l.refresh}
	}
	return l
}

type codeEntry struct {
	customerID string
	expires    time.Time
	used       bool
	chain      lifetimes
}

type accessEntry struct {
	customerID string
	expires    time.Time
	revoked    bool // replaced by a refresh
}

type refreshEntry struct {
	customerID string
	expires    time.Time
	used       bool
	access     string // the access token issued with it, revoked when it is used
	chain      lifetimes
}

// pair is an issued token pair.
type pair struct {
	customerID    string
	access        string
	accessExpiry  time.Time
	refresh       string
	refreshExpiry time.Time
}

// tokenStore holds every code and token ever issued (used ones too: they
// answer USED_CODE and USED_REFRESH_TOKEN). One mutex: the work done under
// it is a few map operations, tiny next to the RSA work of every call.
type tokenStore struct {
	mu      sync.Mutex
	codes   map[string]*codeEntry
	access  map[string]*accessEntry
	refresh map[string]*refreshEntry
}

func (t *tokenStore) init() {
	t.codes = make(map[string]*codeEntry)
	t.access = make(map[string]*accessEntry)
	t.refresh = make(map[string]*refreshEntry)
}

// expiry is now+ttl at millisecond precision, so the time announced
// (formatted with milliseconds) is exactly the time enforced.
func expiry(now time.Time, ttl time.Duration) time.Time {
	return now.Add(ttl).Truncate(time.Millisecond)
}

func expired(now, at time.Time) bool { return !now.Before(at) }

func (t *tokenStore) newCode(customerID string, ttl time.Duration, chain lifetimes, now time.Time) string {
	code := randomString(codeLen)
	t.mu.Lock()
	defer t.mu.Unlock()
	for t.codes[code] != nil {
		code = randomString(codeLen)
	}
	t.codes[code] = &codeEntry{customerID: customerID, expires: expiry(now, ttl), chain: chain}
	return code
}

// mintLocked issues a new pair for customerID. t.mu must be held.
func (t *tokenStore) mintLocked(customerID string, chain lifetimes, now time.Time) pair {
	p := pair{
		customerID:    customerID,
		access:        randomString(tokenLen),
		accessExpiry:  expiry(now, chain.access),
		refresh:       randomString(tokenLen),
		refreshExpiry: expiry(now, chain.refresh),
	}
	for t.access[p.access] != nil {
		p.access = randomString(tokenLen)
	}
	for t.refresh[p.refresh] != nil || p.refresh == p.access {
		p.refresh = randomString(tokenLen)
	}
	t.access[p.access] = &accessEntry{customerID: customerID, expires: p.accessExpiry}
	t.refresh[p.refresh] = &refreshEntry{customerID: customerID, expires: p.refreshExpiry, access: p.access, chain: chain}
	return p
}

// exchange spends an authorization code. It returns the new pair, or the F
// resultCode: INVALID_CODE, USED_CODE, EXPIRED_CODE (checked in that order).
func (t *tokenStore) exchange(code string, now time.Time) (pair, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.codes[code]
	switch {
	case c == nil:
		return pair{}, wallet.CodeInvalidCode
	case c.used:
		return pair{}, wallet.CodeUsedCode
	case expired(now, c.expires):
		return pair{}, wallet.CodeExpiredCode
	}
	c.used = true
	return t.mintLocked(c.customerID, c.chain, now), ""
}

// rotate spends a refresh token: it marks it used, revokes the access token
// issued with it and returns a new pair for the same customer and chain,
// with the expiry of the access token it replaced (the chain's current one
// until now); or the F resultCode INVALID_REFRESH_TOKEN, USED_REFRESH_TOKEN,
// EXPIRED_REFRESH_TOKEN (checked in that order).
func (t *tokenStore) rotate(token string, now time.Time) (p pair, replacedExpiry time.Time, code string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.refresh[token]
	switch {
	case e == nil:
		return pair{}, time.Time{}, wallet.CodeInvalidRefreshToken
	case e.used:
		return pair{}, time.Time{}, wallet.CodeUsedRefreshToken
	case expired(now, e.expires):
		return pair{}, time.Time{}, wallet.CodeExpiredRefreshToken
	}
	e.used = true
	if a := t.access[e.access]; a != nil {
		a.revoked = true
		replacedExpiry = a.expires
	}
	return t.mintLocked(e.customerID, e.chain.next(), now), replacedExpiry, ""
}

// customerOf returns the customer of a usable access token, or the F
// resultCode INVALID_ACCESS_TOKEN (unknown or revoked) or EXPIRED_ACCESS_TOKEN.
func (t *tokenStore) customerOf(token string, now time.Time) (string, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := t.access[token]
	switch {
	case a == nil || a.revoked:
		return "", wallet.CodeInvalidAccessToken
	case expired(now, a.expires):
		return "", wallet.CodeExpiredAccessToken
	}
	return a.customerID, ""
}

// seed mints one pair per customer id, under one lock for the whole batch.
func (t *tokenStore) seed(customerIDs []string, chain lifetimes, now time.Time, out []pair) []pair {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range customerIDs {
		out = append(out, t.mintLocked(id, chain, now))
	}
	return out
}
