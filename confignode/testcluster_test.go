package confignode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

const testToken = "test-token"

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// testCluster is a set of in-process config nodes on real loopback TCP, each
// with its own data directory, restartable with the same identity.
type testCluster struct {
	t     testing.TB
	cfgs  []Config
	nodes []*Node
}

func testLogger() *slog.Logger {
	if os.Getenv("MODBOT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newTestCluster(t testing.TB, size int, tweak func(i int, c *Config)) *testCluster {
	t.Helper()
	tc := &testCluster{t: t}
	dir := t.TempDir()
	var urls []string
	for i := 0; i < size; i++ {
		c := Config{
			ID:         fmt.Sprintf("config-%d", i),
			DataDir:    filepath.Join(dir, fmt.Sprintf("config-%d", i)),
			RaftAddr:   "127.0.0.1:" + strconv.Itoa(freePort(t)),
			HTTPAddr:   "127.0.0.1:" + strconv.Itoa(freePort(t)),
			Token:      testToken,
			Shards:     8,
			PodTimeout: time.Hour,
			Logger:     testLogger(),
		}
		if i == 0 {
			c.Bootstrap = true
		} else {
			c.Join = append([]string(nil), urls...)
		}
		if tweak != nil {
			tweak(i, &c)
		}
		urls = append(urls, "http://"+c.HTTPAddr)
		tc.cfgs = append(tc.cfgs, c)
		tc.nodes = append(tc.nodes, nil)
		// A free port can be taken by another test process before we bind
		// it: a node that has never run can simply take fresh ports.
		for attempt := 0; attempt < 5; attempt++ {
			n, err := Start(tc.cfgs[i])
			if err == nil {
				tc.nodes[i] = n
				break
			}
			if !errors.Is(err, syscall.EADDRINUSE) || attempt == 4 {
				t.Fatalf("start node %d: %v", i, err)
			}
			tc.cfgs[i].RaftAddr = "127.0.0.1:" + strconv.Itoa(freePort(t))
			tc.cfgs[i].HTTPAddr = "127.0.0.1:" + strconv.Itoa(freePort(t))
			urls[i] = "http://" + tc.cfgs[i].HTTPAddr
		}
		if i == 0 {
			tc.waitLeader()
		}
	}
	tc.waitVoters(size)
	t.Cleanup(func() {
		for _, n := range tc.nodes {
			if n != nil {
				n.Kill()
			}
		}
	})
	return tc
}

func (tc *testCluster) start(i int) {
	tc.t.Helper()
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		tc.nodes[i], err = Start(tc.cfgs[i])
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // the port may still be held by the previous incarnation
	}
	if err != nil {
		tc.t.Fatalf("start node %d: %v", i, err)
	}
}

func (tc *testCluster) kill(i int) {
	tc.nodes[i].Kill()
	tc.nodes[i] = nil
}

func (tc *testCluster) urls() []string {
	var out []string
	for _, c := range tc.cfgs {
		out = append(out, "http://"+c.HTTPAddr)
	}
	return out
}

func (tc *testCluster) client() *assignments.Client {
	c, err := assignments.NewClient(tc.urls(), testToken)
	if err != nil {
		tc.t.Fatal(err)
	}
	return c
}

func (tc *testCluster) nodeClient(i int) *assignments.Client {
	c, err := assignments.NewClient([]string{"http://" + tc.cfgs[i].HTTPAddr}, testToken)
	if err != nil {
		tc.t.Fatal(err)
	}
	return c
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (tc *testCluster) leader() int {
	for i, n := range tc.nodes {
		if n != nil && n.IsLeader() {
			return i
		}
	}
	return -1
}

func (tc *testCluster) waitLeader() int {
	tc.t.Helper()
	var l int
	waitFor(tc.t, 15*time.Second, "a leader", func() bool {
		l = tc.leader()
		if l < 0 {
			return false
		}
		// The leader has recorded its own address, so followers can forward.
		_, ok := tc.nodes[l].configNode(tc.cfgs[l].ID)
		return ok
	})
	return l
}

func (tc *testCluster) waitVoters(n int) {
	tc.t.Helper()
	waitFor(tc.t, 20*time.Second, fmt.Sprintf("%d voters", n), func() bool {
		l := tc.leader()
		return l >= 0 && tc.nodes[l].voters() == n
	})
}

// registerPods registers n gateway pods through the API.
func (tc *testCluster) registerPods(n int) {
	tc.t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", 9000+i)
	}
	tc.registerPodsAt(addrs...)
}

