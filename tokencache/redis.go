package tokencache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// formatVersion is the record format written, in hash field "v". A reader
// refuses formats it does not know rather than misread them; a rolling
// upgrade that changes the format must first ship readers of the new one.
//
// The protocol's state (see Entry) lives in the same hash, in optional
// fields (absent means zero: no lease, no intent, no cooldown), so records
// of either release read with the other. Leases and tombstones used to be
// keys of their own; replicas of that release take no leases this one
// sees, so they must not refresh beside it.
//
// Format 2 (issue 17) keeps the sealed tokens and handles as raw bytes
// (nonce||ciphertext) instead of format 1's unpadded base64 of them: 31
// bytes less per 64-character token. Everything else is as in format 1,
// which this release still reads (formatVersion1); a record is written in
// format 2 the next time it is written. Releases before it read format 1
// only: during a rolling upgrade from one, a customer an upgraded replica
// wrote is refused as corrupt by the old replicas until they are replaced.
const formatVersion = "2"

// formatVersion1 is the previous format, still read: sealed values in
// unpadded standard base64.
const formatVersion1 = "1"

// Record hash fields. Times are Unix milliseconds; empty fields are not
// stored, so an absent field means the zero value. The Entry's own fields
// follow in redis_entry.go.
const (
	fVersion     = "v"
	fGeneration  = "gen"
	fState       = "state"
	fLastError   = "err"
	fKeyID       = "kid"
	fAccess      = "at" // sealed
	fRefresh     = "rt" // sealed
	fAccessExp   = "ate"
	fRefreshExp  = "rte"
	fLastRefresh = "lr"
	fLastUsed    = "lu"
	fNextRefresh = "nr"
	fPath        = "path"
	fReplay      = "replay" // JSON object
	fRTH         = "rth"    // RefreshTokenHash
	fFailures    = "fa"
	fNotBefore   = "nb"
	// The app's token handles (TOKENPROXY_APP_TOKENS=handles), sealed like
	// the tokens; absent in the other mode.
	fAccessHandle  = "ah"
	fRefreshHandle = "rh"
)

// maxWaitTimeout caps how long a write waits for replicas when
// WaitReplicas > 0.
const maxWaitTimeout = time.Second

// waitMargin is the least time kept between WAIT's timeout and the
// context's deadline; see waitTimeout.
const waitMargin = 150 * time.Millisecond

// RedisConfig configures a Redis store.
type RedisConfig struct {
	// Client reaches Redis: standalone, Sentinel or Cluster (see
	// NewRedisClient). Required.
	Client redis.UniversalClient
	// Prefix starts every key; DefaultKeyPrefix when empty. It must not
	// contain '{' or '}', which would change the keys' Cluster hash tag.
	Prefix string
	// Keyring seals the tokens. Required.
	Keyring *Keyring
	// WaitReplicas > 0 makes every write wait (Redis WAIT, on the
	// connection that wrote) until that many replicas have acknowledged it.
	// It needs Client to be a *redis.Client or *redis.ClusterClient.
	WaitReplicas int
	// Buckets is the number of schedule buckets; DefaultBuckets when zero.
	// Every replica sharing a store must use the same value.
	Buckets int
	// HeartbeatEvery is how often the subscription behind Watch and
	// Invalidations publishes a heartbeat to itself (one PUBLISH each);
	// one not heard back by the next makes the store's invalidation
	// listeners distrust what they hold. DefaultHeartbeatEvery when zero.
	HeartbeatEvery time.Duration
	// Events turns the re-authorization events' outbox on (events.go).
	Events EventsConfig
}

// Redis is a Store in Redis, shared by every replica that uses the same
// Redis and key prefix. Tokens are sealed (see Keyring.Seal) before they
// leave the process. Every write is one optimistic transaction on the
// customer's hash (Update), atomic also in Redis Cluster because all keys
// of a customer share a hash tag (see CustomerKey).
//
// Errors from Redis (network, timeouts, LOADING, CLUSTERDOWN, ...) wrap
// ErrUnavailable; records that do not open with the keyring give a
// *SealError. Redis is safe for concurrent use.
type Redis struct {
	client       redis.UniversalClient
	prefix       string
	keyring      *Keyring
	waitReplicas int
	buckets      int
	// rthKeys are the HMAC keys of RefreshTokenHash, one per keyring
	// key; the first (the sealing key's) names new tokens.
	rthKeys [][]byte
	events  EventsConfig

	heartbeatEvery time.Duration

	hub watchHub
	inv invalidators
	sub redisSub
}

var _ Store = (*Redis)(nil)

