package confignode

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// TestLeaderKillKeepsEveryGuild: three voters on loopback TCP, 1000 guilds,
// the leader is hard-stopped; a new leader accepts writes, every survivor has
// every guild, and the killed node catches up when it returns — from the log
// in one case and, with the log compacted behind it, from a snapshot.
func TestLeaderKillKeepsEveryGuild(t *testing.T) {
	for _, viaSnapshot := range []bool{false, true} {
		name := "catch-up-from-log"
		if viaSnapshot {
			name = "catch-up-from-snapshot"
		}
		t.Run(name, func(t *testing.T) {
			tc := newTestCluster(t, 3, func(i int, c *Config) {
				if viaSnapshot {
					c.TrailingLogs = 5
					c.SnapshotThreshold = 1 << 30 // only explicit snapshots
				}
			})
			tc.registerPods(3)
			client := tc.client()
			tc.place(client, 0, 1000)

			old := tc.leader()
			oldLast := tc.nodes[old].Raft().LastIndex()
			killedAt := time.Now()
			tc.kill(old)

			// A new leader accepts writes through the same client (failover).
			var placed time.Duration
			waitFor(t, 10*time.Second, "a write accepted by the new leader", func() bool {
				_, err := client.PlaceGuilds(context.Background(), guildIDs(1000, 1))
				placed = time.Since(killedAt)
				return err == nil
			})
			t.Logf("first write accepted %s after the leader was killed", placed)
			tc.place(client, 1001, 99)
			newLeader := tc.waitLeader()
			if newLeader == old {
				t.Fatal("killed node still leads")
			}
			all := guildIDs(0, 1100)
			for i, n := range tc.nodes {
				if n == nil {
					continue
				}
				waitFor(t, 5*time.Second, "survivor has every guild", func() bool { return hasGuilds(tc.state(i), all) })
			}
			if viaSnapshot {
				if err := tc.nodes[newLeader].Raft().Snapshot().Error(); err != nil {
					t.Fatalf("snapshot: %v", err)
				}
				first, _ := strconv.ParseUint(tc.nodes[newLeader].Raft().Stats()["last_snapshot_index"], 10, 64)
				if first <= oldLast {
					t.Fatalf("snapshot at %d does not cover the killed node's last index %d", first, oldLast)
				}
			}

			tc.start(old)
			leaderState := func() int { return tc.waitLeader() }
			waitFor(t, 15*time.Second, "restarted node catches up", func() bool {
				l := leaderState()
				return tc.state(old).Revision == tc.state(l).Revision && hasGuilds(tc.state(old), all)
			})
			assertSameMap(t, tc.state(tc.waitLeader()), tc.state(old), "restarted node")
			if viaSnapshot {
				idx, _ := strconv.ParseUint(tc.nodes[old].Raft().Stats()["last_snapshot_index"], 10, 64)
				if idx <= oldLast {
					t.Fatalf("restarted node did not install a snapshot (its last snapshot index %d, it had %d)", idx, oldLast)
				}
			}
		})
	}
}

// TestTwoVoterClusterKeepsReadsAndFailsWritesFast is the seed's "2 replicas":
// with one of two voters down there is no quorum, so reads keep being served
// from the survivor's map and writes answer 503 quickly; writes resume when
// the voter returns.
func TestTwoVoterClusterKeepsReadsAndFailsWritesFast(t *testing.T) {
	tc := newTestCluster(t, 2, func(i int, c *Config) { c.WriteTimeout = 2 * time.Second })
	tc.registerPods(2)
	tc.place(tc.client(), 0, 100)
	waitFor(t, 5*time.Second, "both nodes have 100 guilds", func() bool {
		return len(tc.state(0).Guilds) == 100 && len(tc.state(1).Guilds) == 100
	})

	victim := tc.leader()
	survivor := 1 - victim
	tc.kill(victim)
	c := tc.nodeClient(survivor)

	g, err := c.Guilds(context.Background(), "")
	if err != nil || len(g.Guilds) != 100 {
		t.Fatalf("read with one voter down: %d guilds, %v", len(g.Guilds), err)
	}
	start := time.Now()
	_, err = c.PlaceGuilds(context.Background(), guildIDs(500, 1))
	took := time.Since(start)
	if !isStatus(err, 503) {
		t.Fatalf("write without quorum: got %v, want 503", err)
	}
	if took > 3*time.Second {
		t.Fatalf("write without quorum took %s to fail", took)
	}
	t.Logf("write without quorum failed with 503 in %s", took)

	tc.start(victim)
	waitFor(t, 15*time.Second, "writes resume", func() bool {
		_, err := c.PlaceGuilds(context.Background(), guildIDs(500, 1))
		return err == nil
	})
}

// TestStoppingLeaderHandsOver: Close on the leader transfers leadership, so
// the cluster does not wait out an election timeout.
func TestStoppingLeaderHandsOver(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	old := tc.leader()
	term := tc.nodes[old].Raft().CurrentTerm()
	start := time.Now()
	if err := tc.nodes[old].Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	tc.nodes[old] = nil
	l := tc.waitLeader()
	t.Logf("new leader %s %s after Close", tc.cfgs[l].ID, time.Since(start))
	if tc.nodes[l].Raft().CurrentTerm() <= term {
		t.Fatal("term did not advance")
	}
	if _, err := tc.client().PlaceGuilds(context.Background(), guildIDs(0, 1)); err == nil {
		t.Fatal("placing with no pods should fail") // no pods registered: 409
	} else if !isStatus(err, 409) {
		t.Fatalf("write after handover: %v", err)
	}
}
