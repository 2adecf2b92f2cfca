package e2e

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode"
	"github.com/modbot/modbot/systest"
)

// TestLivePodWronglyMarkedDownLosesNothing: gateway-0's first config URL is
// a node that serves reads and watches but answers heartbeats 503 (what a
// follower that lost its leader answers). Before the fix its client never
// failed over, the leader marked the live pod down, gateway-1 resumed
// gateway-0's session while gateway-0 still ran it, they stole it from each
// other and gateway-0's handoff closed it with 1000 — 463–640 messages lost.
// Now: the client fails over (the pod is usually never marked down), and
// if it is, the old holder lets the resumed session go without closing it.
// Either way every message is stored exactly once.
func TestLivePodWronglyMarkedDownLosesNothing(t *testing.T) {
	fullSuite(t)
	for _, failover := range []bool{true, false} {
		name := map[bool]string{true: "client-fails-over", false: "only-the-faulty-node"}[failover]
		t.Run(name, func(t *testing.T) { wronglyDownCase(t, failover) })
	}
}

func wronglyDownCase(t *testing.T, failover bool) {
	var target atomic.Value // the real config node's URL
	var failWrites atomic.Bool
	var failedBeats atomic.Int64
	var backend atomic.Value // *http.Transport to the config node
	faulty := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failWrites.Load() && r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/heartbeat") {
			failedBeats.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"error":"no leader is known (an election is in progress or a majority of voters is down); retry shortly","leader":""}`)
			return
		}
		u, _ := url.Parse(target.Load().(string))
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.FlushInterval = -1
		// The fault injector is plain HTTP to the pod and TLS (mTLS) to the
		// config node behind it.
		if tr, ok := backend.Load().(*http.Transport); ok {
			rp.Transport = tr
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { faulty.CloseClientConnections(); faulty.Close() }) // runs after sys.Close

	sys, err := systest.StartSystem(context.Background(), t.TempDir(), systest.SystemOptions{Shards: 2, Logger: quiet(), TLS: true,
		TweakGateway: func(c *gatewaynode.Config) {
			if c.ID == "gateway-0" {
				if failover {
					c.ConfigURLs = append([]string{faulty.URL}, c.ConfigURLs...)
				} else {
					c.ConfigURLs = []string{faulty.URL} // nowhere to fail over to: the pod is marked down
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Close)
	s := &system{t: t, System: sys}
	backend.Store(s.TLS.Transport(nil))
	target.Store(s.Cluster.URLs()[0])
	s.Discord.Seed(6)
	s.addGateway()
	s.addGateway()
	s.waitSettled(30 * time.Second)
	d := newDBs(s)
	ctx := context.Background()
	var g uint64
	for _, gd := range s.Discord.Guilds() {
		v := s.owner(gd.ID)
		if v.Owner == "gateway-0" && s.Gateways[0].Watcher().ShardHolder(fsm.ShardOf(gd.ID, 2)) == "gateway-0" {
			g = gd.ID
			break
		}
	}
	if g == 0 {
		t.Fatal("no guild owned by gateway-0 on its own shard: the seeded placement changed")
	}
	sd := startSender(t, s, []uint64{g}, 1500, 10*time.Millisecond)
	sd.waitForSent(t, 100)

	failWrites.Store(true)
	markedDown := false
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) && !markedDown {
		if pl, err := s.Client.Pods(ctx); err == nil {
			for _, p := range pl.Pods {
				markedDown = markedDown || p.ID == "gateway-0" && p.State == fsm.PodDown
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("failover=%v: gateway-0 marked down: %v (%d heartbeats refused by the faulty node)", failover, markedDown, failedBeats.Load())
	if failover && markedDown {
		t.Errorf("gateway-0 was marked down although a healthy config node was in its list")
	}
	if !failover && !markedDown {
		t.Fatalf("gateway-0 was not marked down: the scenario did not happen")
	}
	failWrites.Store(false)
	sd.wait(t, 120*time.Second)
	assertExactlyOnce(t, s, d, g, 0, sd, 60*time.Second)
}
