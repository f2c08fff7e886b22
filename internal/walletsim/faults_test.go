package walletsim

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/wallet"
)

func TestFaultCountAndOrder(t *testing.T) {
	h := newHarness(t, nil)
	tb := h.login("cust-f")
	h.addFault(map[string]any{"path": PathInquiryUserInfo, "failCode": "ACCESS_DENIED", "count": 2})
	h.addFault(map[string]any{"failCode": "PROCESS_FAIL", "count": 1})

	// The first rule applies to the next two inquiries, then the second
	// (which matches every path) to one call, then nothing.
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "F ACCESS_DENIED")
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "F PROCESS_FAIL") // not processed
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "F ACCESS_DENIED")
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "S SUCCESS")
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "S SUCCESS")

	st := h.srv.Stats()
	if st.FaultsMatched != 3 || st.RefreshPresentations != 1 {
		t.Errorf("faultsMatched %d refreshPresentations %d, want 3 and 1", st.FaultsMatched, st.RefreshPresentations)
	}
	// Faulted calls are counted like the others.
	if st.Calls[PathInquiryUserInfo]["-"] != 3 || st.Calls[PathApplyTokenV1][GrantRefreshToken] != 2 {
		t.Errorf("calls %v", st.Calls)
	}
	if len(h.srv.Faults()) != 0 {
		t.Errorf("exhausted rules kept: %+v", h.srv.Faults())
	}
}

func TestFaultGrantTypeAndUnknown(t *testing.T) {
	h := newHarness(t, nil)
	h.addFault(map[string]any{"grantType": GrantRefreshToken, "unknownRate": 1})
	tb := h.login("cust-u") // AUTHORIZATION_CODE: not matched
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "S SUCCESS")
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "U UNKNOWN_EXCEPTION")
	h.want(PathApplyTokenV2, refreshBody(tb.RefreshToken), "U UNKNOWN_EXCEPTION")

	var listed struct {
		Faults []map[string]any `json:"faults"`
	}
	h.sim(http.MethodGet, "/sim/faults", nil, &listed)
	if len(listed.Faults) != 1 || listed.Faults[0]["grantType"] != GrantRefreshToken {
		t.Errorf("GET /sim/faults: %v", listed)
	}
	if code := h.sim(http.MethodDelete, "/sim/faults", nil, nil); code != http.StatusOK {
		t.Fatalf("DELETE /sim/faults: %d", code)
	}
	// Never processed: the refresh token is still good.
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "S SUCCESS")
	if st := h.srv.Stats(); st.RefreshPresentations != 1 || st.RefreshTokensReused != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestFaultFailCode(t *testing.T) {
	h := newHarness(t, nil)
	tb := h.login("cust-fc")
	h.addFault(map[string]any{"failCode": "UNKNOWN_EXCEPTION", "count": 1})
	h.addFault(map[string]any{"failCode": "REQUEST_TRAFFIC_EXCEED_LIMIT", "failRate": 1, "count": 1})
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "U UNKNOWN_EXCEPTION")
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "F REQUEST_TRAFFIC_EXCEED_LIMIT")
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "S SUCCESS")
}

func TestFaultLatency(t *testing.T) {
	h := newHarness(t, nil)
	tb := h.login("cust-l")

	// A caller that waits gets its answer late.
	h.addFault(map[string]any{"path": PathInquiryUserInfo, "latency": "150ms", "count": 1})
	start := time.Now()
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "S SUCCESS")
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("answered after %s, before the latency", d)
	}

	// A caller that hangs up during the latency leaves the call unprocessed.
	h.addFault(map[string]any{"grantType": GrantRefreshToken, "latency": "30s", "count": 1})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := h.client.Call(ctx, PathApplyTokenV1, "", mustJSON(t, refreshBody(tb.RefreshToken)), nil)
	if !errors.Is(err, wallet.ErrTimeout) {
		t.Fatalf("want a timeout, got %v", err)
	}
	waitFor(t, "the abandoned call to end", func() bool { return h.srv.Stats().Abandoned == 1 })
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "S SUCCESS")
	if st := h.srv.Stats(); st.RefreshPresentations != 1 || st.Calls[PathApplyTokenV1][GrantRefreshToken] != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestFaultDropAfterProcessing(t *testing.T) {
	h := newHarness(t, nil)
	tb := h.login("cust-d")
	h.addFault(map[string]any{"grantType": GrantRefreshToken, "dropAfterProcessing": true, "count": 1})
	_, err := h.call(PathApplyTokenV1, refreshBody(tb.RefreshToken))
	if !errors.Is(err, wallet.ErrUnavailable) {
		t.Fatalf("want the connection cut, got %v", err)
	}
	// It was processed: the refresh token is spent, the old access token too.
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "F USED_REFRESH_TOKEN")
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "F INVALID_ACCESS_TOKEN")
	if st := h.srv.Stats(); st.Refreshes != 1 || st.RefreshTokensReused != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestFaultReset(t *testing.T) {
	h := newHarness(t, nil)
	tb := h.login("cust-rst")
	h.addFault(map[string]any{"grantType": GrantRefreshToken, "resetRate": 1, "count": 1})
	_, err := h.call(PathApplyTokenV1, refreshBody(tb.RefreshToken))
	if !errors.Is(err, wallet.ErrUnavailable) {
		t.Fatalf("want the connection reset, got %v", err)
	}
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "S SUCCESS")
	if st := h.srv.Stats(); st.RefreshPresentations != 1 {
		t.Errorf("refreshPresentations %d", st.RefreshPresentations)
	}
}

