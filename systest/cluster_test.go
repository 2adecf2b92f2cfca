package systest

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/confignode"
)

// TestStartClusterRetriesATakenPortOnFreshPorts: node 0's API port is taken
// when it binds (after Raft bootstrapped on its first Raft port); the start
// is retried on fresh ports from a fresh data directory.
func TestStartClusterRetriesATakenPortOnFreshPorts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a config node")
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	calls := 0
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := StartCluster(ctx, t.TempDir(), 1, func(cfg *confignode.Config) {
		calls++
		if calls == 1 {
			cfg.HTTPAddr = taken.Addr().String()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if calls != 2 || c.Cfgs[0].HTTPAddr == taken.Addr().String() {
		t.Fatalf("%d configurations, API on %s (taken: %s); want a second one on a fresh port", calls, c.Cfgs[0].HTTPAddr, taken.Addr())
	}
	f := c.Nodes[0].Raft().GetConfiguration()
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	srv := f.Configuration().Servers
	if len(srv) != 1 || string(srv[0].Address) != c.Cfgs[0].RaftAddr {
		t.Fatalf("raft configuration %v, want the one server at %s (bootstrapped in a fresh directory)", srv, c.Cfgs[0].RaftAddr)
	}
}

func TestStartClusterReturnsOtherErrorsAtOnce(t *testing.T) {
	calls := 0
	start := time.Now()
	_, err := StartCluster(context.Background(), t.TempDir(), 1, func(cfg *confignode.Config) {
		calls++
		cfg.Token = "" // refused by confignode's validation
	})
	if err == nil || !strings.Contains(err.Error(), "token") || calls != 1 {
		t.Fatalf("err %v after %d attempts, want the token error after 1", err, calls)
	}
	if d := time.Since(start); d > startRetryDelay {
		t.Fatalf("took %s: a non-address error was retried", d)
	}
}

// TestRestartWaitsForItsPort: a restarted node keeps its addresses and
// retries while one of them is still bound.
func TestRestartWaitsForItsPort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a config node")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := StartCluster(ctx, t.TempDir(), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Kill(0)
	squatter, err := net.Listen("tcp", c.Cfgs[0].HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(3*startRetryDelay, func() { squatter.Close() })
	if err := c.Start(0); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitVoters(ctx, 1, 15*time.Second); err != nil {
		t.Fatal(err)
	}
}
