package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// What a call must get from a record tampered with in Redis.
const (
	// corrupt: the record is unreadable or incomplete. API call and admin
	// GET are 503 TOKEN_STORE_UNAVAILABLE (U), and nothing reaches the
	// wallet: such a record is never used to call it.
	corrupt = "corrupt"
	// usable: the field is optional, or not read by a call, or the value
	// is another well-formed one; the call reaches the wallet once, with
	// the customer's exact access token.
	usable = "usable"
	// reauth: the record says the customer must authorize again: 401
	// REAUTHORIZATION_REQUIRED, no wallet call, admin shows the state.
	reauth = "reauth"
)

// tamperRow is one change an attacker with Redis access makes to one
// field of a customer's record hash.
type tamperRow struct {
	field string
	// how: "garbage", "deleted", "swapped" (another customer's value of
	// the same field), or a description of value.
	how   string
	value string // for anything but deleted and swapped
	want  string
	why   string
}

// TestTamperedRecord: a customer exchanged through walletsim (and
// refreshed once, so that the refresh bookkeeping fields exist), then one
// field of its Redis record hash corrupted, deleted or swapped with another
// customer's value; an API call and an admin GET must then get the row's
// answer, no wallet call may carry an empty or garbled token, and nothing
// leaks into answers, logs or /metrics.
//
// The record is damaged by hand, which publishes nothing: a replica holding
// the customer's opened record in its L1 would go on serving that copy (the
// tokens as they were before the damage) until the record changes through
// the store or its subscription is reset. So the L1 is off here
// (TOKENPROXY_CACHE_MAX_ENTRIES=0): every call reads the record, which is
// the path under test.
func TestTamperedRecord(t *testing.T) {
	h := newHarness(t).withRedis()
	p := h.startProxy("TOKENPROXY_CACHE_MAX_ENTRIES=0")
	store := importStore(t, h.redis.URL, h.encKey)
	rdb := h.redis.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var answers [][]byte

	// prepare links a customer, refreshes it once and makes one call,
	// returning its record key and the access token the wallet received.
	prepare := func(t *testing.T, id string) (string, string) {
		t.Helper()
		status, body, _ := do(t, "POST", p.url+applyV1, `{"grantType":"AUTHORIZATION_CODE","authCode":"`+h.authCode(id)+`","extendInfo":"{\"memo\":\"`+id+`\"}"}`, nil)
		if status != 200 || resultCode(body) != "SUCCESS" {
			t.Fatalf("exchange %s: %d %s", id, status, body)
		}
		if status, body, _ := do(t, "POST", p.url+"/tokenproxy/customers/"+id+"/refresh", "", nil); status != 200 {
			t.Fatalf("refresh %s: %d %s", id, status, body)
		}
		n := h.tap.requests()
		if status, body, _ := do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": id}); status != 200 {
			t.Fatalf("call for %s: %d %s", id, status, body)
		}
		sent := h.tap.requestsSince(n)
		var m struct{ AccessToken string }
		if len(sent) != 1 || json.Unmarshal([]byte(sent[0]), &m) != nil || len(m.AccessToken) < 12 {
			t.Fatalf("call for %s: the wallet got %q", id, sent)
		}
		key := store.RecordKey(id)
		keys, err := rdb.Keys(ctx, "tokenproxy:*").Result()
		if err != nil || !slices.Contains(keys, key) {
			t.Fatalf("record key %s not among the prefix's keys %v (%v)", key, keys, err)
		}
		return key, m.AccessToken
	}

	otherKey, _ := prepare(t, "tp-other")
	other, err := rdb.HGetAll(ctx, otherKey).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"v", "gen", "ver", "kid", "at", "rt", "ate", "rte", "lr", "nr", "path", "replay", "rth", "fence"} {
		if other[f] == "" {
			t.Fatalf("a prepared record lacks %q: the rows below would not test what they say (fields %v)", f, keysOf(other))
		}
	}

	const garbage = "\x00garbage\xff{"
	g := func(field, want, why string) tamperRow { return tamperRow{field, "garbage", garbage, want, why} }
	d := func(field, want, why string) tamperRow { return tamperRow{field, "deleted", "", want, why} }
	s := func(field, want, why string) tamperRow { return tamperRow{field, "swapped", "", want, why} }
	v := func(field, how, value, want, why string) tamperRow { return tamperRow{field, how, value, want, why} }
	rows := []tamperRow{
		g("v", corrupt, "format version unknown"),
		d("v", corrupt, "format version missing"),
		s("v", usable, "every record has the same version"),
		v("v", "a future version 3", "3", corrupt, "a reader refuses formats it does not know"),
		v("v", "the previous version 1", "1", corrupt, "format 1 keeps sealed values in base64: this record's raw ones do not open as that"),
		g("gen", corrupt, "generation malformed"),
		d("gen", corrupt, "generation missing"),
		s("gen", usable, "another valid generation: it only orders writes"),
		v("gen", "zero", "0", corrupt, "generations start at 1"),
		v("gen", "negative", "-5", corrupt, "generations start at 1"),
		g("state", corrupt, "state unknown"),
		v("state", "empty", "", usable, "an empty state is active, as written (empty fields are not stored)"),
		v("state", "reauthorization_required", "reauthorization_required", reauth, "the record says so; no call is made with its tokens"),
		g("err", corrupt, "last error not a resultCode"),
		v("err", "a plausible resultCode", "UNKNOWN_EXCEPTION", usable, "last error is only shown"),
		g("kid", corrupt, "key id not in the keyring: the tokens do not open"),
		d("kid", corrupt, "no key id: the tokens do not open"),
		s("kid", usable, "one keyring: the same key id"),
		g("at", corrupt, "access token does not open"),
		d("at", corrupt, "access token missing (the issue: an empty token was sent)"),
		s("at", corrupt, "sealed for another customer: the customer id is bound in"),
		v("at", "the record's own sealed rt", "$rt", corrupt, "sealed as the refresh token: the field is bound in"),
		g("rt", corrupt, "refresh token does not open"),
		d("rt", corrupt, "refresh token missing"),
		s("rt", corrupt, "sealed for another customer"),
		v("rt", "the record's own sealed at", "$at", corrupt, "sealed as the access token"),
		g("ate", corrupt, "access expiry malformed"),
		d("ate", corrupt, "access expiry missing"),
		s("ate", usable, "another valid time (both about 2h ahead)"),
		g("rte", corrupt, "refresh expiry malformed"),
		d("rte", usable, "optional: the refresh token is good until the wallet refuses it"),
		s("rte", usable, "another valid time"),
		g("lr", corrupt, "last refresh malformed"),
		d("lr", usable, "optional: never refreshed"),
		s("lr", usable, "another valid time"),
		g("lu", corrupt, "last use malformed"),
		v("lu", "a valid time", "1700000000000", usable, "last use is bookkeeping"),
		g("nr", corrupt, "next refresh malformed"),
		d("nr", usable, "optional: not scheduled"),
		s("nr", usable, "another valid time"),
		g("path", corrupt, "exchange path malformed"),
		d("path", corrupt, "exchange path missing: a refresh could not be made"),
		s("path", usable, "the same path"),
		v("path", "a path with ..", "/v1/../authorizations/applyToken", corrupt, "not a canonical path"),
		v("path", "a path with ?", "/v1/authorizations/applyToken?x", corrupt, "not a canonical path"),
		v("path", "an absolute URL", "http://evil.example/v1/authorizations/applyToken", corrupt, "not a path: a refresh must go to the wallet only"),
		g("replay", corrupt, "replay fields not JSON"),
		v("replay", "a JSON array", `["x"]`, corrupt, "replay fields not an object"),
		d("replay", usable, "optional: nothing to replay"),
		s("replay", usable, "another customer's extendInfo: well-formed, only replayed on refresh"),
		g("rth", usable, "an opaque name of the refresh token for the refresh protocol; a call does not read it"),
		d("rth", usable, "as written by a release before rth"),
		s("rth", usable, "an opaque name; a call does not read it"),
		g("fa", corrupt, "failure count malformed"),
		v("fa", "negative", "-1", corrupt, "failure count negative"),
		v("fa", "a plausible count", "3", usable, "failures only pace refreshes"),
		g("nb", corrupt, "cooldown end malformed"),
		v("nb", "a cooldown far ahead", "99999999999999", usable, "a cooldown stops refreshes, not calls with a valid token"),
		g("ver", usable, "the version of the entry: the next write's compare-and-set fails once and decides again"),
		d("ver", usable, "as above"),
		s("ver", usable, "as above"),
		g("fence", usable, "an unparsable fence reads as 0; the next claim takes the server time"),
		d("fence", usable, "as above"),
		s("fence", usable, "as above"),
	}
	rows = append(rows,
		tamperRow{"*", "whole record of another customer", "", corrupt, "every field copied: the tokens are sealed for the other customer"},
		tamperRow{"*", "a string instead of a hash", "", corrupt, "WRONGTYPE is a damaged record, not an outage"},
	)
	for _, f := range []string{"ih", "it", "io", "ia", "if", "le", "lg", "lo", "lf", "lx"} {
		rows = append(rows, g(f, usable, "intent or lease of a refresh: read only by the protocol, which treats unparsable numbers as absent"))
	}

	for i, row := range rows {
		t.Run(fmt.Sprintf("%s %s", row.field, row.how), func(t *testing.T) {
			id := fmt.Sprintf("tp-%02d", i)
			key, at := prepare(t, id)
			own, err := rdb.HGetAll(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			switch row.how {
			case "whole record of another customer":
				pairs := []any{}
				for k, val := range other {
					pairs = append(pairs, k, val)
				}
				err = rdb.Del(ctx, key).Err()
				if err == nil {
					err = rdb.HSet(ctx, key, pairs...).Err()
				}
			case "a string instead of a hash":
				err = rdb.Set(ctx, key, garbage, 0).Err()
			case "deleted":
				if own[row.field] == "" {
					t.Fatalf("%q is not in the record: deleting it tests nothing", row.field)
				}
				err = rdb.HDel(ctx, key, row.field).Err()
			case "swapped":
				if other[row.field] == "" {
					t.Fatalf("the other record has no %q", row.field)
				}
				err = rdb.HSet(ctx, key, row.field, other[row.field]).Err()
			default:
				val := row.value
				if f, ok := strings.CutPrefix(val, "$"); ok {
					val = own[f]
				}
				err = rdb.HSet(ctx, key, row.field, val).Err()
			}
			if err != nil {
				t.Fatal(err)
			}

			sims, taps := h.stats().total(), h.tap.requests()
			status, body, hdr := do(t, "POST", p.url+inquiry, `{}`, map[string]string{"X-Customer-Id": id})
			answers = append(answers, append(headerBytes(hdr), body...))
			aStatus, aBody, aHdr := do(t, "GET", p.url+"/tokenproxy/customers/"+id, "", nil)
			answers = append(answers, append(headerBytes(aHdr), aBody...))
			sent := h.tap.requestsSince(taps)
			calls := h.stats().total() - sims

			var st adminStatus
			_ = json.Unmarshal(aBody, &st)
			switch row.want {
			case corrupt:
				if status != 503 || resultCode(body) != "TOKEN_STORE_UNAVAILABLE" || !strings.Contains(string(body), `"resultStatus":"U"`) {
					t.Errorf("API call: %d %s, want 503 TOKEN_STORE_UNAVAILABLE (%s)", status, body, row.why)
				}
				if aStatus != 503 || resultCode(aBody) != "TOKEN_STORE_UNAVAILABLE" {
					t.Errorf("admin GET: %d %s, want 503 TOKEN_STORE_UNAVAILABLE", aStatus, aBody)
				}
			case reauth:
				if status != 401 || resultCode(body) != "REAUTHORIZATION_REQUIRED" {
					t.Errorf("API call: %d %s, want 401 REAUTHORIZATION_REQUIRED", status, body)
				}
				if aStatus != 200 || st.State != stateReauth {
					t.Errorf("admin GET: %d %s", aStatus, aBody)
				}
			case usable:
				if status != 200 || resultCode(body) != "SUCCESS" {
					t.Errorf("API call: %d %s, want 200 SUCCESS (%s)", status, body, row.why)
				}
				if aStatus != 200 || st.CustomerID != id || st.State != "valid" {
					t.Errorf("admin GET: %d %s", aStatus, aBody)
				}
			}
			wantCalls := 0
			if row.want == usable {
				wantCalls = 1
			}
			if calls != wantCalls || len(sent) != wantCalls {
				t.Errorf("%d walletsim calls, %d requests through the tap, want %d", calls, len(sent), wantCalls)
			}
			for _, b := range sent {
				var m struct {
					AccessToken  *string
					RefreshToken *string
				}
				if err := json.Unmarshal([]byte(b), &m); err != nil || m.AccessToken == nil || *m.AccessToken != at || m.RefreshToken != nil {
					t.Errorf("a wallet call carried another, empty or garbled token: %.200s", b)
				}
			}
			if leak := leakIn(t, append(body, aBody...), h.tap.allTokens()); leak != "" {
				t.Errorf("an answer holds %s", leak)
			}
		})
	}
	// Replayed fields are replayed beside the refresh grant, never
	// instead of it: a replay field written into Redis cannot turn a
	// refresh into another grant or present another token.
	t.Run("replay fields cannot override the refresh grant", func(t *testing.T) {
		key, _ := prepare(t, "tp-replay")
		err := rdb.HSet(ctx, key, "replay", `{"grantType":"AUTHORIZATION_CODE","authCode":"stolen","refreshToken":"chosen-refresh","accessToken":"chosen-access","extendInfo":"kept"}`).Err()
		if err != nil {
			t.Fatal(err)
		}
		n := h.tap.requests()
		status, body, _ := do(t, "POST", p.url+"/tokenproxy/customers/tp-replay/refresh", "", nil)
		answers = append(answers, body)
		sent := h.tap.requestsSince(n)
		if status != 200 || len(sent) != 1 {
			t.Fatalf("forced refresh: %d %s, %d wallet calls", status, body, len(sent))
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(sent[0]), &m); err != nil {
			t.Fatal(err)
		}
		rt, _ := m["refreshToken"].(string)
		if m["grantType"] != grantRT || m["authCode"] != nil || m["accessToken"] != nil || m["extendInfo"] != "kept" ||
			!slices.Contains(h.tap.allTokens(), rt) {
			t.Errorf("the refresh sent %.300s", sent[0])
		}
	})
	t.Logf("%d tampered-record rows over %d fields", len(rows), countFields(rows))
	scanEverything(t, h.tap.allTokens(), answers, p)
	for _, kv := range h.redis.Dump(t) {
		if leak := leakIn(t, append([]byte(kv.Key), bytes.Join(kv.Values, []byte{0})...), h.tap.allTokens()); leak != "" {
			t.Errorf("Redis key %s holds %s", kv.Key, leak)
		}
	}
	if p.Exited() {
		t.Fatal("tokenproxy exited")
	}
}

func keysOf(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func countFields(rows []tamperRow) int {
	seen := map[string]bool{}
	for _, r := range rows {
		seen[r.field] = true
	}
	return len(seen)
}
