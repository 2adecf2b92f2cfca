package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

// checkInvariants fails the test when s breaks one of the package invariants.
func checkInvariants(t *testing.T, s *State) {
	t.Helper()
	owned := map[string]int{}
	migrating := 0
	for id, g := range s.Guilds {
		if g.ID != id {
			t.Fatalf("guild %d stored under key %d", g.ID, id)
		}
		if _, ok := s.Pods[g.Owner]; !ok {
			t.Fatalf("guild %d is owned by unknown pod %q", id, g.Owner)
		}
		owned[g.Owner]++
		if (g.State == GuildMigrating) != (g.Migration != nil) {
			t.Fatalf("guild %d: state %s with migration %+v", id, g.State, g.Migration)
		}
		if m := g.Migration; m != nil {
			migrating++
			if m.From != g.Owner || m.To == g.Owner || m.Epoch != g.Epoch {
				t.Fatalf("guild %d: bad migration %+v for owner %s epoch %d", id, m, g.Owner, g.Epoch)
			}
			if _, ok := s.Pods[m.To]; !ok {
				t.Fatalf("guild %d migrates to unknown pod %s", id, m.To)
			}
		}
	}
	for p, n := range owned {
		if s.GuildCount(p) != n {
			t.Fatalf("pod %s: derived count %d, actual %d", p, s.GuildCount(p), n)
		}
	}
	if s.Migrating() != migrating {
		t.Fatalf("migrating count %d, actual %d", s.Migrating(), migrating)
	}
	if len(s.Shards) != s.ShardCount {
		t.Fatalf("%d shard slots for shard count %d", len(s.Shards), s.ShardCount)
	}
	counts := map[string]int{}
	for i, h := range s.Shards {
		if h == "" {
			continue
		}
		p, ok := s.Pods[h]
		if !ok || p.State != PodActive {
			t.Fatalf("shard %d held by %q which is not an active pod", i, h)
		}
		counts[h]++
	}
	active := s.activePods()
	if len(active) > 0 && s.ShardCount > 0 {
		lo, hi := s.ShardCount, 0
		for _, p := range active {
			lo, hi = min(lo, counts[p.ID]), max(hi, counts[p.ID])
		}
		if hi-lo > 1 {
			t.Fatalf("uneven shard split: min %d max %d over %d active pods", lo, hi, len(active))
		}
		for i, h := range s.Shards {
			if h == "" {
				t.Fatalf("shard %d has no holder although %d pods are active", i, len(active))
			}
		}
	}
}

func mustApply(t *testing.T, s *State, idx uint64, c Command) []Event {
	t.Helper()
	c.Version = CommandVersion
	ev, err := s.Apply(idx, c)
	if err != nil {
		t.Fatalf("apply %s: %v", c, err)
	}
	return ev
}

func cluster(t *testing.T, shards, pods int) *State {
	s := New()
	mustApply(t, s, 1, Command{Type: CmdInit, ShardCount: shards})
	for i := 0; i < pods; i++ {
		id := fmt.Sprintf("gateway-%d", i)
		mustApply(t, s, uint64(2+i), Command{Type: CmdRegisterPod, Pod: &PodSpec{ID: id, Ordinal: i, Addr: "127.0.0.1:" + itoa(9000+i)}})
	}
	return s
}

