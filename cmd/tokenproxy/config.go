package main

import (
	"bytes"
	"context"
	"crypto/rsa"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"reflect"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/tokenproxy/tokenproxy/proxy"
	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// Config is every setting of tokenproxy, read from the environment. The tag
// `help` documents it for `tokenproxy -h` and the README table (a test keeps
// the two in sync). Fields tagged `secret` are never printed.
type Config struct {
	ListenAddr          string        `env:"TOKENPROXY_LISTEN_ADDR, default=127.0.0.1:9180" help:"app-facing listener (reached over localhost)"`
	OpsAddr             string        `env:"TOKENPROXY_OPS_ADDR, default=:9181" help:"/metrics, /healthz, /readyz"`
	WalletURL           string        `env:"TOKENPROXY_WALLET_URL" help:"wallet base URL, may carry a path prefix (required)"`
	ClientID            string        `env:"TOKENPROXY_CLIENT_ID" help:"the merchant's Client-Id (required)"`
	PrivateKey          string        `env:"TOKENPROXY_PRIVATE_KEY" secret:"true" help:"merchant RSA private key: PEM PKCS#8, PEM PKCS#1 or bare base64 PKCS#8 (this or the _FILE form is required)"`
	PrivateKeyFile      string        `env:"TOKENPROXY_PRIVATE_KEY_FILE" help:"file holding the merchant private key; re-read when it changes"`
	KeyVersion          string        `env:"TOKENPROXY_KEY_VERSION, default=1" help:"keyVersion sent in Signature"`
	KeyVersionFile      string        `env:"TOKENPROXY_KEY_VERSION_FILE" help:"file holding the keyVersion; re-read together with the key file"`
	WalletPublicKey     string        `env:"TOKENPROXY_WALLET_PUBLIC_KEY" help:"wallet public key (PEM or bare base64 PKIX); when set every wallet response must verify"`
	WalletPublicKeyFile string        `env:"TOKENPROXY_WALLET_PUBLIC_KEY_FILE" help:"file holding the wallet public key"`
	RedisURL            string        `env:"TOKENPROXY_REDIS_URL" secret:"true" help:"redis:// or rediss:// URL of a standalone Redis; empty and no REDIS_ADDRS: in-memory store (one replica only)"`
	RedisAddrs          string        `env:"TOKENPROXY_REDIS_ADDRS" help:"comma-separated addresses: Redis Cluster seeds, or Sentinels with REDIS_MASTER_NAME"`
	RedisMasterName     string        `env:"TOKENPROXY_REDIS_MASTER_NAME" help:"Sentinel master name"`
	RedisUsername       string        `env:"TOKENPROXY_REDIS_USERNAME" help:"Redis ACL user when not in the URL"`
	RedisPassword       string        `env:"TOKENPROXY_REDIS_PASSWORD" secret:"true" help:"Redis password when not in the URL"`
	RedisCAFile         string        `env:"TOKENPROXY_REDIS_CA_FILE" help:"CA bundle for TLS to Redis"`
	RedisWaitReplicas   int           `env:"TOKENPROXY_REDIS_WAIT_REPLICAS, default=0" help:"replicas that must acknowledge each claim and token write (Redis WAIT)"`
	KeyPrefix           string        `env:"TOKENPROXY_KEY_PREFIX, default=tokenproxy:" help:"prefix of every Redis key"`
	EncryptionKeys      string        `env:"TOKENPROXY_ENCRYPTION_KEYS" secret:"true" help:"comma- or newline-separated base64 32-byte AES-256-GCM keys; the first seals, all open (required with Redis)"`
	EncryptionKeysFile  string        `env:"TOKENPROXY_ENCRYPTION_KEYS_FILE" help:"file holding the encryption keys"`
	RefreshBefore       time.Duration `env:"TOKENPROXY_REFRESH_BEFORE, default=5m" help:"refresh this long before accessTokenExpiryTime"`
	RefreshJitter       time.Duration `env:"TOKENPROXY_REFRESH_JITTER, default=30s" help:"random spread added before that point"`
	RefreshRate         float64       `env:"TOKENPROXY_REFRESH_RATE, default=50" help:"most refresh calls per second from this replica"`
	RefreshLease        time.Duration `env:"TOKENPROXY_REFRESH_LEASE, default=5s" help:"how long a replica's claim to refresh one customer lasts unless renewed"`
	RefreshIdleAfter    time.Duration `env:"TOKENPROXY_REFRESH_IDLE_AFTER, default=0" help:"customers without app calls this long are refreshed only on their next call (0: never idle)"`
	CustomerHeader      string        `env:"TOKENPROXY_CUSTOMER_HEADER, default=X-Customer-Id" help:"header naming the customer of a call"`
	Inject              string        `env:"TOKENPROXY_INJECT" help:"per-path token placement, PATH=FIELD pairs, FIELD a dotted JSON path; others get top-level accessToken"`
	TokenPaths          []string      `env:"TOKENPROXY_TOKEN_PATHS, default=/v1/authorizations/applyToken,/v2/authorizations/applyToken" help:"paths handled as token exchanges"`
	MaxBodyBytes        int64         `env:"TOKENPROXY_MAX_BODY_BYTES, default=1048576" help:"larger request bodies are refused (413)"`
	MaxResponseBytes    int64         `env:"TOKENPROXY_MAX_RESPONSE_BYTES, default=8388608" help:"larger wallet responses are refused (502)"`
	UpstreamTimeout     time.Duration `env:"TOKENPROXY_UPSTREAM_TIMEOUT, default=10s" help:"one wallet call"`
	CacheMaxEntries     int           `env:"TOKENPROXY_CACHE_MAX_ENTRIES, default=100000" help:"most opened tokens held in process memory"`
	ShutdownTimeout     time.Duration `env:"TOKENPROXY_SHUTDOWN_TIMEOUT, default=20s" help:"on SIGTERM, how long in-flight calls may take to finish"`
	MaxInflight         int           `env:"TOKENPROXY_MAX_INFLIGHT, default=0" help:"most app calls handled at once, more get 503 REQUEST_TRAFFIC_EXCEED_LIMIT (0: the memory limit / 256KiB, at least 16)"`
	MemoryLimit         ByteSize      `env:"TOKENPROXY_MEMORY_LIMIT, default=256MiB" help:"memory the process plans for (the cgroup's limit when lower); bodies in flight are budgeted against it"`
	AppSigningKey       string        `env:"TOKENPROXY_APP_SIGNING_KEY" secret:"true" help:"RSA private key that signs every answer to the app in the wallet's scheme (for apps on the wallet's SDK); tokenproxy app-key prints its public half"`
	AppSigningKeyFile   string        `env:"TOKENPROXY_APP_SIGNING_KEY_FILE" help:"file holding the app signing key"`
	AppTokens           string        `env:"TOKENPROXY_APP_TOKENS, default=none" help:"none: answers carry no token fields; handles: the exchange answer carries opaque handles the app passes back instead of tokens"`
	EventsURL           string        `env:"TOKENPROXY_EVENTS_URL" help:"where re-authorization events are POSTed (none when empty)"`
	EventsSecret        string        `env:"TOKENPROXY_EVENTS_SECRET" secret:"true" help:"HMAC-SHA256 key of the events' Tokenproxy-Signature header (this or the _FILE form is required with EVENTS_URL)"`
	EventsSecretFile    string        `env:"TOKENPROXY_EVENTS_SECRET_FILE" help:"file holding the events' HMAC key"`
	EventsExpiryHorizon time.Duration `env:"TOKENPROXY_EVENTS_EXPIRY_HORIZON, default=72h" help:"a refresh_token_expiring event is sent this long before a refresh token expires"`
	LogLevel            string        `env:"TOKENPROXY_LOG_LEVEL, default=info" help:"debug, info, warn or error"`
	LogFormat           string        `env:"TOKENPROXY_LOG_FORMAT, default=json" help:"json or text"`
}

// configError names the variable and what is wrong, never its value.
type configError struct {
	variable string
	problem  string
}

func (e *configError) Error() string { return e.variable + ": " + e.problem }

func bad(variable, problem string) error { return &configError{variable: variable, problem: problem} }

// loadConfig reads the environment through lookup. sidecar tells whether
// the wallet settings are required (tokenproxy import does not need them).
func loadConfig(ctx context.Context, lookup envconfig.Lookuper, sidecar bool) (*Config, error) {
	var c Config
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &c, Lookuper: lookup}); err != nil {
		return nil, fieldError(err)
	}
	if err := c.validate(sidecar); err != nil {
		return nil, err
	}
	return &c, nil
}

