package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
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
	job := runJobToTheEnd(t, s, "rebalance", 90*time.Second, func() (assignments.RebalanceJob, error) {
		return s.Client.Rebalance(ctx, false)
	}, func(job assignments.RebalanceJob) {
		if job.Total < 70 {
			t.Fatalf("the plan moves %d guilds, want about 75 onto the new pod", job.Total)
		}
	})
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
	runJobToTheEnd(t, s, "drain", 60*time.Second, func() (assignments.RebalanceJob, error) {
		return s.Client.Drain(ctx, drained)
	}, func(job assignments.RebalanceJob) {
		if job.Total != owned {
			t.Fatalf("the drain plans %d moves, want %d (every guild gateway-0 owns)", job.Total, owned)
		}
	})
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

// runJobToTheEnd starts a rebalance or drain with start, checks the first
// plan with checkPlan, and waits until a run of it ends with every move done.
//
// A job is a task of the leader's term: when two starved cores cost the
// leader its term, the job stops and its in-flight moves end "context
// canceled" (the new leader finishes or aborts them). A new leader resumes a
// drain by itself (the pod is still draining) but has no record of a
// rebalance and answers 404. The operator then runs it again, and so does
// this helper, at most three times; any other failure fails the test. What
// the callers assert afterwards is what a job must never break: every
// message exactly once, in its final owner.
func runJobToTheEnd(t *testing.T, s *system, kind string, wait time.Duration, start func() (assignments.RebalanceJob, error), checkPlan func(assignments.RebalanceJob)) assignments.RebalanceJob {
	t.Helper()
	ctx := context.Background()
	job, err := start()
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(job)
	for attempt := 1; ; attempt++ {
		// A new leader that has no record of the job answers 404: it
		// resumes a drain by itself within a few seconds, never a
		// rebalance.
		var lostSince time.Time
		lost := false
		waitFor(t, wait, "the "+kind+" finished", func() bool {
			j, err := s.Client.RebalanceStatus(ctx)
			if assignments.IsStatus(err, http.StatusNotFound) {
				if lostSince.IsZero() {
					lostSince = time.Now()
				}
				lost = time.Since(lostSince) > 15*time.Second
				return lost
			}
			lostSince = time.Time{}
			if err != nil || j.FinishedAt.IsZero() || j.Kind != kind {
				return false
			}
			job = j
			return true
		})
		if !lost && job.Failed == 0 && job.Done == job.Total {
			return job
		}
		interrupted := lost || job.Failed > 0
		for _, e := range job.Errors {
			interrupted = interrupted && (lost || strings.Contains(e, "context canceled"))
		}
		if !interrupted || attempt == 3 {
			t.Fatalf("%s: %d of %d moves done, %d failed: %v", kind, job.Done, job.Total, job.Failed, job.Errors)
		}
		t.Logf("%s attempt %d interrupted by a leader change (%d of %d done: %v): running it again", kind, attempt, job.Done, job.Total, job.Errors)
		s.waitSettled(30 * time.Second)
		if job, err = start(); err != nil {
			t.Fatal(err)
		}
	}
}
