package proc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// maxFetch bounds the body Fetch reads.
const maxFetch = 64 << 20

// Fetch sends a request to one of the run's processes (JSON when body is
// not nil) with c, bounded by ctx, and returns the body of a 200 answer;
// any other status is an error naming it, with the end of the body.
func Fetch(ctx context.Context, c *http.Client, method, url string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, maxFetch))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		s := strings.TrimSpace(string(out))
		if len(s) > 300 {
			s = "…" + s[len(s)-300:]
		}
		return nil, fmt.Errorf("%s %s: HTTP %d: %s", method, url, resp.StatusCode, s)
	}
	return out, nil
}
