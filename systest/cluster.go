package systest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/fsm"
)

// Cluster is a loopback config cluster started in this process.
type Cluster struct {
	Dir   string
	Cfgs  []confignode.Config
	Nodes []*confignode.Node // nil while stopped
}

// StartCluster starts size config nodes in dir (node 0 bootstraps, the
// others join) and waits for all voters. tweak, if not nil, adjusts each
// node's configuration before its start.
func StartCluster(ctx context.Context, dir string, size int, tweak func(*confignode.Config)) (*Cluster, error) {
	c := &Cluster{Dir: dir}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var urls []string
	for i := 0; i < size; i++ {
		join := append([]string(nil), urls...)
		newCfg := func() (confignode.Config, error) {
			rp, err := FreePort()
			if err != nil {
				return confignode.Config{}, err
			}
			hp, err := FreePort()
			if err != nil {
				return confignode.Config{}, err
			}
			cfg := confignode.Config{
				ID: fmt.Sprintf("config-%d", i), DataDir: filepath.Join(dir, fmt.Sprintf("config-%d", i)),
				RaftAddr: "127.0.0.1:" + strconv.Itoa(rp), HTTPAddr: "127.0.0.1:" + strconv.Itoa(hp),
				Token: Token, InternalToken: InternalToken, ReadToken: ReadToken, Shards: 16, PodTimeout: time.Hour, Logger: quiet,
			}
			if i == 0 {
				cfg.Bootstrap = true
			} else {
				cfg.Join = join
			}
			if tweak != nil {
				tweak(&cfg)
			}
			return cfg, nil
		}
		c.Cfgs = append(c.Cfgs, confignode.Config{})
		c.Nodes = append(c.Nodes, nil)
		if err := c.startNew(i, newCfg); err != nil {
			c.Close()
			return nil, err
		}
		urls = append(urls, c.Cfgs[i].TLS.Scheme()+"://"+c.Cfgs[i].HTTPAddr)
		if i == 0 {
			if err := c.waitLeader(ctx, 15*time.Second); err != nil {
				c.Close()
				return nil, err
			}
		}
	}
	if err := c.WaitVoters(ctx, size, 30*time.Second); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// startNew starts node i for the first time. A port taken between picking
// and binding is retried with a fresh configuration (fresh ports), after
// removing the data directory the failed attempt created: it may have
// bootstrapped Raft with the old address.
func (c *Cluster) startNew(i int, newCfg func() (confignode.Config, error)) error {
	err := startFresh(func() (string, error) {
		cfg, err := newCfg()
		if err != nil {
			return "", err
		}
		dir := ""
		if freshDir(cfg.DataDir) {
			dir = cfg.DataDir
		}
		c.Cfgs[i] = cfg
		c.Nodes[i], err = confignode.Start(cfg)
		return dir, err
	})
	if err != nil {
		return fmt.Errorf("start config node %d: %w", i, err)
	}
	return nil
}

// Start (re)starts node i with its configuration. It retries while the
// previous incarnation's ports are still bound.
func (c *Cluster) Start(i int) error {
	err := retryAddrInUse(startAttempts, startRetryDelay, func(int) error {
		var err error
		c.Nodes[i], err = confignode.Start(c.Cfgs[i])
		return err
	})
	if err != nil {
		return fmt.Errorf("start %s: %w", c.Cfgs[i].ID, err)
	}
	return nil
}

// Kill hard-stops node i.
func (c *Cluster) Kill(i int) {
	if c.Nodes[i] != nil {
		c.Nodes[i].Kill()
		c.Nodes[i] = nil
	}
}

// Close stops every node.
func (c *Cluster) Close() {
	for i := range c.Nodes {
		c.Kill(i)
	}
}

// Leader returns the index of the leader, or -1.
func (c *Cluster) Leader() int {
	for i, n := range c.Nodes {
		if n != nil && n.IsLeader() {
			return i
		}
	}
	return -1
}

func (c *Cluster) waitLeader(ctx context.Context, d time.Duration) error {
	return Poll(ctx, d, "a leader", func() bool { return c.Leader() >= 0 })
}

// WaitVoters waits until the leader counts n voters and every running node
// has applied what the leader has.
func (c *Cluster) WaitVoters(ctx context.Context, n int, d time.Duration) error {
	cl := c.Client()
	return Poll(ctx, d, fmt.Sprintf("%d voters", n), func() bool {
		srv, err := cl.Servers(ctx)
		if err != nil || len(srv) != n {
			return false
		}
		l := c.Leader()
		if l < 0 {
			return false
		}
		initialised := false
		c.Nodes[l].Store().View(func(s *fsm.State) { initialised = s.ShardCount > 0 })
		if !initialised {
			return false
		}
		want := c.Nodes[l].Store().Revision()
		for _, node := range c.Nodes {
			if node != nil && node.Store().Revision() < want {
				return false
			}
		}
		return true
	})
}

// URLs returns every node's API URL.
func (c *Cluster) URLs() []string {
	var out []string
	for _, cfg := range c.Cfgs {
		out = append(out, cfg.TLS.Scheme()+"://"+cfg.HTTPAddr)
	}
	return out
}

// Client returns a failover client for the whole cluster.
func (c *Cluster) Client() *assignments.Client {
	cl, err := assignments.NewClient(c.URLs(), Token)
	if err != nil {
		panic(err) // URLs are built above; cannot be malformed
	}
	return cl.UseTLS(c.Cfgs[0].TLS)
}
