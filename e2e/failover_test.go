package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/gatewaynode"
	"github.com/modbot/modbot/systest"
)

var (
	modbotOnce sync.Once
	modbotBin  string
	modbotErr  error
)

// buildModbot builds the modbot binary once per test run: the replication
// sidecars and `modbot restore` run as their own processes (Litestream's
// SQLite never shares a process with the gateway's).
func buildModbot(t *testing.T) string {
	t.Helper()
	modbotOnce.Do(func() {
		dir, err := os.MkdirTemp("", "modbot-e2e-bin-")
		if err != nil {
			modbotErr = err
			return
		}
		modbotBin = filepath.Join(dir, "modbot")
		out, err := exec.Command("go", "build", "-o", modbotBin, "github.com/modbot/modbot/cmd/modbot").CombinedOutput()
		if err != nil {
			modbotErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if modbotErr != nil {
		t.Fatal(modbotErr)
	}
	return modbotBin
}

// sidecar runs `modbot replicate` for gateway i's database.
func sidecar(t *testing.T, bin, db, replica string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "replicate", "--db", db, "--replica", replica, "--sync-interval", "200ms")
	cmd.Env = append(os.Environ(), "MODBOT_LOG_LEVEL=warn")
	if os.Getenv("MODBOT_TEST_LOG") != "" {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	return cmd
}

// Guild failover: a gateway pod and its sidecar die (kill -9) and its disk
// is gone. Within the grace period plus 10 s its guilds are owned by live
// pods, each imported from the dead pod's replica with every row that was
// replicated; new messages land once on the new owners. When the pod comes
// back — restoring its old database from its replica at start — it owns
// none of those guilds and its janitor drops its stale copies.
func TestFailoverServesADeadPodsGuildsFromItsReplica(t *testing.T) {
	bin := buildModbot(t)
	dir := t.TempDir()
	replica := func(pod string) string { return "file://" + filepath.Join(dir, "replicas", pod) }
	const grace = 2 * time.Second
	sys, err := systest.StartSystem(context.Background(), dir, systest.SystemOptions{Shards: 4, Logger: quiet(), TLS: true,
		TweakConfig: func(c *confignode.Config) {
			c.FailoverReplica = "file://" + filepath.Join(dir, "replicas", "{pod}")
			c.FailoverGrace = grace
		},
		TweakGateway: func(c *gatewaynode.Config) {
			c.RestoreCommand = []string{bin, "restore"}
			c.RestoreFrom = replica(c.ID)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Close)
	s := &system{t: t, System: sys}
	s.Discord.Seed(12)
	var sidecars []*exec.Cmd
	for i := 0; i < 3; i++ {
		s.addGateway()
		sidecars = append(sidecars, sidecar(t, bin, filepath.Join(s.Cfgs[i].DataDir, "modbot.db"), replica(s.Cfgs[i].ID)))
	}
	s.waitSettled(30 * time.Second)
	if _, err := s.Client.Rebalance(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the rebalance", func() bool {
		job, err := s.Client.RebalanceStatus(context.Background())
		return err == nil && !job.FinishedAt.IsZero()
	})
	s.waitSettled(30 * time.Second)

	const victim = 2
	var theirs []uint64
	for _, g := range s.Discord.Guilds() {
		if s.owner(g.ID).Owner == s.Cfgs[victim].ID {
			theirs = append(theirs, g.ID)
		}
	}
	if len(theirs) == 0 {
		t.Fatal("the victim owns no guild")
	}
	const perGuild = 50
	for k, g := range theirs {
		for m := 0; m < perGuild; m++ {
			if _, err := s.Discord.SendMessage(g, 0, uint64(3000+k), "before the crash"); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, 20*time.Second, "the victim's messages committed", func() bool {
		for _, g := range theirs {
			if s.rows(victim, "messages", g) < perGuild {
				return false
			}
		}
		return true
	})
	time.Sleep(time.Second) // five sync intervals: all of it is on the replica

	// The pod dies with its sidecar, and its disk is gone.
	s.CloseDB(victim)
	s.killGateway(victim)
	_ = sidecars[victim].Process.Signal(syscall.SIGKILL)
	_, _ = sidecars[victim].Process.Wait()
	if err := os.RemoveAll(s.Cfgs[victim].DataDir); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitFor(t, grace+15*time.Second, "the dead pod's guilds owned by live pods", func() bool {
		for _, g := range theirs {
			o := s.owner(g)
			if o.Owner == s.Cfgs[victim].ID || o.Migration != nil {
				return false
			}
		}
		return true
	})
	t.Logf("%d guilds failed over %s after the kill (pod timeout %s, grace %s)", len(theirs), time.Since(killed).Round(100*time.Millisecond),
		1500*time.Millisecond, grace)
	// The job counts a move done once it has seen the guild settle: a beat
	// after the map says so.
	var job assignments.RebalanceJob
	waitFor(t, 5*time.Second, "the failover job finished", func() bool {
		job, err = s.Client.RebalanceStatus(context.Background())
		return err == nil && !job.FinishedAt.IsZero()
	})
	if job.Kind != "failover" || job.Pod != s.Cfgs[victim].ID || job.Done != len(theirs) || job.Failed != 0 {
		t.Fatalf("failover job: %+v, %v; want %d moves done off %s", job, err, len(theirs), s.Cfgs[victim].ID)
	}
	for _, g := range theirs {
		to := s.podIndex(s.owner(g).Owner)
		if n := s.rows(to, "messages", g); n != perGuild {
			t.Errorf("guild %d on %s: %d messages after the failover, want %d", g, s.Cfgs[to].ID, n, perGuild)
		}
	}
	// New messages land once, on the new owners.
	for _, g := range theirs {
		if _, err := s.Discord.SendMessage(g, 0, 4000, "after the failover"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "new messages on the new owners", func() bool {
		for _, g := range theirs {
			if s.rows(s.podIndex(s.owner(g).Owner), "messages", g) != perGuild+1 {
				return false
			}
		}
		return true
	})

	// The pod comes back with its old data restored, and drops it.
	s.startGateway(victim)
	waitFor(t, 30*time.Second, "the returned pod dropped its stale copies", func() bool {
		for _, g := range theirs {
			if s.rows(victim, "messages", g) != 0 {
				return false
			}
		}
		return true
	})
	for _, g := range theirs {
		if o := s.owner(g); o.Owner == s.Cfgs[victim].ID {
			t.Fatalf("guild %d went back to the returned pod", g)
		}
		if n := s.rows(s.podIndex(s.owner(g).Owner), "messages", g); n != perGuild+1 {
			t.Errorf("guild %d: %d messages on its owner after the pod returned, want %d", g, n, perGuild+1)
		}
	}
}
