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
// The refresh protocol added fields (rth, fa, nb, fence and the intent, see
// refresh.go) without a new version: every one of them is optional (absent
// means zero, no intent, no cooldown), and readers ignore fields they do
// not know, so records of either release read with the other. A record
// written before has no rth until its next write; its refresh token is
// then named by "" in leases and the journal, which is still exact, since
// every write of this release sets rth. Replicas of the earlier release
// take no leases, though, so they must not refresh beside this one.
const formatVersion = "1"

// Record hash fields. Times are Unix milliseconds; empty fields are deleted
// rather than stored, so an absent field means the zero value. Besides
// these, writeScript keeps "gen" (the generation) and "op" (the id of the
// write that set it, which makes a resent write idempotent), and the
// refresh protocol its own fields (see refresh.go).
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
}

// Redis is a Store in Redis, shared by every replica that uses the same
// Redis and key prefix. Tokens are sealed (see Keyring.Seal) before they
// leave the process. Every write is one Lua script, atomic also in Redis
// Cluster because all keys of a customer share a hash tag (see CustomerKey).
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
	// key, the sealing one first.
	rthKeys [][]byte

	hub watchHub
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
	}, nil
}

// Get returns the customer's record, or ErrNotFound. A record that does not
// open with the keyring is a *SealError.
func (s *Redis) Get(ctx context.Context, customerID string) (*Record, error) {
	vals, err := s.client.HGetAll(ctx, s.RecordKey(customerID)).Result()
	if err != nil {
		if redis.HasErrorPrefix(err, "WRONGTYPE") {
			// The key holds something else than a record hash: damaged,
			// not an outage, so no locally held token stands in for it.
			return nil, corrupt("record", "not a hash")
		}
		return nil, unavailable("get record", err)
	}
	if len(vals) == 0 {
		return nil, ErrNotFound
	}
	rec, err := s.decode(customerID, vals)
	if err != nil {
		return nil, fmt.Errorf("get record: %w", err)
	}
	return rec, nil
}

// Put replaces the customer's record; see Store.Put. With WaitReplicas, a
// write that too few replicas acknowledged returns its generation together
// with an error wrapping ErrUnavailable: it is on the master, but could be
// lost with it.
func (s *Redis) Put(ctx context.Context, rec *Record) (int64, error) {
	return s.write(ctx, "put record", rec, "put", 0)
}

// CompareAndSwap writes rec if the stored generation is expect; see
// Store.CompareAndSwap and, for WaitReplicas, Put.
func (s *Redis) CompareAndSwap(ctx context.Context, rec *Record, expect int64) (int64, error) {
	return s.write(ctx, "compare and swap record", rec, "cas", expect)
}

