package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// status is the admin answer for a customer: times and state, never a token.
type status struct {
	State                 string     `json:"state"`
	AccessTokenExpiryTime *time.Time `json:"accessTokenExpiryTime"`
	LastRefreshTime       *time.Time `json:"lastRefreshTime"`
	LastError             *string    `json:"lastError"`
}

func customerStatus(id string) (status, []byte, error) {
	var st status
	code, body, err := fetch("GET", "http://"+proxyAddr+"/tokenproxy/customers/"+id, nil, "")
	if err != nil {
		return st, nil, err
	}
	if code != 200 {
		return st, body, fmt.Errorf("status of %s: HTTP %d: %s", id, code, body)
	}
	if err := noToken(body); err != nil {
		return st, body, err
	}
	return st, body, json.Unmarshal(body, &st)
}

// refreshes sums tokenproxy_refreshes_total{trigger,result="success"}.
func refreshes(trigger string) (float64, error) {
	_, body, err := fetch("GET", "http://"+opsAddr+"/metrics", nil, "")
	if err != nil {
		return 0, err
	}
	sum := 0.0
	for _, line := range refreshLines(body) {
		if strings.Contains(line, `trigger="`+trigger+`"`) && strings.Contains(line, `result="success"`) {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				return 0, fmt.Errorf("metrics: %q: %v", line, err)
			}
			sum += v
		}
	}
	return sum, nil
}

func refreshLines(metrics []byte) []string {
	var out []string
	for _, line := range strings.Split(string(metrics), "\n") {
		if strings.HasPrefix(line, "tokenproxy_refreshes_total{") {
			out = append(out, line)
		}
	}
	return out
}

func clock(t *time.Time) string {
	if t == nil {
		return "never     "
	}
	return t.Local().Format("15:04:05.0")
}