// fieldError turns go-envconfig's "FieldName: cause" into "VARIABLE: problem".
func fieldError(err error) error {
	field, cause, ok := strings.Cut(err.Error(), ": ")
	if f, found := reflect.TypeFor[Config]().FieldByName(field); ok && found {
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if f.Tag.Get("secret") != "" {
			cause = "malformed"
		}
		return bad(name, "malformed: "+cause)
	}
	return fmt.Errorf("configuration: %w", err)
}

func (c *Config) validate(sidecar bool) error {
	if path, ok := strings.CutPrefix(c.ListenAddr, "unix:"); ok {
		if !strings.HasPrefix(path, "/") || len(path) > 100 {
			return bad("TOKENPROXY_LISTEN_ADDR", "want unix:/absolute/path (at most 100 characters)")
		}
	} else if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
		return bad("TOKENPROXY_LISTEN_ADDR", "want host:port or unix:/path")
	}
	if _, _, err := net.SplitHostPort(c.OpsAddr); err != nil {
		return bad("TOKENPROXY_OPS_ADDR", "want host:port")
	}
	if c.AppSigningKey != "" && c.AppSigningKeyFile != "" {
		return bad("TOKENPROXY_APP_SIGNING_KEY", "set at most one of TOKENPROXY_APP_SIGNING_KEY and TOKENPROXY_APP_SIGNING_KEY_FILE")
	}
	switch c.AppTokens {
	case "none", "handles":
	default:
		return bad("TOKENPROXY_APP_TOKENS", "want none or handles")
	}
	if err := c.validateEvents(); err != nil {
		return err
	}
	if c.MaxInflight < 0 {
		return bad("TOKENPROXY_MAX_INFLIGHT", "must not be negative")
	}
	if c.MemoryLimit < 16<<20 {
		return bad("TOKENPROXY_MEMORY_LIMIT", "must be at least 16MiB")
	}
	if sidecar {
		if c.WalletURL == "" {
			return bad("TOKENPROXY_WALLET_URL", "required")
		}
		u, err := url.Parse(c.WalletURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return bad("TOKENPROXY_WALLET_URL", "want an http(s) URL with a host and at most a path prefix")
		}
		if c.ClientID == "" {
			return bad("TOKENPROXY_CLIENT_ID", "required")
		}
		if strings.ContainsAny(c.ClientID, " \t\r\n.") {
			return bad("TOKENPROXY_CLIENT_ID", "must not contain spaces or dots")
		}
		if (c.PrivateKey == "") == (c.PrivateKeyFile == "") {
			return bad("TOKENPROXY_PRIVATE_KEY", "set exactly one of TOKENPROXY_PRIVATE_KEY and TOKENPROXY_PRIVATE_KEY_FILE")
		}
		if c.KeyVersionFile == "" {
			if err := wallet.ValidKeyVersion(c.KeyVersion); err != nil {
				return bad("TOKENPROXY_KEY_VERSION", err.Error())
			}
		}
		if c.WalletPublicKey != "" && c.WalletPublicKeyFile != "" {
			return bad("TOKENPROXY_WALLET_PUBLIC_KEY", "set at most one of TOKENPROXY_WALLET_PUBLIC_KEY and TOKENPROXY_WALLET_PUBLIC_KEY_FILE")
		}
	}
	if c.RedisURL != "" && c.RedisAddrs != "" {
		return bad("TOKENPROXY_REDIS_URL", "set at most one of TOKENPROXY_REDIS_URL and TOKENPROXY_REDIS_ADDRS")
	}
	if c.RedisURL != "" && !strings.HasPrefix(c.RedisURL, "redis://") && !strings.HasPrefix(c.RedisURL, "rediss://") {
		return bad("TOKENPROXY_REDIS_URL", "want a redis:// or rediss:// URL")
	}
	if c.RedisMasterName != "" && c.RedisAddrs == "" {
		return bad("TOKENPROXY_REDIS_MASTER_NAME", "needs TOKENPROXY_REDIS_ADDRS (the Sentinels)")
	}
	if c.RedisWaitReplicas < 0 {
		return bad("TOKENPROXY_REDIS_WAIT_REPLICAS", "must not be negative")
	}
	if c.EncryptionKeys != "" && c.EncryptionKeysFile != "" {
		return bad("TOKENPROXY_ENCRYPTION_KEYS", "set at most one of TOKENPROXY_ENCRYPTION_KEYS and TOKENPROXY_ENCRYPTION_KEYS_FILE")
	}
	if c.usesRedis() && c.EncryptionKeys == "" && c.EncryptionKeysFile == "" {
		return bad("TOKENPROXY_ENCRYPTION_KEYS", "required when a Redis store is used")
	}
	if !c.usesRedis() && !sidecar {
		return bad("TOKENPROXY_REDIS_URL", "tokenproxy import needs a Redis store (TOKENPROXY_REDIS_URL or TOKENPROXY_REDIS_ADDRS)")
	}
	if c.KeyPrefix == "" {
		return bad("TOKENPROXY_KEY_PREFIX", "must not be empty")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
		min  time.Duration
	}{
		{"TOKENPROXY_REFRESH_BEFORE", c.RefreshBefore, 0},
		{"TOKENPROXY_REFRESH_JITTER", c.RefreshJitter, 0},
		{"TOKENPROXY_REFRESH_LEASE", c.RefreshLease, 100 * time.Millisecond},
		{"TOKENPROXY_REFRESH_IDLE_AFTER", c.RefreshIdleAfter, 0},
		{"TOKENPROXY_UPSTREAM_TIMEOUT", c.UpstreamTimeout, time.Millisecond},
		{"TOKENPROXY_SHUTDOWN_TIMEOUT", c.ShutdownTimeout, 0},
	} {
		if d.v < d.min {
			return bad(d.name, fmt.Sprintf("must be at least %s", d.min))
		}
	}
	if c.RefreshRate <= 0 {
		return bad("TOKENPROXY_REFRESH_RATE", "must be positive")
	}
	if err := wallet.ValidField(c.CustomerHeader, 128); err != nil || c.CustomerHeader == "" || strings.ContainsAny(c.CustomerHeader, " :") {
		return bad("TOKENPROXY_CUSTOMER_HEADER", "want an HTTP header name")
	}
	if _, err := proxy.ParseInject(c.Inject); err != nil {
		return bad("TOKENPROXY_INJECT", err.Error())
	}
	if len(c.TokenPaths) == 0 {
		return bad("TOKENPROXY_TOKEN_PATHS", "must name at least one path")
	}
	for _, p := range c.TokenPaths {
		if !strings.HasPrefix(p, "/") {
			return bad("TOKENPROXY_TOKEN_PATHS", "every path must start with /")
		}
	}
	if c.MaxBodyBytes <= 0 {
		return bad("TOKENPROXY_MAX_BODY_BYTES", "must be positive")
	}
	if c.MaxResponseBytes <= 0 {
		return bad("TOKENPROXY_MAX_RESPONSE_BYTES", "must be positive")
	}
	if c.CacheMaxEntries < 0 {
		return bad("TOKENPROXY_CACHE_MAX_ENTRIES", "must not be negative")
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		return bad("TOKENPROXY_LOG_LEVEL", "want debug, info, warn or error")
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		return bad("TOKENPROXY_LOG_FORMAT", "want json or text")
	}
	return nil
}

