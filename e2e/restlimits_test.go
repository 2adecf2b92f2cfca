package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/modbot/modbot/fakediscord"
)

// Discord REST at cluster scale (gatewaynode/restlimit, gatewaynode/effects.go):
// the fake enforces Discord's limits, and the cluster's mod-log posts all
// land, once, within them.

// rebalance evens the guilds over the pods and waits until it finished.
func (s *system) rebalance() {
	s.t.Helper()
	ctx := context.Background()
	if _, err := s.Client.Rebalance(ctx, false); err != nil {
		s.t.Fatal(err)
	}
	waitFor(s.t, 60*time.Second, "the rebalance", func() bool {
		j, err := s.Client.RebalanceStatus(ctx)
		return err == nil && !j.FinishedAt.IsZero()
	})
}

func (s *system) setupModlogs(gs []fakediscord.Guild) map[uint64]uint64 {
	s.t.Helper()
	m, err := s.SetupModlogs(context.Background(), gs)
	if err != nil {
		s.t.Fatal(err)
	}
	return m
}

func (s *system) report(g uint64, user int, reason string) {
	s.t.Helper()
	if err := s.Report(context.Background(), g, user, reason); err != nil {
		s.t.Fatal(err)
	}
}

// postedOnce fails the test if a report was posted twice, and returns how
// many are missing.
func postedOnce(t *testing.T, s *system, modlogs map[uint64]uint64, want map[uint64][]string) int {
	t.Helper()
	n, err := s.MissingPosts(modlogs, want)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A burst of 150 reports over 6 guilds owned by 3 pods, with Discord's
// limits (5 messages per 5 s per channel): every mod-log post lands, once,
// and Discord never answers 429 — each channel's posts wait for its bucket
// in the pod instead.
func TestABurstOfReportsPostsEveryModlogMessageOnceWithoutA429(t *testing.T) {
	s := newSystem(t, 3)
	gs := s.Discord.Seed(6)
	for i := 0; i < 3; i++ {
		s.addGateway()
	}
	s.waitSettled(30 * time.Second)
	s.rebalance()
	owners := map[string]bool{}
	for _, g := range gs {
		owners[s.owner(g.ID).Owner] = true
	}
	if len(owners) != 3 {
		t.Fatalf("6 guilds on %d pods, want 3", len(owners))
	}
	modlogs := s.setupModlogs(gs)
	before := s.Discord.RateLimitStats()
	want := map[uint64][]string{}
	start := time.Now()
	for i := 0; i < 150; i++ {
		g := gs[i%len(gs)].ID
		reason := fmt.Sprintf("burst report %d", i)
		want[g] = append(want[g], reason)
		s.report(g, i, reason)
	}
	waitFor(t, 90*time.Second, "150 mod-log posts", func() bool { return postedOnce(t, s, modlogs, want) == 0 })
	took := time.Since(start)
	time.Sleep(time.Second) // nothing more arrives
	postedOnce(t, s, modlogs, want)
	after := s.Discord.RateLimitStats()
	if n := after.Limited() - before.Limited(); n != 0 {
		t.Fatalf("Discord answered %d 429s during the burst (route %d, global %d)", n,
			after.RouteLimited-before.RouteLimited, after.GlobalLimited-before.GlobalLimited)
	}
	// 25 posts per channel at 5 per 5 s: about 20 s, paced.
	t.Logf("150 posts over 6 channels landed in %s, 0 429s", took.Round(100*time.Millisecond))
	if took < 15*time.Second {
		t.Fatalf("150 posts took %s: faster than 6 channels' buckets allow", took)
	}
}

// Ten pods posting as fast as they can, each to its own guilds' channels
// (route buckets that do not bind): together they never exceed the token's
// global limit, because each paces itself at its share.
func TestGatewayPodsTogetherStayWithinTheGlobalLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("ten gateway pods")
	}
	const pods, guilds, perGuild = 10, 20, 20
	s := newSystem(t, pods)
	// Route buckets out of the way: the global limit is what binds.
	lim := fakediscord.RateLimits{Routes: map[string]fakediscord.Limit{fakediscord.BucketCreateMessage: {Requests: 1000, Per: time.Second}}}
	s.Discord.ResetRateLimits(lim)
	gs := s.Discord.Seed(guilds)
	for i := 0; i < pods; i++ {
		s.addGateway()
	}
	s.waitSettled(60 * time.Second)
	s.rebalance()
	modlogs := s.setupModlogs(gs)
	// Every pod knows there are ten.
	waitFor(t, 10*time.Second, "every pod's share at a tenth", func() bool {
		for _, g := range s.Gateways {
			if g == nil || g.RESTShare() != 4 {
				return false
			}
		}
		return true
	})
	s.Discord.ResetRateLimits(lim) // count from here
	want := map[uint64][]string{}
	var wg sync.WaitGroup
	for k, g := range gs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perGuild; i++ {
				s.report(g.ID, k*perGuild+i, fmt.Sprintf("flood %d/%d", k, i))
			}
		}()
		for i := 0; i < perGuild; i++ {
			want[g.ID] = append(want[g.ID], fmt.Sprintf("flood %d/%d", k, i))
		}
	}
	wg.Wait()
	start := time.Now()
	waitFor(t, 3*time.Minute, "400 mod-log posts", func() bool { return postedOnce(t, s, modlogs, want) == 0 })
	took := time.Since(start)
	st := s.Discord.RateLimitStats()
	bot := st.Global[fakediscord.BotIdentity]
	t.Logf("%d posts from %d pods in %s: at most %d requests in one second at the fake (limit %d), %d global 429s",
		guilds*perGuild, pods, took.Round(100*time.Millisecond), bot.MaxInWindow, st.Limits.Global.Requests, st.GlobalLimited)
	// The pods send at most 40/s together, evenly spaced (restlimit's unit
	// tests hold that exactly, on the senders' clocks). The fake counts a
	// request when its handler runs; in this one process under the race
	// detector, beside other packages' tests, a stall of the fake bunches
	// requests sent in different seconds into one (seen: 51 in a second,
	// one 429, waited out). On a quiet machine: at most 44. Without the
	// limiter the 20 channels' posts would reach hundreds in a second.
	if slack := st.Limits.Global.Requests * 11 / 10; bot.MaxInWindow > slack {
		t.Fatalf("the cluster put %d requests into one second at the fake, over the global limit %d (+10 %% for the fake's own stalls)", bot.MaxInWindow, st.Limits.Global.Requests)
	}
	if st.GlobalLimited > 10 {
		t.Fatalf("%d global 429s", st.GlobalLimited)
	}
	// The pods used their shares: 400 posts at 4/s each take 10 s.
	if took > 40*time.Second {
		t.Fatalf("400 posts took %s: the pods did not use their shares", took)
	}
}

