package main

// Black-box tests of the cross-replica refresh engine (issue "Refresh
// engine"; design.md "Exactly one refresh per refresh token"). They run the
// real binaries only: tokenproxy replicas sharing one redis-server and one
// encryption key, and walletsim behind the harness's tap. They assert
// counts: walletsim's /sim/stats (calls per path and grantType,
// refreshTokensReused), tokenproxy's /metrics and its admin API. Time only
// enters as token lifetimes and as deadlines of polls.
//
// Sizing (design.md, "Tests on a 2-core machine"): the binaries are built
// with -race; a proxied call costs about two RSA-2048 signatures (the
// proxy's and walletsim's), a refresh two more. Each test says what it was
// sized for. All of them run in parallel with each other (go test's
// -parallel, GOMAXPROCS by default: two at a time on two cores), each with
// its own walletsim, Redis and replicas.

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Admin states.
const (
	stateValid      = "valid"
	stateRefreshing = "refreshing"
	stateExpired    = "expired"
	stateReauth     = "reauthorization_required"
)

const lostRotationsSeries = "tokenproxy_lost_rotations_total"

// engineEnv makes tokens due only at their expiry (nothing refreshes ahead),
// and keeps the scheduler away from customers without app calls for a
// second, so that a test's app calls, not the scheduler, make the refresh
// of an expired token: "refreshed ... only on their next call".
var engineEnv = []string{
	"TOKENPROXY_REFRESH_BEFORE=0s",
	"TOKENPROXY_REFRESH_JITTER=0s",
	"TOKENPROXY_REFRESH_IDLE_AFTER=1s",
}

// adminStatus is GET /tokenproxy/customers/{id}.
type adminStatus struct {
	CustomerID             string     `json:"customerId"`
	State                  string     `json:"state"`
	AccessTokenExpiryTime  *time.Time `json:"accessTokenExpiryTime"`
	RefreshTokenExpiryTime *time.Time `json:"refreshTokenExpiryTime"`
	NextRefreshTime        *time.Time `json:"nextRefreshTime"`
	LastRefreshTime        *time.Time `json:"lastRefreshTime"`
	LastError              *string    `json:"lastError"`
}

func (s adminStatus) lastError() string {
	if s.LastError == nil {
		return "<null>"
	}
	return *s.LastError
}

func (s adminStatus) String() string {
	b, _ := json.Marshal(s)
	return string(b)
}

// admin reads a customer's status through p: the HTTP status, the result
// code of an error answer, and the status of a 200.
func admin(t *testing.T, p *proxyProc, id string) (int, string, adminStatus) {
	t.Helper()
	status, body, _ := do(t, "GET", p.url+"/tokenproxy/customers/"+id, "", nil)
	var st adminStatus
	if status == 200 {
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatalf("admin status of %s: %v: %s", id, err, body)
		}
	}
	return status, resultCode(body), st
}

// waitStatus polls p's admin API until ok accepts the customer's status,
// failing the test at the deadline with the last status seen. fail, when
// it returns a reason, ends the wait early: the status can no longer
// become acceptable.
func waitStatus(t *testing.T, p *proxyProc, id string, timeout time.Duration, what string,
	ok func(adminStatus) bool, fail func(adminStatus) string) adminStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		status, code, st := admin(t, p, id)
		if status == 200 && ok(st) {
			return st
		}
		if status == 200 && fail != nil {
			if reason := fail(st); reason != "" {
				t.Fatalf("%s: waiting for %s: %s (status %s)", id, what, reason, st)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not %s within %v: admin answered %d %s %s", id, what, timeout, status, code, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func stateIs(states ...string) func(adminStatus) bool {
	return func(st adminStatus) bool {
		for _, s := range states {
			if st.State == s {
				return true
			}
		}
		return false
	}
}

// refreshedAhead fails a wait for "expired": the customer was refreshed or
// ended before any app call asked for it.
func refreshedAhead(st adminStatus) string {
	switch {
	case st.State == stateReauth:
		return "ended before any app call"
	case st.LastRefreshTime != nil:
		return "refreshed before any app call asked for it (IDLE_AFTER should keep the scheduler away)"
	}
	return ""
}

// waitUntil polls cond every 20 ms until it holds or timeout passes.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not %s within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// appCall makes a proxied inquiryUserInfo call for the customer.
func appCall(t *testing.T, p *proxyProc, id string) (int, string) {
	t.Helper()
	status, body, _ := do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": id})
	return status, resultCode(body)
}

// appCallUntil repeats app calls for the customer, round robin over procs
// every 100 ms, until one answers wantStatus with wantCode; it returns how
// many calls that took.
func appCallUntil(t *testing.T, procs []*proxyProc, id string, wantStatus int, wantCode string, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	seen := map[string]int{}
	for i := 0; ; i++ {
		status, code := appCall(t, procs[i%len(procs)], id)
		if status == wantStatus && code == wantCode {
			return i + 1
		}
		seen[fmt.Sprintf("%d %s", status, code)]++
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %d %s within %v; answers: %v", id, wantStatus, wantCode, timeout, seen)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stampede makes perReplica concurrent app calls for the customer through
// every replica at once and returns the answers that were not 200 SUCCESS.
func stampede(procs []*proxyProc, id string, perReplica int) []string {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []string
	)
	start := make(chan struct{})
	for _, p := range procs {
		for range perReplica {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				status, body, err := tryDo("POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": id})
				if err == nil && status == 200 && resultCode(body) == "SUCCESS" {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failures = append(failures, err.Error())
				} else {
					failures = append(failures, fmt.Sprintf("%d %s", status, resultCode(body)))
				}
			}()
		}
	}
	close(start)
	wg.Wait()
	return failures
}

