package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/systest"
)

// Build compiles the modbot binary into dir and returns its path. It runs
// from the module root (found from this package's directory). With race,
// the binary has the race detector: a race in any component under faults
// then shows in its log (RacesIn).
func Build(dir string, race bool) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "modbot")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "./cmd/modbot")...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/modbot: %v\n%s", err, out)
	}
	return bin, nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s", dir)
		}
	}
}

// Options size a System.
type Options struct {
	Bin      string // the modbot binary (Build)
	Dir      string // data and logs
	Gateways int
	Shards   int // default 4
	Guilds   int // created in the fake Discord at start (default 16)
	Proxy    bool
	// PodTimeout marks a silent pod down (default 3 s).
	PodTimeout time.Duration
	Log        *slog.Logger
}

// System is the whole of modbot as separate processes, each in its own
// network namespace: three config nodes, the fake Discord, gateways and
// optionally a proxy.
type System struct {
	Net      *Net
	Opts     Options
	Token    string
	Config   []*Proc
	Discord  *Proc
	Gateways []*Proc
	Proxy    *Proc
	// Client reaches every config node from the test process (it is not in
	// any namespace, so cuts between hosts do not affect it).
	Client     *assignments.Client
	ConfigURLs []string
	DiscordURL string
	ProxyURL   string
	PublicKey  string
}

const (
	raftPort    = 7000
	configPort  = 8000
	discordPort = 7900
	gatewayPort = 9000
	proxyPort   = 8080
)