// A pod killed in the middle of a burst of posts to one channel: on restart
// it sends what its reports still owe, each once (the one it may have sent
// without recording it carries the same nonce, and Discord keeps one).
func TestAPodKilledMidBurstDeliversItsPendingPostsOnceOnRestart(t *testing.T) {
	s := newSystem(t, 2)
	gs := s.Discord.Seed(2)
	s.addGateway()
	s.addGateway()
	s.waitSettled(30 * time.Second)
	g := gs[0]
	owner := s.podIndex(s.owner(g.ID).Owner)
	modlogs := s.setupModlogs(gs[:1])
	want := map[uint64][]string{}
	for i := 0; i < 20; i++ {
		reason := fmt.Sprintf("before the crash %d", i)
		want[g.ID] = append(want[g.ID], reason)
		s.report(g.ID, i, reason)
	}
	// 20 posts at 5 per 5 s: kill the owner after the first few landed.
	waitFor(t, 30*time.Second, "the first posts", func() bool { return len(s.Discord.BotMessages(modlogs[g.ID])) >= 6 })
	s.killGateway(owner)
	landed := len(s.Discord.BotMessages(modlogs[g.ID]))
	if missing := postedOnce(t, s, modlogs, want); missing == 0 {
		t.Fatalf("every post landed before the kill (%d): the test needs some pending", landed)
	}
	s.startGateway(owner)
	waitFor(t, 90*time.Second, "the pending posts sent by the restarted pod", func() bool { return postedOnce(t, s, modlogs, want) == 0 })
	time.Sleep(2 * time.Second)
	postedOnce(t, s, modlogs, want)
	var acked int
	if err := s.db(owner).QueryRow(`SELECT count(*) FROM reports WHERE guild_id = ? AND modlog_posted_at IS NOT NULL`, int64(g.ID)).Scan(&acked); err != nil {
		t.Fatal(err)
	}
	if acked != 20 {
		t.Fatalf("%d of 20 posts recorded as delivered", acked)
	}
	t.Logf("%d of 20 posts landed before the kill; the rest after the restart, each once (%d nonce replays)", landed, s.Discord.NonceReplays())
}

// 1,000 posts to one channel: paced at the channel's bucket (here 30 per
// second), none lost, none doubled, no 429.
func TestAThousandPostsToOneChannelArePacedAtItsBucket(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 posts")
	}
	const posts, perSecond = 1000, 30
	s := newSystem(t, 1)
	s.Discord.ResetRateLimits(fakediscord.RateLimits{Routes: map[string]fakediscord.Limit{
		fakediscord.BucketCreateMessage: {Requests: perSecond, Per: time.Second}}})
	gs := s.Discord.Seed(1)
	s.addGateway()
	s.waitSettled(30 * time.Second)
	g := gs[0]
	modlogs := s.setupModlogs(gs)
	before := s.Discord.RateLimitStats()
	want := map[uint64][]string{}
	start := time.Now()
	for i := 0; i < posts; i++ {
		reason := fmt.Sprintf("one channel %d", i)
		want[g.ID] = append(want[g.ID], reason)
		s.report(g.ID, i, reason)
	}
	waitFor(t, 3*time.Minute, "1,000 posts", func() bool { return postedOnce(t, s, modlogs, want) == 0 })
	took := time.Since(start)
	after := s.Discord.RateLimitStats()
	t.Logf("%d posts to one channel in %s (%.1f/s, bucket %d/s), %d 429s", posts, took.Round(100*time.Millisecond),
		float64(posts)/took.Seconds(), perSecond, after.Limited()-before.Limited())
	if n := after.Limited() - before.Limited(); n != 0 {
		t.Fatalf("%d 429s", n)
	}
	if min := time.Duration(posts-perSecond) * time.Second / perSecond; took < min {
		t.Fatalf("1,000 posts in %s: faster than the bucket allows (%s)", took, min)
	}
	if got := len(s.Discord.BotMessages(modlogs[g.ID])); got != posts {
		t.Fatalf("%d messages in the channel, want %d", got, posts)
	}
}
