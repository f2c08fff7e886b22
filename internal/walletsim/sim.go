package walletsim

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

// MaxSeedCount bounds one /sim/seed call.
const MaxSeedCount = 1_000_000

// DefaultSeedPrefix is the customer id prefix of /sim/seed.
const DefaultSeedPrefix = "seed-"

// seedBatch is how many pairs are minted under one lock and written at once.
const seedBatch = 1024

// serveSim serves the unsigned test and demo endpoints under /sim/.
func (s *Server) serveSim(w http.ResponseWriter, r *http.Request, name string) {
	type route struct {
		method string
		h      func(http.ResponseWriter, *http.Request)
	}
	var routes []route
	switch name {
	case "authcodes":
		routes = []route{{http.MethodPost, s.simAuthCode}}
	case "seed":
		routes = []route{{http.MethodPost, s.simSeed}}
	case "faults":
		routes = []route{{http.MethodPost, s.simAddFault}, {http.MethodGet, s.simListFaults}, {http.MethodDelete, s.simClearFaults}}
	case "stats":
		routes = []route{{http.MethodGet, s.simStats}, {http.MethodDelete, s.simResetStats}}
	case "publickey":
		routes = []route{{http.MethodGet, s.simPublicKey}}
	case "ledger":
		routes = []route{{http.MethodGet, s.simLedger}}
	default:
		simError(w, http.StatusNotFound, "no such endpoint: /sim/"+name)
		return
	}
	allow := ""
	for _, rt := range routes {
		if rt.method == r.Method {
			rt.h(w, r)
			return
		}
		if allow != "" {
			allow += ", "
		}
		allow += rt.method
	}
	w.Header().Set("Allow", allow)
	simError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed; use "+allow)
}

func simJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"render answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func simError(w http.ResponseWriter, status int, msg string) {
	simJSON(w, status, map[string]string{"error": msg})
}

var simOK = map[string]bool{"ok": true}

// decodeSim reads one JSON object into v, refusing unknown fields.
func decodeSim(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("body must be a JSON object")
		}
		return fmt.Errorf("bad JSON body: %v", err)
	}
	if dec.More() {
		return errors.New("body must be one JSON object")
	}
	return nil
}

// ttl parses an optional Go duration field; empty means def.
func ttl(name, v string, def time.Duration) (time.Duration, error) {
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s must be a positive Go duration such as 30s or 2h", name)
	}
	return d, nil
}

type chainRequest struct {
	AccessTTL  string `json:"accessTtl"`
	RefreshTTL string `json:"refreshTtl"`
	// RefreshedAccessTTL is the access TTL of the pairs refreshed from the
	// first one (empty: accessTtl), so a benchmark can seed tokens due soon
	// whose refreshed successors are not due again, and a test can start
	// with an expired token whose successor stays valid however slow the
	// machine.
	RefreshedAccessTTL string `json:"refreshedAccessTtl"`
}

func (s *Server) chain(c chainRequest) (lifetimes, error) {
	a, err := ttl("accessTtl", c.AccessTTL, s.cfg.AccessTTL)
	if err != nil {
		return lifetimes{}, err
	}
	rt, err := ttl("refreshTtl", c.RefreshTTL, s.cfg.RefreshTTL)
	if err != nil {
		return lifetimes{}, err
	}
	next, err := ttl("refreshedAccessTtl", c.RefreshedAccessTTL, 0)
	if err != nil {
		return lifetimes{}, err
	}
	return lifetimes{access: a, refresh: rt, nextAccess: next}, nil
}

// NewAuthCode makes an authorization code for customerID (the user's
// consent), living codeTTL (0: Config.CodeTTL). The token chain it starts
// uses the accessTTL and refreshTTL given (0: the Config's).
func (s *Server) NewAuthCode(customerID string, accessTTL, refreshTTL, codeTTL time.Duration) (string, error) {
	if err := wallet.ValidCustomerID(customerID); err != nil {
		return "", err
	}
	if accessTTL < 0 || refreshTTL < 0 || codeTTL < 0 {
		return "", errors.New("lifetimes must not be negative")
	}
	ch := lifetimes{access: orDefault(accessTTL, s.cfg.AccessTTL), refresh: orDefault(refreshTTL, s.cfg.RefreshTTL)}
	return s.tokens.newCode(customerID, orDefault(codeTTL, s.cfg.CodeTTL), ch, s.now()), nil
}