func (c *Config) validateEvents() error {
	if c.EventsSecret != "" && c.EventsSecretFile != "" {
		return bad("TOKENPROXY_EVENTS_SECRET", "set at most one of TOKENPROXY_EVENTS_SECRET and TOKENPROXY_EVENTS_SECRET_FILE")
	}
	if c.EventsExpiryHorizon <= 0 {
		return bad("TOKENPROXY_EVENTS_EXPIRY_HORIZON", "must be positive")
	}
	if c.EventsURL == "" {
		return nil
	}
	u, err := url.Parse(c.EventsURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Fragment != "" {
		return bad("TOKENPROXY_EVENTS_URL", "want an http(s) URL with a host")
	}
	if c.EventsSecret == "" && c.EventsSecretFile == "" {
		return bad("TOKENPROXY_EVENTS_SECRET", "required with TOKENPROXY_EVENTS_URL (or TOKENPROXY_EVENTS_SECRET_FILE)")
	}
	return nil
}

// eventsSecret reads the events' HMAC key (surrounding white space, such
// as a file's final newline, is not part of it).
func (c *Config) eventsSecret() ([]byte, error) {
	raw, name, err := valueOrFile("TOKENPROXY_EVENTS_SECRET", c.EventsSecret, c.EventsSecretFile)
	if err != nil {
		return nil, err
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil, bad(name, "empty")
	}
	return raw, nil
}

func (c *Config) usesRedis() bool { return c.RedisURL != "" || c.RedisAddrs != "" }

// keySource builds the merchant signing key source; a file key is re-read
// when it (or its version file) changes.
func (c *Config) keySource() (wallet.KeySource, error) {
	if c.PrivateKeyFile != "" {
		fk := &wallet.FileKey{KeyPath: c.PrivateKeyFile, VersionPath: c.KeyVersionFile, Version: c.KeyVersion}
		if err := fk.Load(); err != nil {
			return nil, bad("TOKENPROXY_PRIVATE_KEY_FILE", "unusable: "+err.Error())
		}
		return fk, nil
	}
	key, err := wallet.ParsePrivateKey([]byte(c.PrivateKey))
	if err != nil {
		return nil, bad("TOKENPROXY_PRIVATE_KEY", "unusable: "+err.Error())
	}
	version := c.KeyVersion
	if c.KeyVersionFile != "" {
		raw, err := os.ReadFile(c.KeyVersionFile)
		if err != nil {
			return nil, bad("TOKENPROXY_KEY_VERSION_FILE", "cannot be read")
		}
		version = strings.TrimSpace(string(raw))
		if err := wallet.ValidKeyVersion(version); err != nil {
			return nil, bad("TOKENPROXY_KEY_VERSION_FILE", err.Error())
		}
	}
	return wallet.StaticKey{Key: key, Version: version}, nil
}

// valueOrFile returns a setting given inline (variable) or as a file
// (variable+"_FILE", path set), and the name of the one used, for errors.
func valueOrFile(variable, value, path string) ([]byte, string, error) {
	if path == "" {
		return []byte(value), variable, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, "", bad(variable+"_FILE", "cannot be read")
	}
	return raw, variable + "_FILE", nil
}

func (c *Config) walletKey() (*rsa.PublicKey, error) {
	raw, name, err := valueOrFile("TOKENPROXY_WALLET_PUBLIC_KEY", c.WalletPublicKey, c.WalletPublicKeyFile)
	if err != nil || len(raw) == 0 {
		return nil, err
	}
	k, err := wallet.ParsePublicKey(raw)
	if err != nil {
		return nil, bad(name, "unusable: "+err.Error())
	}
	return k, nil
}

// appSigner builds the signer of answers to the app; nil when no key is set.
func (c *Config) appSigner() (*proxy.AppSigner, error) {
	raw, name, err := valueOrFile("TOKENPROXY_APP_SIGNING_KEY", c.AppSigningKey, c.AppSigningKeyFile)
	if err != nil || len(raw) == 0 {
		return nil, err
	}
	key, err := wallet.ParsePrivateKey(raw)
	if err != nil {
		return nil, bad(name, "unusable: "+err.Error())
	}
	return &proxy.AppSigner{Key: key, ClientID: c.ClientID}, nil
}

func (c *Config) keyring() (*tokencache.Keyring, error) {
	raw, name, err := valueOrFile("TOKENPROXY_ENCRYPTION_KEYS", c.EncryptionKeys, c.EncryptionKeysFile)
	if err != nil {
		return nil, err
	}
	kr, err := tokencache.ParseKeyring(string(raw))
	if err != nil {
		return nil, bad(name, err.Error())
	}
	return kr, nil
}

// printSettings writes every setting with its default, for `tokenproxy -h`.
func printSettings(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tMEANING")
	for _, s := range settings() {
		def := s.Default
		if def == "" {
			def = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, def, s.Help)
	}
	tw.Flush()
}

type setting struct{ Name, Default, Help string }

// settings lists the Config fields' variables, defaults and help, in order.
func settings() []setting {
	var out []setting
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("env"), ",")
		def := ""
		if _, d, ok := strings.Cut(opts, "default="); ok {
			def = d
		}
		out = append(out, setting{Name: name, Default: def, Help: f.Tag.Get("help")})
	}
	return out
}
