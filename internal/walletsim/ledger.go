package walletsim

import (
	"net/http"
	"sync"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// Ledger is what the simulator knows about the exactly-once promise of its
// clients (GET /sim/ledger): every refresh token it processed, what it
// answered, and whether that answer reached the client. A presentation is
// processed when it got past every fault and check and the token was looked
// up (RefreshPresentations of Stats); an answer is delivered when it was
// written whole, unspoilt, to a client still connected. Faults that answer
// or cut without processing (latency the caller did not wait for, resets,
// 5xx, U, rate limits) leave the token untouched and are not presentations.
type Ledger struct {
	// Presentations counts processed refresh-token presentations;
	// Represented those of a token processed before.
	Presentations int64 `json:"presentations"`
	Represented   int64 `json:"represented"`
	// RepresentedAfterKnown counts re-presentations of a token whose
	// earlier answer, S or a refresh-token F, was delivered: the client
	// knew the outcome and presented it again (must be 0).
	RepresentedAfterKnown int64 `json:"representedAfterKnownOutcome"`
	// Overlapping counts presentations that began while another one of
	// the same token was being processed (must be 0).
	Overlapping int64 `json:"overlapping"`
	// Undelivered counts processed presentations whose answer did not
	// reach the client (dropped after processing, badly signed, or the
	// client gone): unknown outcomes.
	Undelivered int64 `json:"undelivered"`
	// LostRotations counts USED_REFRESH_TOKEN answers to a token whose
	// rotation (S) was never delivered; SPairsLost those to a token whose S
	// was delivered: the client had the new pair and lost it (must be 0).
	LostRotations int64 `json:"lostRotations"`
	SPairsLost    int64 `json:"sPairsLost"`
	// AfterKnown lists the first 100 re-presentations after a known
	// outcome: the customer, and when that outcome was delivered (a client
	// killed about then lost it with its process).
	AfterKnown []LostPair `json:"afterKnown"`
}

// LostPair is one re-presentation after a known outcome (see
// Ledger.AfterKnown): when the outcome was delivered, and when the token
// was presented again.
type LostPair struct {
	CustomerID    string    `json:"customerId"`
	DeliveredAt   time.Time `json:"deliveredAt"`
	RepresentedAt time.Time `json:"representedAt"`
}

type ledgerEntry struct {
	presented int
	inFlight  int
	known     bool      // an S or refresh-token F answer was delivered
	knownAt   time.Time // when
	sent      bool      // its S was delivered
}

type ledger struct {
	mu     sync.Mutex
	l      Ledger
	tokens map[string]*ledgerEntry
}

// presented records that token, of customer, is being processed with
// answer code.
func (g *ledger) presented(token, customer, code string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.tokens == nil {
		g.tokens = make(map[string]*ledgerEntry)
	}
	e := g.tokens[token]
	if e == nil {
		e = &ledgerEntry{}
		g.tokens[token] = e
	}
	g.l.Presentations++
	if e.presented > 0 {
		g.l.Represented++
		if e.known {
			g.l.RepresentedAfterKnown++
			if len(g.l.AfterKnown) < 100 {
				g.l.AfterKnown = append(g.l.AfterKnown, LostPair{CustomerID: customer, DeliveredAt: e.knownAt, RepresentedAt: time.Now()})
			}
		}
	}
	if e.inFlight > 0 {
		g.l.Overlapping++
	}
	if code == wallet.CodeUsedRefreshToken {
		if e.sent {
			g.l.SPairsLost++
		} else {
			g.l.LostRotations++
		}
	}
	e.presented++
	e.inFlight++
}

// answered records whether the answer to a presentation of token, with
// code, reached the client.
func (g *ledger) answered(token, code string, delivered bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.tokens[token]
	if e == nil {
		return
	}
	e.inFlight--
	if !delivered {
		g.l.Undelivered++
		return
	}
	if code == wallet.CodeSuccess || wallet.IsRefreshTokenRejection(code) {
		e.known, e.knownAt = true, time.Now()
	}
	if code == wallet.CodeSuccess {
		e.sent = true
	}
}

func (g *ledger) snapshot() Ledger {
	g.mu.Lock()
	defer g.mu.Unlock()
	l := g.l
	l.AfterKnown = append([]LostPair(nil), g.l.AfterKnown...)
	return l
}

// customerOfRefresh is the customer a refresh token was issued to, or "".
func (t *tokenStore) customerOfRefresh(token string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.refresh[token]; e != nil {
		return e.customerID
	}
	return ""
}

// Ledger returns a copy of the exactly-once ledger.
func (s *Server) Ledger() Ledger { return s.ledger.snapshot() }

func (s *Server) simLedger(w http.ResponseWriter, _ *http.Request) {
	simJSON(w, http.StatusOK, s.Ledger())
}
