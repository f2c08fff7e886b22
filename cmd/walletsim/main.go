// Command walletsim runs the wallet simulator (internal/walletsim): a strict
// wallet that speaks the wallet OpenAPI protocol, for the quick start, the
// demo and the tests. It is configured by environment variables only;
// `walletsim -h` lists them.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"syscall"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/tokenproxy/tokenproxy/internal/walletsim"
	"github.com/tokenproxy/tokenproxy/wallet"
)

// settings is the whole configuration; `desc` feeds -h.
type settings struct {
	ListenAddr          string        `env:"WALLETSIM_LISTEN_ADDR, default=127.0.0.1:9182" desc:"address to listen on"`
	ClientPublicKey     string        `env:"WALLETSIM_CLIENT_PUBLIC_KEY" desc:"merchant public key verifying requests (PEM or bare base64 PKIX); this or _FILE is required"`
	ClientPublicKeyFile string        `env:"WALLETSIM_CLIENT_PUBLIC_KEY_FILE" desc:"file holding the merchant public key"`
	PrivateKey          string        `env:"WALLETSIM_PRIVATE_KEY" desc:"wallet private key signing responses (PEM PKCS#8/PKCS#1 or bare base64 PKCS#8); empty: an RSA-2048 key is generated and its public half printed to stdout"`
	PrivateKeyFile      string        `env:"WALLETSIM_PRIVATE_KEY_FILE" desc:"file holding the wallet private key"`
	PublicKeyOut        string        `env:"WALLETSIM_PUBLIC_KEY_OUT" desc:"file to write the wallet public key (PEM) to, for tokenproxy's TOKENPROXY_WALLET_PUBLIC_KEY_FILE"`
	AccessTTL           time.Duration `env:"WALLETSIM_ACCESS_TTL, default=2h" desc:"access token lifetime"`
	RefreshTTL          time.Duration `env:"WALLETSIM_REFRESH_TTL, default=720h" desc:"refresh token lifetime"`
	CodeTTL             time.Duration `env:"WALLETSIM_CODE_TTL, default=5m" desc:"authorization code lifetime"`
	ClientID            string        `env:"WALLETSIM_CLIENT_ID" desc:"the only Client-Id accepted (others: INVALID_CLIENT); empty: any"`
	KeyVersion          string        `env:"WALLETSIM_KEY_VERSION" desc:"the only request keyVersion accepted (others: KEY_NOT_FOUND); empty: any"`
	PathPrefix          string        `env:"WALLETSIM_PATH_PREFIX" desc:"path prefix of the wallet APIs, e.g. /api"`
	LogLevel            string        `env:"WALLETSIM_LOG_LEVEL, default=info" desc:"debug (one line per wallet call), info, warn or error"`
	TLS                 bool          `env:"WALLETSIM_TLS" desc:"serve HTTPS (HTTP/2 offered) with a self-signed certificate for 127.0.0.1, ::1 and localhost made at start; /sim/stats counts the TLS handshakes (tlsHandshakes)"`
	TLSCertOut          string        `env:"WALLETSIM_TLS_CERT_OUT" desc:"file to write that certificate (PEM) to, for clients to trust (tokenproxy: SSL_CERT_FILE); setting it implies WALLETSIM_TLS"`
}

// version is set at build time (-ldflags "-X main.version=..."), so that a
// merchant's CI can tell which walletsim it runs: `walletsim version`.
var version = "dev"

// shutdownTimeout bounds the graceful shutdown on SIGTERM/SIGINT.
const shutdownTimeout = 10 * time.Second

func main() {
	os.Exit(run(context.Background(), os.Args[1:], envconfig.OsLookuper(), os.Stdout, os.Stderr))
}

// configError is a bad setting: exit code 2 and one line naming it.
type configError struct {
	variable string
	reason   string
}

func (e *configError) Error() string { return e.variable + ": " + e.reason }

// run is main without the process: it returns the exit code. It serves
// until ctx ends or SIGTERM/SIGINT arrives.
func run(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help", "help":
			usage(stdout)
			return 0
		case "version", "-version", "--version":
			fmt.Fprintln(stdout, version)
			return 0
		}
		fmt.Fprintf(stderr, "walletsim: unexpected argument %q (configuration is by environment; see walletsim -h)\n", args[0])
		return 2
	}
	var st settings
	cfg, generated, err := load(ctx, env, &st)
	if err != nil {
		fmt.Fprintf(stderr, "walletsim: %v\n", err)
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(st.LogLevel)); err != nil {
		fmt.Fprintln(stderr, "walletsim: WALLETSIM_LOG_LEVEL: must be debug, info, warn or error")
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.Logger = log

	srv, err := walletsim.New(cfg)
	if err != nil {
		var ce *walletsim.ConfigError
		if errors.As(err, &ce) {
			fmt.Fprintf(stderr, "walletsim: %s: %s\n", fieldVariable(ce.Field), ce.Reason)
		} else {
			fmt.Fprintf(stderr, "walletsim: %v\n", err)
		}
		return 2
	}
	if generated {
		_, _ = stdout.Write(srv.PublicKeyPEM())
	}
	if st.PublicKeyOut != "" {
		if err := os.WriteFile(st.PublicKeyOut, srv.PublicKeyPEM(), 0o644); err != nil {
			fmt.Fprintf(stderr, "walletsim: WALLETSIM_PUBLIC_KEY_OUT: %v\n", err)
			return 2
		}
	}

	var tlsConfig *tls.Config
	if st.TLS || st.TLSCertOut != "" {
		cert, certPEM, err := walletsim.SelfSignedCertificate()
		if err != nil {
			fmt.Fprintf(stderr, "walletsim: WALLETSIM_TLS: %v\n", err)
			return 1
		}
		if st.TLSCertOut != "" {
			if err := os.WriteFile(st.TLSCertOut, certPEM, 0o644); err != nil {
				fmt.Fprintf(stderr, "walletsim: WALLETSIM_TLS_CERT_OUT: %v\n", err)
				return 2
			}
		}
		tlsConfig = srv.TLSConfig(cert)
	}

	ln, err := net.Listen("tcp", st.ListenAddr)
	if err != nil {
		fmt.Fprintf(stderr, "walletsim: WALLETSIM_LISTEN_ADDR: %v\n", err)
		return 2
	}
	hs := &http.Server{
		TLSConfig:         tlsConfig,
		Handler:           srv,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second, // fault latency and /sim/seed extend it per call
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	served := make(chan error, 1)
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
		go func() { served <- hs.ServeTLS(ln, "", "") }() // the certificate is in TLSConfig
	} else {
		go func() { served <- hs.Serve(ln) }()
	}
	log.Info("walletsim listening", "addr", ln.Addr().String(), "scheme", scheme, "pathPrefix", srv.PathPrefix(),
		"accessTTL", cfg.AccessTTL, "refreshTTL", cfg.RefreshTTL, "codeTTL", cfg.CodeTTL)

	select {
	case err := <-served:
		log.Error("serve", "err", err)
		return 1
	case <-ctx.Done():
	}
	log.Info("walletsim shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		log.Warn("shutdown", "err", err)
		_ = hs.Close()
	}
	return 0
}

