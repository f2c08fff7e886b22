package walletsim

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// MaxFaultLatency bounds Fault.Latency.
const MaxFaultLatency = 10 * time.Minute

// Fault is one fault rule. A wallet call is matched against the rules in
// the order they were added; the first one that matches and has count left
// applies (and consumes one of its count), the others do not.
//
// What a rule does, in this order, each effect only when its rate draws it:
// Latency (a caller that hangs up meanwhile leaves the call unprocessed),
// ResetRate, HTML5xxRate, RateLimitPerSecond, UnknownRate, FailCode/FailRate
// (all these answer or cut without processing); then the call is processed
// and DropAfterProcessing or BadSignatureRate spoil the answer.
type Fault struct {
	// Path limits the rule to one wallet path (with or without the
	// prefix). Empty: every wallet path.
	Path string `json:"path,omitempty"`
	// GrantType limits the rule to applyToken calls of that grantType.
	GrantType string `json:"grantType,omitempty"`
	// Count is how many matching calls the rule applies to; 0: unlimited.
	Count int `json:"count,omitempty"`
	// Latency is slept (real time) before processing.
	Latency time.Duration `json:"-"`
	// UnknownRate (0..1): answer U UNKNOWN_EXCEPTION without processing.
	UnknownRate float64 `json:"unknownRate,omitempty"`
	// FailCode, with FailRate (0..1, 0 meaning 1): answer F FailCode without
	// processing (U when FailCode is UNKNOWN_EXCEPTION).
	FailCode string  `json:"failCode,omitempty"`
	FailRate float64 `json:"failRate,omitempty"`
	// DropAfterProcessing: process fully, then close the connection without
	// answering.
	DropAfterProcessing bool `json:"dropAfterProcessing,omitempty"`
	// ResetRate (0..1): reset the connection (TCP RST) without processing.
	ResetRate float64 `json:"resetRate,omitempty"`
	// HTML5xxRate (0..1): answer 502 text/html without processing.
	HTML5xxRate float64 `json:"html5xxRate,omitempty"`
	// RateLimitPerSecond > 0: a token bucket (burst: the rate rounded up)
	// on the simulator's clock; calls over it get F REQUEST_TRAFFIC_EXCEED_LIMIT.
	RateLimitPerSecond float64 `json:"rateLimitPerSecond,omitempty"`
	// BadSignatureRate (0..1): process normally, sign the answer wrongly.
	BadSignatureRate float64 `json:"badSignatureRate,omitempty"`
}

type faultRule struct {
	Fault
	remaining int // < 0: unlimited
	limiter   *rate.Limiter
}

type faultSet struct {
	mu    sync.Mutex
	rules []*faultRule
}

// AddFault validates f and appends it to the rules.
func (s *Server) AddFault(f Fault) error {
	if err := s.normalizeFault(&f); err != nil {
		return err
	}
	r := &faultRule{Fault: f, remaining: f.Count}
	if f.Count == 0 {
		r.remaining = -1
	}
	if f.RateLimitPerSecond > 0 {
		burst := int(math.Ceil(f.RateLimitPerSecond))
		r.limiter = rate.NewLimiter(rate.Limit(f.RateLimitPerSecond), burst)
	}
	s.faults.mu.Lock()
	s.faults.rules = append(s.faults.rules, r)
	s.faults.mu.Unlock()
	return nil
}

// ClearFaults removes every rule (DELETE /sim/faults).
func (s *Server) ClearFaults() {
	s.faults.mu.Lock()
	s.faults.rules = nil
	s.faults.mu.Unlock()
}

// Faults lists the rules in force, Count being what is left of each
// (0: unlimited).
func (s *Server) Faults() []Fault {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	out := make([]Fault, 0, len(s.faults.rules))
	for _, r := range s.faults.rules {
		f := r.Fault
		f.Count = max(r.remaining, 0)
		out = append(out, f)
	}
	return out
}