// summarize counts equal strings: "502 WALLET_UNAVAILABLE x3, ...".
func summarize(answers []string) string {
	n := map[string]int{}
	for _, a := range answers {
		n[a]++
	}
	var parts []string
	for a, c := range n {
		parts = append(parts, fmt.Sprintf("%s x%d", a, c))
	}
	return strings.Join(parts, ", ")
}

// metricSum adds up one series over the replicas' /metrics: the value on
// the line that starts with the exact series text (labels sorted by name,
// as client_golang writes them). A series not exported yet counts 0;
// replicas that have exited are skipped.
func metricSum(t *testing.T, series string, procs ...*proxyProc) float64 {
	t.Helper()
	sum := 0.0
	for _, p := range procs {
		if p.Exited() {
			continue
		}
		status, body, _ := do(t, "GET", p.ops+"/metrics", "", nil)
		if status != 200 {
			t.Fatalf("metrics of %s: %d", p.ops, status)
		}
		for _, line := range strings.Split(string(body), "\n") {
			rest, ok := strings.CutPrefix(line, series+" ")
			if !ok {
				continue
			}
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			sum += v
		}
	}
	return sum
}

func refreshSeries(trigger, result, code string) string {
	return fmt.Sprintf(`tokenproxy_refreshes_total{code=%q,result=%q,trigger=%q}`, code, result, trigger)
}

// refreshCount is tokenproxy_refreshes_total{result,code} summed over every
// trigger and replica: who made the presentation (the app call, the
// scheduler, a retry) is the engine's business.
func refreshCount(t *testing.T, result, code string, procs ...*proxyProc) float64 {
	t.Helper()
	sum := 0.0
	for _, trigger := range []string{"scheduled", "on_demand", "forced", "retry"} {
		sum += metricSum(t, refreshSeries(trigger, result, code), procs...)
	}
	return sum
}

func refreshCalls(s simStats) int { return s.calls(applyV1, grantRT) }

// TestRefreshUnknownStorm: a wallet answering U to every refresh for a
// minute, under steady app traffic (10 calls a second from one bounded
// loop) on two replicas. The refresh calls stay bounded by the backoff (1 s
// doubling to 30 s: about 7 in a minute; at most 12 allowed), the customer
// is never ended, and once the wallet is back the first S recovers it with
// exactly one more call. Sized for two cores: the calls during the storm
// are answered by the proxy without a wallet call; it mostly waits.
func TestRefreshUnknownStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode: a minute of wallet outage")
	}
	t.Parallel()
	const storm, rate, maxCalls = time.Minute, 10, 12
	h := newHarness(t).withRedis()
	env := []string{"TOKENPROXY_REFRESH_BEFORE=0s", "TOKENPROXY_REFRESH_JITTER=0s", "TOKENPROXY_LOG_LEVEL=info"}
	procs := []*proxyProc{h.startProxy(env...), h.startProxy(env...)}
	const id = "storm"
	h.exchangeTTL(procs[0], id, "2s")
	s0 := h.stats()
	h.fault(`{"path":"` + applyV1 + `","grantType":"REFRESH_TOKEN","unknownRate":1}`)
	waitStatus(t, procs[0], id, 20*time.Second, "expired", stateIs(stateExpired), nil)

	answers := map[string]int{}
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	for i := range int(storm / (time.Second / rate)) {
		<-tick.C
		status, code := appCall(t, procs[i%2], id)
		answers[fmt.Sprintf("%d %s", status, code)]++
		if status == 200 || status == 401 {
			t.Fatalf("call %d during the storm: %d %s (answers so far %v)", i, status, code, answers)
		}
		if i%rate == 0 {
			if _, _, st := admin(t, procs[(i+1)%2], id); st.State == stateReauth {
				t.Fatalf("the customer was ended by U answers: %s", st)
			}
		}
	}
	s1 := h.stats()
	calls := refreshCalls(s1) - refreshCalls(s0)
	t.Logf("%d refresh calls during %v of U; app answers %v", calls, storm, answers)
	if calls > maxCalls || calls < 2 {
		t.Fatalf("%d refresh calls during %v of U answers, want 2..%d (backoff 1 s doubling to 30 s)", calls, storm, maxCalls)
	}
	// Every presentation got U and was counted as such (wait for the
	// metric of a call still in flight at the snapshot).
	waitUntil(t, 10*time.Second, "every U presentation counted in tokenproxy_refreshes_total", func() bool {
		return int(refreshCount(t, "unknown", "UNKNOWN_EXCEPTION", procs...)) == refreshCalls(h.stats())-refreshCalls(s0)
	})
	_, _, st := admin(t, procs[1], id)
	if st.State == stateReauth || st.lastError() != "UNKNOWN_EXCEPTION" {
		t.Fatalf("after the storm: %s", st)
	}

	h.clearFaults()
	s2 := h.stats()
	n := appCallUntil(t, procs, id, 200, "SUCCESS", 45*time.Second)
	s3 := h.stats()
	if d := refreshCalls(s3) - refreshCalls(s2); d != 1 || s3.RefreshTokensReused != 0 {
		t.Fatalf("recovery took %d refresh calls (want exactly 1), %d reused", d, s3.RefreshTokensReused)
	}
	for _, p := range procs {
		if _, _, st := admin(t, p, id); st.State != stateValid || st.LastError != nil {
			t.Fatalf("after recovery: %s", st)
		}
	}
	t.Logf("recovered after %d app calls", n)
}

