package refresher

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// The list by state, GET /tokenproxy/customers?state=&limit=&cursor=.
//
// The store keeps two indexes per bucket in the same step as the record:
// reauthorization_required customers and active ones. A walk goes bucket
// by bucket and through the ids of a bucket in lexical order, so a
// customer has one fixed place in it: every customer in the state at the
// start of the walk, and still in it when the walk passes its place, is
// listed exactly once. valid, expired and refreshing are derived as the
// customer's status derives them (refreshing: a live refresh lease in the
// store), from the active index.

// ListedCustomer is one entry of a list page. It never holds a token.
type ListedCustomer struct {
	CustomerID string  `json:"customerId"`
	State      State   `json:"state"`
	LastError  *string `json:"lastError"`
}

// ListPage is one page of the list; NextCursor is nil at the end.
type ListPage struct {
	Customers  []ListedCustomer `json:"customers"`
	NextCursor *string          `json:"nextCursor"`
}

// ErrBadList: a state, limit or cursor the list does not take.
var ErrBadList = errors.New("refresher: bad list request")

// MaxListLimit is the largest page.
const MaxListLimit = 1000

// listScan bounds how many index entries one page examines for a derived
// state, so a rare state cannot make one request walk every customer:
// the page then comes back short (even empty) with a cursor to go on.
const listScan = 5000

// lister is a store that keeps the state indexes (both stores do).
type lister interface {
	List(ctx context.Context, idx tokencache.Index, from tokencache.Cursor, limit int) ([]tokencache.Listed, tokencache.Cursor, bool, error)
}

// List returns one page of the customers in state, from cursor ("" for
// the start). ErrBadList for an unknown state, a limit outside 1..1000 or
// a cursor that is not one of this list's.
func (r *Refresher) List(ctx context.Context, state State, cursor string, limit int) (ListPage, error) {
	if limit < 1 || limit > MaxListLimit {
		return ListPage{}, fmt.Errorf("%w: limit must be 1 to %d", ErrBadList, MaxListLimit)
	}
	idx := tokencache.IndexActive
	switch state {
	case StateReauthorizationRequired:
		idx = tokencache.IndexReauthorizationRequired
	case StateValid, StateExpired, StateRefreshing:
	default:
		return ListPage{}, fmt.Errorf("%w: unknown state", ErrBadList)
	}
	l, ok := r.cfg.Store.(lister)
	if !ok {
		return ListPage{}, errors.New("list: the store keeps no state index")
	}
	from, err := decodeCursor(cursor, state, r.cfg.Store.Buckets())
	if err != nil {
		return ListPage{}, err
	}
	page := ListPage{Customers: []ListedCustomer{}}
	examined := 0
	for {
		batch := limit
		if idx == tokencache.IndexActive && state != StateValid {
			batch = max(limit, 256) // sparse states: read more per round trip
		}
		found, next, done, err := l.List(ctx, idx, from, batch)
		if err != nil {
			r.storeFailed("get")
			return ListPage{}, fmt.Errorf("list customers: %w", err)
		}
		r.storeOK()
		now := r.now()
		for _, c := range found {
			examined++
			if !c.Found {
				continue
			}
			rec := &tokencache.Record{State: c.State, AccessTokenExpiry: c.AccessTokenExpiry}
			got := stateOf(rec, now, now.Before(c.LeaseUntil))
			if got != state {
				continue
			}
			lc := ListedCustomer{CustomerID: c.CustomerID, State: got}
			if c.LastError != "" {
				e := c.LastError
				lc.LastError = &e
			}
			page.Customers = append(page.Customers, lc)
			if len(page.Customers) == limit {
				// Resume right after this one, not after what the
				// store read beyond it.
				cur := encodeCursor(state, tokencache.Cursor{Bucket: c.Bucket, After: c.CustomerID})
				page.NextCursor = &cur
				return page, nil
			}
		}
		if done {
			return page, nil
		}
		from = next
		if examined >= listScan {
			cur := encodeCursor(state, from)
			page.NextCursor = &cur
			return page, nil
		}
	}
}

// cursorVersion starts every cursor, so a later format can tell.
const cursorVersion = "1"

// encodeCursor: base64url of "1|<state>|<bucket>|<last id>". Opaque to
// the app; it names no token.
func encodeCursor(state State, c tokencache.Cursor) string {
	raw := cursorVersion + "|" + string(state) + "|" + strconv.Itoa(c.Bucket) + "|" + c.After
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

func decodeCursor(s string, state State, buckets int) (tokencache.Cursor, error) {
	if s == "" {
		return tokencache.Cursor{}, nil
	}
	bad := fmt.Errorf("%w: malformed cursor", ErrBadList)
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(s) > 256 {
		return tokencache.Cursor{}, bad
	}
	parts := strings.SplitN(string(raw), "|", 4)
	if len(parts) != 4 || parts[0] != cursorVersion {
		return tokencache.Cursor{}, bad
	}
	if parts[1] != string(state) {
		return tokencache.Cursor{}, fmt.Errorf("%w: the cursor belongs to another state's list", ErrBadList)
	}
	b, err := strconv.Atoi(parts[2])
	if err != nil || b < 0 || b > buckets || len(parts[3]) > 64 {
		return tokencache.Cursor{}, bad
	}
	return tokencache.Cursor{Bucket: b, After: parts[3]}, nil
}