// randomCommand draws a command that is valid, invalid or stale with some
// probability, so the property test exercises both paths of Apply.
func randomCommand(r *rand.Rand, s *State, guildPool []uint64) Command {
	pods := s.SortedPods()
	anyPod := func() string {
		if len(pods) == 0 || r.IntN(10) == 0 {
			return fmt.Sprintf("gateway-%d", r.IntN(8))
		}
		return pods[r.IntN(len(pods))].ID
	}
	guild := func() uint64 { return guildPool[r.IntN(len(guildPool))] }
	c := Command{Version: CommandVersion, At: int64(r.IntN(1 << 30))}
	switch r.IntN(13) {
	case 12:
		sh := r.IntN(max(1, s.ShardCount))
		holder := anyPod()
		if sh < len(s.Shards) && r.IntN(2) == 0 {
			holder = s.Shards[sh]
		}
		c.Type, c.PodID = CmdSaveCheckpoints, holder
		c.Checkpoints = map[int]Checkpoint{sh: {SessionID: fmt.Sprintf("s%d", r.IntN(5)), Seq: int64(r.IntN(1000)), ResumeURL: "ws://x"}}
	case 11:
		n := fmt.Sprintf("config-%d", r.IntN(3))
		if r.IntN(3) == 0 {
			c.Type, c.PodID = CmdRemoveConfigNode, n
		} else {
			c.Type, c.ConfigNode = CmdSetConfigNode, &ConfigNode{ID: n, RaftAddr: fmt.Sprintf("127.0.0.1:%d", 7000+r.IntN(4)), HTTPAddr: "127.0.0.1:8000"}
		}
	case 0:
		n := r.IntN(8)
		c.Type, c.Pod = CmdRegisterPod, &PodSpec{ID: fmt.Sprintf("gateway-%d", n), Ordinal: n, Addr: fmt.Sprintf("127.0.0.1:%d", 9000+r.IntN(3))}
	case 1:
		c.Type, c.PodID = CmdMarkPodDown, anyPod()
	case 2:
		c.Type, c.PodID = CmdDrainPod, anyPod()
	case 3:
		c.Type, c.PodID = CmdRemovePod, anyPod()
	case 4, 5:
		c.Type = CmdPlaceGuilds
		for i := r.IntN(20); i >= 0; i-- {
			c.GuildIDs = append(c.GuildIDs, guild())
		}
	case 6:
		c.Type, c.GuildIDs = CmdRemoveGuilds, []uint64{guild()}
	case 7:
		c.Type, c.Guild, c.To = CmdStartMove, guild(), anyPod()
	case 8, 9, 10:
		c.Guild = guild()
		c.Type = []CommandType{CmdCompleteMove, CmdAbortMove, CmdSetMovePhase}[r.IntN(3)]
		c.Phase = "exporting"
		if g := s.Guilds[c.Guild]; g != nil {
			c.Epoch = g.Epoch
		}
		if r.IntN(5) == 0 {
			c.Epoch = uint64(r.IntN(4)) // often stale
		}
	}
	return c
}

