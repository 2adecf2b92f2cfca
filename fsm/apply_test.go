package fsm

import (
	"bytes"
	"errors"
	"testing"
)

// TestRejectedCommandsChangeNothing: every kind of bad, stale or fenced
// command is refused with its error kind and a message, and leaves the
// state byte-for-byte as it was.
func TestRejectedCommandsChangeNothing(t *testing.T) {
	s := cluster(t, 4, 2)
	mustApply(t, s, 10, Command{Type: CmdPlaceGuilds, GuildIDs: []uint64{1 << 22, 2 << 22}})
	mustApply(t, s, 11, Command{Type: CmdStartMove, Guild: 1 << 22, To: "gateway-1"})
	holder0, epoch0 := s.Shards[0], s.ShardEpochs[0]
	other := map[string]string{"gateway-0": "gateway-1", "gateway-1": "gateway-0"}[holder0]
	cp := func(epoch uint64) map[int]Checkpoint {
		return map[int]Checkpoint{0: {SessionID: "sess", Seq: 5, Epoch: epoch}}
	}
	tests := []struct {
		name string
		cmd  Command
		kind error
	}{
		{"unknown version", Command{Version: 99, Type: CmdPlaceGuilds, GuildIDs: []uint64{5}}, ErrUnsupported},
		{"unknown type", Command{Type: "frobnicate"}, ErrInvalid},
		{"reshard", Command{Type: CmdInit, ShardCount: 8}, ErrConflict},
		{"register without addr", Command{Type: CmdRegisterPod, Pod: &PodSpec{ID: "gateway-5", Ordinal: 5}}, ErrInvalid},
		{"ordinal taken", Command{Type: CmdRegisterPod, Pod: &PodSpec{ID: "other", Ordinal: 1, Addr: "x:1"}}, ErrConflict},
		{"drain unknown pod", Command{Type: CmdDrainPod, PodID: "gateway-9"}, ErrNotFound},
		{"remove pod that owns guilds", Command{Type: CmdRemovePod, PodID: "gateway-1"}, ErrConflict},
		{"place guild 0", Command{Type: CmdPlaceGuilds, GuildIDs: []uint64{0}}, ErrInvalid},
		{"place nothing", Command{Type: CmdPlaceGuilds}, ErrInvalid},
		{"move unknown guild", Command{Type: CmdStartMove, Guild: 77, To: "gateway-0"}, ErrNotFound},
		{"move to unknown pod", Command{Type: CmdStartMove, Guild: 2 << 22, To: "gateway-7"}, ErrNotFound},
		{"move to owner", Command{Type: CmdStartMove, Guild: 2 << 22, To: "gateway-1"}, ErrConflict},
		{"move already migrating", Command{Type: CmdStartMove, Guild: 1 << 22, To: "gateway-0"}, ErrConflict},
		{"complete with stale epoch", Command{Type: CmdCompleteMove, Guild: 1 << 22, Epoch: 10}, ErrStaleEpoch},
		{"abort a guild not migrating", Command{Type: CmdAbortMove, Guild: 2 << 22, Epoch: 1}, ErrConflict},
		{"remove migrating guild", Command{Type: CmdRemoveGuilds, GuildIDs: []uint64{1 << 22}}, ErrConflict},
		{"checkpoint from a pod that does not hold the shard", Command{Type: CmdSaveCheckpoints, PodID: other, Checkpoints: cp(epoch0)}, ErrStaleEpoch},
		{"checkpoint from the holder at a stale epoch", Command{Type: CmdSaveCheckpoints, PodID: holder0, Checkpoints: cp(epoch0 - 1)}, ErrStaleEpoch},
		{"checkpoint without an epoch", Command{Type: CmdSaveCheckpoints, PodID: holder0, Checkpoints: cp(0)}, ErrStaleEpoch},
		{"checkpoint without a pod", Command{Type: CmdSaveCheckpoints, Checkpoints: cp(epoch0)}, ErrInvalid},
		{"checkpoint of a shard out of range", Command{Type: CmdSaveCheckpoints, PodID: holder0, Checkpoints: map[int]Checkpoint{4: {SessionID: "s", Epoch: epoch0}}}, ErrInvalid},
		{"checkpoint without a session", Command{Type: CmdSaveCheckpoints, PodID: holder0, Checkpoints: map[int]Checkpoint{0: {Epoch: epoch0}}}, ErrInvalid},
		{"one stale checkpoint refuses the whole save", Command{Type: CmdSaveCheckpoints, PodID: holder0, Checkpoints: map[int]Checkpoint{
			0: {SessionID: "s", Epoch: epoch0}, 1: {SessionID: "s", Epoch: s.ShardEpochs[1] + 1}}}, ErrStaleEpoch},
		{"pod alive at version 1", Command{Version: 1, Type: CmdPodAlive, PodID: "gateway-0"}, ErrUnsupported},
		{"pod alive of an unknown pod", Command{Type: CmdPodAlive, PodID: "gateway-9"}, ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.cmd.Version == 0 {
				tc.cmd.Version = CommandVersion
			}
			var before, after bytes.Buffer
			_ = s.WriteSnapshot(&before)
			_, err := s.Apply(100, tc.cmd)
			if !errors.Is(err, tc.kind) {
				t.Fatalf("got %v, want %v", err, tc.kind)
			}
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			_ = s.WriteSnapshot(&after)
			if !bytes.Equal(before.Bytes(), after.Bytes()) {
				t.Fatal("rejected command changed the state")
			}
		})
	}
}