// NewRedis returns a Redis store. It makes no call to Redis.
func NewRedis(cfg RedisConfig) (*Redis, error) {
	if cfg.Client == nil {
		return nil, errors.New("redis store: no client")
	}
	if cfg.Keyring == nil || len(cfg.Keyring.keys) == 0 {
		return nil, errors.New("redis store: no encryption keys")
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	if strings.ContainsAny(prefix, "{}") {
		return nil, errors.New("redis store: key prefix must not contain '{' or '}'")
	}
	buckets := cfg.Buckets
	if buckets == 0 {
		buckets = DefaultBuckets
	}
	if buckets < 0 {
		return nil, errors.New("redis store: negative bucket count")
	}
	if cfg.WaitReplicas < 0 {
		return nil, errors.New("redis store: negative replica count")
	}
	if cfg.WaitReplicas > 0 {
		switch cfg.Client.(type) {
		case *redis.Client, *redis.ClusterClient:
		default:
			return nil, fmt.Errorf("redis store: waiting for replicas needs a *redis.Client or *redis.ClusterClient, not %T", cfg.Client)
		}
	}
	if cfg.HeartbeatEvery < 0 {
		return nil, errors.New("redis store: negative heartbeat interval")
	}
	if cfg.HeartbeatEvery == 0 {
		cfg.HeartbeatEvery = DefaultHeartbeatEvery
	}
	rthKeys, err := cfg.Keyring.refreshTokenHashKeys()
	if err != nil {
		return nil, fmt.Errorf("redis store: %w", err)
	}
	return &Redis{
		client:       cfg.Client,
		prefix:       prefix,
		keyring:      cfg.Keyring,
		waitReplicas: cfg.WaitReplicas,
		buckets:      buckets,
		rthKeys:      rthKeys,
		events:       cfg.Events,

		heartbeatEvery: cfg.HeartbeatEvery,
	}, nil
}

// Ping reports whether Redis answers.
func (s *Redis) Ping(ctx context.Context) error {
	if err := s.client.Ping(ctx).Err(); err != nil {
		return unavailable("ping", err)
	}
	return nil
}

// run runs a write script. With WaitReplicas it sends the script and WAIT
// in one pipeline to the master that owns keys[0], because WAIT only covers
// writes made on the connection it is sent on, and a pipeline is one
// connection. reply is non-nil whenever the script ran, also when err
// reports that the replicas did not acknowledge it.
func (s *Redis) run(ctx context.Context, op string, script *redis.Script, keys []string, args []any) (reply any, err error) {
	if s.waitReplicas == 0 {
		reply, err = script.Run(ctx, s.client, keys, args...).Result()
		if err != nil {
			return nil, unavailable(op, err)
		}
		return reply, nil
	}

	var node *redis.Client
	switch c := s.client.(type) {
	case *redis.Client:
		node = c
	case *redis.ClusterClient:
		node, err = c.MasterForKey(ctx, keys[0])
		if err != nil {
			return nil, unavailable(op, err)
		}
		// A node's own connection does not follow redirections, and its
		// errors bypass the Cluster client's hooks: after a resharding or a
		// failover, reload the slot map so that the next write goes to the
		// new owner.
		defer func() {
			if err != nil && (needsSlotReload(err) || redis.HasErrorPrefix(err, "ASK")) {
				c.ReloadState(ctx)
			}
		}()
	}
	timeout := waitTimeout(ctx)
	if rt := node.Options().ReadTimeout; rt > 0 {
		// The pipeline's replies must arrive within the read timeout,
		// WAIT's included.
		timeout = max(min(timeout, rt/2), time.Millisecond)
	}
	var eval *redis.Cmd
	// Pipeliner has no Wait method; the command is the same.
	wait := redis.NewIntCmd(ctx, "wait", s.waitReplicas, timeout.Milliseconds())
	// Errors are read from the two commands below.
	_, _ = node.Pipelined(ctx, func(p redis.Pipeliner) error {
		// EVAL, not EVALSHA: after a NOSCRIPT (a new or restarted master)
		// the fallback would cost a second WAIT, which blocks until its
		// timeout when replicas are missing. Writes are rare; sending the
		// source each time is cheap, and Redis caches the compiled script.
		eval = script.Eval(ctx, p, keys, args...)
		return p.Process(ctx, wait)
	})
	if reply, err = eval.Result(); err != nil {
		return nil, unavailable(op, err)
	}
	acked, err := wait.Result()
	if err != nil {
		return reply, fmt.Errorf("%s: %w: %w", op, errNotReplicated, err)
	}
	if acked < int64(s.waitReplicas) {
		return reply, fmt.Errorf("%s: %w: %d of %d", op, errNotReplicated, acked, s.waitReplicas)
	}
	return reply, nil
}

// waitTimeout is how long WAIT may block: at most maxWaitTimeout, and
// ending early enough before ctx's deadline for the replies to be read (the
// script's reply arrives together with WAIT's): Redis notices a blocked
// client's timeout only at its event-loop tick (100 ms at the default hz),
// so a quarter of the time left, and at least waitMargin, is kept free.
// Never 0, which would make WAIT block forever.
func waitTimeout(ctx context.Context) time.Duration {
	d := maxWaitTimeout
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		d = min(d, left*3/4, left-waitMargin)
	}
	return max(d, time.Millisecond)
}

