package refresher

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

func TestListByState(t *testing.T) {
	f := newFixture(t)
	now := f.clock.now()
	want := map[State][]string{}
	for i := range 40 {
		id := fmt.Sprintf("c%02d", i)
		rec := &tokencache.Record{CustomerID: id, AccessToken: "a", RefreshToken: "r", AccessTokenExpiry: now.Add(time.Hour),
			ExchangePath: "/v1/authorizations/applyToken"}
		st := []State{StateValid, StateExpired, StateReauthorizationRequired, StateRefreshing}[i%4]
		if st == StateExpired {
			rec.AccessTokenExpiry = now.Add(-time.Second)
		}
		gen, err := tokencache.Put(ctx(t), f.store, rec)
		if err != nil {
			t.Fatal(err)
		}
		switch st {
		case StateReauthorizationRequired:
			l, err := tokencache.Claim(ctx(t), f.store, id, gen, "o", time.Minute, false)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tokencache.Complete(ctx(t), f.store, l, tokencache.Outcome{Kind: tokencache.Rejected, Code: "USED_REFRESH_TOKEN"}); err != nil {
				t.Fatal(err)
			}
		case StateRefreshing:
			if _, err := tokencache.Claim(ctx(t), f.store, id, gen, "o", time.Minute, false); err != nil {
				t.Fatal(err)
			}
		}
		want[st] = append(want[st], id)
	}
	for _, st := range AllStates {
		for _, limit := range []int{1, 3, 1000} {
			var got []string
			cursor := ""
			for range 50 {
				page, err := f.r.List(ctx(t), st, cursor, limit)
				if err != nil {
					t.Fatal(err)
				}
				if len(page.Customers) > limit {
					t.Fatalf("%d on a page, limit %d", len(page.Customers), limit)
				}
				for _, c := range page.Customers {
					if c.State != st {
						t.Fatalf("%s listed as %s in the %s list", c.CustomerID, c.State, st)
					}
					if (st == StateReauthorizationRequired) != (c.LastError != nil) {
						t.Fatalf("%s: lastError %v", c.CustomerID, c.LastError)
					}
					got = append(got, c.CustomerID)
				}
				if page.NextCursor == nil {
					break
				}
				cursor = *page.NextCursor
			}
			slices.Sort(got)
			if !slices.Equal(got, want[st]) {
				t.Errorf("%s, limit %d: %v, want %v", st, limit, got, want[st])
			}
		}
	}
	page, err := f.r.List(ctx(t), StateValid, "", 1)
	if err != nil || page.NextCursor == nil {
		t.Fatalf("first page: %+v, %v", page, err)
	}
	for _, tc := range []struct {
		state  State
		cursor string
		limit  int
	}{
		{StateExpired, *page.NextCursor, 1}, // another state's cursor
		{StateValid, "!!!", 1},
		{StateValid, "MXx2YWxpZHw5OTk5OXw", 1}, // bucket out of range
		{StateValid, "", 0},
		{StateValid, "", 1001},
		{"other", "", 1},
	} {
		if _, err := f.r.List(ctx(t), tc.state, tc.cursor, tc.limit); !errors.Is(err, ErrBadList) {
			t.Errorf("List(%s, %q, %d): %v, want ErrBadList", tc.state, tc.cursor, tc.limit, err)
		}
	}
}
