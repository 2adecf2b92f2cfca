package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/modbot/modbot/fsm"
)

// TestRebalanceToAFourthPodWhileTrafficFlows: 300 guilds on 3 pods, a 4th
// joins and a rebalance runs while messages flow to every guild. Every move
// completes, the four pods end within one guild of each other, and every
// message is in its guild's final owner exactly once and nowhere else.
func TestRebalanceToAFourthPodWhileTrafficFlows(t *testing.T) {
	fullSuite(t)
	s := newSystem(t, 4)
	s.Discord.Seed(300)
	for i := 0; i < 3; i++ {
		s.addGateway()
	}
	s.waitSettled(60 * time.Second)
	d := newDBs(s)
	ctx := context.Background()
	var guilds []uint64
	for _, g := range s.Discord.Guilds() {
		guilds = append(guilds, g.ID)
	}
	fourth := s.Cfgs[s.addGateway()].ID
	waitFor(t, 30*time.Second, "the 4th pod active with shards", func() bool {
		pl, err := s.Client.Pods(ctx)
		if err != nil {
			return false
		}
		for _, p := range pl.Pods {
			if p.ID == fourth {
				return p.State == fsm.PodActive && len(p.Shards) > 0
			}
		}
		return false
	})
	s.waitSettled(30 * time.Second)

	sd := startSender(t, s, guilds, 3000, 2*time.Millisecond)
	sd.waitForSent(t, 300)
	job, err := s.Client.Rebalance(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if job.Total < 70 {
		t.Fatalf("the plan moves %d guilds, want about 75 onto the new pod", job.Total)
	}
	waitFor(t, 90*time.Second, "the rebalance finished", func() bool {
		j, err := s.Client.RebalanceStatus(ctx)
		if err != nil || j.FinishedAt.IsZero() {
			return false
		}
		job = j
		return true
	})
	if job.Failed != 0 || job.Done != job.Total {
		t.Fatalf("rebalance: %d of %d moves done, %d failed: %v", job.Done, job.Total, job.Failed, job.Errors)
	}
	t.Logf("rebalance of %d moves took %s (%d messages sent so far)", job.Total, job.FinishedAt.Sub(job.StartedAt).Round(time.Millisecond), sd.sent())
	pl, err := s.Client.Pods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lo, hi := len(guilds), 0
	for _, p := range pl.Pods {
		lo, hi = min(lo, p.Guilds), max(hi, p.Guilds)
	}
	if len(pl.Pods) != 4 || hi-lo > 1 {
		t.Fatalf("guilds per pod after the rebalance: %+v", pl.Pods)
	}
	sd.wait(t, 90*time.Second)

	// Every message in its final owner exactly once, none elsewhere.
	waitFor(t, 60*time.Second, "every message in its guild's owner only", func() bool {
		counts := make([]map[uint64]int, len(s.Cfgs))
		for i := range s.Cfgs {
			if counts[i], err = d.perGuild(i); err != nil {
				return false
			}
		}
		for _, g := range guilds {
			v, ok := s.guildEverywhere(g)
			if !ok || v.Migration != nil {
				return false
			}
			owner := s.podIndex(v.Owner)
			want := len(sd.sentTo(g))
			for i := range s.Cfgs {
				if i == owner && counts[i][g] != want || i != owner && counts[i][g] != 0 {
					return false
				}
			}
		}
		return true
	})
	for _, g := range guilds[:20] {
		assertExactlyOnce(t, s, d, g, 0, sd, 10*time.Second)
	}
}

// TestDrainEmptiesAPodWithoutLosingMessages: draining a pod moves every
// guild it owns to the others while messages flow; it ends owning none and
// every message is in its guild's owner exactly once.
func TestDrainEmptiesAPodWithoutLosingMessages(t *testing.T) {
	fullSuite(t)
	s := newSystem(t, 3)
	s.Discord.Seed(60)
	for i := 0; i < 3; i++ {
		s.addGateway()
	}
	s.waitSettled(60 * time.Second)
	d := newDBs(s)
	ctx := context.Background()
	var guilds []uint64
	for _, g := range s.Discord.Guilds() {
		guilds = append(guilds, g.ID)
	}
	drained := "gateway-0"
	owned := len(s.Gateways[0].Watcher().GuildsOwnedBy(drained))
	if owned == 0 {
		t.Fatal("gateway-0 owns no guild to drain")
	}
	sd := startSender(t, s, guilds, 1200, 2*time.Millisecond)
	sd.waitForSent(t, 200)
	job, err := s.Client.Drain(ctx, drained)
	if err != nil {
		t.Fatal(err)
	}
	if job.Total != owned {
		t.Fatalf("the drain plans %d moves, want %d (every guild gateway-0 owns)", job.Total, owned)
	}
	waitFor(t, 60*time.Second, "the drain finished", func() bool {
		j, err := s.Client.RebalanceStatus(ctx)
		if err != nil || j.FinishedAt.IsZero() {
			return false
		}
		job = j
		return true
	})
	if job.Failed != 0 {
		t.Fatalf("drain: %d moves failed: %v", job.Failed, job.Errors)
	}
	pl, err := s.Client.Pods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pl.Pods {
		if p.ID == drained && (p.Guilds != 0 || p.State != "draining") {
			t.Fatalf("%s after the drain: %d guilds, state %s", drained, p.Guilds, p.State)
		}
	}
	sd.wait(t, 60*time.Second)
	for _, g := range guilds {
		assertExactlyOnce(t, s, d, g, 0, sd, 30*time.Second)
	}
}
