package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modbot/modbot/fakediscord"
)

// TestEveryMessageLandsOnceInItsOwner: 3 config nodes, 3 gateways and the
// fake Discord with 4 shards. gateway-0 starts alone, so it owns every guild;
// when gateway-1 and -2 join they take shards over but not the guilds, so
// most guilds are owned by a pod that does not hold their shard and their
// events are forwarded. Every message lands exactly once, in its owner's
// database only, and a forwarded guild's events keep their order.
func TestEveryMessageLandsOnceInItsOwner(t *testing.T) {
	s := newSystem(t, 4)
	s.Discord.Seed(50)
	s.addGateway()
	s.waitSettled(30 * time.Second)
	s.addGateway()
	s.addGateway()
	s.waitSettled(30 * time.Second)

	guilds := s.Discord.Guilds()
	forwarded := 0
	for _, g := range guilds {
		gi := s.owner(g.ID)
		if gi.Owner != "gateway-0" {
			t.Fatalf("guild %d owned by %s, want gateway-0 (placed before the others joined)", g.ID, gi.Owner)
		}
		st, _ := s.Client.Shards(context.Background())
		if st.Shards[fakediscord.ShardFor(g.ID, 4)].Holder != "gateway-0" {
			forwarded++
		}
	}
	if forwarded == 0 {
		t.Fatal("no guild is owned by a pod other than its shard's holder")
	}
	t.Logf("%d of %d guilds are owned by a pod that does not hold their shard", forwarded, len(guilds))

	const perGuild = 10
	for round := 0; round < perGuild; round++ {
		for _, g := range guilds {
			if _, err := s.Discord.SendMessage(g.ID, 0, uint64(1000+round), fmt.Sprintf("message %d", round)); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, 30*time.Second, "every message stored", func() bool {
		total := 0
		for _, g := range guilds {
			total += s.rows(0, "messages", g.ID)
		}
		return total == perGuild*len(guilds)
	})
	for _, g := range guilds {
		if n := s.rows(0, "messages", g.ID); n != perGuild {
			t.Fatalf("guild %d: %d messages in its owner's database, want %d", g.ID, n, perGuild)
		}
		for _, other := range []int{1, 2} {
			if n := s.rows(other, "messages", g.ID); n != 0 {
				t.Fatalf("guild %d: %d messages in gateway-%d, which does not own it", g.ID, n, other)
			}
		}
	}

	// Order: bans of users 1..30 in one forwarded guild reach the owner in
	// dispatch order (mod_actions ids are assigned at commit).
	var target uint64
	sl, _ := s.Client.Shards(context.Background())
	for _, g := range guilds {
		if sl.Shards[fakediscord.ShardFor(g.ID, 4)].Holder != "gateway-0" {
			target = g.ID
			break
		}
	}
	for u := 1; u <= 30; u++ {
		if err := s.Discord.Ban(target, uint64(u), "order test"); err != nil {
			t.Fatal(err)
		}
	}
	// Discord sends GUILD_BAN_ADD and GUILD_MEMBER_REMOVE for each ban.
	waitFor(t, 20*time.Second, "30 bans stored", func() bool { return s.rows(0, "mod_actions", target) == 60 })
	rows, err := s.db(0).Query(`SELECT user_id FROM mod_actions WHERE guild_id = ? AND kind = 'ban' ORDER BY id`, int64(target))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	want := int64(1)
	for rows.Next() {
		var u int64
		_ = rows.Scan(&u)
		if u != want {
			t.Fatalf("guild %d: ban of user %d committed where user %d's was expected: order lost", target, u, want)
		}
		want++
	}
	if want != 31 {
		t.Fatalf("%d bans stored, want 30", want-1)
	}
}

// TestSlashCommandsAndReports: /setup stores the settings, /report stores a
// report, answers the interaction and posts to the mod-log channel through
// Discord REST, and /modreport lists the history — in the guild's owner.
func TestSlashCommandsAndReports(t *testing.T) {
	s := newSystem(t, 2)
	s.Discord.Seed(4)
	s.addGateway()
	s.addGateway()
	s.waitSettled(30 * time.Second)
	g := s.Discord.Guilds()[0]
	owner := s.podIndex(s.owner(g.ID).Owner)
	modlog := g.Channels[len(g.Channels)-1].ID
	ctx := context.Background()

	deliver := func(spec fakediscord.InteractionSpec) fakediscord.InteractionRecord {
		t.Helper()
		rec, err := s.Discord.DeliverInteraction(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		var got fakediscord.InteractionRecord
		waitFor(t, 10*time.Second, "the interaction answered", func() bool {
			r, ok := s.Discord.Interaction(parseID(rec.ID))
			got = r
			return ok && r.Acknowledged
		})
		return got
	}
	// Without Manage Server /setup is refused.
	deliver(fakediscord.InteractionSpec{GuildID: g.ID, Name: "setup", UserID: 7,
		Options: json.RawMessage(fmt.Sprintf(`{"modlog_channel":"%d","mod_role":"555"}`, modlog))})
	if n := s.rows(owner, "guild_settings", g.ID); n != 0 {
		t.Fatalf("/setup without permission stored settings")
	}
	deliver(fakediscord.InteractionSpec{GuildID: g.ID, Name: "setup", UserID: 7, Permissions: "32",
		Options: json.RawMessage(fmt.Sprintf(`{"modlog_channel":"%d","mod_role":"555"}`, modlog))})
	if n := s.rows(owner, "guild_settings", g.ID); n != 1 {
		t.Fatalf("/setup stored %d settings rows", n)
	}
	before := len(s.Discord.Sent())
	rec := deliver(fakediscord.InteractionSpec{GuildID: g.ID, Name: "report", UserID: 8,
		Options: json.RawMessage(`{"user":"4242","reason":"spamming invites"}`)})
	if rec.ResponseType != 4 {
		t.Fatalf("report answered with type %d", rec.ResponseType)
	}
	if n := s.rows(owner, "reports", g.ID); n != 1 {
		t.Fatalf("%d reports stored", n)
	}
	waitFor(t, 10*time.Second, "the report posted to the mod-log channel", func() bool {
		for _, r := range s.Discord.Sent()[before:] {
			if r.Method == "POST" && r.Path == fmt.Sprintf("/api/v9/channels/%d/messages", modlog) && strings.Contains(string(r.Body), "spamming invites") {
				return true
			}
		}
		return false
	})
	rec = deliver(fakediscord.InteractionSpec{GuildID: g.ID, Name: "modreport", UserID: 9, Permissions: "32",
		Options: json.RawMessage(`{"user":"4242"}`)})
	found := false
	for _, r := range s.Discord.Sent() {
		if strings.Contains(r.Path, "/interactions/"+rec.ID+"/") && strings.Contains(string(r.Body), "spamming invites") {
			found = true
		}
	}
	if !found {
		t.Fatal("/modreport did not answer with the user's report history")
	}
}

// TestKilledGatewayLosesNoMessage: messages flow to every guild while a
// gateway is hard-stopped. Its shards are taken over (the new holder resumes
// the dead session from its checkpoint), events for the guilds it owns wait
// in the holders' outboxes, and after it restarts every message dispatched
// meanwhile is stored exactly once.
func TestKilledGatewayLosesNoMessage(t *testing.T) {
	s := newSystem(t, 6)
	s.Discord.Seed(30)
	for i := 0; i < 3; i++ {
		s.addGateway()
	}
	s.waitSettled(30 * time.Second)
	guilds := s.Discord.Guilds()

	var sent atomic.Int64
	perGuild := make([]atomic.Int64, len(guilds))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for round := 0; round < 400; round++ { // bounded: at most 400 rounds
			select {
			case <-stop:
				return
			default:
			}
			for i, g := range guilds {
				if _, err := s.Discord.SendMessage(g.ID, 0, uint64(2000+round), "chatter"); err == nil {
					perGuild[i].Add(1)
					sent.Add(1)
				}
			}
			time.Sleep(20 * time.Millisecond) // pace the load, ~1500 messages/s
		}
	}()
	waitFor(t, 10*time.Second, "traffic flowing", func() bool { return sent.Load() > 300 })
	s.killGateway(1)
	t.Log("killed gateway-1 at", sent.Load(), "messages")
	waitFor(t, 20*time.Second, "gateway-1's shards taken over", func() bool {
		sl, err := s.Client.Shards(context.Background())
		if err != nil {
			return false
		}
		for _, sh := range sl.Shards {
			if sh.Holder == "gateway-1" || sh.Holder == "" {
				return false
			}
		}
		return true
	})
	mark := sent.Load()
	waitFor(t, 10*time.Second, "more traffic while it is down", func() bool { return sent.Load() > mark+500 })
	s.startGateway(1)
	waitFor(t, 10*time.Second, "more traffic after the restart", func() bool { return sent.Load() > mark+1000 })
	close(stop)
	wg.Wait()
	t.Logf("%d messages sent", sent.Load())

	deadline := time.Now().Add(60 * time.Second)
	for {
		var short []string
		for i, g := range guilds {
			owner := s.podIndex(s.owner(g.ID).Owner)
			if got, want := s.rows(owner, "messages", g.ID), int(perGuild[i].Load()); got != want {
				held := 0
				for j := range s.Cfgs {
					held += s.rows(j, "held_events", g.ID)
				}
				short = append(short, fmt.Sprintf("guild %d (shard %d) on gateway-%d: %d of %d, %d held", g.ID, fakediscord.ShardFor(g.ID, 6), owner, got, want, held))
			}
		}
		if len(short) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every message stored exactly once in its owner after 60s:\n%s", strings.Join(short, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i, g := range guilds {
		owner := s.podIndex(s.owner(g.ID).Owner)
		for other := range s.Cfgs {
			if other != owner && s.rows(other, "messages", g.ID) != 0 {
				t.Fatalf("guild %d has rows in gateway-%d which does not own it", g.ID, other)
			}
		}
		_ = i
	}
}

func parseID(s string) uint64 {
	var v uint64
	fmt.Sscan(s, &v)
	return v
}