// registerPodsAt registers gateway-0, gateway-1, … at the given addresses.
func (tc *testCluster) registerPodsAt(addrs ...string) {
	tc.t.Helper()
	c := tc.client()
	for i, addr := range addrs {
		if _, err := c.RegisterPod(context.Background(), assignments.RegisterPodRequest{ID: fmt.Sprintf("gateway-%d", i), Addr: addr}); err != nil {
			tc.t.Fatalf("register pod %d: %v", i, err)
		}
	}
}

// moveLeadershipAway asks leader l to hand leadership over until another
// node leads.
func (tc *testCluster) moveLeadershipAway(l int) {
	tc.t.Helper()
	waitFor(tc.t, 15*time.Second, "leadership to move", func() bool {
		_ = tc.nodes[l].raft.LeadershipTransfer().Error()
		nl := tc.leader()
		return nl >= 0 && nl != l
	})
}

func guildIDs(from, n int) []string {
	out := make([]string, n)
	for i := range out {
		// Realistic snowflakes spread over shards.
		out[i] = strconv.FormatUint(uint64(1_000_000_000_000+from+i)<<22|uint64((from+i)%4096), 10)
	}
	return out
}

func (tc *testCluster) place(c *assignments.Client, from, n int) {
	tc.t.Helper()
	ids := guildIDs(from, n)
	for len(ids) > 0 {
		k := min(len(ids), 250)
		if _, err := c.PlaceGuilds(context.Background(), ids[:k]); err != nil {
			tc.t.Fatalf("place guilds: %v", err)
		}
		ids = ids[k:]
	}
}

// state returns a copy of node i's map as the snapshot endpoint shows it.
func (tc *testCluster) state(i int) assignments.Snapshot { return tc.nodes[i].snapshot() }

func assertSameMap(t testing.TB, a, b assignments.Snapshot, what string) {
	t.Helper()
	if a.Revision != b.Revision || len(a.Guilds) != len(b.Guilds) {
		t.Fatalf("%s: revision %d/%d guilds %d/%d", what, a.Revision, b.Revision, len(a.Guilds), len(b.Guilds))
	}
	for i := range a.Guilds {
		ga, gb := a.Guilds[i], b.Guilds[i]
		if ga.ID != gb.ID || ga.Owner != gb.Owner || ga.Epoch != gb.Epoch || ga.State != gb.State {
			t.Fatalf("%s: guild %d differs: %+v vs %+v", what, ga.ID, ga, gb)
		}
	}
}

func hasGuilds(s assignments.Snapshot, ids []string) bool {
	have := make(map[uint64]bool, len(s.Guilds))
	for _, g := range s.Guilds {
		have[g.ID] = true
	}
	for _, id := range ids {
		v, _ := fsm.ParseGuildID(id)
		if !have[v] {
			return false
		}
	}
	return true
}

// snapshot copies the whole map at one revision, guilds included (the
// Migrations copied too, so that nothing the caller does reaches the state).
func (n *Node) snapshot() assignments.Snapshot {
	out, guilds := n.snapshotHead()
	out.Guilds = guilds.AppendTo(make([]fsm.Guild, 0, guilds.Len()))
	for i := range out.Guilds {
		if m := out.Guilds[i].Migration; m != nil {
			c := *m
			out.Guilds[i].Migration = &c
		}
	}
	return out
}
