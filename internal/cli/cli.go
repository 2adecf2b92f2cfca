// Package cli holds what every command line of modbot shares: flags that
// also read environment variables, logging set-up and signal handling.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/modbot/modbot/internal/tlsconfig"
)

// EnvName is the environment variable a flag reads: DISCORD_* flags keep
// their own prefix, everything else gets MODBOT_ (--config → MODBOT_CONFIG).
func EnvName(flagName string) string {
	up := strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
	if strings.HasPrefix(up, "DISCORD_") {
		return up
	}
	return "MODBOT_" + up
}

// Parse parses args and fills every flag not given on the command line from
// its environment variable. It prints usage errors itself.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment %s=%q: %w", EnvName(f.Name), v, e)
			}
		}
	})
	return err
}

// Usage installs a usage function that mentions the environment variables.
func Usage(fs *flag.FlagSet, synopsis string) {
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "usage: %s\n\nflags (each also read from the environment variable shown):\n", synopsis)
		fs.VisitAll(func(f *flag.Flag) {
			def := ""
			if f.DefValue != "" && f.DefValue != "false" {
				def = fmt.Sprintf(" (default %s)", f.DefValue)
			}
			fmt.Fprintf(out, "  --%-22s %s%s [$%s]\n", f.Name, f.Usage, def, EnvName(f.Name))
		})
	}
}

// Logger returns a structured logger for a component, JSON when
// MODBOT_LOG_FORMAT=json, text otherwise, at MODBOT_LOG_LEVEL (info).
func Logger(component string) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(os.Getenv("MODBOT_LOG_LEVEL"))); err != nil {
		lvl = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if os.Getenv("MODBOT_LOG_FORMAT") == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	l := slog.New(h).With("component", component)
	slog.SetDefault(l)
	return l
}

// SignalContext is cancelled on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// SplitList splits a comma-separated flag value.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// TokenFlags declares the three bearer-token flags (DESIGN §4): --token,
// the admin token (modbotctl); --internal-token, what the components send
// each other; --read-token, status and metrics. Unset scoped tokens are
// the admin token (httpapi.Tokens.WithDefaults).
func TokenFlags(fs *flag.FlagSet, admin, internal, read *string) {
	fs.StringVar(admin, "token", "", "the admin token (modbotctl and the admin routes: join, move, drain, rebalance, dead letters); also the internal and read token unless those are set")
	fs.StringVar(internal, "internal-token", "", "the internal token: what gateway pods, proxies and config nodes send each other (default: --token)")
	fs.StringVar(read, "read-token", "", "the read-only token: status, the map's reads and watch; when set, /metrics requires it too (default: --token)")
}

// TLS holds the TLS flags of a component (internal/tlsconfig).
type TLS struct{ files tlsconfig.Files }

// TLSFlags declares --tls-cert, --tls-key, --tls-ca and --tls-client-auth;
// Load turns them into a Reloader after parsing.
func TLSFlags(fs *flag.FlagSet) *TLS {
	t := &TLS{}
	fs.StringVar(&t.files.Cert, "tls-cert", "", "PEM certificate (chain) this component presents, as server and as client; turns TLS on for the internal APIs and every call between components (reloaded when the file changes)")
	fs.StringVar(&t.files.Key, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&t.files.CA, "tls-ca", "", "PEM CA bundle that peers' certificates are verified against")
	fs.BoolVar(&t.files.ClientAuth, "tls-client-auth", false, "require a client certificate signed by --tls-ca on every connection this component accepts (mTLS)")
	return t
}

// Load reads the files once (nil, nil when no TLS flag is set).
func (t *TLS) Load(log *slog.Logger) (*tlsconfig.Reloader, error) {
	if t.files.Enabled() && t.files.Cert == "" {
		return nil, errors.New("TLS: --tls-ca without --tls-cert and --tls-key: a component serves and presents a certificate")
	}
	r, err := tlsconfig.New(t.files, tlsconfig.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	return r, nil
}
