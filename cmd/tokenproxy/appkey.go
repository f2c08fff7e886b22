package main

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"

	"github.com/sethvargo/go-envconfig"
)

// runAppKey prints the public half of TOKENPROXY_APP_SIGNING_KEY(_FILE):
// bare base64 PKIX, the form the wallet's SDKs take as the wallet public
// key, or PEM with -pem. Only the app signing settings are read.
func runAppKey(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) int {
	asPEM := false
	for _, a := range args {
		switch a {
		case "-pem", "--pem":
			asPEM = true
		default:
			fmt.Fprintf(stderr, "tokenproxy app-key: unknown argument %q (usage: tokenproxy app-key [-pem])\n", a)
			return 2
		}
	}
	var c Config
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &c, Lookuper: env}); err != nil {
		fmt.Fprintln(stderr, "tokenproxy: configuration:", fieldError(err))
		return 2
	}
	if c.AppSigningKey != "" && c.AppSigningKeyFile != "" {
		fmt.Fprintln(stderr, "tokenproxy: configuration:", bad("TOKENPROXY_APP_SIGNING_KEY", "set at most one of TOKENPROXY_APP_SIGNING_KEY and TOKENPROXY_APP_SIGNING_KEY_FILE"))
		return 2
	}
	signer, err := c.appSigner()
	if err != nil {
		fmt.Fprintln(stderr, "tokenproxy: configuration:", err)
		return 2
	}
	if signer == nil {
		fmt.Fprintln(stderr, "tokenproxy: configuration:", bad("TOKENPROXY_APP_SIGNING_KEY", "required by app-key"))
		return 2
	}
	der, err := x509.MarshalPKIXPublicKey(&signer.Key.PublicKey)
	if err != nil {
		fmt.Fprintln(stderr, "tokenproxy app-key:", err)
		return 1
	}
	if asPEM {
		_ = pem.Encode(stdout, &pem.Block{Type: "PUBLIC KEY", Bytes: der})
		return 0
	}
	fmt.Fprintln(stdout, base64.StdEncoding.EncodeToString(der))
	return 0
}