func snapshotRoundTrip(t *testing.T, s *State) *State {
	t.Helper()
	var buf bytes.Buffer
	if err := s.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	r, err := ReadSnapshot(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func assertSameState(t *testing.T, want, got *State) {
	t.Helper()
	if want.Revision != got.Revision || want.ShardCount != got.ShardCount {
		t.Fatalf("revision/shards: want %d/%d got %d/%d", want.Revision, want.ShardCount, got.Revision, got.ShardCount)
	}
	if !reflect.DeepEqual(want.Pods, got.Pods) {
		t.Fatalf("pods differ:\nwant %+v\ngot  %+v", want.Pods, got.Pods)
	}
	if !reflect.DeepEqual(want.Shards, got.Shards) && !(len(want.Shards) == 0 && len(got.Shards) == 0) {
		t.Fatalf("shards differ:\nwant %v\ngot  %v", want.Shards, got.Shards)
	}
	if !reflect.DeepEqual(want.Checkpoints, got.Checkpoints) {
		t.Fatalf("checkpoints differ: want %v got %v", want.Checkpoints, got.Checkpoints)
	}
	if !reflect.DeepEqual(want.ConfigNodes, got.ConfigNodes) {
		t.Fatalf("config nodes differ: want %v got %v", want.ConfigNodes, got.ConfigNodes)
	}
	if len(want.Guilds) != len(got.Guilds) {
		t.Fatalf("guild count: want %d got %d", len(want.Guilds), len(got.Guilds))
	}
	for id, g := range want.Guilds {
		if !reflect.DeepEqual(g, got.Guilds[id]) {
			t.Fatalf("guild %d: want %+v got %+v", id, g, got.Guilds[id])
		}
	}
	for _, p := range want.Pods {
		if want.GuildCount(p.ID) != got.GuildCount(p.ID) {
			t.Fatalf("pod %s guild count: want %d got %d", p.ID, want.GuildCount(p.ID), got.GuildCount(p.ID))
		}
	}
}

// TestRandomCommandsKeepInvariants is the property test: random command
// sequences (valid, invalid and stale) keep every invariant, epochs never
// decrease, rejected commands change nothing, and snapshot → restore
// reproduces the state exactly at every step.
func TestRandomCommandsKeepInvariants(t *testing.T) {
	for seed := uint64(1); seed <= 40; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, seed*7919))
			s := New()
			mustApply(t, s, 1, Command{Type: CmdInit, ShardCount: 1 + r.IntN(16)})
			pool := make([]uint64, 60)
			for i := range pool {
				pool[i] = r.Uint64()>>1 | 1
			}
			epochs := map[uint64]uint64{}
			for idx := uint64(2); idx < 600; idx++ {
				c := randomCommand(r, s, pool)
				var before bytes.Buffer
				if err := s.WriteSnapshot(&before); err != nil {
					t.Fatal(err)
				}
				events, err := s.Apply(idx, c)
				if err != nil {
					var after bytes.Buffer
					_ = s.WriteSnapshot(&after)
					if !bytes.Equal(before.Bytes(), after.Bytes()) {
						t.Fatalf("rejected %s (%v) changed the state", c, err)
					}
					var ce *CommandError
					if !errors.As(err, &ce) {
						t.Fatalf("rejection %v is not a CommandError", err)
					}
					continue
				}
				if len(events) > 0 && s.Revision != idx {
					t.Fatalf("revision %d after a change at index %d", s.Revision, idx)
				}
				for _, e := range events {
					if e.Revision != idx {
						t.Fatalf("event revision %d at index %d", e.Revision, idx)
					}
				}
				checkInvariants(t, s)
				for id, g := range s.Guilds {
					if g.Epoch < epochs[id] {
						t.Fatalf("guild %d epoch went from %d to %d", id, epochs[id], g.Epoch)
					}
					epochs[id] = g.Epoch
				}
				if idx%50 == 0 {
					assertSameState(t, s, snapshotRoundTrip(t, s))
				}
			}
			assertSameState(t, s, snapshotRoundTrip(t, s))
		})
	}
}

// TestEventsReplayToSameState: a subscriber that upserts every event reaches
// the same guild, pod and shard maps as the state machine (the contract the
// watch stream relies on).
func TestEventsReplayToSameState(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	s := New()
	pool := make([]uint64, 80)
	for i := range pool {
		pool[i] = r.Uint64()>>1 | 1
	}
	guilds := map[uint64]Guild{}
	pods := map[string]Pod{}
	var shards []string
	apply := func(events []Event) {
		for _, e := range events {
			switch e.Type {
			case EventInit:
				shards = make([]string, e.ShardCount)
			case EventPod:
				pods[e.Pod.ID] = *e.Pod
			case EventPodRemove:
				delete(pods, e.Pod.ID)
			case EventShard:
				shards[e.Shard.Shard] = e.Shard.Holder
			case EventGuild:
				guilds[e.Guild.ID] = *e.Guild
			case EventGuildGone:
				delete(guilds, e.Guild.ID)
			}
		}
	}
	apply(mustApply(t, s, 1, Command{Type: CmdInit, ShardCount: 8}))
	for idx := uint64(2); idx < 2000; idx++ {
		ev, err := s.Apply(idx, randomCommand(r, s, pool))
		if err == nil {
			apply(ev)
		}
	}
	if len(guilds) != len(s.Guilds) || len(pods) != len(s.Pods) {
		t.Fatalf("replayed %d guilds/%d pods, state has %d/%d", len(guilds), len(pods), len(s.Guilds), len(s.Pods))
	}
	for id, g := range s.Guilds {
		if !reflect.DeepEqual(*g, guilds[id]) {
			t.Fatalf("guild %d: state %+v, replay %+v", id, *g, guilds[id])
		}
	}
	for id, p := range s.Pods {
		if *p != pods[id] {
			t.Fatalf("pod %s: state %+v, replay %+v", id, *p, pods[id])
		}
	}
	if !reflect.DeepEqual(shards, s.Shards) {
		t.Fatalf("shards: state %v, replay %v", s.Shards, shards)
	}
}