// load reads the environment into st and builds the walletsim Config.
// generated reports that no wallet private key was given.
func load(ctx context.Context, env envconfig.Lookuper, st *settings) (walletsim.Config, bool, error) {
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: st, Lookuper: env}); err != nil {
		return walletsim.Config{}, false, envError(err)
	}
	for _, d := range []struct {
		variable string
		v        time.Duration
	}{
		{"WALLETSIM_ACCESS_TTL", st.AccessTTL},
		{"WALLETSIM_REFRESH_TTL", st.RefreshTTL},
		{"WALLETSIM_CODE_TTL", st.CodeTTL},
	} {
		if d.v <= 0 {
			return walletsim.Config{}, false, &configError{d.variable, "must be a positive duration"}
		}
	}
	cfg := walletsim.Config{
		AccessTTL:  st.AccessTTL,
		RefreshTTL: st.RefreshTTL,
		CodeTTL:    st.CodeTTL,
		ClientID:   st.ClientID,
		KeyVersion: st.KeyVersion,
		PathPrefix: st.PathPrefix,
	}
	raw, variable, err := valueOrFile("WALLETSIM_CLIENT_PUBLIC_KEY", st.ClientPublicKey, st.ClientPublicKeyFile)
	if err != nil {
		return cfg, false, err
	}
	if raw == nil {
		return cfg, false, &configError{"WALLETSIM_CLIENT_PUBLIC_KEY", "required (or WALLETSIM_CLIENT_PUBLIC_KEY_FILE): the merchant's public key"}
	}
	if cfg.ClientPublicKey, err = wallet.ParsePublicKey(raw); err != nil {
		return cfg, false, &configError{variable, err.Error()}
	}
	raw, variable, err = valueOrFile("WALLETSIM_PRIVATE_KEY", st.PrivateKey, st.PrivateKeyFile)
	if err != nil {
		return cfg, false, err
	}
	if raw == nil {
		return cfg, true, nil
	}
	if cfg.PrivateKey, err = wallet.ParsePrivateKey(raw); err != nil {
		return cfg, false, &configError{variable, err.Error()}
	}
	return cfg, false, nil
}

// valueOrFile returns the value of NAME or the content of NAME_FILE (at most
// one may be set), nil when neither is, and the variable it came from.
func valueOrFile(name, value, file string) ([]byte, string, error) {
	switch {
	case value != "" && file != "":
		return nil, name, &configError{name, "set only one of " + name + " and " + name + "_FILE"}
	case value != "":
		return []byte(value), name, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, name + "_FILE", &configError{name + "_FILE", "cannot read the file: " + err.Error()}
		}
		return b, name + "_FILE", nil
	}
	return nil, "", nil
}

// envError names the variable of an envconfig error, which names the Go
// field ("AccessTTL: ...").
func envError(err error) error {
	msg := err.Error()
	field, rest, ok := strings.Cut(msg, ": ")
	if !ok {
		return err
	}
	if f, found := reflect.TypeFor[settings]().FieldByName(field); found {
		return &configError{envName(f), rest}
	}
	return err
}

func envName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
	return name
}

// fieldVariable maps a walletsim.Config field to the variable that sets it.
func fieldVariable(field string) string {
	switch field {
	case "ClientPublicKey":
		return "WALLETSIM_CLIENT_PUBLIC_KEY"
	case "PrivateKey":
		return "WALLETSIM_PRIVATE_KEY"
	}
	if f, ok := reflect.TypeFor[settings]().FieldByName(field); ok {
		return envName(f)
	}
	return field
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "walletsim: a strict wallet simulator for tokenproxy's demo and tests.")
	fmt.Fprintln(w, "Configuration (environment):")
	t := reflect.TypeFor[settings]()
	for i := range t.NumField() {
		f := t.Field(i)
		def := ""
		for _, opt := range strings.Split(f.Tag.Get("env"), ",") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(opt), "default="); ok {
				def = " (default " + v + ")"
			}
		}
		fmt.Fprintf(w, "  %s%s\n      %s\n", envName(f), def, f.Tag.Get("desc"))
	}
	fmt.Fprintln(w, "Test endpoints (unsigned): POST /sim/authcodes, POST /sim/seed, POST|GET|DELETE /sim/faults, GET|DELETE /sim/stats, GET /sim/publickey.")
}