// TestRefreshStampede: three replicas on one Redis, 300 concurrent app
// calls (100 per replica) for one customer whose access token has expired:
// all succeed and the wallet sees exactly one refresh, no reuse. Twenty
// repeats, a fresh customer each, on the same processes. Sized for two
// cores: 300 proxied calls cost about 1,200 RSA signatures; with -race a
// stampede takes about 2 s of wall time alone and more beside other tests,
// so access tokens live 8 s (a call after the refreshed token's expiry
// would rightly need another refresh). The customers are linked up front
// and wait, expired, for their turn: one wait for the whole test.
func TestRefreshStampede(t *testing.T) {
	t.Parallel()
	const replicas, perReplica, repeats = 3, 100, 20
	h := newHarness(t).withRedis()
	env := append([]string{"TOKENPROXY_LOG_LEVEL=info"}, engineEnv...)
	var procs []*proxyProc
	for range replicas {
		procs = append(procs, h.startProxy(env...))
	}
	ids := make([]string, repeats)
	for k := range ids {
		ids[k] = fmt.Sprintf("stampede-%02d", k)
		h.exchangeTTL(procs[k%replicas], ids[k], "8s")
	}
	s0 := h.stats()
	for k, id := range ids {
		waitStatus(t, procs[k%replicas], id, 20*time.Second, "expired", stateIs(stateExpired), refreshedAhead)
		before := h.stats()
		failures := stampede(procs, id, perReplica)
		after := h.stats()
		if len(failures) > 0 {
			t.Fatalf("repeat %d: %d of %d calls failed: %s", k, len(failures), replicas*perReplica, summarize(failures))
		}
		if d := refreshCalls(after) - refreshCalls(before); d != 1 || after.RefreshTokensReused != before.RefreshTokensReused {
			t.Fatalf("repeat %d: %d refresh calls (want 1), %d refresh tokens reused", k, d, after.RefreshTokensReused-before.RefreshTokensReused)
		}
	}
	s1 := h.stats()
	if d := refreshCalls(s1) - refreshCalls(s0); d != repeats || s1.RefreshTokensReused != 0 {
		t.Fatalf("%d refresh calls for %d stampedes, %d reused", d, repeats, s1.RefreshTokensReused)
	}
	if ok := refreshCount(t, "success", "SUCCESS", procs...); int(ok) != repeats {
		t.Fatalf("tokenproxy_refreshes_total success over the replicas: %v, want %d", ok, repeats)
	}
	for _, id := range ids {
		if _, _, st := admin(t, procs[0], id); st.LastRefreshTime == nil || st.State == stateReauth {
			t.Fatalf("after the stampedes: %s", st)
		}
	}
}

// TestRefreshSlowWallet: the stampede of TestRefreshStampede against a
// wallet that takes 3 s to answer a refresh, three times the lease (1 s):
// the holder's watchdog keeps the lease, and still exactly one refresh call
// is made and no refresh token is reused. Three repeats; sized as
// TestRefreshStampede (the wallet's latency is idle time).
func TestRefreshSlowWallet(t *testing.T) {
	t.Parallel()
	const replicas, perReplica, repeats = 3, 100, 3
	h := newHarness(t).withRedis()
	env := append([]string{"TOKENPROXY_LOG_LEVEL=info", "TOKENPROXY_REFRESH_LEASE=1s", "TOKENPROXY_UPSTREAM_TIMEOUT=10s"}, engineEnv...)
	var procs []*proxyProc
	for range replicas {
		procs = append(procs, h.startProxy(env...))
	}
	ids := make([]string, repeats)
	for k := range ids {
		ids[k] = fmt.Sprintf("slow-%d", k)
		h.exchangeTTL(procs[k%replicas], ids[k], "8s")
	}
	h.fault(`{"path":"` + applyV1 + `","grantType":"REFRESH_TOKEN","latency":"3s"}`)
	for k, id := range ids {
		waitStatus(t, procs[k%replicas], id, 20*time.Second, "expired", stateIs(stateExpired), refreshedAhead)
		before := h.stats()
		failures := stampede(procs, id, perReplica)
		after := h.stats()
		if len(failures) > 0 {
			t.Fatalf("repeat %d: %d of %d calls failed: %s", k, len(failures), replicas*perReplica, summarize(failures))
		}
		if d := refreshCalls(after) - refreshCalls(before); d != 1 || after.RefreshTokensReused != 0 {
			t.Fatalf("repeat %d: %d refresh calls (want 1), %d refresh tokens reused", k, d, after.RefreshTokensReused)
		}
		if _, _, st := admin(t, procs[(k+1)%replicas], id); st.LastRefreshTime == nil || st.LastError != nil {
			t.Fatalf("repeat %d: after the refresh: %s", k, st)
		}
	}
}