// sealTokens seals the record's tokens and handles with the keyring's
// first key and returns the field/value pairs: the key id, then each
// sealed field ("" for an absent value, which writes delete).
func (s *Redis) sealTokens(rec *Record) ([]any, error) {
	kid := s.keyring.SealingKeyID()
	out := []any{fKeyID, kid}
	for _, f := range []struct {
		name  string
		value Secret
	}{
		{fAccess, rec.AccessToken}, {fRefresh, rec.RefreshToken},
		{fAccessHandle, rec.AccessHandle}, {fRefreshHandle, rec.RefreshHandle},
	} {
		sealed := ""
		if f.value != "" {
			_, raw, err := s.keyring.sealRaw(s.prefix, rec.CustomerID, f.name, []byte(f.value.Reveal()))
			if err != nil {
				return nil, err
			}
			sealed = string(raw)
		}
		out = append(out, f.name, sealed)
	}
	return out, nil
}

// refreshTokenHash is the RefreshTokenHash of a refresh token written now:
// keyed with the sealing key's hash key; "" for no token.
func (s *Redis) refreshTokenHash(customerID string, token Secret) string {
	if token == "" {
		return ""
	}
	return refreshTokenHash(s.rthKeys[0], s.prefix, customerID, token.Reveal())
}

// decode turns a record hash back into a Record, opening the tokens.
// Errors name fields, never their values: a record that does not open is a
// *SealError, one that is incomplete or holds a malformed field wraps
// ErrCorrupt. Neither is ever used to call the wallet.
func (s *Redis) decode(customerID string, vals map[string]string) (*Record, error) {
	version := vals[fVersion]
	if version != formatVersion && version != formatVersion1 {
		return nil, corrupt(fVersion, "format version not supported")
	}
	rec := &Record{
		CustomerID:       customerID,
		State:            State(vals[fState]),
		LastError:        vals[fLastError],
		ExchangePath:     vals[fPath],
		KeyID:            vals[fKeyID],
		RefreshTokenHash: vals[fRTH],
	}
	var err error
	if rec.Generation, err = strconv.ParseInt(vals[fGeneration], 10, 64); err != nil || rec.Generation <= 0 {
		return nil, corrupt(fGeneration, "missing or malformed")
	}
	if fa := vals[fFailures]; fa != "" {
		if rec.Failures, err = strconv.Atoi(fa); err != nil || rec.Failures < 0 {
			return nil, corrupt(fFailures, "malformed")
		}
	}
	for _, f := range []struct {
		name string
		dst  *time.Time
	}{
		{fAccessExp, &rec.AccessTokenExpiry},
		{fRefreshExp, &rec.RefreshTokenExpiry},
		{fLastRefresh, &rec.LastRefresh},
		{fLastUsed, &rec.LastUsed},
		{fNextRefresh, &rec.NextRefresh},
		{fNotBefore, &rec.NotBefore},
	} {
		if *f.dst, err = parseUnixMilli(vals[f.name]); err != nil {
			return nil, corrupt(f.name, "malformed")
		}
	}
	if r := vals[fReplay]; r != "" {
		if err := json.Unmarshal([]byte(r), &rec.Replay); err != nil {
			return nil, corrupt(fReplay, "malformed")
		}
		if len(rec.Replay) == 0 {
			rec.Replay = nil
		}
	}
	for _, f := range []struct {
		name string
		dst  *Secret
	}{
		{fAccess, &rec.AccessToken},
		{fRefresh, &rec.RefreshToken},
		{fAccessHandle, &rec.AccessHandle},
		{fRefreshHandle, &rec.RefreshHandle},
	} {
		sealed := vals[f.name]
		if sealed == "" {
			continue
		}
		open := s.keyring.openRaw
		if version == formatVersion1 {
			open = func(prefix, customerID, field, keyID string, raw []byte) ([]byte, error) {
				return s.keyring.Open(prefix, customerID, field, keyID, string(raw))
			}
		}
		plain, err := open(s.prefix, customerID, f.name, rec.KeyID, []byte(sealed))
		if err != nil {
			return nil, err
		}
		*f.dst = Secret(plain)
	}
	if err := checkComplete(rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// unavailable wraps a go-redis error as ErrUnavailable, keeping it
// reachable for errors.Is (context.DeadlineExceeded, net.Error, ...).
// go-redis errors carry addresses and server messages, never command
// arguments, so no token can reach the message.
func unavailable(op string, err error) error {
	return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
}

func newOpID() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("op id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// unixMilli formats t as stored: Unix milliseconds, "" for the zero time.
func unixMilli(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return strconv.FormatInt(t.UnixMilli(), 10)
}

func parseUnixMilli(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(ms).UTC(), nil
}
