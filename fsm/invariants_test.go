package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"slices"
	"testing"
)

// checkInvariants fails the test when s breaks one of the package invariants.
func checkInvariants(t *testing.T, s *State) {
	t.Helper()
	owned := map[string]int{}
	migrating := 0
	for id, g := range guildsOf(s) {
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
		if s.GuildCount(p) != n || len(s.Guilds.OwnedBy(p)) != n {
			t.Fatalf("pod %s: derived count %d (%d listed), actual %d", p, s.GuildCount(p), len(s.Guilds.OwnedBy(p)), n)
		}
	}
	if err := checkStructure(s.Guilds); err != nil {
		t.Fatalf("the guild table: %v", err)
	}
	if s.Migrating() != migrating {
		t.Fatalf("migrating count %d, actual %d", s.Migrating(), migrating)
	}
	if len(s.Shards) != s.ShardCount || len(s.ShardEpochs) != s.ShardCount {
		t.Fatalf("%d shard slots and %d shard epochs for shard count %d", len(s.Shards), len(s.ShardEpochs), s.ShardCount)
	}
	for i, e := range s.ShardEpochs {
		if e > s.Revision {
			t.Fatalf("shard %d: holder epoch %d is newer than the revision %d", i, e, s.Revision)
		}
	}
	for sh, cp := range s.Checkpoints {
		if sh < 0 || sh >= s.ShardCount {
			t.Fatalf("checkpoint of shard %d out of range [0, %d)", sh, s.ShardCount)
		}
		if cp.Epoch > s.ShardEpochs[sh] {
			t.Fatalf("shard %d: checkpoint epoch %d is newer than the holder epoch %d", sh, cp.Epoch, s.ShardEpochs[sh])
		}
		if cp.Epoch == s.ShardEpochs[sh] && cp.Holder != s.Shards[sh] {
			t.Fatalf("shard %d: checkpoint of %s at the current epoch %d, but %q holds it", sh, cp.Holder, cp.Epoch, s.Shards[sh])
		}
	}
	for id, p := range s.Pods {
		if p.Drain && p.State != PodDown {
			t.Fatalf("pod %s remembers a drain while %s (only a down pod may)", id, p.State)
		}
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
	switch r.IntN(14) {
	case 13:
		c.Type, c.PodID = CmdPodAlive, anyPod()
	case 12:
		sh := r.IntN(max(1, s.ShardCount))
		holder := anyPod()
		var epoch uint64
		if sh < len(s.Shards) {
			epoch = s.ShardEpochs[sh]
			if r.IntN(3) != 0 {
				holder = s.Shards[sh]
			}
			if r.IntN(4) == 0 && epoch > 0 {
				epoch -= uint64(1 + r.IntN(int(min(epoch, 50)))) // stale
			}
		}
		c.Type, c.PodID = CmdSaveCheckpoints, holder
		c.Checkpoints = map[int]Checkpoint{sh: {SessionID: fmt.Sprintf("s%d", r.IntN(5)), Seq: int64(r.IntN(1000)), ResumeURL: "ws://x", Epoch: epoch}}
		if r.IntN(4) == 0 && s.ShardCount > 1 {
			// A second shard in the same command: all or nothing.
			sh2 := (sh + 1) % s.ShardCount
			c.Checkpoints[sh2] = Checkpoint{SessionID: "s", Seq: 1, Epoch: s.ShardEpochs[sh2]}
		}
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
		if g := guildAt(s, c.Guild); g != nil {
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
	if !reflect.DeepEqual(want.ShardEpochs, got.ShardEpochs) && !(len(want.ShardEpochs) == 0 && len(got.ShardEpochs) == 0) {
		t.Fatalf("shard epochs differ:\nwant %v\ngot  %v", want.ShardEpochs, got.ShardEpochs)
	}
	if !reflect.DeepEqual(want.Checkpoints, got.Checkpoints) {
		t.Fatalf("checkpoints differ: want %v got %v", want.Checkpoints, got.Checkpoints)
	}
	if !reflect.DeepEqual(want.ConfigNodes, got.ConfigNodes) {
		t.Fatalf("config nodes differ: want %v got %v", want.ConfigNodes, got.ConfigNodes)
	}
	if want.Guilds.Len() != got.Guilds.Len() {
		t.Fatalf("guild count: want %d got %d", want.Guilds.Len(), got.Guilds.Len())
	}
	for id, g := range guildsOf(want) {
		if !reflect.DeepEqual(g, guildAt(got, id)) {
			t.Fatalf("guild %d: want %+v got %+v", id, g, guildAt(got, id))
		}
	}
	for _, p := range want.Pods {
		if want.GuildCount(p.ID) != got.GuildCount(p.ID) {
			t.Fatalf("pod %s guild count: want %d got %d", p.ID, want.GuildCount(p.ID), got.GuildCount(p.ID))
		}
	}
}

// TestRandomCommandsKeepInvariants is the property test: random command
// sequences (valid, invalid and stale) keep every invariant of doc.go after
// every step; guild epochs and shard holder epochs never decrease; a shard's
// holder epoch changes exactly when its holder does, to the entry's index; a
// checkpoint is only ever accepted from the shard's holder at its current
// epoch (and then records that epoch); rejected commands change nothing;
// and snapshot → restore reproduces the state exactly.
func TestRandomCommandsKeepInvariants(t *testing.T) {
	var saved, fenced int
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
			shardEpochs := slices.Clone(s.ShardEpochs)
			holders := slices.Clone(s.Shards)
			// tenure[shard][epoch] is who held the shard at that epoch.
			tenure := make([]map[uint64]string, s.ShardCount)
			for i := range tenure {
				tenure[i] = map[uint64]string{s.ShardEpochs[i]: s.Shards[i]}
			}
			for idx := uint64(2); idx < 600; idx++ {
				c := randomCommand(r, s, pool)
				var before bytes.Buffer
				if err := s.WriteSnapshot(&before); err != nil {
					t.Fatal(err)
				}
				fencedOK := c.Type == CmdSaveCheckpoints
				prevCPs := map[int]Checkpoint{}
				for sh, cp := range c.Checkpoints {
					fencedOK = fencedOK && s.HoldsShard(c.PodID, sh, cp.Epoch)
					if p, ok := s.Checkpoints[sh]; ok {
						prevCPs[sh] = p
					}
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
					if fencedOK && errors.Is(err, ErrStaleEpoch) {
						t.Fatalf("%s from the holder at its epoch refused as stale: %v", c, err)
					}
					if c.Type == CmdSaveCheckpoints && !fencedOK {
						if !errors.Is(err, ErrStaleEpoch) && !errors.Is(err, ErrInvalid) {
							t.Fatalf("unfenced checkpoint refused with %v, want ErrStaleEpoch", err)
						}
						if errors.Is(err, ErrStaleEpoch) {
							fenced++
						}
					}
					continue
				}
				if c.Type == CmdSaveCheckpoints {
					if !fencedOK {
						t.Fatalf("checkpoint of %s accepted although it does not hold every shard at its epoch: %+v (holders %v epochs %v)", c.PodID, c.Checkpoints, holders, shardEpochs)
					}
					for sh, cp := range c.Checkpoints {
						got := s.Checkpoints[sh]
						if got.Holder != c.PodID || got.Epoch != cp.Epoch || got.SessionID != cp.SessionID || got.Seq != cp.Seq {
							t.Fatalf("shard %d: saved %+v from %+v", sh, got, cp)
						}
						if tenure[sh][got.Epoch] != got.Holder {
							t.Fatalf("shard %d: checkpoint of %s at epoch %d, but %q held it then", sh, got.Holder, got.Epoch, tenure[sh][got.Epoch])
						}
					}
					// One shard event per checkpoint that names a new
					// session for its tenure (the handoff's signal), none
					// for a later seq of the same session.
					wantEvents := 0
					for sh, cp := range c.Checkpoints {
						if p, ok := prevCPs[sh]; !ok || p.SessionID != cp.SessionID || p.Holder != c.PodID || p.Epoch != cp.Epoch {
							wantEvents++
						}
					}
					if len(events) != wantEvents {
						t.Fatalf("a checkpoint emitted %d events, want %d (one per new session)", len(events), wantEvents)
					}
					for _, e := range events {
						if e.Type != EventShard || e.Shard == nil || e.Shard.Checkpoint == nil || e.Shard.Checkpoint.SessionID != c.Checkpoints[e.Shard.Shard].SessionID {
							t.Fatalf("checkpoint event %+v", e)
						}
					}
					saved++
				}
				if len(events) > 0 && s.Revision != idx {
					t.Fatalf("revision %d after a change at index %d", s.Revision, idx)
				}
				for _, e := range events {
					if e.Revision != idx {
						t.Fatalf("event revision %d at index %d", e.Revision, idx)
					}
					// A holder change is a new tenure at this index; a checkpoint's
					// announcement carries the tenure it was saved in.
					if e.Type == EventShard && e.Cause != CmdSaveCheckpoints && (e.Shard.Epoch != idx || e.Shard.Holder != s.Shards[e.Shard.Shard]) {
						t.Fatalf("shard event %+v at index %d (holder now %q)", *e.Shard, idx, s.Shards[e.Shard.Shard])
					}
				}
				checkInvariants(t, s)
				for id, g := range guildsOf(s) {
					if g.Epoch < epochs[id] {
						t.Fatalf("guild %d epoch went from %d to %d", id, epochs[id], g.Epoch)
					}
					epochs[id] = g.Epoch
				}
				for i := range s.Shards {
					changed := s.Shards[i] != holders[i]
					switch {
					case s.ShardEpochs[i] < shardEpochs[i]:
						t.Fatalf("shard %d holder epoch went from %d to %d", i, shardEpochs[i], s.ShardEpochs[i])
					case changed && s.ShardEpochs[i] != idx:
						t.Fatalf("shard %d changed holder %q → %q at index %d but its epoch is %d", i, holders[i], s.Shards[i], idx, s.ShardEpochs[i])
					case !changed && s.ShardEpochs[i] != shardEpochs[i]:
						t.Fatalf("shard %d kept holder %q but its epoch moved %d → %d", i, s.Shards[i], shardEpochs[i], s.ShardEpochs[i])
					}
					if changed {
						tenure[i][idx] = s.Shards[i]
					}
				}
				copy(shardEpochs, s.ShardEpochs)
				copy(holders, s.Shards)
				if idx%50 == 0 {
					assertSameState(t, s, snapshotRoundTrip(t, s))
				}
			}
			assertSameState(t, s, snapshotRoundTrip(t, s))
		})
	}
	// Not vacuous: both sides of the fence were exercised.
	t.Logf("checkpoints: %d accepted, %d refused as stale", saved, fenced)
	if saved < 50 || fenced < 50 {
		t.Fatalf("only %d checkpoints accepted and %d refused by the fence over all seeds", saved, fenced)
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
	var shardEpochs []uint64
	apply := func(events []Event) {
		for _, e := range events {
			switch e.Type {
			case EventInit:
				shards = make([]string, e.ShardCount)
				shardEpochs = make([]uint64, e.ShardCount)
			case EventPod:
				pods[e.Pod.ID] = *e.Pod
			case EventPodRemove:
				delete(pods, e.Pod.ID)
			case EventShard:
				shards[e.Shard.Shard] = e.Shard.Holder
				shardEpochs[e.Shard.Shard] = e.Shard.Epoch
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
	if len(guilds) != s.Guilds.Len() || len(pods) != len(s.Pods) {
		t.Fatalf("replayed %d guilds/%d pods, state has %d/%d", len(guilds), len(pods), s.Guilds.Len(), len(s.Pods))
	}
	for id, g := range guildsOf(s) {
		if !reflect.DeepEqual(*g, guilds[id]) {
			t.Fatalf("guild %d: state %+v, replay %+v", id, *g, guilds[id])
		}
	}
	for id, p := range s.Pods {
		if *p != pods[id] {
			t.Fatalf("pod %s: state %+v, replay %+v", id, *p, pods[id])
		}
	}
	if !reflect.DeepEqual(shards, s.Shards) || !reflect.DeepEqual(shardEpochs, s.ShardEpochs) {
		t.Fatalf("shards: state %v at %v, replay %v at %v", s.Shards, s.ShardEpochs, shards, shardEpochs)
	}
}

// TestOneOwnerPerGuild: a guild has exactly one owner through its whole
// life — placed, migrating (still the source's), moved, aborted — and the
// pods that own or receive a guild cannot be removed from under it.
func TestOneOwnerPerGuild(t *testing.T) {
	s := cluster(t, 2, 3)
	g := uint64(7 << 22)
	mustApply(t, s, 10, Command{Type: CmdPlaceGuilds, GuildIDs: []uint64{g, g}})
	owner := guildAt(s, g).Owner
	if s.Guilds.Len() != 1 || s.GuildCount(owner) != 1 {
		t.Fatalf("placing a guild twice: %d guilds, %s owns %d", s.Guilds.Len(), owner, s.GuildCount(owner))
	}
	to := "gateway-2"
	if owner == to {
		to = "gateway-1"
	}
	mustApply(t, s, 11, Command{Type: CmdStartMove, Guild: g, To: to})
	if gg := guildAt(s, g); gg.Owner != owner || s.GuildCount(to) != 0 || gg.Migration.From != owner || gg.Migration.To != to {
		t.Fatalf("while migrating the source must stay the one owner: %+v, target owns %d", gg, s.GuildCount(to))
	}
	for _, p := range []string{owner, to} {
		if _, err := s.Apply(12, Command{Version: CommandVersion, Type: CmdRemovePod, PodID: p}); !errors.Is(err, ErrConflict) {
			t.Fatalf("removing %s, which takes part in the move: %v", p, err)
		}
	}
	// The target going down does not give the guild a second (or no) owner.
	mustApply(t, s, 12, Command{Type: CmdMarkPodDown, PodID: to})
	mustApply(t, s, 13, Command{Type: CmdAbortMove, Guild: g, Epoch: 11, Reason: "target down"})
	mustApply(t, s, 14, Command{Type: CmdPodAlive, PodID: to})
	mustApply(t, s, 15, Command{Type: CmdStartMove, Guild: g, To: to})
	mustApply(t, s, 16, Command{Type: CmdCompleteMove, Guild: g, Epoch: 15})
	if gg := guildAt(s, g); gg.Owner != to || s.GuildCount(to) != 1 || s.GuildCount(owner) != 0 || gg.Migration != nil {
		t.Fatalf("after the move: %+v, counts %d/%d", gg, s.GuildCount(owner), s.GuildCount(to))
	}
	mustApply(t, s, 17, Command{Type: CmdRemovePod, PodID: owner})
	mustApply(t, s, 18, Command{Type: CmdRemoveGuilds, GuildIDs: []uint64{g}})
	if s.Guilds.Len() != 0 || s.GuildCount(to) != 0 {
		t.Fatalf("after removing the guild: %d guilds, %s owns %d", s.Guilds.Len(), to, s.GuildCount(to))
	}
	checkInvariants(t, s)
}

// TestGuildEpochsOnlyGrow: placement, move start and abort each give the
// guild the entry's index as its epoch; completing keeps the move's epoch;
// a guild removed and placed again never reuses an epoch; a stale epoch
// can finish nothing.
func TestGuildEpochsOnlyGrow(t *testing.T) {
	s := cluster(t, 1, 2)
	g := uint64(3 << 22)
	var seen []uint64
	step := func(idx uint64, c Command, want uint64) {
		t.Helper()
		mustApply(t, s, idx, c)
		e := guildAt(s, g).Epoch
		if e != want || (len(seen) > 0 && e < seen[len(seen)-1]) {
			t.Fatalf("after %s at %d: epoch %d, want %d (history %v)", c, idx, e, want, seen)
		}
		seen = append(seen, e)
	}
	step(10, Command{Type: CmdPlaceGuilds, GuildIDs: []uint64{g}}, 10)
	step(11, Command{Type: CmdStartMove, Guild: g, To: "gateway-1"}, 11)
	step(12, Command{Type: CmdSetMovePhase, Guild: g, Epoch: 11, Phase: "copying"}, 11)
	step(13, Command{Type: CmdAbortMove, Guild: g, Epoch: 11}, 13)
	step(14, Command{Type: CmdStartMove, Guild: g, To: "gateway-1"}, 14)
	for _, stale := range []uint64{10, 11, 13} {
		if _, err := s.Apply(15, Command{Version: CommandVersion, Type: CmdCompleteMove, Guild: g, Epoch: stale}); !errors.Is(err, ErrStaleEpoch) {
			t.Fatalf("complete at stale epoch %d: %v", stale, err)
		}
	}
	step(15, Command{Type: CmdCompleteMove, Guild: g, Epoch: 14}, 14)
	mustApply(t, s, 16, Command{Type: CmdRemoveGuilds, GuildIDs: []uint64{g}})
	step(17, Command{Type: CmdPlaceGuilds, GuildIDs: []uint64{g}}, 17)
}

// TestOneHolderPerShardAtGrowingEpochs: each change of a shard's holder is a
// new tenure with the entry's index as its epoch, carried by the shard event;
// a pod that loses a shard and gets it back holds it at a new epoch, not its
// old one; no-ops keep every epoch.
func TestOneHolderPerShardAtGrowingEpochs(t *testing.T) {
	s := New()
	mustApply(t, s, 1, Command{Type: CmdInit, ShardCount: 1})
	if s.Shards[0] != "" || s.ShardEpochs[0] != 0 {
		t.Fatalf("a shard nobody ever held: holder %q epoch %d", s.Shards[0], s.ShardEpochs[0])
	}
	reg := func(idx uint64, id string, ord int) []Event {
		return mustApply(t, s, idx, Command{Type: CmdRegisterPod, Pod: &PodSpec{ID: id, Ordinal: ord, Addr: "a:1"}})
	}
	shardEvent := func(ev []Event) ShardAssignment {
		t.Helper()
		for _, e := range ev {
			if e.Type == EventShard {
				return *e.Shard
			}
		}
		t.Fatal("no shard event")
		return ShardAssignment{}
	}
	if e := shardEvent(reg(2, "gateway-0", 0)); e.Holder != "gateway-0" || e.Epoch != 2 || s.ShardEpochs[0] != 2 {
		t.Fatalf("first holder: event %+v, epoch %d", e, s.ShardEpochs[0])
	}
	reg(3, "gateway-1", 1) // one shard, two pods: gateway-0 keeps it
	if s.Shards[0] != "gateway-0" || s.ShardEpochs[0] != 2 {
		t.Fatalf("a pod joining without taking the shard moved its epoch: %q at %d", s.Shards[0], s.ShardEpochs[0])
	}
	if e := shardEvent(mustApply(t, s, 4, Command{Type: CmdMarkPodDown, PodID: "gateway-0"})); e.Holder != "gateway-1" || e.Epoch != 4 {
		t.Fatalf("takeover: %+v", e)
	}
	// gateway-0 is back (it was alive all along, only its heartbeats failed):
	// gateway-1 keeps the shard, so gateway-0's tenure at epoch 2 is over.
	if ev := mustApply(t, s, 5, Command{Type: CmdPodAlive, PodID: "gateway-0"}); len(ev) != 1 || ev[0].Type != EventPod {
		t.Fatalf("pod back: events %+v", ev)
	}
	if s.Shards[0] != "gateway-1" || s.ShardEpochs[0] != 4 || s.HoldsShard("gateway-0", 0, 2) {
		t.Fatalf("after gateway-0 came back: %q at %d", s.Shards[0], s.ShardEpochs[0])
	}
	// It gets the shard back only in a new tenure.
	if e := shardEvent(mustApply(t, s, 6, Command{Type: CmdMarkPodDown, PodID: "gateway-1"})); e.Holder != "gateway-0" || e.Epoch != 6 {
		t.Fatalf("shard back to gateway-0: %+v", e)
	}
	if !s.HoldsShard("gateway-0", 0, 6) || s.HoldsShard("gateway-0", 0, 2) {
		t.Fatal("gateway-0 must hold the shard at epoch 6 and not at its old epoch 2")
	}
	// Nobody active: the shard is held by nobody, in a tenure of its own.
	if e := shardEvent(mustApply(t, s, 7, Command{Type: CmdDrainPod, PodID: "gateway-0"})); e.Holder != "" || e.Epoch != 7 {
		t.Fatalf("no active pod: %+v", e)
	}
	// No-ops keep the epoch and the revision.
	rev := s.Revision
	if ev := mustApply(t, s, 8, Command{Type: CmdDrainPod, PodID: "gateway-0"}); len(ev) != 0 || s.Revision != rev || s.ShardEpochs[0] != 7 {
		t.Fatalf("no-op drain: %d events, revision %d→%d, epoch %d", len(ev), rev, s.Revision, s.ShardEpochs[0])
	}
	checkInvariants(t, s)
}

// TestCheckpointsAreAcceptedOnlyFromTheHolderAtItsEpoch replays the failure
// of issue 11: a live pod whose heartbeats fail is marked down, another pod
// takes its shard over; the first keeps running the session and keeps
// saving checkpoints. Its saves are refused, even after it gets the shard
// back, until it saves at its new epoch; the successor's checkpoint is never
// overwritten by a stale session.
func TestCheckpointsAreAcceptedOnlyFromTheHolderAtItsEpoch(t *testing.T) {
	s := New()
	mustApply(t, s, 1, Command{Type: CmdInit, ShardCount: 1})
	mustApply(t, s, 2, Command{Type: CmdRegisterPod, Pod: &PodSpec{ID: "gateway-0", Ordinal: 0, Addr: "a:1"}})
	mustApply(t, s, 3, Command{Type: CmdRegisterPod, Pod: &PodSpec{ID: "gateway-1", Ordinal: 1, Addr: "b:1"}})
	save := func(idx uint64, pod, session string, seq int64, epoch uint64) error {
		before := snapshotBytes(t, s)
		prev, had := s.Checkpoints[0]
		ev, err := s.Apply(idx, Command{Version: CommandVersion, Type: CmdSaveCheckpoints, PodID: pod, At: int64(idx),
			Checkpoints: map[int]Checkpoint{0: {SessionID: session, Seq: seq, ResumeURL: "wss://r", Epoch: epoch}}})
		if err != nil && !bytes.Equal(before, snapshotBytes(t, s)) {
			t.Fatalf("refused save changed the state")
		}
		want := 0
		if err == nil && (!had || prev.SessionID != session || prev.Holder != pod || prev.Epoch != epoch) {
			want = 1 // a new session in the tenure is announced on the stream
		}
		if len(ev) != want {
			t.Fatalf("save %s/%s seq %d: %d events, want %d: %+v", pod, session, seq, len(ev), want, ev)
		}
		return err
	}
	if err := save(4, "gateway-0", "A", 100, 2); err != nil {
		t.Fatalf("holder at its epoch: %v", err)
	}
	if cp := s.Checkpoints[0]; cp.Holder != "gateway-0" || cp.Epoch != 2 || cp.Seq != 100 || cp.At != 4 {
		t.Fatalf("saved %+v", cp)
	}
	mustApply(t, s, 5, Command{Type: CmdMarkPodDown, PodID: "gateway-0"}) // gateway-1 takes over at epoch 5
	if err := save(6, "gateway-0", "A", 150, 2); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("the old holder, still running its session: %v", err)
	}
	if err := save(7, "gateway-1", "A", 100, 2); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("the new holder naming the old tenure: %v", err)
	}
	if err := save(8, "gateway-1", "B", 1, 5); err != nil {
		t.Fatalf("the new holder at its epoch: %v", err)
	}
	mustApply(t, s, 9, Command{Type: CmdPodAlive, PodID: "gateway-0"})
	mustApply(t, s, 10, Command{Type: CmdMarkPodDown, PodID: "gateway-1"}) // back to gateway-0, at epoch 10
	if err := save(11, "gateway-0", "A", 200, 2); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("the holder again, with a session of its old tenure's epoch: %v", err)
	}
	if cp := s.Checkpoints[0]; cp.Holder != "gateway-1" || cp.SessionID != "B" || cp.Epoch != 5 {
		t.Fatalf("the successor's checkpoint was overwritten: %+v", cp)
	}
	if err := save(12, "gateway-0", "C", 7, 10); err != nil {
		t.Fatalf("the holder at its new epoch: %v", err)
	}
	checkInvariants(t, s)
}

// TestDrainSurvivesDownTime: a draining pod that is marked down and heard
// from again comes back draining; an active one comes back active; a pod
// that is not down is unchanged by CmdPodAlive; re-registering puts a pod
// back to work; the remembered drain survives a snapshot.
func TestDrainSurvivesDownTime(t *testing.T) {
	s := cluster(t, 4, 2)
	mustApply(t, s, 10, Command{Type: CmdDrainPod, PodID: "gateway-1"})
	mustApply(t, s, 11, Command{Type: CmdMarkPodDown, PodID: "gateway-1"})
	if p := s.Pods["gateway-1"]; p.State != PodDown || !p.Drain {
		t.Fatalf("a draining pod marked down: %+v", p)
	}
	assertSameState(t, s, snapshotRoundTrip(t, s))
	ev := mustApply(t, s, 12, Command{Type: CmdPodAlive, PodID: "gateway-1", At: 12})
	if p := s.Pods["gateway-1"]; p.State != PodDraining || p.Drain || p.Since != 12 {
		t.Fatalf("a draining pod heard from again: %+v", p)
	}
	if len(ev) != 1 || ev[0].Type != EventPod || ev[0].Pod.State != PodDraining || len(s.ShardsHeldBy("gateway-1")) != 0 {
		t.Fatalf("events %+v, shards %v", ev, s.ShardsHeldBy("gateway-1"))
	}
	rev := s.Revision
	if ev := mustApply(t, s, 13, Command{Type: CmdPodAlive, PodID: "gateway-1"}); len(ev) != 0 || s.Revision != rev {
		t.Fatalf("pod alive for a draining pod changed something: %+v", ev)
	}
	if ev := mustApply(t, s, 14, Command{Type: CmdPodAlive, PodID: "gateway-0"}); len(ev) != 0 || s.Revision != rev {
		t.Fatalf("pod alive for an active pod changed something: %+v", ev)
	}
	mustApply(t, s, 15, Command{Type: CmdMarkPodDown, PodID: "gateway-0"})
	mustApply(t, s, 16, Command{Type: CmdPodAlive, PodID: "gateway-0"})
	if p := s.Pods["gateway-0"]; p.State != PodActive || p.Drain || len(s.ShardsHeldBy("gateway-0")) != 4 {
		t.Fatalf("an active pod heard from again: %+v, shards %v", p, s.ShardsHeldBy("gateway-0"))
	}
	// Re-registering (a restarted pod) puts a pod back to work, drain or not.
	mustApply(t, s, 17, Command{Type: CmdMarkPodDown, PodID: "gateway-1"})
	mustApply(t, s, 18, Command{Type: CmdRegisterPod, Pod: &PodSpec{ID: "gateway-1", Ordinal: 1, Addr: "127.0.0.1:9001"}})
	if p := s.Pods["gateway-1"]; p.State != PodActive || p.Drain {
		t.Fatalf("re-registered: %+v", p)
	}
	// Draining a pod that is down keeps it draining when it is back.
	mustApply(t, s, 19, Command{Type: CmdMarkPodDown, PodID: "gateway-1"})
	mustApply(t, s, 20, Command{Type: CmdDrainPod, PodID: "gateway-1"})
	mustApply(t, s, 21, Command{Type: CmdMarkPodDown, PodID: "gateway-1"})
	mustApply(t, s, 22, Command{Type: CmdPodAlive, PodID: "gateway-1"})
	if p := s.Pods["gateway-1"]; p.State != PodDraining {
		t.Fatalf("drained while down, then back: %+v", p)
	}
	checkInvariants(t, s)
}

// TestSnapshotRestoreReproducesTheState: a state with every kind of entity —
// pods in each state (one remembering a drain), shards with epochs,
// checkpoints, config nodes, guilds active and migrating — restores exactly
// and re-encodes to the same bytes.
func TestSnapshotRestoreReproducesTheState(t *testing.T) {
	s := cluster(t, 8, 4)
	ids := []uint64{1 << 22, 2 << 22, 3<<22 | 5, 1 << 40, 1<<62 | 9}
	mustApply(t, s, 10, Command{Type: CmdPlaceGuilds, GuildIDs: ids})
	g := ids[0]
	to := "gateway-3"
	if guildAt(s, g).Owner == to {
		to = "gateway-2"
	}
	mustApply(t, s, 11, Command{Type: CmdStartMove, Guild: g, To: to, At: 99})
	mustApply(t, s, 12, Command{Type: CmdSetMovePhase, Guild: g, Epoch: 11, Phase: "copying"})
	mustApply(t, s, 13, Command{Type: CmdSetConfigNode, ConfigNode: &ConfigNode{ID: "config-0", RaftAddr: "r:1", HTTPAddr: "h:1"}})
	mustApply(t, s, 14, Command{Type: CmdSaveCheckpoints, PodID: s.Shards[5], At: -3,
		Checkpoints: map[int]Checkpoint{5: {SessionID: "sess", Seq: 42, ResumeURL: "wss://x", Epoch: s.ShardEpochs[5]}}})
	mustApply(t, s, 15, Command{Type: CmdDrainPod, PodID: "gateway-0"})
	mustApply(t, s, 16, Command{Type: CmdMarkPodDown, PodID: "gateway-0"})
	mustApply(t, s, 17, Command{Type: CmdMarkPodDown, PodID: "gateway-1"})
	if !s.Pods["gateway-0"].Drain || s.Checkpoints[5].Epoch == 0 || slices.Max(s.ShardEpochs) != 17 {
		t.Fatalf("the fixture lacks what it should cover: %+v %+v %v", s.Pods["gateway-0"], s.Checkpoints[5], s.ShardEpochs)
	}
	r := snapshotRoundTrip(t, s)
	assertSameState(t, s, r)
	if !bytes.Equal(snapshotBytes(t, s), snapshotBytes(t, r)) {
		t.Fatal("the restored state encodes differently")
	}
	checkInvariants(t, r)
}

// TestVersion1SnapshotStillRestores: a snapshot written by the version-1
// build (testdata/v1.snapshot, see testdata/v1gen) restores, and to exactly
// the state this build reaches by replaying the version-1 log that produced
// it (testdata/v1.jsonl) — so nodes restoring an old snapshot and nodes
// replaying the old log agree. Version-2 commands then fence as usual.
func TestVersion1SnapshotStillRestores(t *testing.T) {
	raw, err := os.ReadFile("testdata/v1.snapshot")
	if err != nil {
		t.Fatal(err)
	}
	restored, err := ReadSnapshot(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("restore a version-1 snapshot: %v", err)
	}
	log, err := os.ReadFile("testdata/v1.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	replayed := New()
	var last uint64
	for _, line := range bytes.Split(bytes.TrimSpace(log), []byte("\n")) {
		var e struct {
			Index uint64          `json:"index"`
			Cmd   json.RawMessage `json:"cmd"`
		}
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatal(err)
		}
		c, err := DecodeCommand(e.Cmd)
		if err != nil || c.Version != 1 {
			t.Fatalf("entry %d: version %d, %v", e.Index, c.Version, err)
		}
		_, _ = replayed.Apply(e.Index, c)
		last = e.Index
	}
	if restored.Revision == 0 || restored.Guilds.Len() == 0 || len(restored.Checkpoints) == 0 || restored.Migrating() == 0 {
		t.Fatalf("the fixture is too thin: revision %d, %d guilds, %d checkpoints, %d migrating", restored.Revision, restored.Guilds.Len(), len(restored.Checkpoints), restored.Migrating())
	}
	assertSameState(t, replayed, restored)
	for i, e := range restored.ShardEpochs {
		if e != 0 {
			t.Fatalf("shard %d: version-1 state restored with epoch %d, want 0", i, e)
		}
	}
	// Version 2 from here on: a holder change starts an epoch, and the
	// fence holds.
	idx := last + 1
	mustApply(t, restored, idx, Command{Type: CmdRegisterPod, Pod: &PodSpec{ID: "gateway-9", Ordinal: 9, Addr: "n:1"}})
	var sh int
	for sh = range restored.Shards {
		if restored.Shards[sh] == "gateway-9" {
			break
		}
	}
	if restored.Shards[sh] != "gateway-9" || restored.ShardEpochs[sh] != idx {
		t.Fatalf("after a version-2 registration: shards %v epochs %v", restored.Shards, restored.ShardEpochs)
	}
	cp := map[int]Checkpoint{sh: {SessionID: "n", Seq: 1, Epoch: 0}}
	if _, err := restored.Apply(idx+1, Command{Version: CommandVersion, Type: CmdSaveCheckpoints, PodID: "gateway-9", Checkpoints: cp}); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("checkpoint without the new epoch: %v", err)
	}
	cp[sh] = Checkpoint{SessionID: "n", Seq: 1, Epoch: idx}
	mustApply(t, restored, idx+1, Command{Type: CmdSaveCheckpoints, PodID: "gateway-9", Checkpoints: cp})
	assertSameState(t, restored, snapshotRoundTrip(t, restored))
}

func snapshotBytes(t *testing.T, s *State) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := s.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// guildAt returns a copy of a guild's record, nil when the state has none.
func guildAt(s *State, id uint64) *Guild {
	g, ok := s.Guilds.Get(id)
	if !ok {
		return nil
	}
	return &g
}

// guildsOf returns a copy of every guild's record by id.
func guildsOf(s *State) map[uint64]*Guild {
	out := make(map[uint64]*Guild, s.Guilds.Len())
	for g := range s.Guilds.All() {
		out[g.ID] = &g
	}
	return out
}