// TestRefreshCrash: the replica holding the lease is SIGKILLed in the
// middle of the wallet call. Two cases, on one Redis and walletsim, lease
// 1 s. Sized for two cores: a handful of calls.
func TestRefreshCrash(t *testing.T) {
	t.Parallel()
	h := newHarness(t).withRedis()
	env := append([]string{"TOKENPROXY_REFRESH_LEASE=1s", "TOKENPROXY_UPSTREAM_TIMEOUT=10s"}, engineEnv...)
	a, b := h.startProxy(env...), h.startProxy(env...)

	// (a) The wallet had not processed the call when its caller died: the
	// refresh token is still good. After A's lease lapses, B presents it
	// once more and succeeds: two presentations, no reuse.
	t.Run("killed before the wallet processed the refresh", func(t *testing.T) {
		h := h.in(t)
		const id = "crash-a"
		h.exchangeTTL(b, id, "2s")
		waitStatus(t, b, id, 20*time.Second, "expired", stateIs(stateExpired), refreshedAhead)
		s0 := h.stats()
		h.fault(`{"path":"` + applyV1 + `","grantType":"REFRESH_TOKEN","latency":"5s","count":1}`)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _, _ = tryDo("POST", a.url+inquiry, `{}`, map[string]string{"X-Customer-Id": id}) // A dies meanwhile
		}()
		waitUntil(t, 20*time.Second, "the refresh call at walletsim", func() bool { return refreshCalls(h.stats()) == refreshCalls(s0)+1 })
		a.Kill()
		<-done
		waitUntil(t, 10*time.Second, "walletsim seeing the killed caller hang up", func() bool { return h.stats().Abandoned == s0.Abandoned+1 })
		if s := h.stats(); s.Refreshes != s0.Refreshes {
			t.Fatalf("walletsim processed the refresh of the killed replica (%d S answers)", s.Refreshes-s0.Refreshes)
		}

		appCallUntil(t, []*proxyProc{b}, id, 200, "SUCCESS", 20*time.Second)
		s1 := h.stats()
		if d := refreshCalls(s1) - refreshCalls(s0); d != 2 || s1.RefreshTokensReused != s0.RefreshTokensReused || s1.Refreshes != s0.Refreshes+1 {
			t.Fatalf("%d presentations (want 2: the abandoned one and one more), %d reused, %d S",
				d, s1.RefreshTokensReused-s0.RefreshTokensReused, s1.Refreshes-s0.Refreshes)
		}
		if _, _, st := admin(t, b, id); st.State != stateValid || st.LastError != nil || st.LastRefreshTime == nil {
			t.Fatalf("after B's refresh: %s", st)
		}
		if status, code := appCall(t, b, id); status != 200 {
			t.Fatalf("later call: %d %s", status, code)
		}
	})

	// (b) The wallet processed the refresh and the answer was lost: the one
	// re-presentation gets USED_REFRESH_TOKEN, a lost rotation; the customer
	// is ended and its refresh token never presented again.
	t.Run("answer lost after the wallet processed the refresh", func(t *testing.T) {
		h := h.in(t)
		c := h.startProxy(env...)
		procs := []*proxyProc{b, c}
		const id = "crash-b"
		h.exchangeTTL(b, id, "2s")
		waitStatus(t, b, id, 20*time.Second, "expired", stateIs(stateExpired), refreshedAhead)
		s0 := h.stats()
		lost0 := metricSum(t, lostRotationsSeries, procs...)
		h.fault(`{"path":"` + applyV1 + `","grantType":"REFRESH_TOKEN","dropAfterProcessing":true,"count":1}`)
		if status, code := appCall(t, b, id); status != 502 && status != 504 {
			t.Fatalf("call whose refresh answer was lost: %d %s, want 502/504", status, code)
		}
		if s := h.stats(); refreshCalls(s) != refreshCalls(s0)+1 || s.Refreshes != s0.Refreshes+1 {
			t.Fatalf("walletsim did not process exactly one refresh: %+v", s)
		}
		h.clearFaults()
		appCallUntil(t, procs, id, 401, "REAUTHORIZATION_REQUIRED", 40*time.Second)
		s1 := h.stats()
		if d := refreshCalls(s1) - refreshCalls(s0); d != 2 || s1.RefreshTokensReused != s0.RefreshTokensReused+1 {
			t.Fatalf("%d presentations of the refresh token (want 2), %d reused (want 1)", d, s1.RefreshTokensReused-s0.RefreshTokensReused)
		}
		if lost := metricSum(t, lostRotationsSeries, procs...) - lost0; lost != 1 {
			t.Fatalf("tokenproxy_lost_rotations_total over the replicas rose by %v, want 1", lost)
		}
		for _, p := range procs {
			if _, _, st := admin(t, p, id); st.State != stateReauth || st.lastError() != "USED_REFRESH_TOKEN" {
				t.Fatalf("after the lost rotation: %s", st)
			}
		}
		// Never presented again, however often the app asks.
		for i := range 6 {
			if status, code := appCall(t, procs[i%2], id); status != 401 || code != "REAUTHORIZATION_REQUIRED" {
				t.Fatalf("call after the lost rotation: %d %s", status, code)
			}
		}
		if status, body, _ := do(t, "POST", c.url+"/tokenproxy/customers/"+id+"/refresh", "", nil); status != 401 || resultCode(body) != "REAUTHORIZATION_REQUIRED" {
			t.Fatalf("forced refresh after the lost rotation: %d %s", status, body)
		}
		if s2 := h.stats(); refreshCalls(s2) != refreshCalls(s1) {
			t.Fatalf("the ended customer's refresh token was presented %d more times", refreshCalls(s2)-refreshCalls(s1))
		}
	})
}

