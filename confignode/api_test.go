package confignode

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

func isStatus(err error, code int) bool {
	var e *assignments.APIError
	return errors.As(err, &e) && e.Status == code
}

type rawResp struct {
	status int
	body   string
}

func rawRequest(t *testing.T, method, url, token, body string) rawResp {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return rawResp{resp.StatusCode, string(b)}
}

// TestBadInputIsRefusedAndChangesNothing: each bad request gets a clear status
// and message, and the FSM's revision does not move.
func TestBadInputIsRefusedAndChangesNothing(t *testing.T) {
	tc := newTestCluster(t, 3, func(i int, c *Config) { c.MaxBodyBytes = 4096 })
	tc.registerPods(2)
	tc.place(tc.client(), 0, 10)
	leader := tc.leader()
	follower := (leader + 1) % 3
	base := "http://" + tc.cfgs[follower].HTTPAddr // through a follower: forwarding must keep the errors
	big := `{"guild_ids":["` + strings.Repeat("1", 5000) + `"]}`
	cases := []struct {
		name, method, path, token, body string
		status                          int
		msg                             string
	}{
		{"missing token", "GET", "/v1/status", "", "", 401, "missing bearer token"},
		{"wrong token", "GET", "/v1/status", "nope", "", 401, "wrong bearer token"},
		{"wrong token on a write", "POST", "/v1/guilds", "nope", `{"guild_ids":["1"]}`, 401, "wrong bearer token"},
		{"malformed json", "POST", "/v1/guilds", testToken, `{"guild_ids":[`, 400, "malformed JSON"},
		{"empty body", "POST", "/v1/guilds", testToken, ``, 400, "empty"},
		{"unknown field", "POST", "/v1/guilds", testToken, `{"guilds":["1"]}`, 400, "unknown field"},
		{"guild id as number", "POST", "/v1/guilds", testToken, `{"guild_ids":[42]}`, 400, "malformed JSON"},
		{"guild id not a snowflake", "POST", "/v1/guilds", testToken, `{"guild_ids":["abc"]}`, 400, "not a snowflake"},
		{"oversized body", "POST", "/v1/guilds", testToken, big, 413, "larger than"},
		{"unknown guild", "GET", "/v1/guilds/123456789", testToken, "", 404, "unknown guild"},
		{"bad guild id", "GET", "/v1/guilds/xyz", testToken, "", 400, "not a snowflake"},
		{"drain unknown pod", "POST", "/v1/pods/gateway-9/drain", testToken, "", 404, "unknown pod"},
		{"heartbeat unknown pod", "POST", "/v1/pods/gateway-9/heartbeat", testToken, "", 404, "register it first"},
		{"pod without ordinal", "POST", "/v1/pods", testToken, `{"id":"gateway","addr":"x:1"}`, 400, "ordinal"},
		{"pod without addr", "POST", "/v1/pods", testToken, `{"id":"gateway-7"}`, 400, "addr is required"},
		{"pod ordinal taken", "POST", "/v1/pods", testToken, `{"id":"other-1","addr":"x:1"}`, 409, "already belongs"},
		{"unknown pod filter", "GET", "/v1/guilds?pod=gateway-9", testToken, "", 404, "unknown pod"},
		{"bad limit", "GET", "/v1/guilds?limit=0", testToken, "", 400, "limit"},
		{"join without address", "POST", "/v1/cluster/join", testToken, `{"id":"config-9"}`, 400, "raft_addr"},
		{"join with a live node's id", "POST", "/v1/cluster/join", testToken, `{"id":"` + tc.cfgs[follower].ID + `","raft_addr":"127.0.0.1:1"}`, 409, "live server"},
		{"join with the leader's address", "POST", "/v1/cluster/join", testToken, `{"id":"config-9","raft_addr":"` + tc.cfgs[leader].RaftAddr + `"}`, 409, "belongs to the leader"},
		{"remove unknown server", "DELETE", "/v1/cluster/servers/config-9", testToken, "", 404, "no config node"},
		{"unknown route", "GET", "/v1/nothing", testToken, "", 404, "no route"},
		{"wrong method", "PUT", "/v1/guilds", testToken, "", 405, "not allowed"},
		{"watch from garbage", "GET", "/v1/watch?from=abc", testToken, "", 400, "revision number"},
	}
	before := tc.state(leader).Revision
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := rawRequest(t, c.method, base+c.path, c.token, c.body)
			if r.status != c.status || !strings.Contains(r.body, c.msg) {
				t.Fatalf("got %d %s, want %d containing %q", r.status, r.body, c.status, c.msg)
			}
			if !strings.HasPrefix(strings.TrimSpace(r.body), `{"error":`) {
				t.Fatalf("error body is not JSON: %s", r.body)
			}
		})
	}
	if after := tc.state(leader).Revision; after != before {
		t.Fatalf("bad input moved the revision from %d to %d", before, after)
	}
	// Health and metrics need no token.
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if r := rawRequest(t, "GET", base+p, "", ""); r.status != 200 {
			t.Fatalf("%s: %d %s", p, r.status, r.body)
		}
	}
}

