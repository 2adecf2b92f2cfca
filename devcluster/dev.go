package devcluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/modbot/modbot/assignments"
)

// Options configure a local cluster. The defaults are DESIGN §4's fixed
// loopback ports, so modbotctl finds the cluster with no flags.
type Options struct {
	Dir         string
	ConfigNodes int
	Gateways    int
	Guilds      int
	Traffic     float64 // synthetic messages per second (0: none)
	Proxy       bool
	Shards      int
	// DiscordAddr is the fake Discord's address; GatewayBasePort+i is
	// gateway-i's; ProxyAddr the proxy's.
	DiscordAddr     string
	GatewayBasePort int
	ProxyAddr       string
	// BaseRaftPort and BaseHTTPPort: node i listens on base+i.
	BaseRaftPort int
	BaseHTTPPort int
	Host         string
	// FailoverGrace is how long a gateway may stay down before its guilds
	// are restored from its replica onto the others (default 60 s).
	FailoverGrace time.Duration
	// PGPort is the dev PostgreSQL's port on Host (default 5433); with
	// NoPostgres (or without the server binaries) there is no mirror.
	PGPort     int
	NoPostgres bool
	Binary     string
	Out        io.Writer
	Log        *slog.Logger
}

func (o *Options) defaults() {
	if o.Dir == "" {
		o.Dir = ".modbot-dev"
	}
	if o.ConfigNodes == 0 {
		o.ConfigNodes = 3
	}
	if o.Shards == 0 {
		o.Shards = 6
	}
	if o.DiscordAddr == "" {
		o.DiscordAddr = "127.0.0.1:7900"
	}
	if o.GatewayBasePort == 0 {
		o.GatewayBasePort = 9000
	}
	if o.ProxyAddr == "" {
		o.ProxyAddr = "127.0.0.1:8080"
	}
	if o.BaseRaftPort == 0 {
		o.BaseRaftPort = 7000
	}
	if o.BaseHTTPPort == 0 {
		o.BaseHTTPPort = 8000
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.FailoverGrace == 0 {
		o.FailoverGrace = 60 * time.Second
	}
	if o.PGPort == 0 {
		o.PGPort = 5433
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
}

// replicaURL is a gateway's file replica in dev: <dir>/replicas/<pod>.
func replicaURL(dir, pod string) string {
	return "file://" + filepath.Join(dir, "replicas", pod)
}

// TokenFile is where the dev token is written (modbotctl reads it).
func TokenFile(dir string) string { return filepath.Join(dir, "token") }

// EnsureToken returns the token stored in dir, creating one on first use so
// that running dev again resumes with the same credentials.
func EnsureToken(dir string) (string, error) {
	b, err := os.ReadFile(TokenFile(dir))
	if err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read token: %w", err)
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("generate token: %w", err)
	}
	tok := hex.EncodeToString(raw)
	if err := os.WriteFile(TokenFile(dir), []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write token: %w", err)
	}
	return tok, nil
}

// The fake Discord's OAuth2 application (its default application id and
// client secret), which the dev proxy signs users in with.
const (
	fakeClientID     = "1100000000000000001"
	fakeClientSecret = "fake-client-secret"
)

// EnsureSessionKey returns the proxy's cookie key stored in dir (64 hex
// digits), creating it on first use so sign-ins survive a restart.
func EnsureSessionKey(dir string) (string, error) {
	path := filepath.Join(dir, "session-key")
	b, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(b))) == 64 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read session key: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("generate session key: %w", err)
	}
	key := hex.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write session key: %w", err)
	}
	return key, nil
}

