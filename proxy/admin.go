package proxy

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/tokenproxy/tokenproxy/refresher"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// serveAdmin serves /tokenproxy/customers (GET: the list by state),
// /tokenproxy/customers/{id} (GET, DELETE) and
// /tokenproxy/customers/{id}/refresh (POST).
func (h *Handler) serveAdmin(w http.ResponseWriter, c *call) error {
	r := c.r
	if c.target.path == adminPrefix+"customers" {
		if r.Method != http.MethodGet {
			return failF(http.StatusMethodNotAllowed, wallet.CodeMethodNotAllowed, "method not allowed on this admin path")
		}
		return h.serveList(w, c)
	}
	rest, ok := strings.CutPrefix(c.target.path, adminPrefix+"customers/")
	if !ok {
		return failF(http.StatusNotFound, wallet.CodeInvalidAPI, "no such admin path")
	}
	id, action, _ := strings.Cut(rest, "/")
	if err := wallet.ValidCustomerID(id); err != nil {
		return badRequest("bad customer id: " + err.Error())
	}
	ctx := r.Context()
	switch action {
	case "":
		switch r.Method {
		case http.MethodGet:
			st, err := h.cfg.Tokens.Status(ctx, id)
			if err != nil {
				return adminError(err)
			}
			writeJSON(w, http.StatusOK, st)
			return nil
		case http.MethodDelete:
			if err := h.cfg.Tokens.Forget(ctx, id); err != nil {
				return err
			}
			h.log.Info("customer forgotten", "customer", id)
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
	case "refresh":
		if r.Method == http.MethodPost {
			st, err := h.cfg.Tokens.Refresh(ctx, id)
			if err != nil {
				return adminError(err)
			}
			writeJSON(w, http.StatusOK, st)
			return nil
		}
	default:
		return failF(http.StatusNotFound, wallet.CodeInvalidAPI, "no such admin path")
	}
	return failF(http.StatusMethodNotAllowed, wallet.CodeMethodNotAllowed, "method not allowed on this admin path")
}

// adminError answers an unknown customer with 404 (the resource is absent)
// rather than the 401 an API call gets.
func adminError(err error) error {
	if errors.Is(err, refresher.ErrNotAuthorized) {
		return failF(http.StatusNotFound, wallet.CodeCustomerNotAuthorized, "no tokens are stored for this customer")
	}
	return err
}

// serveList serves GET /tokenproxy/customers?state=&limit=&cursor=.
func (h *Handler) serveList(w http.ResponseWriter, c *call) error {
	q, err := url.ParseQuery(c.r.URL.RawQuery)
	if err != nil {
		return badRequest("malformed query")
	}
	for k, v := range q {
		switch {
		case k != "state" && k != "limit" && k != "cursor":
			return badRequest("unknown query parameter (state, limit and cursor are known)")
		case len(v) != 1:
			return badRequest("query parameter " + k + " given more than once")
		}
	}
	state := refresher.State(q.Get("state"))
	if !slices.Contains(refresher.AllStates, state) {
		return badRequest("state must be one of valid, refreshing, expired, reauthorization_required")
	}
	limit := 100
	if v, ok := q["limit"]; ok {
		n, err := strconv.Atoi(v[0])
		if err != nil || n < 1 || n > refresher.MaxListLimit {
			return badRequest("limit must be an integer from 1 to 1000")
		}
		limit = n
	}
	page, err := h.cfg.Tokens.List(c.r.Context(), state, q.Get("cursor"), limit)
	if errors.Is(err, refresher.ErrBadList) {
		return badRequest("cursor malformed or of another state's list")
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, page)
	return nil
}
