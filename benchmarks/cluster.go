// Package benchmarks measures the system end to end on loopback: real config
// nodes over TCP with fsync on, real HTTP. `make bench` runs them through
// cmd/modbotbench and prints tables; docs/benchmarks.md records the figures.
package benchmarks

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/fsm"
)

const benchToken = "bench-token"

// Cluster is a loopback config cluster started in this process.
type Cluster struct {
	Dir   string
	Cfgs  []confignode.Config
	Nodes []*confignode.Node
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartCluster starts size config nodes in dir and waits for all voters.
func StartCluster(ctx context.Context, dir string, size int, tweak func(*confignode.Config)) (*Cluster, error) {
	c := &Cluster{Dir: dir}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var urls []string
	for i := 0; i < size; i++ {
		rp, err := freePort()
		if err != nil {
			return nil, err
		}
		hp, err := freePort()
		if err != nil {
			return nil, err
		}
		cfg := confignode.Config{
			ID: fmt.Sprintf("config-%d", i), DataDir: filepath.Join(dir, fmt.Sprintf("config-%d", i)),
			RaftAddr: "127.0.0.1:" + strconv.Itoa(rp), HTTPAddr: "127.0.0.1:" + strconv.Itoa(hp),
			Token: benchToken, Shards: 16, PodTimeout: time.Hour, Logger: quiet,
		}
		if i == 0 {
			cfg.Bootstrap = true
		} else {
			cfg.Join = append([]string(nil), urls...)
		}
		if tweak != nil {
			tweak(&cfg)
		}
		urls = append(urls, "http://"+cfg.HTTPAddr)
		c.Cfgs = append(c.Cfgs, cfg)
		c.Nodes = append(c.Nodes, nil)
		if err := c.Start(i); err != nil {
			c.Close()
			return nil, err
		}
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

// Start (re)starts node i with its configuration.
func (c *Cluster) Start(i int) error {
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		if c.Nodes[i], err = confignode.Start(c.Cfgs[i]); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond) // the previous incarnation's ports may linger
	}
	return fmt.Errorf("start %s: %w", c.Cfgs[i].ID, err)
}

// Kill hard-stops node i.
func (c *Cluster) Kill(i int) {
	c.Nodes[i].Kill()
	c.Nodes[i] = nil
}

// Close stops every node.
func (c *Cluster) Close() {
	for i, n := range c.Nodes {
		if n != nil {
			n.Kill()
			c.Nodes[i] = nil
		}
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
	return poll(ctx, d, "a leader", func() bool { return c.Leader() >= 0 })
}

// WaitVoters waits until the leader counts n voters and every running node
// has applied what the leader has.
func (c *Cluster) WaitVoters(ctx context.Context, n int, d time.Duration) error {
	cl := c.Client()
	return poll(ctx, d, fmt.Sprintf("%d voters", n), func() bool {
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
		out = append(out, "http://"+cfg.HTTPAddr)
	}
	return out
}

// Client returns a failover client for the whole cluster.
func (c *Cluster) Client() *assignments.Client {
	cl, err := assignments.NewClient(c.URLs(), benchToken)
	if err != nil {
		panic(err) // URLs are built above; cannot be malformed
	}
	return cl
}

func poll(ctx context.Context, d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", d, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// Percentiles summarises durations.
type Percentiles struct {
	N             int
	P50, P99, Max time.Duration
}

func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(q float64) time.Duration {
		i := int(q*float64(len(s))+0.5) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return Percentiles{N: len(s), P50: at(0.50), P99: at(0.99), Max: s[len(s)-1]}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

// TempDir makes a scratch directory for a benchmark.
func TempDir(name string) (string, func(), error) {
	d, err := os.MkdirTemp("", "modbot-bench-"+name+"-")
	if err != nil {
		return "", nil, err
	}
	return d, func() { _ = os.RemoveAll(d) }, nil
}

func httpGetStatus(url string) (int, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