// TestRefreshStaleCaches: two replicas each hold the customer's access
// token from a successful call; the wallet then rejects that token
// (INVALID_ACCESS_TOKEN to the next two calls, delayed 500 ms so that both
// replicas' calls are rejected before either retries). One call per
// replica, concurrently: both succeed, with exactly one refresh in all.
// Sized for two cores: six proxied calls.
func TestRefreshStaleCaches(t *testing.T) {
	t.Parallel()
	h := newHarness(t).withRedis()
	a, b := h.startProxy(engineEnv...), h.startProxy(engineEnv...)
	procs := []*proxyProc{a, b}
	const id = "stale"
	h.exchange(a, id)
	for _, p := range procs {
		if status, code := appCall(t, p, id); status != 200 {
			t.Fatalf("warm-up call: %d %s", status, code)
		}
	}
	s0 := h.stats()
	ok0 := refreshCount(t, "success", "SUCCESS", procs...)
	h.fault(`{"path":"` + inquiry + `","failCode":"INVALID_ACCESS_TOKEN","count":2,"latency":"500ms"}`)
	failures := stampede(procs, id, 1)
	if len(failures) > 0 {
		t.Fatalf("calls with a rejected token: %s", summarize(failures))
	}
	s1 := h.stats()
	if d := refreshCalls(s1) - refreshCalls(s0); d != 1 || s1.RefreshTokensReused != 0 {
		t.Fatalf("%d refresh calls for two stale replicas (want 1), %d reused", d, s1.RefreshTokensReused)
	}
	if d := s1.calls(inquiry, noGrant) - s0.calls(inquiry, noGrant); d != 4 {
		t.Fatalf("%d inquiry calls, want 4 (two rejected, two retried)", d)
	}
	if d := refreshCount(t, "success", "SUCCESS", procs...) - ok0; d != 1 {
		t.Fatalf("tokenproxy_refreshes_total success rose by %v over the replicas, want 1", d)
	}
}

// TestRefreshRevokeDuringRefresh: a refresh is in flight (the wallet takes
// 3 s) when the customer is deleted through the other replica. The customer
// stays gone on every replica, also once the refresh has completed. Sized
// for two cores: a handful of calls.
func TestRefreshRevokeDuringRefresh(t *testing.T) {
	t.Parallel()
	h := newHarness(t).withRedis()
	a, b := h.startProxy(engineEnv...), h.startProxy(engineEnv...)
	procs := []*proxyProc{a, b}
	const id = "revoke"
	h.exchangeTTL(a, id, "2s")
	waitStatus(t, a, id, 20*time.Second, "expired", stateIs(stateExpired), refreshedAhead)
	s0 := h.stats()
	h.fault(`{"path":"` + applyV1 + `","grantType":"REFRESH_TOKEN","latency":"3s","count":1}`)
	inflight := make(chan string, 1)
	go func() {
		status, body, err := tryDo("POST", a.url+inquiry, `{}`, map[string]string{"X-Customer-Id": id})
		inflight <- fmt.Sprintf("%d %s %v", status, resultCode(body), err)
	}()
	waitUntil(t, 20*time.Second, "the refresh call at walletsim", func() bool { return refreshCalls(h.stats()) == refreshCalls(s0)+1 })
	if status, body, _ := do(t, "DELETE", b.url+"/tokenproxy/customers/"+id, "", nil); status != 204 {
		t.Fatalf("delete: %d %s", status, body)
	}
	gone := func(when string) {
		t.Helper()
		for _, p := range procs {
			if status, code, st := admin(t, p, id); status != 404 || code != "CUSTOMER_NOT_AUTHORIZED" {
				t.Fatalf("%s: admin status %d %s %s, want 404", when, status, code, st)
			}
			if status, code := appCall(t, p, id); status != 401 || code != "CUSTOMER_NOT_AUTHORIZED" {
				t.Fatalf("%s: app call %d %s, want 401 CUSTOMER_NOT_AUTHORIZED", when, status, code)
			}
		}
	}
	gone("right after the delete")
	// The wallet ends the call one way or the other: processed after its
	// latency, or abandoned if the engine cut it when the lease went away.
	waitUntil(t, 20*time.Second, "the refresh call ending at walletsim", func() bool {
		s := h.stats()
		return s.Refreshes == s0.Refreshes+1 || s.Abandoned == s0.Abandoned+1
	})
	select {
	case r := <-inflight:
		t.Logf("the call that started the refresh got %s", r)
	case <-time.After(20 * time.Second):
		t.Fatal("the call that started the refresh did not end")
	}
	gone("after the refresh completed")
	if s := h.stats(); refreshCalls(s) != refreshCalls(s0)+1 {
		t.Fatalf("%d refresh calls, want 1", refreshCalls(s)-refreshCalls(s0))
	}
}