// Start starts every component and waits until the cluster has a leader
// with three voters, every gateway is active and holds its shards, and
// every fake guild is placed.
func Start(ctx context.Context, o Options) (*System, error) {
	if o.Shards == 0 {
		o.Shards = 4
	}
	if o.Guilds == 0 {
		o.Guilds = 16
	}
	if o.PodTimeout == 0 {
		o.PodTimeout = 3 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	n, err := NewNet(o.Log)
	if err != nil {
		return nil, err
	}
	s := &System{Net: n, Opts: o, Token: "chaos-token"}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if err := os.MkdirAll(filepath.Join(o.Dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	// Addresses are known before anything starts: host i is 10.A.B.(i+1).
	for i := 0; i < 3; i++ {
		s.ConfigURLs = append(s.ConfigURLs, fmt.Sprintf("http://%s:%d", n.addr(byte(i+1)), configPort))
	}
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("config-%d", i)
		ip := n.addr(byte(i + 1))
		args := []string{"config-node", "--id", id, "--data-dir", filepath.Join(o.Dir, id),
			"--raft-addr", fmt.Sprintf("%s:%d", ip, raftPort), "--http-addr", fmt.Sprintf("%s:%d", ip, configPort),
			"--pod-timeout", o.PodTimeout.String(), "--identify-interval", "100ms", "--write-timeout", "3s"}
		if i == 0 {
			args = append(args, "--bootstrap", "--shards", fmt.Sprint(o.Shards))
		} else {
			args = append(args, "--join", strings.Join(s.ConfigURLs[:i], ","))
		}
		p, err := s.newProc(id, args...)
		if err != nil {
			return nil, err
		}
		if p.Host.IP != ip {
			return nil, fmt.Errorf("host %s got %s, want %s", id, p.Host.IP, ip)
		}
		s.Config = append(s.Config, p)
	}
	if s.Client, err = assignments.NewClient(s.ConfigURLs, s.Token); err != nil {
		return nil, err
	}
	for _, p := range s.Config {
		if err := p.Start(); err != nil {
			return nil, err
		}
	}
	if err := s.WaitVoters(ctx, 3, 60*time.Second); err != nil {
		return nil, err
	}
	if o.Gateways > 0 {
		if err := s.startWorkload(ctx); err != nil {
			return nil, err
		}
	}
	ok = true
	return s, nil
}

func (s *System) startWorkload(ctx context.Context) error {
	o := s.Opts
	keyFile := filepath.Join(o.Dir, "discord-public-key")
	d, err := s.newProc("discord", "fakediscord", "--shards", fmt.Sprint(o.Shards), "--guilds", fmt.Sprint(o.Guilds),
		"--identify-interval", "100ms", "--public-key-file", keyFile)
	if err != nil {
		return err
	}
	s.Discord = d
	s.DiscordURL = fmt.Sprintf("http://%s:%d", d.Host.IP, discordPort)
	d.Args = append(d.Args, "--addr", fmt.Sprintf("%s:%d", d.Host.IP, discordPort))
	// The proxy's host is created now so its address is known to the fake.
	var proxyHost *Proc
	if o.Proxy {
		if proxyHost, err = s.newProc("proxy"); err != nil {
			return err
		}
		s.ProxyURL = fmt.Sprintf("http://%s:%d", proxyHost.Host.IP, proxyPort)
		d.Args = append(d.Args, "--interactions-url", s.ProxyURL+"/webhooks/discord")
	}
	if err := d.Start(); err != nil {
		return err
	}
	if err := systest.Poll(ctx, 30*time.Second, "the fake Discord answering", func() bool {
		return get(s.DiscordURL+"/_fake/guilds", nil) == nil
	}); err != nil {
		return err
	}
	for i := 0; i < o.Gateways; i++ {
		if _, err := s.AddGateway(); err != nil {
			return err
		}
	}
	if o.Proxy {
		key, err := os.ReadFile(keyFile)
		if err != nil {
			return fmt.Errorf("read the fake's public key: %w", err)
		}
		s.PublicKey = strings.TrimSpace(string(key))
		proxyHost.Args = []string{"proxy", "--http-addr", fmt.Sprintf("%s:%d", proxyHost.Host.IP, proxyPort),
			"--config", strings.Join(s.ConfigURLs, ","), "--discord-public-key", s.PublicKey}
		s.Proxy = proxyHost
		if err := s.Proxy.Start(); err != nil {
			return err
		}
	}
	return s.WaitSettled(ctx, 90*time.Second)
}

// AddGateway adds and starts gateway-N.
func (s *System) AddGateway() (*Proc, error) {
	i := len(s.Gateways)
	id := fmt.Sprintf("gateway-%d", i)
	p, err := s.newProc(id)
	if err != nil {
		return nil, err
	}
	p.Args = []string{"gateway", "--id", id, "--data-dir", filepath.Join(s.Opts.Dir, id),
		"--http-addr", fmt.Sprintf("%s:%d", p.Host.IP, gatewayPort),
		"--config", strings.Join(s.ConfigURLs, ","), "--discord-url", s.DiscordURL, "--discord-token", "fake-token"}
	s.Gateways = append(s.Gateways, p)
	return p, p.Start()
}

func (s *System) newProc(name string, args ...string) (*Proc, error) {
	h, err := s.Net.AddHost(name)
	if err != nil {
		return nil, err
	}
	env := []string{"MODBOT_TOKEN=" + s.Token, "MODBOT_INTERNAL_TOKEN=" + s.Token + "-internal", "MODBOT_READ_TOKEN=" + s.Token + "-read", "MODBOT_LOG_LEVEL=info"}
	return &Proc{Name: name, Host: h, Bin: s.Opts.Bin, Args: args, Env: env, Log: filepath.Join(s.Opts.Dir, "logs", name+".log")}, nil
}

// GatewayURL is gateway i's internal API.
func (s *System) GatewayURL(i int) string {
	return fmt.Sprintf("http://%s:%d", s.Gateways[i].Host.IP, gatewayPort)
}

// GatewayDB is gateway i's SQLite file.
func (s *System) GatewayDB(i int) string {
	return filepath.Join(s.Opts.Dir, s.Gateways[i].Name, "modbot.db")
}

// GatewayIndex maps a pod id to its index (-1 if unknown).
func (s *System) GatewayIndex(id string) int {
	for i, g := range s.Gateways {
		if g.Name == id {
			return i
		}
	}
	return -1
}

// WaitVoters waits until some node leads with n voters.
func (s *System) WaitVoters(ctx context.Context, n int, d time.Duration) error {
	return systest.Poll(ctx, d, fmt.Sprintf("a leader with %d voters", n), func() bool {
		st, err := s.Client.Status(ctx)
		if err != nil || st.Leader == "" {
			return false
		}
		voters := 0
		for _, sv := range st.Servers {
			if sv.Suffrage == "Voter" {
				voters++
			}
		}
		return voters >= n
	})
}

// WaitSettled waits until every shard is held by an active pod whose session
// checkpointed, every fake guild is placed, and every gateway is ready.
func (s *System) WaitSettled(ctx context.Context, d time.Duration) error {
	return systest.Poll(ctx, d, "shards held and guilds placed", func() bool {
		var guilds []json.RawMessage
		if err := get(s.DiscordURL+"/_fake/guilds", &guilds); err != nil {
			return false
		}
		st, err := s.Client.Status(ctx)
		if err != nil || st.Guilds < len(guilds) {
			return false
		}
		sl, err := s.Client.Shards(ctx)
		if err != nil {
			return false
		}
		for _, sh := range sl.Shards {
			if sh.Holder == "" || sh.Checkpoint == nil || sh.Checkpoint.Holder != sh.Holder || sh.Checkpoint.Epoch != sh.Epoch {
				return false
			}
		}
		for i, g := range s.Gateways {
			if g.Running() && !systest.Ready(s.GatewayURL(i)) {
				return false
			}
		}
		pods, err := s.Client.Pods(ctx)
		if err != nil {
			return false
		}
		for _, p := range pods.Pods {
			if p.State == fsm.PodDown {
				return false
			}
		}
		return true
	})
}

// Leader returns the index of the config node that leads, per the nodes
// themselves (-1 if none answers as leader).
func (s *System) Leader(ctx context.Context) int {
	st, err := s.Client.Status(ctx)
	if err != nil || st.Leader == "" {
		return -1
	}
	for i, p := range s.Config {
		if p.Name == st.Leader {
			return i
		}
	}
	return -1
}

// RacesIn returns the processes whose logs report a data race (only a
// binary built with the race detector reports them).
func (s *System) RacesIn() []string {
	var out []string
	for _, p := range s.All() {
		b, err := os.ReadFile(p.Log)
		if err == nil && strings.Contains(string(b), "WARNING: DATA RACE") {
			out = append(out, p.Log)
		}
	}
	return out
}

// All returns every process.
func (s *System) All() []*Proc {
	out := append([]*Proc(nil), s.Config...)
	if s.Discord != nil {
		out = append(out, s.Discord)
	}
	out = append(out, s.Gateways...)
	if s.Proxy != nil {
		out = append(out, s.Proxy)
	}
	return out
}

// Close stops every process, then deletes the network.
func (s *System) Close() {
	for _, p := range s.All() {
		if p.Running() {
			_ = p.Stop(5 * time.Second)
		}
	}
	s.Net.Close()
}

func get(url string, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
