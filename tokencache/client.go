package tokencache

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisOptions says how to reach Redis; it mirrors the TOKENPROXY_REDIS_*
// settings. Exactly one of URL and Addrs is set.
type RedisOptions struct {
	// URL of a standalone Redis: redis://[user:password@]host:port/db, or
	// rediss:// for TLS.
	URL string
	// Addrs are Redis Cluster seed nodes (even a single one means Cluster),
	// or Sentinel addresses when MasterName is set.
	Addrs []string
	// MasterName is the Sentinel master name.
	MasterName string
	// Username and Password are Redis ACL credentials, used when the URL
	// has none. With Sentinel they authenticate to the master, not to the
	// sentinels.
	Username, Password string
	// CAFile is a PEM CA bundle that verifies the server certificate. It
	// turns TLS on for Cluster and Sentinel; a URL must then be rediss://.
	CAFile string
}

// Client timeouts. Each call is also bounded by its context's deadline
// (ContextTimeoutEnabled), whichever is earlier.
const (
	dialTimeout = 2 * time.Second
	ioTimeout   = 2 * time.Second
	// dialAttempts is how often one command dials before it gives up.
	// go-redis's default (5, 100 ms apart, for each of its command
	// retries) makes every call take about 1.7 s to fail while Redis is
	// down; callers have their own fallback and backoff, so fail fast.
	dialAttempts = 1
)

// NewRedisClient returns a client for a standalone Redis (URL), a Redis
// Cluster (Addrs) or a Sentinel-managed master (Addrs and MasterName). It
// makes no connection yet. Errors never include the password: a URL that
// does not parse is not quoted.
func NewRedisClient(o RedisOptions) (redis.UniversalClient, error) {
	switch {
	case o.URL != "" && len(o.Addrs) > 0:
		return nil, errors.New("redis: set either a URL or addresses, not both")
	case o.URL == "" && len(o.Addrs) == 0:
		return nil, errors.New("redis: no URL or addresses")
	}
	var tlsConf *tls.Config
	if o.CAFile != "" {
		pool, err := loadCAFile(o.CAFile)
		if err != nil {
			return nil, err
		}
		tlsConf = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}

	if o.URL != "" {
		if o.MasterName != "" {
			return nil, errors.New("redis: a master name needs sentinel addresses, not a URL")
		}
		opt, err := parseURL(o.URL)
		if err != nil {
			return nil, err
		}
		if opt.Username == "" {
			opt.Username = o.Username
		}
		if opt.Password == "" {
			opt.Password = o.Password
		}
		if tlsConf != nil {
			if opt.TLSConfig == nil {
				return nil, errors.New("redis: a CA file is set but the URL is redis://; use rediss:// for TLS")
			}
			opt.TLSConfig.RootCAs = tlsConf.RootCAs
		}
		opt.DialTimeout = orDefault(opt.DialTimeout, dialTimeout)
		opt.ReadTimeout = orDefault(opt.ReadTimeout, ioTimeout)
		opt.WriteTimeout = orDefault(opt.WriteTimeout, ioTimeout)
		if opt.DialerRetries == 0 {
			opt.DialerRetries = dialAttempts
		}
		opt.ContextTimeoutEnabled = true
		return redis.NewClient(opt), nil
	}

	for i, a := range o.Addrs {
		if strings.TrimSpace(a) == "" {
			return nil, fmt.Errorf("redis: address %d is empty", i+1)
		}
	}
	// With a master name the addresses are Sentinels; without, even one
	// address is a Cluster seed (the contract), never a single node.
	c := redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:                 o.Addrs,
		MasterName:            o.MasterName,
		IsClusterMode:         o.MasterName == "",
		Username:              o.Username,
		Password:              o.Password,
		TLSConfig:             tlsConf,
		DialTimeout:           dialTimeout,
		DialerRetries:         dialAttempts,
		ReadTimeout:           ioTimeout,
		WriteTimeout:          ioTimeout,
		ContextTimeoutEnabled: true,
	})
	if cc, ok := c.(*redis.ClusterClient); ok {
		cc.AddHook(slotReloadHook{cc})
	}
	return c, nil
}

// slotReloadHook makes a Cluster client re-read the slot map as soon as a
// command fails the way a failover makes it fail (see needsSlotReload).
// go-redis alone re-reads it on MOVED and once a minute
// (ClusterStateReloadInterval); a master that died and does not come back
// on its address answers no MOVED, so its slots stayed unreachable for up
// to a minute after its replica took over. ReloadState is asynchronous and
// coalesced (one CLUSTER SLOTS at a time, at most about every 200 ms), so
// a burst of failures costs a few commands.
type slotReloadHook struct{ c *redis.ClusterClient }

func (h slotReloadHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h slotReloadHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if needsSlotReload(err) {
			h.c.ReloadState(ctx)
		}
		return err
	}
}

func (h slotReloadHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		reload := needsSlotReload(err)
		for _, cmd := range cmds {
			reload = reload || needsSlotReload(cmd.Err())
		}
		if reload {
			h.c.ReloadState(ctx)
		}
		return err
	}
}

// needsSlotReload reports whether err says the node that was asked may no
// longer serve the slot: the connection refused, cut or timed out, or a
// reply of a cluster in change (MOVED, CLUSTERDOWN, TRYAGAIN, MASTERDOWN,
// READONLY from a master turned replica). Errors of the command itself
// (a script's, redis.Nil, a failed transaction) and a caller's cancelled
// context do not.
func needsSlotReload(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if _, moved := redis.IsMovedError(err); moved {
		return true
	}
	if redis.IsClusterDownError(err) || redis.IsTryAgainError(err) || redis.IsMasterDownError(err) || redis.IsReadOnlyError(err) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// parseURL wraps redis.ParseURL without ever echoing the URL: its errors
// (from net/url) quote the whole URL, password included.
func parseURL(s string) (*redis.Options, error) {
	if !strings.HasPrefix(s, "redis://") && !strings.HasPrefix(s, "rediss://") {
		return nil, errors.New("redis: URL must start with redis:// or rediss://")
	}
	opt, err := redis.ParseURL(s)
	if err != nil {
		return nil, errors.New("redis: URL does not parse (not shown: it may hold a password)")
	}
	return opt, nil
}

func loadCAFile(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("redis: read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("redis: CA file holds no PEM certificate")
	}
	return pool, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}