// TestRefreshProactive: two replicas and no app traffic; 120 customers with
// access tokens living 16 s, REFRESH_BEFORE 5 s, JITTER 3 s, REFRESH_RATE
// 200. Over three cycles every token is refreshed before it expires,
// within its due window, exactly once per token. Sized for two cores
// shared with a second test run (a load of 4, -race): 120 refreshes a
// cycle are about 480 RSA signatures, spread over the 3 s jitter window,
// and a refresh may start up to 5 s late and still be in time (at 8 s of
// TTL and 3 s ahead, one did not: it came 28 ms after expiry). The test
// reads every customer's status about once a second to follow each token
// generation (a generation lives at least 8 s, so none is missed), which
// costs less than the refreshes.
//
// Counting: each refresh replaces the customer's access token, so the
// generations seen through the admin API count the refreshes per customer.
// At the end the wallet is made to refuse refreshes (an F that is not
// processed) so that its count of S answers stops, and the sum of
// generations seen must equal it: no refresh whose result was dropped, none
// made twice.
func TestRefreshProactive(t *testing.T) {
	t.Parallel()
	const (
		customers = 120
		cycles    = 3
		ttl       = 16 * time.Second
		before    = 5 * time.Second
		jitter    = 3 * time.Second
		slack     = 500 * time.Millisecond // scheduling granularity allowed ahead of the due window
	)
	h := newHarness(t).withRedis()
	env := []string{"TOKENPROXY_LOG_LEVEL=info", "TOKENPROXY_REFRESH_BEFORE=5s", "TOKENPROXY_REFRESH_JITTER=3s", "TOKENPROXY_REFRESH_RATE=200"}
	procs := []*proxyProc{h.startProxy(env...), h.startProxy(env...)}

	type track struct {
		id          string
		expiry      time.Time // of the current generation
		generations int       // refreshes seen
	}
	tracks := make([]*track, customers)
	codes := make([]string, customers)
	for i := range tracks {
		tracks[i] = &track{id: fmt.Sprintf("pro-%03d", i)}
		codes[i] = h.authCodeTTL(tracks[i].id, ttl.String())
	}
	// Link them from a few goroutines, spread over the replicas.
	var wg sync.WaitGroup
	errs := make(chan string, customers)
	work := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				status, body, err := tryDo("POST", procs[i%2].url+applyV1, `{"grantType":"AUTHORIZATION_CODE","authCode":"`+codes[i]+`"}`, nil)
				var ex exchanged
				if err != nil || status != 200 || json.Unmarshal(body, &ex) != nil {
					errs <- fmt.Sprintf("exchange %d: %d %v %s", i, status, err, body)
					continue
				}
				tracks[i].expiry = ex.AccessTokenExpiryTime
			}
		}()
	}
	for i := range customers {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	s0 := h.stats()
	if s0.Refreshes != 0 {
		t.Logf("%d refreshes already during the exchanges", s0.Refreshes)
	}

	// sweep reads every customer's status; with checkState, a state other
	// than valid or refreshing is a problem (a token expired unrefreshed).
	var (
		problems     []string
		longestSweep time.Duration
	)
	sweep := func(checkState bool) {
		t.Helper()
		began := time.Now()
		defer func() { longestSweep = max(longestSweep, time.Since(began)) }()
		type read struct {
			status int
			st     adminStatus
			err    error
		}
		reads := make([]read, customers)
		var wg sync.WaitGroup
		next := make(chan int)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					status, body, err := tryDo("GET", procs[i%2].url+"/tokenproxy/customers/"+tracks[i].id, "", nil)
					reads[i] = read{status: status, err: err}
					if err == nil && status == 200 {
						reads[i].err = json.Unmarshal(body, &reads[i].st)
					}
				}
			}()
		}
		for i := range customers {
			next <- i
		}
		close(next)
		wg.Wait()
		for i, r := range reads {
			tr := tracks[i]
			if r.err != nil || r.status != 200 {
				problems = append(problems, fmt.Sprintf("%s: admin %d %v", tr.id, r.status, r.err))
				continue
			}
			st := r.st
			if checkState && st.State != stateValid && st.State != stateRefreshing {
				problems = append(problems, fmt.Sprintf("%s: %s", tr.id, st))
			}
			if st.AccessTokenExpiryTime == nil || st.AccessTokenExpiryTime.Equal(tr.expiry) {
				continue
			}
			// A new generation: refreshed within its predecessor's due
			// window, before that one expired.
			newExp := *st.AccessTokenExpiryTime
			switch {
			case st.LastRefreshTime == nil:
				problems = append(problems, fmt.Sprintf("%s: new token without lastRefreshTime: %s", tr.id, st))
			case !st.LastRefreshTime.Before(tr.expiry):
				problems = append(problems, fmt.Sprintf("%s: refreshed at %s, after its token expired at %s",
					tr.id, st.LastRefreshTime.Format(time.StampMilli), tr.expiry.Format(time.StampMilli)))
			case st.LastRefreshTime.Before(tr.expiry.Add(-before - jitter - slack)):
				problems = append(problems, fmt.Sprintf("%s: refreshed at %s, before its due window (expiry %s)",
					tr.id, st.LastRefreshTime.Format(time.StampMilli), tr.expiry.Format(time.StampMilli)))
			}
			if newExp.Sub(tr.expiry) >= ttl {
				problems = append(problems, fmt.Sprintf("%s: a generation went unseen (expiry %s -> %s)", tr.id, tr.expiry, newExp))
			}
			tr.expiry = newExp
			tr.generations++
		}
	}

	deadline := time.Now().Add(ttl + cycles*(ttl-before+time.Second) + 20*time.Second)
	for {
		start := time.Now()
		sweep(true)
		if len(problems) > 0 {
			t.Fatalf("%d problems, first ones:\n%s", len(problems), strings.Join(problems[:min(len(problems), 10)], "\n"))
		}
		done := 0
		for _, tr := range tracks {
			if tr.generations >= cycles {
				done++
			}
		}
		if done == customers {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the deadline only %d of %d customers were refreshed %d times", done, customers, cycles)
		}
		time.Sleep(time.Second - time.Since(start))
	}

	// Stop the refreshes at the wallet, then reconcile: every S answer is
	// one generation seen, every call an S or a refused one.
	h.fault(`{"path":"` + applyV1 + `","grantType":"REFRESH_TOKEN","failCode":"REQUEST_TRAFFIC_EXCEED_LIMIT"}`)
	var s simStats
	seen := 0
	waitUntil(t, 15*time.Second, "the generations seen matching walletsim's S answers", func() bool {
		sweep(false)
		s = h.stats()
		seen = 0
		for _, tr := range tracks {
			seen += tr.generations
		}
		return seen == s.Refreshes && refreshCalls(s) == s.Refreshes+s.FaultsMatched
	})
	if len(problems) > 0 {
		t.Fatalf("%d problems, first ones:\n%s", len(problems), strings.Join(problems[:min(len(problems), 10)], "\n"))
	}
	if s.RefreshTokensReused != 0 {
		t.Fatalf("%d refresh tokens reused", s.RefreshTokensReused)
	}
	if s.RefreshesAfterAccessExpiry != nil && *s.RefreshesAfterAccessExpiry != 0 {
		t.Fatalf("walletsim counted %d refreshes after the access token had expired", *s.RefreshesAfterAccessExpiry)
	}
	if sched := refreshCount(t, "success", "SUCCESS", procs...); int(sched) != s.Refreshes {
		t.Fatalf("tokenproxy_refreshes_total success over the replicas %v, walletsim S answers %d", sched, s.Refreshes)
	}
	if ahead := metricSum(t, refreshSeries("scheduled", "success", "SUCCESS"), procs...); int(ahead) != s.Refreshes {
		t.Fatalf("%v scheduled refreshes of %d: something else refreshed without app traffic", ahead, s.Refreshes)
	}
	least, most := tracks[0].generations, tracks[0].generations
	for _, tr := range tracks {
		least, most = min(least, tr.generations), max(most, tr.generations)
	}
	t.Logf("%d refreshes of %d customers, %d to %d each; the longest status sweep took %v",
		s.Refreshes, customers, least, most, longestSweep.Round(time.Millisecond))
}