func TestPlacementPrefersShardHolderThenLeastLoaded(t *testing.T) {
	s := cluster(t, 2, 2) // gateway-0 holds shard 0, gateway-1 shard 1
	if s.Shards[0] != "gateway-0" || s.Shards[1] != "gateway-1" {
		t.Fatalf("shards %v", s.Shards)
	}
	mustApply(t, s, 10, Command{Type: CmdPlaceGuilds, GuildIDs: []uint64{0<<22 | 1, 1<<22 | 1, 3<<22 | 1}})
	if guildAt(s, 1).Owner != "gateway-0" || guildAt(s, 1<<22|1).Owner != "gateway-1" || guildAt(s, 3<<22|1).Owner != "gateway-1" {
		t.Fatalf("not placed on shard holders: %+v %+v %+v", guildAt(s, 1), guildAt(s, 1<<22|1), guildAt(s, 3<<22|1))
	}
	// gateway-1 goes down: its shard moves to gateway-0, which becomes the holder.
	mustApply(t, s, 11, Command{Type: CmdMarkPodDown, PodID: "gateway-1"})
	if s.Shards[1] != "gateway-0" {
		t.Fatalf("shard 1 not taken over: %v", s.Shards)
	}
	// gateway-0 drains: no active pod holds anything; placement has nowhere to go.
	mustApply(t, s, 12, Command{Type: CmdDrainPod, PodID: "gateway-0"})
	if _, err := s.Apply(13, Command{Version: 1, Type: CmdPlaceGuilds, GuildIDs: []uint64{5 << 22}}); !errors.Is(err, ErrNoActivePods) {
		t.Fatalf("placement with no active pod: %v", err)
	}
	// A third pod comes up: it holds every shard and gets new guilds.
	mustApply(t, s, 14, Command{Type: CmdRegisterPod, Pod: &PodSpec{ID: "gateway-2", Ordinal: 2, Addr: "a:1"}})
	mustApply(t, s, 15, Command{Type: CmdPlaceGuilds, GuildIDs: []uint64{5 << 22}})
	if guildAt(s, 5<<22).Owner != "gateway-2" {
		t.Fatalf("placed on %s", guildAt(s, 5<<22).Owner)
	}
	// Least-loaded wins when the holder is not active: re-register gateway-1 and take gateway-2 down.
	mustApply(t, s, 16, Command{Type: CmdRegisterPod, Pod: &PodSpec{ID: "gateway-1", Ordinal: 1, Addr: "b:1"}})
	checkInvariants(t, s)
}

func TestMoveLifecycleFencesStaleEpochs(t *testing.T) {
	s := cluster(t, 1, 2)
	g := uint64(42 << 22)
	mustApply(t, s, 10, Command{Type: CmdPlaceGuilds, GuildIDs: []uint64{g}})
	if guildAt(s, g).Epoch != 10 {
		t.Fatalf("epoch %d", guildAt(s, g).Epoch)
	}
	mustApply(t, s, 11, Command{Type: CmdStartMove, Guild: g, To: "gateway-1"})
	mustApply(t, s, 12, Command{Type: CmdAbortMove, Guild: g, Epoch: 11, Reason: "target died"})
	if gg := guildAt(s, g); gg.Owner != "gateway-0" || gg.State != GuildActive || gg.Epoch != 12 {
		t.Fatalf("after abort: %+v", gg)
	}
	mustApply(t, s, 13, Command{Type: CmdStartMove, Guild: g, To: "gateway-1"})
	// The first move's epoch can no longer complete anything.
	if _, err := s.Apply(14, Command{Version: 1, Type: CmdCompleteMove, Guild: g, Epoch: 11}); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("stale complete: %v", err)
	}
	mustApply(t, s, 15, Command{Type: CmdCompleteMove, Guild: g, Epoch: 13})
	if gg := guildAt(s, g); gg.Owner != "gateway-1" || gg.Epoch != 13 || s.GuildCount("gateway-1") != 1 || s.GuildCount("gateway-0") != 0 {
		t.Fatalf("after complete: %+v", gg)
	}
	checkInvariants(t, s)
}

func TestRegisterPodIsIdempotent(t *testing.T) {
	s := cluster(t, 4, 1)
	rev := s.Revision
	ev := mustApply(t, s, 50, Command{Type: CmdRegisterPod, Pod: &PodSpec{ID: "gateway-0", Ordinal: 0, Addr: "127.0.0.1:9000"}})
	if len(ev) != 0 || s.Revision != rev {
		t.Fatalf("re-register changed state: %d events, revision %d→%d", len(ev), rev, s.Revision)
	}
}

func TestSnapshotDetectsCorruption(t *testing.T) {
	s := cluster(t, 4, 2)
	mustApply(t, s, 10, Command{Type: CmdPlaceGuilds, GuildIDs: []uint64{1, 2, 3}})
	var buf bytes.Buffer
	if err := s.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	b[len(b)/2] ^= 0xff
	if _, err := ReadSnapshot(bytes.NewReader(b)); err == nil {
		t.Fatal("corrupt snapshot was accepted")
	}
	if _, err := ReadSnapshot(bytes.NewReader(b[:len(b)-3])); err == nil {
		t.Fatal("truncated snapshot was accepted")
	}
}