func TestFaultHTML5xx(t *testing.T) {
	h := newHarness(t, nil)
	tb := h.login("cust-h")
	h.addFault(map[string]any{"html5xxRate": 1, "count": 2})

	body := mustJSON(t, refreshBody(tb.RefreshToken))
	req, _ := http.NewRequest(http.MethodPost, h.ts.URL+PathApplyTokenV1, bytes.NewReader(body))
	resp, err := h.hc.Do(req) // unsigned: the gateway answers before any check
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(string(page), "Bad Gateway") {
		t.Errorf("HTTP %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), page)
	}
	if _, err := h.call(PathApplyTokenV1, refreshBody(tb.RefreshToken)); !errors.Is(err, wallet.ErrUnavailable) {
		t.Errorf("client: want ErrUnavailable, got %v", err)
	}
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "S SUCCESS")
}

func TestFaultRateLimit(t *testing.T) {
	h := newHarness(t, nil) // the clock stands still unless moved
	tb := h.login("cust-rl")
	h.addFault(map[string]any{"path": PathInquiryUserInfo, "rateLimitPerSecond": 2})
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "S SUCCESS")
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "S SUCCESS")
	h.want(PathInquiryUserInfo, inquiryBody(tb.AccessToken), "F REQUEST_TRAFFIC_EXCEED_LIMIT")
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "S SUCCESS") // other path: no limit
	h.clk.Advance(500 * time.Millisecond)
	h.want(PathInquiryUserInfo, inquiryBody("nosuch"), "F INVALID_ACCESS_TOKEN")
	h.want(PathInquiryUserInfo, inquiryBody("nosuch"), "F REQUEST_TRAFFIC_EXCEED_LIMIT")
}

func TestFaultBadSignature(t *testing.T) {
	h := newHarness(t, nil)
	tb := h.login("cust-bs")
	h.addFault(map[string]any{"badSignatureRate": 1})
	if _, err := h.call(PathInquiryUserInfo, inquiryBody(tb.AccessToken)); !errors.Is(err, wallet.ErrBadSignature) {
		t.Fatalf("want ErrBadSignature, got %v", err)
	}
	// Processed normally: a client that does not verify sees the answer,
	// and a refresh through it spends the token.
	lax := *h.client
	lax.WalletKey = nil
	resp, err := lax.Call(context.Background(), PathApplyTokenV1, "", mustJSON(t, refreshBody(tb.RefreshToken)), nil)
	if err != nil || outcome(resp) != "S SUCCESS" {
		t.Fatalf("unverified call: %v", err)
	}
	h.srv.ClearFaults()
	h.want(PathApplyTokenV1, refreshBody(tb.RefreshToken), "F USED_REFRESH_TOKEN")
}

func TestFaultValidation(t *testing.T) {
	h := newHarness(t, nil)
	for _, bad := range []string{
		`{"unknownRate":1.5}`,
		`{"resetRate":-0.1}`,
		`{"latency":"soon"}`,
		`{"latency":"11m"}`,
		`{"count":-1}`,
		`{"path":"/v1/payments/pay"}`,
		`{"grantType":"PASSWORD"}`,
		`{"grantType":"REFRESH_TOKEN","path":"/v1/users/inquiryUserInfo"}`,
		`{"failRate":0.5}`,
		`{"failCode":"lower case"}`,
		`{"failCode":"SUCCESS"}`,
		`{"rateLimitPerSecond":-1}`,
		`{"unknwonRate":1}`,
		`{"count":"2"}`,
		`[]`,
		``,
	} {
		var out map[string]string
		if code := h.sim(http.MethodPost, "/sim/faults", []byte(bad), &out); code != http.StatusBadRequest {
			t.Errorf("%s: HTTP %d, want 400", bad, code)
		}
	}
	if len(h.srv.Faults()) != 0 {
		t.Errorf("a bad rule was kept")
	}
	if code := h.sim(http.MethodPut, "/sim/faults", []byte(`{}`), nil); code != http.StatusMethodNotAllowed {
		t.Errorf("PUT: HTTP %d", code)
	}
}
