package tokencache_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tokenproxy/tokenproxy/tokencache"
)

// writeCA writes a self-signed CA certificate as PEM and returns its path.
func writeCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestNewRedisClient(t *testing.T) {
	ca := writeCA(t)
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	const password = "s3cr3t-pw"

	tests := []struct {
		name    string
		opts    tokencache.RedisOptions
		wantErr string // "" means success
		check   func(t *testing.T, c redis.UniversalClient)
	}{
		{
			name: "standalone URL",
			opts: tokencache.RedisOptions{URL: "redis://10.0.0.1:6380/2"},
			check: func(t *testing.T, c redis.UniversalClient) {
				o := c.(*redis.Client).Options()
				if o.Addr != "10.0.0.1:6380" || o.DB != 2 || o.TLSConfig != nil {
					t.Errorf("options %s db %d tls %v", o.Addr, o.DB, o.TLSConfig)
				}
				if o.DialTimeout != 2*time.Second || o.ReadTimeout != 2*time.Second || o.WriteTimeout != 2*time.Second || !o.ContextTimeoutEnabled {
					t.Errorf("timeouts dial %v read %v write %v ctx %v", o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.ContextTimeoutEnabled)
				}
				if o.DialerRetries != 1 {
					t.Errorf("DialerRetries %d, want 1 (fail fast while Redis is down)", o.DialerRetries)
				}
			},
		},
		{
			name: "credentials from options when the URL has none",
			opts: tokencache.RedisOptions{URL: "redis://h:1", Username: "u", Password: password},
			check: func(t *testing.T, c redis.UniversalClient) {
				o := c.(*redis.Client).Options()
				if o.Username != "u" || o.Password != password {
					t.Errorf("username %q, password set %v", o.Username, o.Password == password)
				}
			},
		},
		{
			name: "credentials in the URL win",
			opts: tokencache.RedisOptions{URL: "redis://url-user:url-pw@h:1", Username: "u", Password: password},
			check: func(t *testing.T, c redis.UniversalClient) {
				o := c.(*redis.Client).Options()
				if o.Username != "url-user" || o.Password != "url-pw" {
					t.Errorf("username %q, password from URL %v", o.Username, o.Password == "url-pw")
				}
			},
		},
		{
			name: "rediss with CA file",
			opts: tokencache.RedisOptions{URL: "rediss://redis.example:6380", CAFile: ca},
			check: func(t *testing.T, c redis.UniversalClient) {
				o := c.(*redis.Client).Options()
				if o.TLSConfig == nil || o.TLSConfig.RootCAs == nil || o.TLSConfig.ServerName != "redis.example" {
					t.Errorf("TLS config %+v", o.TLSConfig)
				}
			},
		},
		{
			name: "rediss without CA file uses system roots",
			opts: tokencache.RedisOptions{URL: "rediss://redis.example:6380"},
			check: func(t *testing.T, c redis.UniversalClient) {
				o := c.(*redis.Client).Options()
				if o.TLSConfig == nil || o.TLSConfig.RootCAs != nil {
					t.Errorf("TLS config %+v", o.TLSConfig)
				}
			},
		},
		{
			name: "one address is a cluster",
			opts: tokencache.RedisOptions{Addrs: []string{"10.0.0.1:7000"}, Password: password},
			check: func(t *testing.T, c redis.UniversalClient) {
				cc, ok := c.(*redis.ClusterClient)
				if !ok {
					t.Fatalf("client %T, want *redis.ClusterClient", c)
				}
				o := cc.Options()
				if len(o.Addrs) != 1 || o.Password != password || o.TLSConfig != nil || !o.ContextTimeoutEnabled {
					t.Errorf("cluster options addrs %v tls %v", o.Addrs, o.TLSConfig)
				}
			},
		},
		{
			name: "cluster with CA file uses TLS",
			opts: tokencache.RedisOptions{Addrs: []string{"a:1", "b:2"}, CAFile: ca},
			check: func(t *testing.T, c redis.UniversalClient) {
				o := c.(*redis.ClusterClient).Options()
				if o.TLSConfig == nil || o.TLSConfig.RootCAs == nil {
					t.Errorf("TLS config %+v", o.TLSConfig)
				}
			},
		},
		{
			name: "sentinel",
			opts: tokencache.RedisOptions{Addrs: []string{"s1:26379", "s2:26379"}, MasterName: "mymaster", CAFile: ca},
			check: func(t *testing.T, c redis.UniversalClient) {
				if _, ok := c.(*redis.Client); !ok {
					t.Fatalf("client %T, want a failover *redis.Client", c)
				}
			},
		},
		{name: "nothing", opts: tokencache.RedisOptions{}, wantErr: "no URL or addresses"},
		{name: "both", opts: tokencache.RedisOptions{URL: "redis://h:1", Addrs: []string{"a:1"}}, wantErr: "not both"},
		{name: "master name with URL", opts: tokencache.RedisOptions{URL: "redis://h:1", MasterName: "m"}, wantErr: "sentinel"},
		{name: "other scheme", opts: tokencache.RedisOptions{URL: "http://u:" + password + "@h:1"}, wantErr: "redis:// or rediss://"},
		{name: "unix socket", opts: tokencache.RedisOptions{URL: "unix:///tmp/redis.sock"}, wantErr: "redis:// or rediss://"},
		{name: "malformed URL", opts: tokencache.RedisOptions{URL: "redis://u:" + password + "@[::1"}, wantErr: "does not parse"},
		{name: "bad database", opts: tokencache.RedisOptions{URL: "redis://u:" + password + "@h:1/x"}, wantErr: "does not parse"},
		{name: "CA file with redis://", opts: tokencache.RedisOptions{URL: "redis://h:1", CAFile: ca}, wantErr: "rediss://"},
		{name: "CA file missing", opts: tokencache.RedisOptions{URL: "rediss://h:1", CAFile: filepath.Join(t.TempDir(), "none.pem")}, wantErr: "read CA file"},
		{name: "CA file not PEM", opts: tokencache.RedisOptions{Addrs: []string{"a:1"}, CAFile: notPEM}, wantErr: "no PEM certificate"},
		{name: "empty address", opts: tokencache.RedisOptions{Addrs: []string{"a:1", " "}}, wantErr: "address 2 is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tokencache.NewRedisClient(tc.opts)
			if tc.wantErr != "" {
				if err == nil {
					c.Close()
					t.Fatalf("NewRedisClient succeeded, want error %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %q, want it to say %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), password) {
					t.Fatalf("error %q shows the password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewRedisClient: %v", err)
			}
			defer c.Close()
			tc.check(t, c)
		})
	}
}