// inCooldown checks that a call in the customer's cooldown gets a fast
// 502/504 without a wallet call, the fault that caused the cooldown still
// set. The cooldown after a first failure is 1-1.5 s, which a call under
// load (-race, a load of 4 on 2 cores) may outlast; so the check is by
// order, not by a timing guess: a call counts when it ended before the
// cooldown's end (nextRefreshTime, set by Redis on this host's clock). A
// call that did not end in time may have failed again, which doubles the
// cooldown; four rounds give it at least 8 s.
func inCooldown(t *testing.T, h *harness, p *proxyProc, id string) {
	t.Helper()
	for range 4 {
		_, _, st := admin(t, p, id)
		s0 := h.stats()
		status, code := appCall(t, p, id)
		ended := time.Now()
		calls := refreshCalls(h.stats()) - refreshCalls(s0)
		if st.NextRefreshTime == nil || !ended.Before(*st.NextRefreshTime) {
			t.Logf("a call outlasted the cooldown (status %s, call ended %s): %d %s, %d refresh calls",
				st, ended.Format(time.StampMilli), status, code, calls)
			continue
		}
		if status != 502 && status != 504 {
			t.Fatalf("call in the cooldown: %d %s, want 502/504", status, code)
		}
		if calls != 0 {
			t.Fatalf("a call in the cooldown made %d refresh calls", calls)
		}
		return
	}
	t.Fatalf("no call ended within the cooldown in 4 rounds")
}

