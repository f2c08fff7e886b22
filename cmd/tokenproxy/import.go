package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/tokenproxy/tokenproxy/refresher"
	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// Limits of `tokenproxy import`.
const (
	// importWorkers bounds the store calls in flight: enough to hide the
	// round trips to Redis, few enough not to crowd a shared Redis.
	importWorkers = 16
	// importStoreTimeout bounds every single store call.
	importStoreTimeout = 5 * time.Second
	// importAttempts bounds the tries of one line when the store did not
	// answer in time: a busy Redis should not cost a line (a try that
	// landed unseen makes the next one find the pair already there).
	importAttempts = 3
	// importMaxLine is the longest line read; a longer one is invalid (a
	// valid line is a few hundred bytes: two tokens of at most 128).
	importMaxLine = 64 << 10
	// importMaxToken is the wallet's limit on a token's length.
	importMaxToken = 128
	// importListed is how many invalid line numbers the summary names.
	importListed = 20
	// importFailStreak: this many store failures in a row (no success in
	// between) stop the import, rather than wait out every line's timeout
	// against a store that is down.
	importFailStreak = 2 * importWorkers
)

// runImport is `tokenproxy import FILE`: it reads NDJSON token pairs (FILE,
// or standard input for "-") and writes each into the store the settings
// name, sealed and scheduled, unless the store already holds a pair for that
// customer whose access token expires no earlier. It returns the exit code:
// 0 when every line was handled (imported, skipped as invalid or already
// newer), 1 when some lines were not written because the store failed or
// the import was interrupted, 2 for bad settings or usage.
//
// Nothing it prints holds a token: bad lines are named by number only.
func runImport(ctx context.Context, args []string, env envconfig.Lookuper, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) != 1 || args[0] == "" {
		fmt.Fprintln(stderr, "tokenproxy: usage: tokenproxy import FILE (FILE - reads standard input)")
		return 2
	}
	cfg, err := loadConfig(ctx, env, false)
	if err != nil {
		fmt.Fprintln(stderr, "tokenproxy: configuration:", err)
		return 2
	}
	log := newLogger(cfg, stderr)

	in := stdin
	if args[0] != "-" {
		f, err := os.Open(args[0])
		if err != nil {
			fmt.Fprintf(stderr, "tokenproxy import: cannot open the input: %v\n", err)
			return 2
		}
		defer f.Close()
		in = f
	}

	store, closeStore, err := openStore(cfg, log)
	if err != nil {
		var ce *configError
		if errors.As(err, &ce) {
			fmt.Fprintln(stderr, "tokenproxy: configuration:", ce)
			return 2
		}
		fmt.Fprintln(stderr, "tokenproxy import:", err)
		return 1
	}
	defer closeStore()

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	imp := &importer{
		store:         store,
		log:           log,
		now:           time.Now,
		exchangePath:  cfg.TokenPaths[0],
		refreshBefore: cfg.RefreshBefore,
		refreshJitter: cfg.RefreshJitter,
		planner: refresher.NewPlanner(refresher.PlanConfig{
			Book: store, Before: cfg.RefreshBefore, Jitter: cfg.RefreshJitter, Rate: cfg.RefreshRate, Logger: log,
		}),
	}
	// The fleet's rate: the replicas alive now (one when none is).
	cctx, cancel := context.WithTimeout(ctx, importStoreTimeout)
	if err := imp.planner.Count(cctx, ""); err != nil {
		log.Warn("could not count the live replicas: planning for one", "err", err)
	}
	cancel()
	res := imp.run(ctx, in)
	res.report(stdout)
	if res.readErr != nil {
		fmt.Fprintf(stderr, "tokenproxy import: reading the input stopped after line %d: %v\n", res.lines, res.readErr)
	}
	if !res.complete() {
		return 1
	}
	return 0
}

// importLine is one NDJSON line, the format of walletsim's /sim/seed.
type importLine struct {
	CustomerID             string `json:"customerId"`
	AccessToken            string `json:"accessToken"`
	AccessTokenExpiryTime  string `json:"accessTokenExpiryTime"`
	RefreshToken           string `json:"refreshToken"`
	RefreshTokenExpiryTime string `json:"refreshTokenExpiryTime"`
}

// importPair is a validated line.
type importPair struct {
	line               int
	customerID         string
	accessToken        tokencache.Secret
	accessTokenExpiry  time.Time
	refreshToken       tokencache.Secret
	refreshTokenExpiry time.Time // zero: none given
}

