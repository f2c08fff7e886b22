package proxy

import (
	"net/http"
	"net/url"
	"strings"
)

// target is the request target read once: the canonical path every later
// step uses (routing, token-path and inject-path matching, metric labels,
// signing, the wallet URL), and the query, which is passed on as the query
// only.
type target struct {
	path  string // decoded, canonical, the wallet URL's prefix removed
	query string // raw, as the app sent it
	admin bool   // under /tokenproxy/: the path holds a customer id
}

// parseTarget decodes the request target's path once and checks it against
// the contract's canonical form: it starts with /, and its decoded form
// holds only ASCII letters, digits and - . _ ~ / :, without empty, . or ..
// segments; an encoded slash (%2F) is refused too. Admin paths (/tokenproxy/...) may hold any customer id in their
// id segment; the customer-id rule (no / % # ? @ or space) is applied when
// it is routed. prefix is the wallet base URL's path prefix ("" or
// "/ams/api"): a path that begins with it has it removed, so that apps
// built on the wallet's SDK may send the wallet's full paths.
func parseTarget(r *http.Request, prefix string) (target, error) {
	uri := r.RequestURI
	if !strings.HasPrefix(uri, "/") {
		return target{}, badRequest("absolute-URI requests are not allowed")
	}
	rawPath, rawQuery, _ := strings.Cut(uri, "?")
	if !validQuery(rawQuery) {
		return target{}, badRequest("query not allowed")
	}
	// An encoded slash would make the segments the app sent differ from
	// the ones the wallet receives: refused, like everything ambiguous.
	path, err := url.PathUnescape(rawPath)
	if err != nil || strings.Contains(strings.ToLower(rawPath), "%2f") {
		return target{}, badRequest("path not allowed")
	}
	if rest, ok := strings.CutPrefix(path, adminPrefix); ok {
		if !validAdminRest(rest) {
			return target{}, badRequest("path not allowed")
		}
		return target{path: path, query: rawQuery, admin: true}, nil
	}
	if !canonical(path) {
		return target{}, badRequest("path not allowed")
	}
	if prefix != "" {
		if rest, ok := strings.CutPrefix(path, prefix); ok && strings.HasPrefix(rest, "/") {
			path = rest
		}
		if strings.HasPrefix(path, adminPrefix) {
			// The admin API has one address; a prefixed one is no wallet API.
			return target{}, badRequest("path not allowed")
		}
	}
	return target{path: path, query: rawQuery}, nil
}

// maxPath is the longest path accepted: wallet API paths are short, and
// nothing longer is worth signing and forwarding.
const maxPath = 1024

// canonical reports whether p is a canonical wallet path.
func canonical(p string) bool {
	if len(p) < 2 || len(p) > maxPath || p[0] != '/' {
		return false
	}
	for seg := range strings.SplitSeq(p[1:], "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		for i := 0; i < len(seg); i++ {
			if !pathByte(seg[i]) {
				return false
			}
		}
	}
	return true
}

func pathByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~' || c == ':'
}

// validAdminRest checks what follows /tokenproxy/ in a decoded admin path:
// printable ASCII without space, # ? \ ; or %, and no empty, . or ..
// segment (the customer id segment is checked by the customer-id rule
// later). A decoded % would be read differently by anything that decoded
// the path again, and no admin path or customer id holds one.
func validAdminRest(rest string) bool {
	if len(rest) > maxPath {
		return false
	}
	if rest == "" {
		return true
	}
	for seg := range strings.SplitSeq(rest, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		for i := 0; i < len(seg); i++ {
			if c := seg[i]; c <= ' ' || c > '~' || c == '#' || c == '?' || c == '\\' || c == ';' || c == '%' {
				return false
			}
		}
	}
	return true
}

// validQuery accepts a raw query of visible ASCII without # (a query is
// passed to the wallet as it came, and signed).
func validQuery(q string) bool {
	if len(q) > 4096 {
		return false
	}
	for i := 0; i < len(q); i++ {
		if c := q[i]; c <= ' ' || c > '~' || c == '#' {
			return false
		}
	}
	return true
}