func (s *Server) normalizeFault(f *Fault) error {
	if f.Path != "" {
		p := f.Path
		if s.prefix != "" {
			p = strings.TrimPrefix(p, s.prefix)
		}
		if !isWalletPath(p) {
			return fmt.Errorf("path must be one of %s, %s, %s", PathApplyTokenV1, PathApplyTokenV2, PathInquiryUserInfo)
		}
		f.Path = p
	}
	switch f.GrantType {
	case "", GrantAuthorizationCode, GrantRefreshToken:
	default:
		return errors.New("grantType must be AUTHORIZATION_CODE or REFRESH_TOKEN")
	}
	if f.GrantType != "" && f.Path != "" && !isApplyToken(f.Path) {
		return errors.New("grantType only matches applyToken paths")
	}
	if f.Count < 0 {
		return errors.New("count must not be negative")
	}
	if f.Latency < 0 || f.Latency > MaxFaultLatency {
		return fmt.Errorf("latency must be between 0 and %s", MaxFaultLatency)
	}
	for _, r := range []struct {
		name string
		v    float64
	}{
		{"unknownRate", f.UnknownRate}, {"failRate", f.FailRate}, {"resetRate", f.ResetRate},
		{"html5xxRate", f.HTML5xxRate}, {"badSignatureRate", f.BadSignatureRate},
	} {
		if !(r.v >= 0 && r.v <= 1) {
			return fmt.Errorf("%s must be between 0 and 1", r.name)
		}
	}
	if !(f.RateLimitPerSecond >= 0 && f.RateLimitPerSecond <= 1e6) {
		return errors.New("rateLimitPerSecond must be between 0 and 1000000")
	}
	if f.FailRate > 0 && f.FailCode == "" {
		return errors.New("failRate needs failCode")
	}
	if f.FailCode != "" {
		if !validResultCode(f.FailCode) {
			return errors.New("failCode must be 1 to 64 characters of A-Z, 0-9 and _")
		}
		if f.FailCode == wallet.CodeSuccess {
			return errors.New("failCode must not be SUCCESS")
		}
		if f.FailRate == 0 {
			f.FailRate = 1
		}
	}
	return nil
}

func validResultCode(c string) bool {
	if c == "" || len(c) > 64 {
		return false
	}
	for _, r := range c {
		if !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

// match returns the rule that applies to a call, consuming one of its
// count, or nil. Exhausted rules are dropped.
func (fs *faultSet) match(path, grant string) *faultRule {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for i, r := range fs.rules {
		if r.Path != "" && r.Path != path {
			continue
		}
		if r.GrantType != "" && (!isApplyToken(path) || r.GrantType != grant) {
			continue
		}
		if r.remaining > 0 {
			r.remaining--
			if r.remaining == 0 {
				fs.rules = append(fs.rules[:i:i], fs.rules[i+1:]...)
			}
		}
		return r
	}
	return nil
}

// hit draws an event of probability p.
func hit(p float64) bool { return p >= 1 || (p > 0 && rand.Float64() < p) }

const badGatewayHTML = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"

// applyFaultBefore applies what rule does before processing. It reports
// whether the call is over (answered, cut, or abandoned by its caller).
func (s *Server) applyFaultBefore(w http.ResponseWriter, r *http.Request, rule *faultRule, uri, clientID string) bool {
	if rule.Latency > 0 {
		extendDeadlines(w, r, rule.Latency)
		t := time.NewTimer(rule.Latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
		if r.Context().Err() != nil {
			s.stats.abandoned() // the caller hung up: the call is not processed
			return true
		}
	}
	switch {
	case hit(rule.ResetRate):
		cutConnection(w, true)
	case hit(rule.HTML5xxRate):
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte(badGatewayHTML))
	case rule.limiter != nil && !rule.limiter.AllowN(s.now(), 1):
		s.reply(w, uri, clientID, fail(wallet.CodeTrafficExceedLimit, "request traffic exceeds the limit"), false)
	case hit(rule.UnknownRate):
		s.reply(w, uri, clientID, answer{http.StatusOK, wallet.StatusUnknown, wallet.CodeUnknownException,
			"An API calling is failed, which is caused by unknown reasons."}, false)
	case rule.FailCode != "" && hit(rule.FailRate):
		status := wallet.StatusFailed
		if rule.FailCode == wallet.CodeUnknownException {
			status = wallet.StatusUnknown
		}
		s.reply(w, uri, clientID, answer{http.StatusOK, status, rule.FailCode, "fault injected by walletsim"}, false)
	default:
		return false
	}
	return true
}

// extendDeadlines pushes the connection's deadlines past a deliberate delay
// d, when the server has any (an http.Server without timeouts keeps none,
// and a deadline set here would outlive this request).
func extendDeadlines(w http.ResponseWriter, r *http.Request, d time.Duration) {
	srv, _ := r.Context().Value(http.ServerContextKey).(*http.Server)
	if srv == nil {
		return
	}
	rc := http.NewResponseController(w)
	at := time.Now().Add(d + 30*time.Second)
	if srv.ReadTimeout > 0 {
		_ = rc.SetReadDeadline(at)
	}
	if srv.WriteTimeout > 0 {
		_ = rc.SetWriteDeadline(at)
	}
}

// cutConnection closes the connection without an answer; rst makes it a
// TCP reset (SO_LINGER 0) instead of an orderly close. Where the connection
// cannot be hijacked (HTTP/2) the stream is aborted instead.
func cutConnection(w http.ResponseWriter, rst bool) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if rst {
		c := conn
		if nc, ok := c.(interface{ NetConn() net.Conn }); ok { // TLS
			c = nc.NetConn()
		}
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
	}
	_ = conn.Close()
}
