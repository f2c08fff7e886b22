package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// target is one way for the app to make the benchmark's call.
type target struct {
	client *http.Client
	url    string
	// header and body of every call; a function when they must be made
	// fresh for a phase (the pre-signed requests of the bare proxy).
	header http.Header
	body   []byte
}

// loadResult is what the callers saw during one phase.
type loadResult struct {
	ok, failed int
	wall       time.Duration
	latencies  []time.Duration // of the successful calls, sorted
	firstErr   string
}

// appClient is the app's HTTP client: keep-alive connections for every
// caller, to a TCP address or to a Unix socket.
func appClient(concurrency int, unixPath string) *http.Client {
	tr := &http.Transport{
		MaxIdleConns:        2 * concurrency,
		MaxIdleConnsPerHost: 2 * concurrency,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	if unixPath != "" {
		var d net.Dialer
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", unixPath)
		}
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

var success = []byte(`"resultCode":"SUCCESS"`)

// runLoad makes the call from concurrency callers for d (each caller one
// call at a time, the next as soon as the previous answered), and counts
// the answers that are 200 with resultCode SUCCESS.
func runLoad(ctx context.Context, t target, concurrency int, d time.Duration) loadResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu  sync.Mutex
		res loadResult
		wg  sync.WaitGroup
	)
	start := time.Now()
	for range concurrency {
		wg.Go(func() {
			var lat []time.Duration
			ok, failed := 0, 0
			var firstErr string
			buf := make([]byte, 0, 4096)
			for ctx.Err() == nil {
				req, _ := http.NewRequest(http.MethodPost, t.url, bytes.NewReader(t.body))
				for k, v := range t.header {
					req.Header[k] = v
				}
				t0 := time.Now()
				resp, err := t.client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						failed++
						if firstErr == "" {
							firstErr = err.Error()
						}
					}
					continue
				}
				buf = buf[:0]
				b := bytes.NewBuffer(buf)
				_, err = io.Copy(b, resp.Body)
				resp.Body.Close()
				el := time.Since(t0)
				if err == nil && resp.StatusCode == http.StatusOK && bytes.Contains(b.Bytes(), success) {
					ok++
					lat = append(lat, el)
				} else {
					failed++
					if firstErr == "" {
						firstErr = resp.Status + " " + string(b.Bytes()[:min(b.Len(), 200)])
					}
				}
			}
			mu.Lock()
			res.ok += ok
			res.failed += failed
			res.latencies = append(res.latencies, lat...)
			if res.firstErr == "" {
				res.firstErr = firstErr
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	res.wall = time.Since(start)
	slices.Sort(res.latencies)
	return res
}

func (r loadResult) quantile(q float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	return r.latencies[min(len(r.latencies)-1, int(q*float64(len(r.latencies))))]
}
