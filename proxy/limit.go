package proxy

import (
	"net/http"
	"sync/atomic"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// Copies of a body the proxy holds at once at most, by which the bytes of
// a body are multiplied when they are budgeted: a request body is read,
// parsed, rewritten with the token and signed; an answer is read, checked
// and possibly rewritten.
const (
	requestCopies  = 5
	responseCopies = 3
)

// Limiter bounds the app calls handled at once and the bytes of request
// and answer bodies they may hold. Over either bound a call is answered 503
// REQUEST_TRAFFIC_EXCEED_LIMIT at once, before anything is sent to the
// wallet; nothing queues. Safe for concurrent use; the zero value and nil
// limit nothing.
type Limiter struct {
	inflight atomic.Int64
	budget   atomic.Int64 // bytes still free
	max      int64
}

// NewLimiter returns a Limiter of maxInflight calls and budget bytes.
func NewLimiter(maxInflight int, budget int64) *Limiter {
	l := &Limiter{max: int64(maxInflight)}
	l.budget.Store(budget)
	return l
}

// admit takes a call slot; false when every slot is taken.
func (l *Limiter) admit() bool {
	if l == nil || l.max <= 0 {
		return true
	}
	if l.inflight.Add(1) > l.max {
		l.inflight.Add(-1)
		return false
	}
	return true
}

func (l *Limiter) done() {
	if l != nil && l.max > 0 {
		l.inflight.Add(-1)
	}
}

// grow takes n bytes of the budget; false, taking nothing, when fewer are
// free.
func (l *Limiter) grow(n int64) bool {
	if l == nil || l.max <= 0 {
		return true
	}
	for {
		free := l.budget.Load()
		if free < n {
			return false
		}
		if l.budget.CompareAndSwap(free, free-n) {
			return true
		}
	}
}

func (l *Limiter) give(n int64) {
	if l != nil && l.max > 0 && n > 0 {
		l.budget.Add(n)
	}
}

// callBudget is what one call has taken of the Limiter's budget; release
// gives it all back when the call ends. It is the wallet.Budget of the
// call's wallet requests.
type callBudget struct {
	l     *Limiter
	taken atomic.Int64
}

var _ wallet.Budget = (*callBudget)(nil)

// Grow takes n bytes for an answer being read, as responseCopies of it.
func (b *callBudget) Grow(n int64) bool { return b.take(n * responseCopies) }

func (b *callBudget) take(n int64) bool {
	if !b.l.grow(n) {
		return false
	}
	b.taken.Add(n)
	return true
}

func (b *callBudget) release() { b.l.give(b.taken.Swap(0)) }

func overLimit(what string) *proxyError {
	return failF(http.StatusServiceUnavailable, wallet.CodeTrafficExceedLimit, what+"; nothing was sent, retry later")
}