// writeScript writes a whole record, if the mode allows, in one step.
//
//	KEYS:  record hash, tombstone, bucket schedule, lease
//	ARGV:  mode ("put" | "cas"), expected generation, op id, customer id,
//	       due score (ms) or "", expire-at (ms) or "", done channel,
//	       the refresh token's hashes under every keyring key (space
//	       separated), then field/value pairs (an empty value deletes the
//	       field)
//	reply: {"ok", generation} | {"notfound"} | {"conflict"}
//
// The op id makes a write that the client resends (after losing the reply
// to a timeout) report its first result instead of applying twice: without
// it a resent CAS would see its own write as a conflict.
//
// A put is a new exchange: it also ends the refresh protocol's state of
// the old token (intent, failures, cooldown, lease) and publishes the
// customer id. A CAS leaves that state alone, and keeps the stored rth when
// it is the same token's hash under another keyring key (the sealing key
// was rotated since), so that a CAS that rewrites the same refresh token
// never makes an outstanding lease's Complete see a "new" token.
var writeScript = redis.NewScript(`
local exists = redis.call('EXISTS', KEYS[1]) == 1
local cur = 0
if exists then
  cur = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0') or 0
  if redis.call('HGET', KEYS[1], 'op') == ARGV[3] then
    return {'ok', string.format('%d', cur)}
  end
end
if ARGV[1] == 'cas' then
  if not exists then return {'notfound'} end
  if cur ~= tonumber(ARGV[2]) then return {'conflict'} end
end
local gen = cur
local tomb = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if tomb > gen then gen = tomb end
gen = gen + 1
local g = string.format('%d', gen)
local keeprth = false
if ARGV[1] == 'cas' then
  local rth = redis.call('HGET', KEYS[1], 'rth')
  keeprth = rth and rth ~= '' and string.find(' ' .. ARGV[8] .. ' ', ' ' .. rth .. ' ', 1, true) ~= nil
end
local set, del = {'gen', g, 'op', ARGV[3]}, {}
for i = 9, #ARGV, 2 do
  if ARGV[i] == 'rth' and keeprth then
    -- the same token, hashed under an older key: keep its name
  elseif ARGV[i + 1] == '' then
    del[#del + 1] = ARGV[i]
  else
    set[#set + 1] = ARGV[i]
    set[#set + 1] = ARGV[i + 1]
  end
end
if ARGV[1] == 'put' then
  for _, f in ipairs({'ih', 'it', 'io', 'ia', 'if', 'co', 'le', 'lg', 'fa', 'nb'}) do del[#del + 1] = f end
  redis.call('DEL', KEYS[4])
end
redis.call('HSET', KEYS[1], unpack(set))
if #del > 0 then redis.call('HDEL', KEYS[1], unpack(del)) end
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[3], ARGV[4])
else
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
end
if ARGV[6] == '' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIREAT', KEYS[1], ARGV[6])
end
if ARGV[1] == 'put' then redis.call('PUBLISH', ARGV[7], ARGV[4]) end
return {'ok', g}
`)

func (s *Redis) write(ctx context.Context, op string, rec *Record, mode string, expect int64) (int64, error) {
	opID, err := newOpID()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	return s.writeOp(ctx, op, rec, mode, expect, opID)
}

// writeOp is write with a given op id; a second call with the same id
// stands for the client resending the command.
func (s *Redis) writeOp(ctx context.Context, op string, rec *Record, mode string, expect int64, opID string) (int64, error) {
	if err := checkRecord(rec); err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	n := normalize(rec)
	fields, err := s.encode(n)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	args := make([]any, 0, 8+len(fields))
	args = append(args, mode, strconv.FormatInt(expect, 10), opID, n.CustomerID,
		unixMilli(n.NextRefresh), unixMilli(expiresAt(n)), s.DoneChannel(),
		strings.Join(s.refreshTokenHashes(n.CustomerID, n.RefreshToken), " "))
	args = append(args, fields...)
	keys := []string{s.RecordKey(n.CustomerID), s.TombstoneKey(n.CustomerID), s.DueKey(s.BucketOf(n.CustomerID)),
		s.LeaseKey(n.CustomerID)}

	reply, err := s.run(ctx, op, writeScript, keys, args)
	if reply == nil {
		return 0, err
	}
	r, ok := reply.([]any)
	if !ok || len(r) == 0 {
		return 0, fmt.Errorf("%s: unexpected script reply %T", op, reply)
	}
	switch r[0] {
	case "ok":
		if len(r) < 2 {
			return 0, fmt.Errorf("%s: script reply without generation", op)
		}
		g, _ := r[1].(string)
		gen, perr := strconv.ParseInt(g, 10, 64)
		if perr != nil {
			return 0, fmt.Errorf("%s: malformed generation in script reply", op)
		}
		if mode == "put" {
			s.hub.notify(n.CustomerID) // local waiters need not wait for pub/sub
		}
		return gen, err // err: the write is made but not replicated enough
	case "notfound":
		return 0, ErrNotFound
	case "conflict":
		return 0, ErrConflict
	default:
		return 0, fmt.Errorf("%s: unexpected script reply %v", op, r[0])
	}
}

// deleteScript removes a record and its lease, leaves a tombstone with a
// higher generation and publishes the customer id.
//
//	KEYS:  record hash, tombstone, bucket schedule, lease
//	ARGV:  customer id, tombstone TTL in seconds, done channel
//	reply: the tombstone's generation, 0 when there was no record
var deleteScript = redis.NewScript(`
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0') or 0
local tomb = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if tomb > gen then gen = tomb end
gen = gen + 1
redis.call('SET', KEYS[2], string.format('%d', gen), 'EX', ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return gen
`)