func orDefault(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

func (s *Server) simAuthCode(w http.ResponseWriter, r *http.Request) {
	var req struct {
		CustomerID string `json:"customerId"`
		chainRequest
		CodeTTL string `json:"codeTtl"`
	}
	if err := decodeSim(w, r, &req); err != nil {
		simError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := wallet.ValidCustomerID(req.CustomerID); err != nil {
		simError(w, http.StatusBadRequest, "customerId: "+err.Error())
		return
	}
	ch, err := s.chain(req.chainRequest)
	if err != nil {
		simError(w, http.StatusBadRequest, err.Error())
		return
	}
	codeTTL, err := ttl("codeTtl", req.CodeTTL, s.cfg.CodeTTL)
	if err != nil {
		simError(w, http.StatusBadRequest, err.Error())
		return
	}
	code := s.tokens.newCode(req.CustomerID, codeTTL, ch, s.now())
	simJSON(w, http.StatusOK, map[string]string{"authCode": code})
}

// seedLine is one NDJSON line of /sim/seed, the `tokenproxy import` format.
type seedLine struct {
	CustomerID             string `json:"customerId"`
	AccessToken            string `json:"accessToken"`
	AccessTokenExpiryTime  string `json:"accessTokenExpiryTime"`
	RefreshToken           string `json:"refreshToken"`
	RefreshTokenExpiryTime string `json:"refreshTokenExpiryTime"`
}

func (s *Server) simSeed(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Count  int     `json:"count"`
		Prefix *string `json:"prefix"`
		Start  int     `json:"start"`
		chainRequest
	}
	if err := decodeSim(w, r, &req); err != nil {
		simError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Count < 1 || req.Count > MaxSeedCount {
		simError(w, http.StatusBadRequest, fmt.Sprintf("count must be between 1 and %d", MaxSeedCount))
		return
	}
	if req.Start < 0 || req.Start > math32 {
		simError(w, http.StatusBadRequest, "start must be between 0 and 2147483647")
		return
	}
	prefix := DefaultSeedPrefix
	if req.Prefix != nil {
		prefix = *req.Prefix
	}
	// The last id is the longest: if it and the first are valid, all are.
	for _, i := range []int{req.Start, req.Start + req.Count - 1} {
		if err := wallet.ValidCustomerID(prefix + strconv.Itoa(i)); err != nil {
			simError(w, http.StatusBadRequest, "prefix: customerId "+err.Error())
			return
		}
	}
	ch, err := s.chain(req.chainRequest)
	if err != nil {
		simError(w, http.StatusBadRequest, err.Error())
		return
	}

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	ids := make([]string, 0, seedBatch)
	pairs := make([]pair, 0, seedBatch)
	for done := 0; done < req.Count; {
		if r.Context().Err() != nil {
			return // the caller left: stop minting
		}
		extendDeadlines(w, r, 0)
		ids = ids[:0]
		for i := 0; i < seedBatch && done+i < req.Count; i++ {
			ids = append(ids, prefix+strconv.Itoa(req.Start+done+i))
		}
		pairs = s.tokens.seed(ids, ch, s.now(), pairs[:0])
		for _, p := range pairs {
			if err := enc.Encode(seedLine{p.customerID, p.access, formatExpiry(p.accessExpiry), p.refresh, formatExpiry(p.refreshExpiry)}); err != nil {
				return
			}
		}
		done += len(ids)
	}
	_ = bw.Flush()
}

const math32 = 1<<31 - 1

// faultJSON is Fault on the wire: latency as a Go duration string.
type faultJSON struct {
	Fault
	Latency string `json:"latency,omitempty"`
}

func (s *Server) simAddFault(w http.ResponseWriter, r *http.Request) {
	var req faultJSON
	if err := decodeSim(w, r, &req); err != nil {
		simError(w, http.StatusBadRequest, err.Error())
		return
	}
	f := req.Fault
	if req.Latency != "" {
		d, err := time.ParseDuration(req.Latency)
		if err != nil {
			simError(w, http.StatusBadRequest, "latency must be a Go duration such as 250ms")
			return
		}
		f.Latency = d
	}
	if err := s.AddFault(f); err != nil {
		simError(w, http.StatusBadRequest, err.Error())
		return
	}
	simJSON(w, http.StatusOK, simOK)
}

func (s *Server) simListFaults(w http.ResponseWriter, _ *http.Request) {
	fs := s.Faults()
	out := make([]faultJSON, 0, len(fs))
	for _, f := range fs {
		fj := faultJSON{Fault: f}
		if f.Latency > 0 {
			fj.Latency = f.Latency.String()
		}
		out = append(out, fj)
	}
	simJSON(w, http.StatusOK, map[string]any{"faults": out})
}

func (s *Server) simClearFaults(w http.ResponseWriter, _ *http.Request) {
	s.ClearFaults()
	simJSON(w, http.StatusOK, simOK)
}

func (s *Server) simStats(w http.ResponseWriter, _ *http.Request) {
	simJSON(w, http.StatusOK, s.Stats())
}

func (s *Server) simResetStats(w http.ResponseWriter, _ *http.Request) {
	s.ResetStats()
	simJSON(w, http.StatusOK, simOK)
}

func (s *Server) simPublicKey(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write(s.pubPEM)
}