func TestServerRefusesToStartWithoutToken(t *testing.T) {
	_, err := Start(Config{ID: "x", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "--insecure-no-auth") {
		t.Fatalf("got %v", err)
	}
}

// TestWritesThroughFollowersAndConsistentReads: a write sent to a follower is
// forwarded to the leader; a consistent read on any node sees it at once.
func TestWritesThroughFollowersAndConsistentReads(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	tc.registerPods(3)
	f := (tc.leader() + 1) % 3
	c := tc.nodeClient(f)
	res, err := c.PlaceGuilds(context.Background(), guildIDs(0, 5))
	if err != nil || len(res.Guilds) != 5 {
		t.Fatalf("place via follower: %v %+v", err, res)
	}
	var g assignments.GuildList
	if err := c.Do(context.Background(), "GET", "/v1/guilds?consistent=true", nil, &g); err != nil {
		t.Fatal(err)
	}
	if len(g.Guilds) != 5 || g.Revision < res.Revision {
		t.Fatalf("consistent read: %d guilds at %d, wrote at %d", len(g.Guilds), g.Revision, res.Revision)
	}
	// Placement follows the shard holder.
	for _, x := range res.Guilds {
		st := tc.state(tc.leader())
		holder := st.Shards[fsm.ShardOf(x.ID, st.ShardCount)].Holder
		if x.Owner != holder {
			t.Fatalf("guild %d placed on %s, shard holder is %s", x.ID, x.Owner, holder)
		}
	}
	// Re-placing is idempotent.
	res2, err := c.PlaceGuilds(context.Background(), guildIDs(0, 5))
	if err != nil || res2.Revision != res.Revision {
		t.Fatalf("re-place changed the revision %d → %d (%v)", res.Revision, res2.Revision, err)
	}
}

// TestJoinIsIdempotent: joining again with the same id and address changes
// nothing; joining with the same id from a dead address replaces it.
func TestJoinIsIdempotent(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	c := tc.client()
	for i := 0; i < 2; i++ {
		res, err := c.Join(context.Background(), assignments.JoinRequest{ID: tc.cfgs[2].ID, RaftAddr: tc.cfgs[2].RaftAddr, HTTPAddr: tc.cfgs[2].HTTPAddr})
		if err != nil || !strings.Contains(res.Message, "nothing to do") {
			t.Fatalf("re-join: %v %+v", err, res)
		}
	}
	srv, _ := c.Servers(context.Background())
	if len(srv) != 3 {
		t.Fatalf("%d servers after re-join", len(srv))
	}
	// config-2 dies and comes back at a new address: the join replaces it.
	tc.kill(2)
	tc.cfgs[2].RaftAddr = "127.0.0.1:" + itoa(freePort(t))
	tc.cfgs[2].DataDir += "-new"
	tc.cfgs[2].Join = tc.urls()[:2]
	tc.start(2)
	waitFor(t, 15*time.Second, "config-2 at its new address", func() bool {
		srv, err := c.Servers(context.Background())
		if err != nil || len(srv) != 3 {
			return false
		}
		for _, s := range srv {
			if s.ID == "config-2" {
				return s.RaftAddr == tc.cfgs[2].RaftAddr
			}
		}
		return false
	})
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestPodLivenessMarksSilentPodsDown: heartbeats live in the leader's memory;
// a silent pod is marked down by one entry and its shards move; a heartbeat
// brings it back.
func TestPodLivenessMarksSilentPodsDown(t *testing.T) {
	tc := newTestCluster(t, 3, func(i int, c *Config) { c.PodTimeout = 400 * time.Millisecond })
	tc.registerPods(2)
	c := tc.client()
	l := tc.leader()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				_ = c.Heartbeat(context.Background(), "gateway-0")
			}
		}
	}()
	revBefore := tc.state(l).Revision
	waitFor(t, 5*time.Second, "gateway-1 marked down", func() bool {
		for _, p := range tc.state(l).Pods {
			if p.ID == "gateway-1" {
				return p.State == fsm.PodDown
			}
		}
		return false
	})
	st := tc.state(l)
	for _, s := range st.Shards {
		if s.Holder != "gateway-0" {
			t.Fatalf("shard %d held by %s after gateway-1 went down", s.Shard, s.Holder)
		}
	}
	for _, p := range st.Pods {
		if p.ID == "gateway-0" && p.State != fsm.PodActive {
			t.Fatal("heartbeating pod was marked down")
		}
	}
	// Heartbeats cost no Raft entries: only the mark-down moved the revision
	// (one entry: pod state plus its shards).
	if got := st.Revision; got == revBefore {
		t.Fatal("revision did not move")
	}
	if err := c.Heartbeat(context.Background(), "gateway-1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "gateway-1 active again", func() bool {
		for _, p := range tc.state(l).Pods {
			if p.ID == "gateway-1" {
				return p.State == fsm.PodActive
			}
		}
		return false
	})
}

// TestProfilerIsServedOnlyWhenAskedAndOnlyToAdmins: --pprof serves Go's
// profiler to the admin token, refuses the read token, and without the
// flag the path does not exist.
func TestProfilerIsServedOnlyWhenAskedAndOnlyToAdmins(t *testing.T) {
	tc := newTestCluster(t, 2, func(i int, c *Config) {
		c.ReadToken = "reader"
		c.Pprof = i == 0
	})
	on, off := "http://"+tc.cfgs[0].HTTPAddr, "http://"+tc.cfgs[1].HTTPAddr
	if r := rawRequest(t, "GET", on+"/debug/pprof/cmdline", testToken, ""); r.status != http.StatusOK || !strings.Contains(r.body, "confignode") {
		t.Fatalf("admin, profiler on: %d %q", r.status, r.body)
	}
	if r := rawRequest(t, "GET", on+"/debug/pprof/heap?debug=1", testToken, ""); r.status != http.StatusOK || !strings.Contains(r.body, "heap profile") {
		t.Fatalf("admin, heap profile: %d %.200q", r.status, r.body)
	}
	if r := rawRequest(t, "GET", on+"/debug/pprof/cmdline", "reader", ""); r.status != http.StatusForbidden {
		t.Fatalf("read token: %d %q", r.status, r.body)
	}
	if r := rawRequest(t, "GET", off+"/debug/pprof/cmdline", testToken, ""); r.status != http.StatusNotFound {
		t.Fatalf("profiler off: %d %q", r.status, r.body)
	}
}