// Delete forgets the customer's record; see Store.Delete and, for
// WaitReplicas, Put.
func (s *Redis) Delete(ctx context.Context, customerID string) error {
	keys := []string{s.RecordKey(customerID), s.TombstoneKey(customerID), s.DueKey(s.BucketOf(customerID)),
		s.LeaseKey(customerID)}
	reply, err := s.run(ctx, "delete record", deleteScript, keys,
		[]any{customerID, strconv.Itoa(int(TombstoneTTL / time.Second)), s.DoneChannel()})
	if reply != nil {
		s.hub.notify(customerID) // local waiters need not wait for pub/sub
	}
	return err
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
		// A node's own connection does not follow redirections; after a
		// resharding, reload the slot map so that the next write goes to the
		// new owner.
		defer func() {
			if err != nil && (redis.HasErrorPrefix(err, "MOVED") || redis.HasErrorPrefix(err, "ASK")) {
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
		return reply, unavailable(op+": wait for replicas", err)
	}
	if acked < int64(s.waitReplicas) {
		return reply, fmt.Errorf("%s: %w: %d of %d replicas acknowledged the write", op, ErrUnavailable, acked, s.waitReplicas)
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
			var err error
			if _, sealed, err = s.keyring.Seal(s.prefix, rec.CustomerID, f.name, []byte(f.value.Reveal())); err != nil {
				return nil, err
			}
		}
		out = append(out, f.name, sealed)
	}
	return out, nil
}

// encode returns the field/value pairs of a normalized record, tokens
// sealed with the keyring's first key.
func (s *Redis) encode(rec *Record) ([]any, error) {
	sealed, err := s.sealTokens(rec)
	if err != nil {
		return nil, err
	}
	var replay string
	if len(rec.Replay) > 0 {
		b, err := json.Marshal(rec.Replay)
		if err != nil {
			return nil, fmt.Errorf("encode replay fields: %w", err)
		}
		replay = string(b)
	}
	return append(sealed,
		fVersion, formatVersion,
		fState, string(rec.State),
		fLastError, rec.LastError,
		fAccessExp, unixMilli(rec.AccessTokenExpiry),
		fRefreshExp, unixMilli(rec.RefreshTokenExpiry),
		fLastRefresh, unixMilli(rec.LastRefresh),
		fLastUsed, unixMilli(rec.LastUsed),
		fNextRefresh, unixMilli(rec.NextRefresh),
		fPath, rec.ExchangePath,
		fReplay, replay,
		fRTH, s.refreshTokenHash(rec.CustomerID, rec.RefreshToken),
	), nil
}

// refreshTokenHash is the RefreshTokenHash of a refresh token written now:
// keyed with the sealing key's hash key; "" for no token.
func (s *Redis) refreshTokenHash(customerID string, token Secret) string {
	if token == "" {
		return ""
	}
	return refreshTokenHash(s.rthKeys[0], s.prefix, customerID, token.Reveal())
}

// refreshTokenHashes is the token's hash under every keyring key, the
// sealing one first: the names it may have been stored under.
func (s *Redis) refreshTokenHashes(customerID string, token Secret) []string {
	if token == "" {
		return nil
	}
	out := make([]string, len(s.rthKeys))
	for i, k := range s.rthKeys {
		out[i] = refreshTokenHash(k, s.prefix, customerID, token.Reveal())
	}
	return out
}

// decode turns a record hash back into a Record, opening the tokens.
// Errors name fields, never their values: a record that does not open is a
// *SealError, one that is incomplete or holds a malformed field wraps
// ErrCorrupt. Neither is ever used to call the wallet.
func (s *Redis) decode(customerID string, vals map[string]string) (*Record, error) {
	if v := vals[fVersion]; v != formatVersion {
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
		plain, err := s.keyring.Open(s.prefix, customerID, f.name, rec.KeyID, sealed)
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