// refreshDemo shows the refresh: a customer whose access token lives
// accessTTL is refreshed ahead of expiry by the scheduler while the app
// calls once a second (each call answered 200, none waits), then a forced
// refresh through the admin API. It fails unless two scheduled refreshes
// happened, all before expiry, within watchFor.
func refreshDemo() error {
	step("7. A customer whose access token lives " + accessTTL + ": tokenproxy refreshes it ahead of expiry while the app keeps calling")
	fmt.Printf("   (this tokenproxy runs with TOKENPROXY_REFRESH_BEFORE=%s and TOKENPROXY_REFRESH_JITTER=%s)\n", refreshBefore, refreshJitter)
	var code struct{ AuthCode string }
	if _, err := call("POST", "http://"+walletAddr+"/sim/authcodes", nil,
		`{"customerId":"`+shortCustomer+`","accessTtl":"`+accessTTL+`"}`, &code); err != nil {
		return err
	}
	body, err := call("POST", "http://"+proxyAddr+"/v1/authorizations/applyToken", nil,
		`{"grantType":"AUTHORIZATION_CODE","authCode":"`+code.AuthCode+`"}`, nil)
	if err != nil {
		return err
	}
	if err := noToken(body); err != nil {
		return err
	}
	fmt.Println("   The app now calls POST /v1/users/inquiryUserInfo for this customer once a second; each line")
	fmt.Println("   is what the app got and what GET /tokenproxy/customers/" + shortCustomer + " and /metrics say:")
	fmt.Println()
	fmt.Println("     t     app call       token generation  access token expires  last refreshed  scheduled refreshes")

	start := time.Now()
	generation, lastExpiry := 0, time.Time{}
	scheduled0, err := refreshes("scheduled")
	if err != nil {
		return err
	}
	var headrooms []string
	for time.Since(start) < watchFor {
		t0 := time.Now()
		code, body, err := fetch("POST", "http://"+proxyAddr+"/v1/users/inquiryUserInfo",
			map[string]string{"X-Customer-Id": shortCustomer}, `{}`)
		if err != nil {
			return err
		}
		if err := noToken(body); err != nil {
			return err
		}
		var res struct{ Result struct{ ResultCode string } }
		_ = json.Unmarshal(body, &res)
		if code != 200 || res.Result.ResultCode != "SUCCESS" {
			return fmt.Errorf("an app call failed: HTTP %d %s", code, body)
		}
		st, _, err := customerStatus(shortCustomer)
		if err != nil {
			return err
		}
		sched, err := refreshes("scheduled")
		if err != nil {
			return err
		}
		if exp := st.AccessTokenExpiryTime; exp != nil && !exp.Equal(lastExpiry) {
			if generation > 0 && st.LastRefreshTime != nil {
				headrooms = append(headrooms, lastExpiry.Sub(*st.LastRefreshTime).Round(100*time.Millisecond).String())
			}
			generation, lastExpiry = generation+1, *exp
		}
		fmt.Printf("   %5.1fs  %d %-9s  %16d  %20s  %14s  %19.0f\n", time.Since(start).Seconds(),
			code, res.Result.ResultCode, generation, clock(&lastExpiry), clock(st.LastRefreshTime), sched-scheduled0)
		if sched-scheduled0 >= 2 && generation >= 3 {
			break
		}
		time.Sleep(time.Second - time.Since(t0)%time.Second)
	}
	if generation < 3 {
		return errors.New("no two scheduled refreshes within " + watchFor.String() + ": the refresh is broken")
	}
	fmt.Println()
	fmt.Printf("   -> the access token changed %d times (each refreshed %s before it would have expired);\n", generation-1, strings.Join(headrooms, " and "))
	fmt.Println("      every app call got 200 and none waited for a refresh; the app never saw a token")

	step("8. A forced refresh: POST /tokenproxy/customers/" + shortCustomer + "/refresh (an operator's \"refresh now\")")
	// A moment after the last scheduled refresh, so that the times differ
	// visibly.
	time.Sleep(1500 * time.Millisecond)
	before, _, err := customerStatus(shortCustomer)
	if err != nil {
		return err
	}
	body, err = call("POST", "http://"+proxyAddr+"/tokenproxy/customers/"+shortCustomer+"/refresh", nil, "", nil)
	if err != nil {
		return err
	}
	if err := noToken(body); err != nil {
		return err
	}
	show(body)
	var after status
	if err := json.Unmarshal(body, &after); err != nil {
		return err
	}
	if after.LastRefreshTime == nil || before.LastRefreshTime == nil || !after.LastRefreshTime.After(*before.LastRefreshTime) {
		return errors.New("the forced refresh did not refresh")
	}
	fmt.Printf("   -> lastRefreshTime %s -> %s, accessTokenExpiryTime %s -> %s: a new token generation\n",
		clock(before.LastRefreshTime), clock(after.LastRefreshTime), clock(before.AccessTokenExpiryTime), clock(after.AccessTokenExpiryTime))

	step("9. What the metrics and the wallet say about the refreshes")
	_, metrics, err := fetch("GET", "http://"+opsAddr+"/metrics", nil, "")
	if err != nil {
		return err
	}
	for _, line := range refreshLines(metrics) {
		if !strings.HasSuffix(line, " 0") {
			fmt.Println("   " + line)
		}
	}
	var stats struct {
		Refreshes                   int `json:"refreshes"`
		RefreshesBeforeAccessExpiry int `json:"refreshesBeforeAccessExpiry"`
		RefreshesAfterAccessExpiry  int `json:"refreshesAfterAccessExpiry"`
		RefreshTokensReused         int `json:"refreshTokensReused"`
	}
	_, raw, err := fetch("GET", "http://"+walletAddr+"/sim/stats", nil, "")
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, &stats); err != nil {
		return err
	}
	fmt.Printf("   walletsim: %d refreshes, %d before the access token expired, %d after; refresh tokens reused: %d\n",
		stats.Refreshes, stats.RefreshesBeforeAccessExpiry, stats.RefreshesAfterAccessExpiry, stats.RefreshTokensReused)
	if stats.RefreshTokensReused != 0 {
		return errors.New("a refresh token was presented twice")
	}
	return nil
}