// parseImportLine validates one line. Its error never quotes the line:
// it may hold tokens.
func parseImportLine(raw []byte) (importPair, error) {
	var l importLine
	if err := json.Unmarshal(raw, &l); err != nil {
		return importPair{}, errors.New("not a JSON object of strings")
	}
	if err := wallet.ValidCustomerID(l.CustomerID); err != nil {
		return importPair{}, errors.New("bad customerId")
	}
	for _, tok := range []string{l.AccessToken, l.RefreshToken} {
		if tok == "" || wallet.ValidField(tok, importMaxToken) != nil {
			return importPair{}, errors.New("token empty, too long or with forbidden characters")
		}
	}
	ate, err := wallet.ParseDateTime(l.AccessTokenExpiryTime)
	if err != nil {
		return importPair{}, errors.New("bad accessTokenExpiryTime")
	}
	var rte time.Time
	if l.RefreshTokenExpiryTime != "" {
		if rte, err = wallet.ParseDateTime(l.RefreshTokenExpiryTime); err != nil {
			return importPair{}, errors.New("bad refreshTokenExpiryTime")
		}
	}
	return importPair{
		customerID:         l.CustomerID,
		accessToken:        tokencache.Secret(l.AccessToken),
		accessTokenExpiry:  ate,
		refreshToken:       tokencache.Secret(l.RefreshToken),
		refreshTokenExpiry: rte,
	}, nil
}

// importer writes validated pairs into a store with a bounded pool of
// workers.
type importer struct {
	store         tokencache.Store
	log           *slog.Logger
	now           func() time.Time
	exchangePath  string
	refreshBefore time.Duration
	refreshJitter time.Duration
	// planner, when set, plans each pair's refresh against the fleet's
	// rate, as the replicas do (refresher.Planner); nil: a fixed lead.
	planner *refresher.Planner
}

// importResult is what an import did. Line numbers count from 1.
type importResult struct {
	lines       int   // lines read (blank ones included)
	imported    int   // written
	newer       int   // skipped: the store holds a pair expiring no earlier
	invalid     []int // skipped as invalid, ascending
	failed      []int // not written: the store failed (ascending after run)
	stoppedAt   int   // > 0: lines from this one on were not read
	stopReason  string
	readErr     error
	firstFailed error // the first store error, for the report
}

func (r *importResult) complete() bool {
	return len(r.failed) == 0 && r.stoppedAt == 0 && r.readErr == nil
}

// outcome of one pair.
type importOutcome int

const (
	outcomeImported importOutcome = iota
	outcomeNewer
	outcomeFailed
)

// run reads in to its end (or until ctx ends or the store keeps failing)
// and writes every valid pair. Lines are validated in order by the reader;
// the store calls run on the workers.
func (im *importer) run(ctx context.Context, in io.Reader) *importResult {
	const workers = importWorkers
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	res := &importResult{}
	var (
		mu     sync.Mutex // guards res's counters and streak below
		streak int        // store failures since the last success
	)
	jobs := make(chan importPair, 2*workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range jobs {
				outcome, err := im.write(ctx, p)
				mu.Lock()
				switch outcome {
				case outcomeImported:
					res.imported++
					streak = 0
				case outcomeNewer:
					res.newer++
					streak = 0
				default:
					res.failed = append(res.failed, p.line)
					if res.firstFailed == nil && ctx.Err() == nil {
						res.firstFailed = err
					}
					streak++
					if streak >= importFailStreak && res.stopReason == "" {
						res.stopReason = "the token store kept failing"
						cancel()
					}
				}
				mu.Unlock()
			}
		}()
	}

	br := bufio.NewReaderSize(in, 64<<10)
	n := 0
read:
	for {
		if ctx.Err() != nil {
			res.stoppedAt = n + 1
			break
		}
		raw, tooLong, err := readLine(br)
		if len(raw) == 0 && !tooLong && err != nil {
			if !errors.Is(err, io.EOF) {
				res.readErr = err
			}
			break
		}
		n++
		if n == 1 {
			raw = bytes.TrimPrefix(raw, []byte("\xef\xbb\xbf")) // a UTF-8 byte order mark
		}
		switch {
		case tooLong:
			res.invalid = append(res.invalid, n)
		case len(bytes.TrimSpace(raw)) == 0:
			// A blank line holds no record (a trailing one is common).
		default:
			p, perr := parseImportLine(raw)
			if perr != nil {
				res.invalid = append(res.invalid, n)
				break
			}
			p.line = n
			select {
			case jobs <- p:
			case <-ctx.Done():
				mu.Lock()
				res.failed = append(res.failed, n) // read and valid, but not written
				mu.Unlock()
				res.stoppedAt = n + 1
				break read
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				res.readErr = err
			}
			break
		}
	}
	close(jobs)
	wg.Wait()
	res.lines = n
	if res.stoppedAt > 0 && res.stopReason == "" {
		res.stopReason = "interrupted"
	}
	slices.Sort(res.failed)
	return res
}

