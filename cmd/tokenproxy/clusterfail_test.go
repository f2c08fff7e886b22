package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/internal/walletsim"
	"github.com/tokenproxy/tokenproxy/tokencache"
)

// TestClusterFailover (issue 17, "Cluster with replicas under failover"):
// a local Redis Cluster of 3 masters with a replica each, two tokenproxy
// replicas on it with TOKENPROXY_REDIS_WAIT_REPLICAS=1, walletsim issuing
// access tokens that live 10 s (REFRESH_BEFORE 5 s, JITTER 2 s: every
// customer is refreshed every 3 to 5 s), and app callers calling
// inquiryUserInfo for every customer through both replicas. Under that
// load, and while refreshes of every customer of one master are at the
// wallet (held there 1.5 s: claimed and acknowledged, their answers still
// to come), that master is SIGKILLed by its PID; the test
// waits until its replica has taken over, restarts the killed node (as a
// pod would be restarted: it rejoins as a replica, so WAIT 1 can be
// answered again for its slots), and keeps the load on until every
// customer was refreshed again and called successfully through both
// replicas. Then it counts, from walletsim's ledger and the admin API:
//
//   - presentations per refresh token: none presented twice after its
//     outcome was delivered (an S or a refresh-token F), none presented
//     while another presentation of it was in flight; a re-presentation
//     after an undelivered answer is what the contract allows, and is
//     counted;
//   - acknowledged pairs lost: none of walletsim's delivered S pairs was
//     lost (walletsim's sPairsLost, a USED_REFRESH_TOKEN for a token whose
//     S was delivered: the only way a stored pair is found missing); and at
//     the end a forced refresh of every customer succeeds, which it can only
//     if the store holds the latest refresh token walletsim issued for that
//     customer (each refresh token is single-use); the refreshes caught
//     by the kill kept their pairs in memory and wrote them to the
//     promoted node;
//   - failed app calls: none answered before the kill (one in flight at it
//     may fail by it); all of them in one window, from the first failure
//     to the first success after the last, which must stay under 30 s (it
//     includes the cluster's failover, about 2 to 3 node timeouts of 2 s,
//     and the restart of the killed node).
//
// Sized for 2 cores at a load of 4 with -race: 90 customers refreshed
// every 3 to 5 s are about 25 refreshes a second (4 RSA-2048 operations
// each), and 6 callers every 150 ms about 40 calls a second (4 each):
// well under one core. It takes about 30 s.
func TestClusterFailover(t *testing.T) {
	const (
		customers   = 90
		accessTTL   = 10 * time.Second
		callers     = 6
		callEvery   = 150 * time.Millisecond
		windowBound = 30 * time.Second
		// phaseWait bounds each phase that waits for refreshes or
		// successful calls: many times what it takes on an idle machine.
		phaseWait = 90 * time.Second
	)
	cluster := testenv.StartClusterWithReplicas(t, 3, 1)
	bins := testenv.Binaries(t)
	keys := testenv.WriteKeyFiles(t)
	sim, simAddr := startWalletsim(t, bins, keys)
	simURL := "http://" + simAddr
	testenv.WaitReady(t, simURL+"/sim/stats", 20*time.Second, sim)

	encKey := make([]byte, 32)
	_, _ = rand.Read(encKey)
	var procs []*proxyProc
	for range 2 {
		p := &proxyProc{url: "http://" + testenv.FreeAddr(t), ops: "http://" + testenv.FreeAddr(t)}
		p.Process = testenv.Start(t, "tokenproxy", bins.Tokenproxy, []string{
			"TOKENPROXY_LISTEN_ADDR=" + strings.TrimPrefix(p.url, "http://"),
			"TOKENPROXY_OPS_ADDR=" + strings.TrimPrefix(p.ops, "http://"),
			"TOKENPROXY_WALLET_URL=" + simURL,
			"TOKENPROXY_CLIENT_ID=TEST_CLIENT",
			"TOKENPROXY_PRIVATE_KEY_FILE=" + keys.MerchantPrivate,
			"TOKENPROXY_WALLET_PUBLIC_KEY_FILE=" + keys.WalletPublic,
			"TOKENPROXY_REDIS_ADDRS=" + strings.Join(cluster.Seeds(), ","),
			"TOKENPROXY_REDIS_WAIT_REPLICAS=1",
			"TOKENPROXY_ENCRYPTION_KEYS=" + base64.StdEncoding.EncodeToString(encKey),
			"TOKENPROXY_REFRESH_BEFORE=5s",
			"TOKENPROXY_REFRESH_JITTER=2s",
			"TOKENPROXY_REFRESH_RATE=200",
			"TOKENPROXY_LOG_LEVEL=info",
		})
		testenv.WaitReady(t, p.ops+"/readyz", 30*time.Second, p.Process)
		procs = append(procs, p)
	}

	ids := make([]string, customers)
	for i := range ids {
		ids[i] = fmt.Sprintf("cf-%03d", i)
	}
	forEach(t, customers, func(i int) error {
		code, err := simAuthCode(simURL, ids[i], accessTTL)
		if err != nil {
			return err
		}
		status, body, err := tryDo("POST", procs[i%2].url+"/v1/authorizations/applyToken",
			`{"grantType":"AUTHORIZATION_CODE","authCode":"`+code+`"}`, nil)
		if err != nil || status != 200 || resultCode(body) != "SUCCESS" {
			return fmt.Errorf("exchange %s: %d %v %s", ids[i], status, err, body)
		}
		return nil
	})

	// The app: callers take customers round robin; every customer is
	// called through one replica, then through the other.
	load := newAppLoad(procs, ids)
	stopLoad := load.run(callers, callEvery)
	defer stopLoad()

	// Warm up: every customer refreshed once on average, under load.
	simRefreshes := func() int64 { return readSim[walletsim.Stats](t, simURL+"/sim/stats").Refreshes }
	waitFor(t, phaseWait, "a refresh per customer before the kill", func() bool { return simRefreshes() >= customers })
	if f := load.failures(time.Time{}); len(f) > 0 {
		t.Fatalf("%d app calls failed before any Redis node was killed, first: %s", len(f), f[0])
	}

	// The victim: the master of the first customer's record.
	recordKey := func(id string) string {
		return tokencache.DefaultKeyPrefix + "{b" + fmt.Sprint(tokencache.Bucket(id, tokencache.DefaultBuckets)) + "}:rec:" + id
	}
	victim := cluster.Master(recordKey(ids[0]))
	onVictim := 0
	victimCustomer := make([]bool, customers)
	for i, id := range ids {
		if cluster.Master(recordKey(id)) == victim {
			victimCustomer[i] = true
			onVictim++
		}
	}
	// Refreshes in flight at the kill: walletsim holds refresh calls for
	// 1.5 s before processing them, and every customer of the victim is
	// refreshed now (admin API, joining a refresh in flight). The kill
	// comes once many are at walletsim, i.e. claimed (and acknowledged by
	// a replica): their S answers come back 1.5 s later, well before a
	// failover can be complete (ClusterNodeTimeout alone is 2 s), so the
	// replicas must keep those pairs and write them to the promoted node.
	const refreshLatency = 1500 * time.Millisecond
	simDo(t, "POST", simURL+"/sim/faults", fmt.Sprintf(`{"grantType":"REFRESH_TOKEN","path":"/v1/authorizations/applyToken","latency":%q}`, refreshLatency))
	var forcedWG sync.WaitGroup
	forcedAtKill := make(chan string, onVictim)
	for i := range ids {
		if !victimCustomer[i] {
			continue
		}
		forcedWG.Add(1)
		go func() {
			defer forcedWG.Done()
			status, body, err := tryDo("POST", procs[i%2].url+"/tokenproxy/customers/"+ids[i]+"/refresh", "", nil)
			if err != nil {
				forcedAtKill <- "error"
				return
			}
			forcedAtKill <- strings.TrimSpace(fmt.Sprintf("%d %s", status, resultCode(body)))
		}()
	}
	inFlight := func() int64 {
		s := readSim[walletsim.Stats](t, simURL+"/sim/stats")
		return s.Calls["/v1/authorizations/applyToken"][walletsim.GrantRefreshToken] - s.RefreshPresentations - s.Abandoned
	}
	waitFor(t, phaseWait, "refreshes in flight at walletsim", func() bool { return inFlight() >= int64(onVictim/2) })
	refreshesAtKill, inFlightAtKill := simRefreshes(), inFlight()
	killAt := time.Now()
	victimPID := victim.PID
	victim.Stop() // SIGKILL, by PID
	simDo(t, "DELETE", simURL+"/sim/faults", "")
	promoted := cluster.WaitFailover(victim, recordKey(ids[0]))
	failedOverAfter := time.Since(killAt)
	cluster.Restart(victim)
	cluster.WaitHealthy()
	rejoinedAt := time.Now()
	t.Logf("master %s (pid %d, %d of %d customers' records) SIGKILLed; replica %s promoted after %v; restarted as its replica, in sync after %v",
		victim.Addr, victimPID, onVictim, customers, promoted.Addr, failedOverAfter.Round(time.Millisecond), rejoinedAt.Sub(killAt).Round(time.Millisecond))

	// Recovery: every customer refreshed again since the cluster is whole,
	// and called successfully through both replicas since then.
	refreshesAtRejoin := simRefreshes()
	waitFor(t, phaseWait, "every customer refreshed again and served through both replicas after the failover", func() bool {
		return simRefreshes() >= refreshesAtRejoin+customers && load.servedAll(rejoinedAt)
	})
	stopLoad()
	forcedWG.Wait()
	close(forcedAtKill)
	forcedKill := map[string]int{}
	for code := range forcedAtKill {
		forcedKill[code]++
	}

	// The end state: no customer lost its pair. A forced refresh presents
	// the stored refresh token: only the latest one issued is unused.
	ledgerBefore := readSim[walletsim.Ledger](t, simURL+"/sim/ledger")
	states := map[string]int{}
	forced := map[string]int{}
	var mu sync.Mutex
	forEach(t, customers, func(i int) error {
		p := procs[i%2]
		status, body, err := tryDo("GET", p.url+"/tokenproxy/customers/"+ids[i], "", nil)
		var st adminStatus
		if err != nil || status != 200 || json.Unmarshal(body, &st) != nil {
			return fmt.Errorf("status of %s: %d %v %s", ids[i], status, err, body)
		}
		fstatus, fbody, ferr := tryDo("POST", p.url+"/tokenproxy/customers/"+ids[i]+"/refresh", "", nil)
		mu.Lock()
		defer mu.Unlock()
		key := st.State
		if st.State == stateReauth {
			key += " (" + st.lastError() + ")"
		}
		states[key]++
		switch {
		case ferr != nil:
			forced["error"]++
		case fstatus == 200:
			forced["200"]++
		default:
			forced[fmt.Sprintf("%d %s", fstatus, resultCode(fbody))]++
		}
		return nil
	})
	l := readSim[walletsim.Ledger](t, simURL+"/sim/ledger")
	stats := readSim[walletsim.Stats](t, simURL+"/sim/stats")

	calls, fails := load.counts()
	failures := load.failures(time.Time{})
	window, first, last := failureWindow(load.all())
	byCode := map[string]int{}
	failedOnVictim := 0
	for _, f := range failures {
		byCode[f.code]++
		if victimCustomer[f.customer] {
			failedOnVictim++
		}
	}
	// How the store's outage showed inside the replicas: store errors,
	// and refreshed pairs the store could not take at once (kept in
	// memory, served from there and written when it answered again).
	storeErrors := metricPrefixSum(t, "tokenproxy_store_errors_total{", procs...)
	var kept, keptWritten, keptSuperseded int
	countKept := func() bool {
		kept, keptWritten, keptSuperseded = 0, 0, 0
		for _, p := range procs {
			kept += bytes.Count(p.Logs(), []byte("refreshed pair kept in memory"))
			keptWritten += bytes.Count(p.Logs(), []byte("refresh outcome written after the store came back"))
			// Also a pair whose first write landed on the promoted node
			// before a replica could acknowledge it: the retry finds it
			// written.
			keptSuperseded += bytes.Count(p.Logs(), []byte("kept pair superseded"))
		}
		return keptWritten+keptSuperseded >= kept
	}
	// Retried every second at most: long done, but a log line may lag.
	waitFor(t, 30*time.Second, "every kept pair written", countKept)
	t.Logf("cluster failover counts: customers %d (%d on the killed master); refreshes %d (%d before the kill); "+
		"refresh tokens presented %d, presented twice %d (after an unknown outcome %d, after a known one %d), overlapping %d, "+
		"answers undelivered %d, lost rotations %d, acknowledged pairs lost %d; refreshes in flight at the kill %d, forced refreshes of the killed master's customers %v, "+
		"store errors %.0f, pairs kept in memory %d (written later %d, found written %d); "+
		"app calls %d, failed %d (%d of killed-master customers) %v, window %v (kill to promotion %v, to rejoin %v); "+
		"final forced refresh %v, states %v",
		customers, onVictim, stats.Refreshes, refreshesAtKill,
		l.Presentations-l.Represented, l.Represented, l.Represented-l.RepresentedAfterKnown, l.RepresentedAfterKnown, l.Overlapping,
		l.Undelivered, l.LostRotations, l.SPairsLost, inFlightAtKill, forcedKill, storeErrors, kept, keptWritten, keptSuperseded,
		calls, fails, failedOnVictim, byCode, window.Round(time.Millisecond),
		failedOverAfter.Round(time.Millisecond), rejoinedAt.Sub(killAt).Round(time.Millisecond), forced, states)

	// Exactly once (contract, "Never"): no presentation after a known
	// outcome, none overlapping; every USED_REFRESH_TOKEN is a lost
	// rotation, which needs an answer that was not delivered.
	if l.RepresentedAfterKnown != 0 || l.Overlapping != 0 {
		t.Errorf("refresh tokens presented again after a known outcome: %d (%v), overlapping: %d",
			l.RepresentedAfterKnown, l.AfterKnown, l.Overlapping)
	}
	if l.SPairsLost != 0 || ledgerBefore.SPairsLost != 0 {
		t.Errorf("acknowledged pairs lost: %d (walletsim answered USED_REFRESH_TOKEN to a token whose S it had delivered)", l.SPairsLost)
	}
	if l.LostRotations > l.Undelivered || int64(stats.RefreshTokensReused) != l.LostRotations+l.SPairsLost {
		t.Errorf("%d lost rotations, %d undelivered answers, %d USED_REFRESH_TOKEN answers: every USED must be a lost rotation after an undelivered answer",
			l.LostRotations, l.Undelivered, stats.RefreshTokensReused)
	}
	// The refreshes caught by the kill: their pairs were kept and written.
	if kept == 0 || keptWritten+keptSuperseded != kept {
		t.Errorf("%d refreshed pairs kept in memory across the failover (want some: %d refreshes were in flight at the kill), %d written later, %d found written",
			kept, inFlightAtKill, keptWritten, keptSuperseded)
	}
	// Every customer ends valid and refreshable, but one that lost a
	// rotation (the contract's only allowed loss, counted above).
	reauth := 0
	for k, n := range states {
		if strings.HasPrefix(k, stateReauth) {
			reauth += n
		} else if k != stateValid && k != stateRefreshing {
			t.Errorf("%d customers in state %q at the end", n, k)
		}
	}
	if int64(reauth) > l.LostRotations || int64(forced["200"]+reauth) < customers {
		t.Errorf("at the end: states %v, forced refresh %v; lost rotations %d", states, forced, l.LostRotations)
	}
	// Failed calls: none that ended before the kill (one in flight at the
	// kill may fail by it), all within one window under the bound.
	for _, f := range failures {
		if f.end.Before(killAt) {
			t.Errorf("an app call failed before the kill at %s: %s, answered at %s", killAt.Format(time.StampMilli), f, f.end.Format(time.StampMilli))
		}
	}
	if len(failures) > 0 {
		if window > windowBound {
			t.Errorf("failed calls from %s to %s: a window of %v, over %v", first.Format(time.StampMilli), last.Format(time.StampMilli), window, windowBound)
		}
	}
}