// Run starts the cluster and blocks until ctx ends, then stops every child.
func Run(ctx context.Context, o Options) error {
	o.defaults()
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own binary: %w", err)
		}
		o.Binary = exe
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return fmt.Errorf("dev dir %s: %w", o.Dir, err)
	}
	o.Dir = abs // replica URLs are absolute file:// URLs
	logDir := filepath.Join(o.Dir, "logs")
	if err := os.MkdirAll(logDir, 0o750); err != nil {
		return fmt.Errorf("create %s: %w", logDir, err)
	}
	token, err := EnsureToken(o.Dir)
	if err != nil {
		return err
	}
	sup := &Supervisor{Binary: o.Binary, LogDir: logDir, Log: o.Log}
	env := []string{"MODBOT_TOKEN=" + token}
	pgURL, stopPG, err := startPostgres(ctx, o)
	if err != nil {
		return err
	}
	defer stopPG()
	var procs []*Process
	var urls []string
	for i := 0; i < o.ConfigNodes; i++ {
		urls = append(urls, fmt.Sprintf("http://%s:%d", o.Host, o.BaseHTTPPort+i))
	}
	for i := 0; i < o.ConfigNodes; i++ {
		id := fmt.Sprintf("config-%d", i)
		args := []string{"config-node", "--id", id,
			"--data-dir", filepath.Join(o.Dir, id),
			"--raft-addr", fmt.Sprintf("%s:%d", o.Host, o.BaseRaftPort+i),
			"--http-addr", fmt.Sprintf("%s:%d", o.Host, o.BaseHTTPPort+i),
			"--failover-replica", replicaURL(o.Dir, "{pod}"), "--failover-grace", o.FailoverGrace.String()}
		if i == 0 {
			args = append(args, "--bootstrap", "--shards", fmt.Sprint(o.Shards))
		} else {
			args = append(args, "--join", strings.Join(urls[:i], ","))
		}
		if pgURL != "" {
			args = append(args, "--pg-url", pgURL)
		}
		procs = append(procs, &Process{Name: id, Args: args, Env: env, URL: urls[i]})
	}
	for _, p := range procs {
		if err := sup.Start(ctx, p); err != nil {
			return err
		}
	}
	client, err := assignments.NewClient(urls, token)
	if err != nil {
		return err
	}
	if err := waitReady(ctx, client, o.ConfigNodes); err != nil {
		sup.Wait()
		return err
	}
	more, discordURL, err := startWorkload(ctx, o, sup, urls, env)
	if err != nil {
		sup.Wait()
		return err
	}
	procs = append(procs, more...)
	if o.Gateways > 0 {
		if err := waitGateways(ctx, client, o.Gateways); err != nil {
			o.Log.Warn("gateways not all up yet", "err", err)
		}
	}
	printSummary(o, procs, token)
	if o.Gateways > 0 {
		printTryCommands(ctx, o, client, pgURL)
	}
	if o.Traffic > 0 && o.Gateways > 0 {
		go runTraffic(ctx, o, discordURL)
	}
	<-ctx.Done()
	o.Log.Info("stopping every child")
	sup.Wait()
	return nil
}

// waitReady waits until the cluster has a leader and every config node is a
// voter.
func waitReady(ctx context.Context, c *assignments.Client, voters int) error {
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		st, err := c.Status(ctx)
		if err == nil && st.Leader != "" && len(st.Servers) >= voters {
			return nil
		}
		if err != nil {
			last = err
		} else {
			last = fmt.Errorf("leader %q, %d of %d voters", st.Leader, len(st.Servers), voters)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("cluster not ready after 60s (logs under the dev dir's logs/): %v", last)
}

func printSummary(o Options, procs []*Process, token string) {
	w := tabwriter.NewWriter(o.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "COMPONENT\tPID\tURL")
	for _, p := range procs {
		fmt.Fprintf(w, "%s\t%d\t%s\n", p.Name, p.PID(), p.URL)
	}
	_ = w.Flush()
	if o.Proxy && o.Gateways > 0 {
		fmt.Fprintf(o.Out, "\nlog in:  http://%s/login  (the fake Discord's consent page: alice moderates the first guilds, bob is a plain member)\n", o.ProxyAddr)
		fmt.Fprintf(o.Out, "status:  http://%s/status\n", o.ProxyAddr)
	}
	fmt.Fprintf(o.Out, "\ntoken: %s (in %s)\nlogs:  %s\nCtrl-C stops everything; running it again resumes from %s.\n",
		token, TokenFile(o.Dir), filepath.Join(o.Dir, "logs"), o.Dir)
}