// TestRefreshOutcomes drives one refresh to each outcome with walletsim
// faults on REFRESH_TOKEN calls, on one replica with a Redis store, and
// checks what each leaves: the admin state and lastError, the app call's
// answer, tokenproxy_refreshes_total{result,code}, and whether the refresh
// token is presented again. Each case has its own customer, linked up front
// with a 2 s access token, so all are expired when the cases run (one after
// the other: faults are global to walletsim). Sized for two cores: a few
// calls per case.
func TestRefreshOutcomes(t *testing.T) {
	t.Parallel()
	h := newHarness(t).withRedis()
	p := h.startProxy(append([]string{"TOKENPROXY_UPSTREAM_TIMEOUT=1s"}, engineEnv...)...)
	procs := []*proxyProc{p}

	type outcome struct {
		name     string
		fault    string // fault fields for REFRESH_TOKEN calls; "" none
		terminal bool   // the customer is ended
		result   string // tokenproxy_refreshes_total result label
		code     string // its code label, and lastError
		status   int    // the app call's answer
		appCode  string
	}
	cases := []outcome{
		{"S", "", false, "success", "SUCCESS", 200, "SUCCESS"},
		{"INVALID_REFRESH_TOKEN", `"failCode":"INVALID_REFRESH_TOKEN"`, true, "failure", "INVALID_REFRESH_TOKEN", 401, "REAUTHORIZATION_REQUIRED"},
		{"EXPIRED_REFRESH_TOKEN", `"failCode":"EXPIRED_REFRESH_TOKEN"`, true, "failure", "EXPIRED_REFRESH_TOKEN", 401, "REAUTHORIZATION_REQUIRED"},
		{"USED_REFRESH_TOKEN", `"failCode":"USED_REFRESH_TOKEN"`, true, "failure", "USED_REFRESH_TOKEN", 401, "REAUTHORIZATION_REQUIRED"},
		{"U", `"unknownRate":1`, false, "unknown", "UNKNOWN_EXCEPTION", 502, "WALLET_UNAVAILABLE"},
		{"timeout", `"latency":"3s"`, false, "unknown", "WALLET_TIMEOUT", 504, "WALLET_TIMEOUT"},
		{"reset", `"resetRate":1`, false, "unknown", "WALLET_UNAVAILABLE", 502, "WALLET_UNAVAILABLE"},
		{"HTML 5xx", `"html5xxRate":1`, false, "unknown", "WALLET_UNAVAILABLE", 502, "WALLET_UNAVAILABLE"},
		{"rate limit", `"failCode":"REQUEST_TRAFFIC_EXCEED_LIMIT"`, false, "failure", "REQUEST_TRAFFIC_EXCEED_LIMIT", 502, "WALLET_UNAVAILABLE"},
		{"bad signature", `"failCode":"INVALID_SIGNATURE"`, false, "failure", "INVALID_SIGNATURE", 502, "WALLET_UNAVAILABLE"},
	}
	idOf := func(c outcome) string { return "out-" + strings.ReplaceAll(c.name, " ", "-") }
	for _, c := range cases {
		// Expired when its case runs; a refreshed successor lives ten
		// minutes, so "valid after S" holds however loaded the machine.
		code := h.authCodeWith(map[string]string{"customerId": idOf(c), "accessTtl": "2s", "refreshedAccessTtl": "10m"})
		if status, body, _ := do(t, "POST", p.url+"/v1/authorizations/applyToken",
			`{"grantType":"AUTHORIZATION_CODE","authCode":"`+code+`"}`, nil); status != 200 || resultCode(body) != "SUCCESS" {
			t.Fatalf("exchange: %d %s", status, body)
		}
	}
	for _, c := range cases {
		waitStatus(t, p, idOf(c), 20*time.Second, "expired", stateIs(stateExpired), refreshedAhead)
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := h.in(t)
			id := idOf(c)
			s0 := h.stats()
			m0 := refreshCount(t, c.result, c.code, procs...)
			lost0 := metricSum(t, lostRotationsSeries, procs...)
			if c.fault != "" {
				h.fault(`{"path":"` + applyV1 + `","grantType":"REFRESH_TOKEN",` + c.fault + `}`)
				t.Cleanup(h.clearFaults) // a failed case must not leave its fault to the next
			}
			status, code := appCall(t, p, id)
			if status != c.status || code != c.appCode {
				t.Fatalf("app call: %d %s, want %d %s", status, code, c.status, c.appCode)
			}
			s1 := h.stats()
			if d := refreshCalls(s1) - refreshCalls(s0); d != 1 {
				t.Fatalf("%d refresh calls, want 1", d)
			}
			if d := refreshCount(t, c.result, c.code, procs...) - m0; d != 1 {
				t.Fatalf("tokenproxy_refreshes_total{result=%q,code=%q} rose by %v, want 1", c.result, c.code, d)
			}
			if lost := metricSum(t, lostRotationsSeries, procs...) - lost0; lost != 0 {
				t.Fatalf("tokenproxy_lost_rotations_total rose by %v: a first presentation is no lost rotation", lost)
			}
			_, _, st := admin(t, p, id)

			switch {
			case c.result == "success":
				if st.State != stateValid || st.LastError != nil || st.LastRefreshTime == nil {
					t.Fatalf("after S: %s", st)
				}

			case c.terminal:
				if st.State != stateReauth || st.lastError() != c.code {
					t.Fatalf("after %s: %s", c.code, st)
				}
				h.clearFaults()
				for range 3 {
					if status, code := appCall(t, p, id); status != 401 || code != "REAUTHORIZATION_REQUIRED" {
						t.Fatalf("later call: %d %s", status, code)
					}
				}
				if status, body, _ := do(t, "POST", p.url+"/tokenproxy/customers/"+id+"/refresh", "", nil); status != 401 || resultCode(body) != "REAUTHORIZATION_REQUIRED" {
					t.Fatalf("forced refresh: %d %s", status, body)
				}
				if s := h.stats(); refreshCalls(s) != refreshCalls(s1) {
					t.Fatalf("the refused refresh token was presented %d more times", refreshCalls(s)-refreshCalls(s1))
				}

			default: // transient: the customer keeps its tokens
				if st.State == stateReauth || (st.State != stateExpired && st.State != stateRefreshing && st.State != stateValid) ||
					st.lastError() != c.code {
					t.Fatalf("after %s: %s", c.name, st)
				}
				inCooldown(t, h, p, id)
				h.clearFaults()
				s2 := h.stats()
				ok0 := refreshCount(t, "success", "SUCCESS", procs...)
				appCallUntil(t, procs, id, 200, "SUCCESS", 40*time.Second)
				s3 := h.stats()
				if d := refreshCalls(s3) - refreshCalls(s2); d != 1 || s3.RefreshTokensReused != 0 {
					t.Fatalf("recovery took %d refresh calls (want 1: the first S), %d reused", d, s3.RefreshTokensReused)
				}
				if d := refreshCount(t, "success", "SUCCESS", procs...) - ok0; d != 1 {
					t.Fatalf("tokenproxy_refreshes_total success rose by %v, want 1", d)
				}
				if _, _, st := admin(t, p, id); st.State != stateValid || st.LastError != nil {
					t.Fatalf("after recovery: %s", st)
				}
			}
		})
	}

	// A refresh token past its refreshTokenExpiryTime is never presented:
	// the customer is ended with EXPIRED_REFRESH_TOKEN without a wallet
	// call. The wallet refuses refreshes (an F, not processed) while the
	// refresh token lapses, so that no refresh renews it meanwhile.
	t.Run("refresh token past its expiry", func(t *testing.T) {
		h := h.in(t)
		const id = "out-rt-expired"
		h.fault(`{"path":"` + applyV1 + `","grantType":"REFRESH_TOKEN","failCode":"REQUEST_TRAFFIC_EXCEED_LIMIT"}`)
		defer h.clearFaults()
		ex := h.exchangeChain(p, id, "1s", "3s")
		waitUntil(t, 20*time.Second, "the refresh token's expiry", func() bool {
			return time.Now().After(ex.RefreshTokenExpiryTime.Add(50 * time.Millisecond)) // its own life, not synchronisation
		})
		s0 := h.stats()
		appCallUntil(t, procs, id, 401, "REAUTHORIZATION_REQUIRED", 40*time.Second)
		if _, _, st := admin(t, p, id); st.State != stateReauth || st.lastError() != "EXPIRED_REFRESH_TOKEN" {
			t.Fatalf("after the refresh token expired: %s", st)
		}
		if s := h.stats(); refreshCalls(s) != refreshCalls(s0) {
			t.Fatalf("a refresh token past its expiry was presented %d times", refreshCalls(s)-refreshCalls(s0))
		}
	})
}