// simAuthCode asks walletsim for an authorization code whose token chain
// has access tokens living ttl.
func simAuthCode(simURL, id string, ttl time.Duration) (string, error) {
	status, body, err := tryDo("POST", simURL+"/sim/authcodes", fmt.Sprintf(`{"customerId":%q,"accessTtl":%q}`, id, ttl.String()), nil)
	var out struct{ AuthCode string }
	if err != nil || status != 200 || json.Unmarshal(body, &out) != nil || out.AuthCode == "" {
		return "", fmt.Errorf("authcode for %s: %d %v %s", id, status, err, body)
	}
	return out.AuthCode, nil
}

// readSim GETs a walletsim JSON endpoint into a T.
func readSim[T any](t *testing.T, url string) T {
	t.Helper()
	var v T
	status, body, err := tryDo("GET", url, "", nil)
	if err != nil || status != 200 || json.Unmarshal(body, &v) != nil {
		t.Fatalf("GET %s: %d %v %s", url, status, err, body)
	}
	return v
}

// forEach runs f for 0..n-1 from 8 goroutines and fails the test with the
// errors.
func forEach(t *testing.T, n int, f func(i int) error) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, n)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				errs[i] = f(i)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
		time.Sleep(100 * time.Millisecond) // polling with a deadline
	}
}

