package refresher

import (
	"time"

	"github.com/tokenproxy/tokenproxy/tokencache"
)

// State is a customer's token state as the admin API shows it.
type State string

const (
	StateValid                   State = "valid"
	StateRefreshing              State = "refreshing"
	StateExpired                 State = "expired"
	StateReauthorizationRequired State = "reauthorization_required"
)

// AllStates lists every State, for metrics initialisation.
var AllStates = []State{StateValid, StateRefreshing, StateExpired, StateReauthorizationRequired}

// Status is what GET /tokenproxy/customers/{id} shows. It never holds a token.
type Status struct {
	CustomerID             string     `json:"customerId"`
	State                  State      `json:"state"`
	AccessTokenExpiryTime  *time.Time `json:"accessTokenExpiryTime"`
	RefreshTokenExpiryTime *time.Time `json:"refreshTokenExpiryTime"`
	NextRefreshTime        *time.Time `json:"nextRefreshTime"`
	LastRefreshTime        *time.Time `json:"lastRefreshTime"`
	LastError              *string    `json:"lastError"`
}

func statusOf(rec *tokencache.Record, now time.Time, refreshing bool) Status {
	st := Status{
		CustomerID:             rec.CustomerID,
		AccessTokenExpiryTime:  timePtr(rec.AccessTokenExpiry),
		RefreshTokenExpiryTime: timePtr(rec.RefreshTokenExpiry),
		NextRefreshTime:        timePtr(rec.NextRefresh),
		LastRefreshTime:        timePtr(rec.LastRefresh),
	}
	if rec.LastError != "" {
		e := rec.LastError
		st.LastError = &e
	}
	st.State = stateOf(rec, now, refreshing)
	if st.State == StateReauthorizationRequired {
		st.NextRefreshTime = nil
	}
	return st
}

func stateOf(rec *tokencache.Record, now time.Time, refreshing bool) State {
	switch {
	case rec.State == tokencache.StateReauthorizationRequired:
		return StateReauthorizationRequired
	case refreshing:
		return StateRefreshing
	case !now.Before(rec.AccessTokenExpiry):
		return StateExpired
	default:
		return StateValid
	}
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}
