package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// TestListWhileStatesChange pages through 10,000 reauthorization_required
// customers through a real tokenproxy on Redis while a writer keeps moving
// 1,000 of them out of that state and back, and adds new ones: every
// customer that stayed in the state is listed exactly once, no customer
// twice, and only customers that were in the state. The customers are
// written straight into the store through the tokencache API (same Redis,
// prefix and keys as the process), so that the test costs seconds on 2
// cores, not 10,000 exchanges.
func TestListWhileStatesChange(t *testing.T) {
	h := newHarness(t).withRedis()
	p := h.startProxy()
	rc, err := tokencache.NewRedisClient(tokencache.RedisOptions{URL: h.redis.URL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	kr, err := tokencache.ParseKeyring(h.encKey)
	if err != nil {
		t.Fatal(err)
	}
	store, err := tokencache.NewRedis(tokencache.RedisConfig{Client: rc, Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	const (
		customers = 10000
		moving    = 1000 // the first 1,000 ids change state during the walk
	)
	rec := func(id string, reauth bool) *tokencache.Record {
		r := &tokencache.Record{CustomerID: id, AccessToken: tokencache.Secret("at-" + id), RefreshToken: tokencache.Secret("rt-" + id),
			AccessTokenExpiry: time.Now().Add(time.Hour), ExchangePath: "/v1/authorizations/applyToken"}
		if reauth {
			r.State, r.LastError = tokencache.StateReauthorizationRequired, "EXPIRED_REFRESH_TOKEN"
		}
		return r
	}
	id := func(i int) string { return fmt.Sprintf("list-%05d", i) }
	// Written by 8 writers: 10,000 sealed records.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < customers; i += 8 {
				if _, err := tokencache.Put(ctx, store, rec(id(i), true)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	// A few active customers that must never be listed.
	for i := range 50 {
		if _, err := tokencache.Put(ctx, store, rec(fmt.Sprintf("active-%03d", i), false)); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// The writer: moves the first 1,000 out of the state and back, and
	// adds new reauthorization_required customers, until the walk ends.
	var (
		stop    atomic.Bool
		changes atomic.Int64
		added   sync.Map
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		rng := rand.New(rand.NewPCG(1, 2))
		for n := 0; !stop.Load(); n++ {
			i := rng.IntN(moving)
			if _, err := tokencache.Put(ctx, store, rec(id(i), n%2 == 1)); err != nil {
				t.Errorf("writer: %v", err)
				return
			}
			if n%10 == 0 {
				nid := fmt.Sprintf("new-%05d", n)
				added.Store(nid, true)
				if _, err := tokencache.Put(ctx, store, rec(nid, true)); err != nil {
					t.Errorf("writer: %v", err)
					return
				}
			}
			changes.Add(1)
		}
	}()

	seen := map[string]int{}
	pages := 0
	cursor := ""
	for {
		q := "state=reauthorization_required&limit=250"
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		status, body, _ := do(t, "GET", p.url+"/tokenproxy/customers?"+q, "", nil)
		var page struct {
			Customers []struct {
				CustomerID string  `json:"customerId"`
				State      string  `json:"state"`
				LastError  *string `json:"lastError"`
			} `json:"customers"`
			NextCursor *string `json:"nextCursor"`
		}
		if status != 200 || json.Unmarshal(body, &page) != nil {
			t.Fatalf("page %d: %d %s", pages, status, body)
		}
		pages++
		if len(page.Customers) > 250 {
			t.Fatalf("page of %d", len(page.Customers))
		}
		for _, c := range page.Customers {
			if c.State != "reauthorization_required" || c.LastError == nil || *c.LastError != "EXPIRED_REFRESH_TOKEN" {
				t.Fatalf("listed %+v", c)
			}
			seen[c.CustomerID]++
		}
		if page.NextCursor == nil {
			break
		}
		cursor = *page.NextCursor
		if pages > 1000 {
			t.Fatal("the walk does not end")
		}
	}
	stop.Store(true)
	<-done
	t.Logf("%d pages, %d customers listed, %d state changes during the walk", pages, len(seen), changes.Load())
	if changes.Load() < 100 {
		t.Errorf("only %d state changes during the walk: the test proves little", changes.Load())
	}
	for i := range customers {
		n := seen[id(i)]
		switch {
		case n > 1:
			t.Errorf("%s listed %d times", id(i), n)
		case n == 0 && i >= moving:
			t.Errorf("%s stayed reauthorization_required but was not listed", id(i))
		}
	}
	for c, n := range seen {
		_, isNew := added.Load(c)
		var i int
		isOld := false
		if _, err := fmt.Sscanf(c, "list-%05d", &i); err == nil && i < customers {
			isOld = true
		}
		if !isOld && !isNew {
			t.Errorf("%s listed, never reauthorization_required", c)
		}
		if n > 1 {
			t.Errorf("%s listed %d times", c, n)
		}
	}
}