// loadCall is one app call through a replica.
type loadCall struct {
	start, end time.Time
	customer   int
	replica    int
	ok         bool   // 200 with the wallet's SUCCESS
	code       string // otherwise: HTTP status and resultCode, or the transport error
}

func (c loadCall) String() string {
	return fmt.Sprintf("customer %d via replica %d at %s: %s", c.customer, c.replica, c.start.Format(time.StampMilli), c.code)
}

// appLoad calls inquiryUserInfo for customers through the replicas and
// records every call.
type appLoad struct {
	procs []*proxyProc
	ids   []string
	next  atomic.Int64

	mu    sync.Mutex
	calls []loadCall
}

func newAppLoad(procs []*proxyProc, ids []string) *appLoad {
	return &appLoad{procs: procs, ids: ids}
}

// run starts callers goroutines, each making one call every every, and
// returns the function that stops them and waits for them (idempotent).
func (a *appLoad) run(callers int, every time.Duration) func() {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				a.call(ctx)
			}
		}()
	}
	var once sync.Once
	return func() { once.Do(func() { cancel(); wg.Wait() }) }
}

func (a *appLoad) call(ctx context.Context) {
	n := int(a.next.Add(1) - 1)
	c := loadCall{customer: n % len(a.ids), replica: n / len(a.ids) % len(a.procs), start: time.Now()}
	// Bounded well above the proxy's own deadlines (a call that waits
	// for a refresh, a store that does not answer): an answer always comes.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	status, body, err := doCtx(cctx, "POST", a.procs[c.replica].url+"/v1/users/inquiryUserInfo", `{}`,
		map[string]string{"X-Customer-Id": a.ids[c.customer]})
	c.end = time.Now()
	switch {
	case ctx.Err() != nil:
		return // stopped: not a result
	case err != nil:
		c.code = "transport error: " + err.Error()
	default:
		c.ok = status == 200 && resultCode(body) == "SUCCESS"
		c.code = fmt.Sprintf("%d %s", status, resultCode(body))
	}
	a.mu.Lock()
	a.calls = append(a.calls, c)
	a.mu.Unlock()
}

