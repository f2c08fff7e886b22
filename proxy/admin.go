package proxy

import (
	"errors"
	"net/http"
	"strings"

	"github.com/tokenproxy/tokenproxy/refresher"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// serveAdmin serves /tokenproxy/customers/{id} (GET, DELETE) and
// /tokenproxy/customers/{id}/refresh (POST).
func (h *Handler) serveAdmin(w http.ResponseWriter, c *call) error {
	r := c.r
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
