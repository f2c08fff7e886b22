package walletsim

import (
	"sync"
	"time"
)

// Stats are the simulator's counters, as GET /sim/stats renders them. The
// first four fields are the contract's; the others are extras (benchmarks
// read the refresh lateness ones).
type Stats struct {
	// Calls counts every wallet request received, faulted or not, by path
	// (without the prefix) and grantType: AUTHORIZATION_CODE, REFRESH_TOKEN,
	// "other" for another grantType, "-" for none or for inquiryUserInfo.
	Calls map[string]map[string]int64 `json:"calls"`
	// RefreshTokensReused counts USED_REFRESH_TOKEN answers.
	RefreshTokensReused int64 `json:"refreshTokensReused"`
	// CodesReused counts USED_CODE answers.
	CodesReused int64 `json:"codesReused"`
	// BadSignatures counts INVALID_SIGNATURE answers: a Signature header
	// missing, malformed or not verifying, or a Request-Time out of window.
	BadSignatures int64 `json:"badSignatures"`

	// RefreshPresentations counts refresh tokens presented past every
	// check and fault, i.e. looked up (whatever the answer).
	RefreshPresentations int64 `json:"refreshPresentations"`
	// Exchanges and Refreshes count S answers of each grant type.
	Exchanges int64 `json:"exchanges"`
	Refreshes int64 `json:"refreshes"`
	// FaultsMatched counts calls a fault rule matched.
	FaultsMatched int64 `json:"faultsMatched"`
	// Abandoned counts calls whose caller hung up during a fault's latency
	// (they were not processed).
	Abandoned int64 `json:"abandoned"`

	// RefreshesBeforeAccessExpiry and RefreshesAfterAccessExpiry split the
	// successful refreshes (S answers to REFRESH_TOKEN) by whether the
	// access token they replaced, the chain's current one, was still valid
	// at that moment. A refresh at the very millisecond of the expiry is
	// after it: the simulator treats the token as expired then.
	RefreshesBeforeAccessExpiry int64 `json:"refreshesBeforeAccessExpiry"`
	RefreshesAfterAccessExpiry  int64 `json:"refreshesAfterAccessExpiry"`
	// MaxRefreshLatenessMs is the largest time, in milliseconds, from an
	// access token's expiry to the refresh that replaced it, over the
	// refreshes after expiry; 0 when there were none.
	MaxRefreshLatenessMs int64 `json:"maxRefreshLatenessMs"`

	// TLSHandshakes counts the TLS handshakes completed on an HTTPS
	// listener (see Server.TLSConfig): a client that reuses its
	// connections makes none after its first calls.
	TLSHandshakes int64 `json:"tlsHandshakes"`
}

type statsRecorder struct {
	mu sync.Mutex
	s  Stats
}

func (r *statsRecorder) reset() {
	r.mu.Lock()
	r.s = Stats{Calls: map[string]map[string]int64{}}
	r.mu.Unlock()
}

func (r *statsRecorder) add(f func(*Stats)) {
	r.mu.Lock()
	f(&r.s)
	r.mu.Unlock()
}

func (r *statsRecorder) call(path, grant string) {
	r.add(func(s *Stats) {
		m := s.Calls[path]
		if m == nil {
			m = map[string]int64{}
			s.Calls[path] = m
		}
		m[grant]++
	})
}

func (r *statsRecorder) badSignature()       { r.add(func(s *Stats) { s.BadSignatures++ }) }
func (r *statsRecorder) codeReused()         { r.add(func(s *Stats) { s.CodesReused++ }) }
func (r *statsRecorder) refreshTokenReused() { r.add(func(s *Stats) { s.RefreshTokensReused++ }) }
func (r *statsRecorder) refreshPresented()   { r.add(func(s *Stats) { s.RefreshPresentations++ }) }
func (r *statsRecorder) faultMatched()       { r.add(func(s *Stats) { s.FaultsMatched++ }) }
func (r *statsRecorder) abandoned()          { r.add(func(s *Stats) { s.Abandoned++ }) }

// refreshed records a successful refresh at now of a chain whose access
// token expired, or expires, at accessExpiry (zero: unknown, not counted).
func (r *statsRecorder) refreshed(now, accessExpiry time.Time) {
	if accessExpiry.IsZero() {
		return
	}
	r.add(func(s *Stats) {
		if now.Before(accessExpiry) {
			s.RefreshesBeforeAccessExpiry++
			return
		}
		s.RefreshesAfterAccessExpiry++
		s.MaxRefreshLatenessMs = max(s.MaxRefreshLatenessMs, now.Sub(accessExpiry).Milliseconds())
	})
}

func (r *statsRecorder) issued(grant string) {
	r.add(func(s *Stats) {
		if grant == GrantRefreshToken {
			s.Refreshes++
		} else {
			s.Exchanges++
		}
	})
}

func (r *statsRecorder) snapshot() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.s
	out.Calls = make(map[string]map[string]int64, len(r.s.Calls))
	for p, m := range r.s.Calls {
		c := make(map[string]int64, len(m))
		for g, n := range m {
			c[g] = n
		}
		out.Calls[p] = c
	}
	return out
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats { return s.stats.snapshot() }

// ResetStats zeroes the counters (DELETE /sim/stats). Tokens are kept.
func (s *Server) ResetStats() { s.stats.reset() }