func (a *appLoad) all() []loadCall {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.calls)
}

// failures returns the failed calls that started after since, in order.
func (a *appLoad) failures(since time.Time) []loadCall {
	var out []loadCall
	for _, c := range a.all() {
		if !c.ok && !c.start.Before(since) {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].start.Before(out[j].start) })
	return out
}

// servedAll reports whether every customer had a successful call through
// every replica that started after since.
func (a *appLoad) servedAll(since time.Time) bool {
	served := map[[2]int]bool{}
	for _, c := range a.all() {
		if c.ok && c.start.After(since) {
			served[[2]int{c.customer, c.replica}] = true
		}
	}
	return len(served) == len(a.ids)*len(a.procs)
}

func (a *appLoad) counts() (calls, failed int) {
	for _, c := range a.all() {
		calls++
		if !c.ok {
			failed++
		}
	}
	return calls, failed
}

// failureWindow is the time from the start of the first failed call to
// the start of the first successful call after the end of the last failed
// one (to the last failure's end if none followed); zero without failures.
func failureWindow(calls []loadCall) (window time.Duration, first, last time.Time) {
	for _, c := range calls {
		if c.ok {
			continue
		}
		if first.IsZero() || c.start.Before(first) {
			first = c.start
		}
		if c.end.After(last) {
			last = c.end
		}
	}
	if first.IsZero() {
		return 0, first, last
	}
	end := last
	var after time.Time
	for _, c := range calls {
		if c.ok && c.start.After(last) && (after.IsZero() || c.start.Before(after)) {
			after = c.start
		}
	}
	if !after.IsZero() {
		end = after
	}
	return end.Sub(first), first, last
}

// doCtx is tryDo bounded by ctx.
func doCtx(ctx context.Context, method, url, body string, hdr map[string]string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := appClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// metricPrefixSum adds up every series of the replicas' /metrics whose line
// starts with prefix (a family and its opening brace: every label value).
func metricPrefixSum(t *testing.T, prefix string, procs ...*proxyProc) float64 {
	t.Helper()
	sum := 0.0
	for _, p := range procs {
		status, body, _ := do(t, "GET", p.ops+"/metrics", "", nil)
		if status != 200 {
			t.Fatalf("metrics of %s: %d", p.ops, status)
		}
		for _, line := range strings.Split(string(body), "\n") {
			if !strings.HasPrefix(line, prefix) {
				continue
			}
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			sum += v
		}
	}
	return sum
}

// simDo makes a walletsim control call (faults) and fails the test unless
// it succeeds.
func simDo(t *testing.T, method, url, body string) {
	t.Helper()
	status, b, err := tryDo(method, url, body, nil)
	if err != nil || status/100 != 2 {
		t.Fatalf("%s %s: %d %v %s", method, url, status, err, b)
	}
}
