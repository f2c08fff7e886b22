package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/events"
)

// eventReceiver is the app's webhook endpoint in the events tests: it
// verifies every signature (and its timestamp), validates every body
// against the document's ReauthorizationEvent schema, records every
// attempt, and fails or holds the events of chosen customers.
type eventReceiver struct {
	t      *testing.T
	sp     *spec
	secret []byte
	srv    *httptest.Server

	mu       sync.Mutex
	raw      []string                 // every body received
	attempts map[string]int           // by event id
	acked    []map[string]any         // acknowledged events, in order
	failN    map[string]int           // customer -> attempts still to fail
	hold     map[string]chan struct{} // customer -> held until closed (or hang-up)
	hungUp   map[string]int           // customer -> held attempts whose sender went away
}

var signatureFormat = regexp.MustCompile(`^t=[0-9]+,v1=[0-9a-f]{64}$`)

func newEventReceiver(t *testing.T, sp *spec, secret string) *eventReceiver {
	r := &eventReceiver{t: t, sp: sp, secret: []byte(secret), attempts: map[string]int{},
		failN: map[string]int{}, hold: map[string]chan struct{}{}, hungUp: map[string]int{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *eventReceiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	sig := req.Header.Get(events.SignatureHeader)
	if !signatureFormat.MatchString(sig) {
		r.t.Errorf("receiver: signature header %q", sig)
	}
	if err := events.Verify(r.secret, sig, body, time.Now(), 5*time.Minute); err != nil {
		r.t.Errorf("receiver: %v", err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var ev map[string]any
	if err := json.Unmarshal(body, &ev); err != nil {
		r.t.Errorf("receiver: body %s: %v", body, err)
	}
	if err := r.sp.validate(ref("ReauthorizationEvent"), ev, "event"); err != nil {
		r.t.Errorf("receiver: %s does not match the webhook schema: %v", body, err)
	}
	id, _ := ev["id"].(string)
	customer, _ := ev["customerId"].(string)
	r.mu.Lock()
	r.raw = append(r.raw, string(body))
	r.attempts[id]++
	fail := r.failN[customer] > 0
	if fail {
		r.failN[customer]--
	}
	hold := r.hold[customer]
	r.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-req.Context().Done():
			r.mu.Lock()
			r.hungUp[customer]++
			r.mu.Unlock()
			return // the sender went away: not acknowledged
		}
	}
	if fail {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	r.mu.Lock()
	r.acked = append(r.acked, ev)
	r.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// ackedFor returns the acknowledged events of a customer.
func (r *eventReceiver) ackedFor(customer string) []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]any
	for _, ev := range r.acked {
		if ev["customerId"] == customer {
			out = append(out, ev)
		}
	}
	return out
}

// waitAcked waits until the customer has n acknowledged events.
func (r *eventReceiver) waitAcked(t *testing.T, customer string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		evs := r.ackedFor(customer)
		if len(evs) >= n {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d events acknowledged, want %d", customer, len(evs), n)
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
}

func (r *eventReceiver) attemptsOf(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.attempts[id]
}

// wantEvent checks the customer's acknowledged events are exactly one of
// type typ and reason (nil: null), and returns it.
func wantEvent(t *testing.T, evs []map[string]any, typ string, reason any) map[string]any {
	t.Helper()
	if len(evs) != 1 || evs[0]["type"] != typ || evs[0]["reason"] != reason {
		t.Fatalf("events %v, want one %s with reason %v", evs, typ, reason)
	}
	return evs[0]
}

// rejectRefresh makes the customer's next refresh fail with code, forces
// a refresh through p and checks it answered 401 REAUTHORIZATION_REQUIRED.
func rejectRefresh(t *testing.T, h *harness, p *proxyProc, customer, code string) {
	t.Helper()
	h.fault(`{"grantType":"REFRESH_TOKEN","failCode":"` + code + `","count":1}`)
	status, body, _ := do(t, "POST", p.url+"/tokenproxy/customers/"+customer+"/refresh", "", nil)
	if status != 401 || resultCode(body) != "REAUTHORIZATION_REQUIRED" {
		t.Fatalf("forced refresh of %s with %s: %d %s", customer, code, status, body)
	}
}

// TestEvents runs two tokenproxy replicas on one Redis with events on,
// walletsim and a receiver of the test's own. Sized for 2 cores: a
// handful of customers; the waits are for deliveries (a poll every 2 s,
// backoff from 1 s), not for CPU.
func TestEvents(t *testing.T) {
	sp := loadSpec(t)
	h := newHarness(t).withRedis()
	const secret = "events-secret-for-the-test"
	secretFile := filepath.Join(t.TempDir(), "events-secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rcv := newEventReceiver(t, sp, secret)
	// The delivery lease is REFRESH_LEASE (renewed every third of it): 3 s
	// holds under load and lets the killed replica's lease lapse soon.
	env := []string{"TOKENPROXY_EVENTS_URL=" + rcv.srv.URL + "/hooks/tokenproxy", "TOKENPROXY_EVENTS_SECRET_FILE=" + secretFile,
		"TOKENPROXY_REFRESH_LEASE=3s"}
	a := h.startProxy(env...)
	b := h.startProxy(env...)
	replicas := []*proxyProc{a, b}

	codes := []string{"INVALID_REFRESH_TOKEN", "EXPIRED_REFRESH_TOKEN", "USED_REFRESH_TOKEN"}
	for i, code := range codes {
		id := "ev-" + strings.ToLower(code)
		h.exchange(replicas[i%2], id)
		rejectRefresh(t, h, replicas[i%2], id, code)
	}
	// A lost rotation: the wallet rotates, the answer is lost; the one
	// re-presentation is answered USED_REFRESH_TOKEN.
	h.exchange(a, "ev-lost")
	h.fault(`{"grantType":"REFRESH_TOKEN","dropAfterProcessing":true,"count":1}`)
	if status, body, _ := do(t, "POST", a.url+"/tokenproxy/customers/ev-lost/refresh", "", nil); status != 502 && status != 504 {
		t.Fatalf("refresh with the answer lost: %d %s", status, body)
	}
	if status, body, _ := do(t, "POST", b.url+"/tokenproxy/customers/ev-lost/refresh", "", nil); status != 401 {
		t.Fatalf("re-presentation after a lost answer: %d %s", status, body)
	}
	// A refresh token living 48 h is within the default 72 h horizon.
	h.exchangeChain(b, "ev-expiring", "", "48h")

	for _, code := range codes {
		wantEvent(t, rcv.waitAcked(t, "ev-"+strings.ToLower(code), 1), "reauthorization_required", code)
	}
	wantEvent(t, rcv.waitAcked(t, "ev-lost", 1), "reauthorization_required", "LOST_ROTATION")
	wantEvent(t, rcv.waitAcked(t, "ev-expiring", 1), "refresh_token_expiring", nil)

	// A new exchange: reauthorized.
	h.exchange(b, "ev-invalid_refresh_token")
	evs := rcv.waitAcked(t, "ev-invalid_refresh_token", 2)
	if len(evs) != 2 || evs[1]["type"] != "reauthorized" || evs[1]["reason"] != nil {
		t.Fatalf("after a new exchange: %v, want reauthorized last", evs)
	}

	// A receiver that fails 5 times, then succeeds, gets the event once.
	rcv.mu.Lock()
	rcv.failN["ev-flaky"] = 5
	rcv.mu.Unlock()
	h.exchange(a, "ev-flaky")
	rejectRefresh(t, h, a, "ev-flaky", "INVALID_REFRESH_TOKEN")
	flaky := wantEvent(t, rcv.waitAcked(t, "ev-flaky", 1), "reauthorization_required", "INVALID_REFRESH_TOKEN")
	if n := rcv.attemptsOf(flaky["id"].(string)); n != 6 {
		t.Fatalf("flaky receiver: %d attempts, want 6 (5 failures, then the acknowledged one)", n)
	}

	// The list shows who must authorize again, without a token.
	status, body, _ := do(t, "GET", a.url+"/tokenproxy/customers?state=reauthorization_required&limit=2", "", nil)
	var page struct {
		Customers []struct {
			CustomerID string  `json:"customerId"`
			State      string  `json:"state"`
			LastError  *string `json:"lastError"`
		} `json:"customers"`
		NextCursor *string `json:"nextCursor"`
	}
	listed := map[string]string{}
	raw := [][]byte{body}
	for range 10 {
		if status != 200 || json.Unmarshal(body, &page) != nil {
			t.Fatalf("list: %d %s", status, body)
		}
		for _, c := range page.Customers {
			if c.State != "reauthorization_required" || c.LastError == nil {
				t.Errorf("listed %+v", c)
				continue
			}
			listed[c.CustomerID] = *c.LastError
		}
		if page.NextCursor == nil {
			break
		}
		status, body, _ = do(t, "GET", b.url+"/tokenproxy/customers?state=reauthorization_required&limit=2&cursor="+*page.NextCursor, "", nil)
		raw = append(raw, body)
	}
	wantListed := map[string]string{"ev-expired_refresh_token": "EXPIRED_REFRESH_TOKEN", "ev-used_refresh_token": "USED_REFRESH_TOKEN",
		"ev-lost": "USED_REFRESH_TOKEN", "ev-flaky": "INVALID_REFRESH_TOKEN"}
	if fmt.Sprint(listed) != fmt.Sprint(wantListed) {
		t.Errorf("listed %v, want %v", listed, wantListed)
	}

	// Killed mid-delivery: the other replica delivers the same event (same
	// id) once the killed one's lease lapses.
	release := make(chan struct{})
	rcv.mu.Lock()
	rcv.hold["ev-kill"] = release
	rcv.mu.Unlock()
	h.exchange(a, "ev-kill")
	rejectRefresh(t, h, a, "ev-kill", "EXPIRED_REFRESH_TOKEN")
	var killID string
	deadline := time.Now().Add(60 * time.Second)
	for killID == "" {
		rcv.mu.Lock()
		for _, r := range rcv.raw {
			if strings.Contains(r, `"customerId":"ev-kill"`) {
				var ev map[string]any
				_ = json.Unmarshal([]byte(r), &ev)
				killID, _ = ev["id"].(string)
			}
		}
		rcv.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("the event of ev-kill never arrived")
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
	// The sender logged it before the POST; its output reaches the test
	// through a pipe, so look for it a while.
	var sender, other *proxyProc
	for deadline := time.Now().Add(20 * time.Second); sender == nil; {
		for i, p := range replicas {
			if strings.Contains(string(p.Logs()), `"msg":"delivering event","event_id":"`+killID+`"`) {
				sender, other = p, replicas[1-i]
			}
		}
		if sender == nil && time.Now().After(deadline) {
			t.Fatalf("no replica logged the delivery of %s", killID)
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
	sender.Kill()
	// The held attempt ends when the server notices the hang-up, which
	// happens after the kill, asynchronously: only then release the hold,
	// or a late release would acknowledge the attempt of the dead sender.
	for deadline := time.Now().Add(30 * time.Second); ; {
		rcv.mu.Lock()
		gone := rcv.hungUp["ev-kill"]
		if gone > 0 {
			delete(rcv.hold, "ev-kill")
		}
		rcv.mu.Unlock()
		if gone > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the killed sender's attempt was never hung up")
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
	close(release)
	killed := wantEvent(t, rcv.waitAcked(t, "ev-kill", 1), "reauthorization_required", "EXPIRED_REFRESH_TOKEN")
	if killed["id"] != killID || rcv.attemptsOf(killID) < 2 {
		t.Fatalf("after the kill: acknowledged %v after %d attempts, want id %s again", killed["id"], rcv.attemptsOf(killID), killID)
	}
	// The survivor logs the delivery after the receiver answered, through
	// a pipe: look for it a while.
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(string(other.Logs()), `"msg":"event delivered","event_id":"`+killID+`"`); {
		if time.Now().After(deadline) {
			t.Errorf("the surviving replica did not log the delivery of %s", killID)
			break
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}

	// Every event was acknowledged once, with a distinct id, and sent once
	// but for the flaky receiver's retries and the killed delivery.
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	ids := map[string]bool{}
	for _, ev := range rcv.acked {
		id := ev["id"].(string)
		if ids[id] {
			t.Errorf("event %s acknowledged twice", id)
		}
		ids[id] = true
		if n := rcv.attempts[id]; n != 1 && id != flaky["id"] && id != killID {
			t.Errorf("event %v sent %d times", ev, n)
		}
	}
	if len(rcv.acked) != 8 {
		t.Errorf("%d events acknowledged, want 8: %v", len(rcv.acked), rcv.acked)
	}
	// Events and list answers never hold a token.
	for _, tok := range h.tap.allTokens() {
		for _, enc := range encodings(tok) {
			for _, r := range rcv.raw {
				if strings.Contains(r, enc) {
					t.Fatalf("an event holds a token: %s", r)
				}
			}
			for _, r := range raw {
				if strings.Contains(string(r), enc) {
					t.Fatalf("a list answer holds a token: %s", r)
				}
			}
		}
	}
	if len(h.tap.allTokens()) < 10 {
		t.Fatalf("the tap saw %d tokens: the scan would prove nothing", len(h.tap.allTokens()))
	}
}