// readLine reads one line without its line ending. A line longer than
// importMaxLine is consumed and reported as tooLong, without its content.
// err is io.EOF with the last line when it has no newline.
func readLine(br *bufio.Reader) (line []byte, tooLong bool, err error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if !tooLong {
			if len(buf)+len(chunk) > importMaxLine+2 { // +2: room for \r\n
				tooLong, buf = true, nil
			} else {
				buf = append(buf, chunk...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if tooLong {
			return nil, true, err
		}
		buf = bytes.TrimSuffix(buf, []byte("\n"))
		buf = bytes.TrimSuffix(buf, []byte("\r"))
		return buf, false, err
	}
}

// write stores one pair unless the store holds one expiring no earlier
// (tokencache.Import: one step, however many lines name the customer).
func (im *importer) write(ctx context.Context, p importPair) (importOutcome, error) {
	rec := refresher.NewRecord(refresher.Exchange{Path: im.exchangePath, Pair: &wallet.TokenResponse{
		CustomerID: p.customerID, AccessToken: p.accessToken, AccessTokenExpiry: p.accessTokenExpiry,
		RefreshToken: p.refreshToken, RefreshTokenExpiry: p.refreshTokenExpiry,
	}}, im.now(), im.refreshBefore, im.refreshJitter)
	if im.planner != nil {
		rec.NextRefresh = im.planner.Plan(ctx, rec.LastUsed, rec.AccessTokenExpiry)
	}
	var (
		wrote bool
		err   error
	)
	for range importAttempts {
		_, err = im.call(ctx, func(ctx context.Context) (*tokencache.Record, error) {
			var err error
			wrote, err = tokencache.Import(ctx, im.store, rec)
			return nil, err
		})
		if !errors.Is(err, tokencache.ErrUnavailable) || ctx.Err() != nil {
			break
		}
	}
	switch {
	case err != nil:
		return outcomeFailed, fmt.Errorf("line %d: write the record: %w", p.line, err)
	case !wrote:
		return outcomeNewer, nil
	}
	return outcomeImported, nil
}

// call runs one store call under its own deadline.
func (im *importer) call(ctx context.Context, f func(context.Context) (*tokencache.Record, error)) (*tokencache.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, importStoreTimeout)
	defer cancel()
	return f(ctx)
}

// report prints the summary: counts, invalid lines by number (the first
// importListed of them), and what was not written.
func (r *importResult) report(w io.Writer) {
	fmt.Fprintf(w, "imported %d, skipped invalid %d, already newer %d", r.imported, len(r.invalid), r.newer)
	if len(r.failed) > 0 {
		fmt.Fprintf(w, ", not written %d", len(r.failed))
	}
	fmt.Fprintln(w)
	if len(r.invalid) > 0 {
		fmt.Fprintln(w, "invalid lines:", listLines(r.invalid, importListed))
	}
	if len(r.failed) > 0 {
		fmt.Fprintln(w, "not written (the token store failed):", lineRanges(r.failed))
		if r.firstFailed != nil {
			fmt.Fprintln(w, "first store error:", r.firstFailed)
		}
	}
	if r.stoppedAt > 0 {
		fmt.Fprintf(w, "stopped (%s): lines from %d on were not read\n", r.stopReason, r.stoppedAt)
	}
	if !r.complete() {
		fmt.Fprintln(w, "running the import again is safe: lines already written count as already newer")
	}
}

// listLines names up to max line numbers, then how many more there are.
func listLines(lines []int, max int) string {
	var b strings.Builder
	for i, n := range lines {
		if i == max {
			fmt.Fprintf(&b, " and %d more", len(lines)-max)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Itoa(n))
	}
	return b.String()
}

// lineRanges writes ascending line numbers as ranges: "3, 7-12, 20".
func lineRanges(lines []int) string {
	var b strings.Builder
	for i := 0; i < len(lines); {
		j := i
		for j+1 < len(lines) && lines[j+1] == lines[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Itoa(lines[i]))
		if j > i {
			b.WriteString("-" + strconv.Itoa(lines[j]))
		}
		i = j + 1
	}
	return b.String()
}
