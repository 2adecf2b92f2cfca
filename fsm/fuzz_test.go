package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"reflect"
	"runtime"
	"testing"
)

// The fuzz targets of the state machine. Run one with
//
//	go test -run '^$' -fuzz '^FuzzApplyCommand$' -fuzztime 10s ./fsm/
//
// Seed inputs live in testdata/fuzz/<FuzzName>/ and in the f.Add calls.

// fuzzFixture is a state with every kind of entity: active pods and a down
// one that remembers its drain, shards with holder epochs, a checkpoint, a
// config node, placed guilds and one guild in the middle of a move. It is built with version-2
// commands only, as a current leader would.
func fuzzFixture() (*State, uint64, error) {
	s := New()
	idx := uint64(0)
	apply := func(c Command) error {
		idx++
		c.Version = CommandVersion
		if _, err := s.Apply(idx, c); err != nil {
			return fmt.Errorf("fixture entry %d %s: %w", idx, c, err)
		}
		return nil
	}
	steps := []func() error{
		func() error { return apply(Command{Type: CmdInit, ShardCount: 8, At: 1}) },
		func() error {
			return apply(Command{Type: CmdSetConfigNode, ConfigNode: &ConfigNode{ID: "config-0", RaftAddr: "10.1.0.0:7000", HTTPAddr: "10.1.0.0:8000"}})
		},
	}
	for i := 0; i < 4; i++ {
		steps = append(steps, func() error {
			return apply(Command{Type: CmdRegisterPod, At: int64(10 + i), Pod: &PodSpec{ID: fmt.Sprintf("gateway-%d", i), Ordinal: i, Addr: fmt.Sprintf("10.0.0.%d:9000", i)}})
		})
	}
	guilds := []uint64{1 << 22, 2 << 22, 3<<22 | 5, 5 << 22, 1 << 40, 1<<62 | 9}
	steps = append(steps,
		func() error { return apply(Command{Type: CmdPlaceGuilds, GuildIDs: guilds, At: 20}) },
		func() error {
			to := "gateway-3"
			if guildAt(s, guilds[0]).Owner == to {
				to = "gateway-2"
			}
			return apply(Command{Type: CmdStartMove, Guild: guilds[0], To: to, At: 21})
		},
		func() error {
			return apply(Command{Type: CmdSetMovePhase, Guild: guilds[0], Epoch: guildAt(s, guilds[0]).Epoch, Phase: "copying", At: 22})
		},
		func() error {
			return apply(Command{Type: CmdSaveCheckpoints, PodID: s.Shards[5], At: 23,
				Checkpoints: map[int]Checkpoint{5: {SessionID: "sess-5", Seq: 42, ResumeURL: "wss://gateway.example/5", Epoch: s.ShardEpochs[5]}}})
		},
		func() error { return apply(Command{Type: CmdDrainPod, PodID: "gateway-1", At: 24}) },
		func() error { return apply(Command{Type: CmdMarkPodDown, PodID: "gateway-1", At: 25}) },
	)
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, 0, err
		}
	}
	return s, idx, nil
}

func encodeSnapshot(t testing.TB, s *State) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := s.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// fuzzCommandSeeds are realistic Raft entries: what the leader proposes
// for every command type, valid against fuzzFixture, plus some that it
// refuses (stale epoch, unknown pod, wrong version) and some that do not
// decode.
var fuzzCommandSeeds = []string{
	`{"v":2,"type":"init","at":1,"shard_count":8}`,
	`{"v":2,"type":"register_pod","at":30,"pod":{"id":"gateway-4","ordinal":4,"addr":"10.0.0.4:9000"}}`,
	`{"v":2,"type":"register_pod","at":30,"pod":{"id":"gateway-1","ordinal":1,"addr":"10.0.0.1:9000"}}`,
	`{"v":2,"type":"mark_pod_down","at":31,"pod_id":"gateway-2"}`,
	`{"v":2,"type":"pod_alive","at":32,"pod_id":"gateway-1"}`,
	`{"v":2,"type":"drain_pod","at":33,"pod_id":"gateway-3"}`,
	`{"v":2,"type":"remove_pod","at":34,"pod_id":"gateway-1"}`,
	`{"v":2,"type":"place_guilds","at":35,"guild_ids":[9002273681917363635,3260291364768628749,4194304]}`,
	`{"v":2,"type":"remove_guilds","at":36,"guild_ids":[8388608]}`,
	`{"v":2,"type":"start_move","at":37,"guild":8388608,"to":"gateway-0"}`,
	`{"v":2,"type":"set_move_phase","at":38,"guild":4194304,"epoch":8,"phase":"importing"}`,
	`{"v":2,"type":"complete_move","at":39,"guild":4194304,"epoch":8}`,
	`{"v":2,"type":"abort_move","at":40,"guild":4194304,"epoch":8,"reason":"target failed"}`,
	`{"v":2,"type":"set_config_node","at":41,"config_node":{"id":"config-1","raft_addr":"10.1.0.1:7000","http_addr":"10.1.0.1:8000"}}`,
	`{"v":2,"type":"remove_config_node","at":42,"pod_id":"config-0"}`,
	// Refused: stale epoch, unknown pod, unknown version and type, bad fields.
	`{"v":2,"type":"complete_move","at":44,"guild":4194304,"epoch":3}`,
	`{"v":2,"type":"drain_pod","at":45,"pod_id":"gateway-9"}`,
	`{"v":3,"type":"place_guilds","guild_ids":[5]}`,
	`{"v":0,"type":"init","shard_count":8}`,
	`{"v":2,"type":"frobnicate"}`,
	`{"v":2,"type":"place_guilds","guild_ids":[0]}`,
	`{"v":2,"type":"save_checkpoints","pod_id":"gateway-2","checkpoints":{"-1":{"session_id":"s","seq":1}}}`,
	`{"v":2,"type":"register_pod","pod":{"id":"a b","ordinal":-1,"addr":""}}`,
	// Does not decode.
	``,
	`{"v":"2"}`,
	`{"v":2,"type":"place_guilds","guild_ids":[-1]}`,
	`{"v":2,"type":"save_checkpoints","checkpoints":{"x":{}}}`,
	"\xff\xfe",
}

// FuzzApplyCommand feeds arbitrary bytes through the path a Raft log entry
// takes (confignode.Store.Apply: DecodeCommand, then State.Apply). The input
// is one entry per line, applied in order at growing Raft indexes to the
// fixture (or to an empty state when empty is set). After every entry:
//
//   - nothing panics;
//   - an entry that does not decode yields the zero Command and is never
//     applied;
//   - Validate changes nothing;
//   - a rejected command is a *CommandError with a message, emits no event
//     and leaves the snapshot encoding byte-for-byte as it was;
//   - an accepted command with no event leaves the revision (and, unless it
//     is a checkpoint save, which is bookkeeping, the whole encoding) as it
//     was; one with events sets the revision to the entry's index;
//   - guild epochs and shard holder epochs never decrease;
//   - the package invariants hold (checkInvariants), and snapshot → restore
//     reproduces the state.
//
// Version-1 entries keep their version-1 meaning (see CommandVersion): a
// holder change leaves the holder epoch alone, so checkpoint fencing — an
// invariant of version-2 logs — does not hold once one is accepted (the
// leader never proposes one after a version-2 entry). From then on the
// target checks everything but checkInvariants.
func FuzzApplyCommand(f *testing.F) {
	fix, last, err := fuzzFixture()
	if err != nil {
		f.Fatal(err)
	}
	fixture := encodeSnapshot(f, fix)
	for _, c := range fuzzCommandSeeds {
		f.Add(false, []byte(c))
	}
	f.Add(true, []byte(fuzzCommandSeeds[0]+"\n"+fuzzCommandSeeds[1]+"\n"+fuzzCommandSeeds[7]))
	// A move's whole life, and a version-1 log (testdata/v1.jsonl) entry.
	f.Add(false, []byte(fuzzCommandSeeds[9]+"\n"+`{"v":2,"type":"set_move_phase","guild":8388608,"epoch":13,"phase":"exporting"}`+"\n"+`{"v":2,"type":"complete_move","guild":8388608,"epoch":13}`))
	// Checkpoint saves from the holder of shard 0 at its epoch (accepted),
	// the same at version 1, and one at a stale epoch (refused).
	for _, c := range []Command{
		{Version: 2, Type: CmdSaveCheckpoints, At: 43, PodID: fix.Shards[0], Checkpoints: map[int]Checkpoint{0: {SessionID: "s", Seq: 7, ResumeURL: "wss://x", Epoch: fix.ShardEpochs[0]}}},
		{Version: 1, Type: CmdSaveCheckpoints, At: 43, PodID: fix.Shards[0], Checkpoints: map[int]Checkpoint{0: {SessionID: "s", Seq: 7, ResumeURL: "wss://x"}}},
		{Version: 2, Type: CmdSaveCheckpoints, At: 43, PodID: fix.Shards[5], Checkpoints: map[int]Checkpoint{5: {SessionID: "sess-5", Seq: 43, Epoch: fix.ShardEpochs[5] - 1}}},
	} {
		b, err := c.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(false, b)
	}
	if log, err := os.ReadFile("testdata/v1.jsonl"); err == nil {
		f.Add(true, log)
	}

	f.Fuzz(func(t *testing.T, empty bool, data []byte) {
		s := New()
		idx := uint64(0)
		if !empty {
			if s, err = ReadSnapshot(bytes.NewReader(fixture)); err != nil {
				t.Fatal(err)
			}
			idx = last
		}
		v1 := false // a version-1 entry was accepted
		lines := bytes.Split(data, []byte("\n"))
		if len(lines) > 32 {
			lines = lines[:32]
		}
		for _, line := range lines {
			idx++
			c, err := DecodeCommand(line)
			if err != nil {
				if !reflect.DeepEqual(c, Command{}) {
					t.Fatalf("entry %q: decode error %v but a non-zero command %+v", line, err, c)
				}
				continue
			}
			before := encodeSnapshot(t, s)
			guildEpochs := map[uint64]uint64{}
			for id, g := range guildsOf(s) {
				guildEpochs[id] = g.Epoch
			}
			shardEpochs := append([]uint64(nil), s.ShardEpochs...)
			rev := s.Revision

			verr := s.Validate(c)
			if !bytes.Equal(before, encodeSnapshot(t, s)) {
				t.Fatalf("Validate(%s) changed the state", line)
			}
			events, err := s.Apply(idx, c)
			if (verr == nil) != (err == nil) {
				t.Fatalf("%s: Validate says %v, Apply says %v", line, verr, err)
			}
			after := encodeSnapshot(t, s)
			if err != nil {
				var ce *CommandError
				if !errors.As(err, &ce) || ce.Kind == nil || err.Error() == "" {
					t.Fatalf("%s: rejection %v (%T) is not a *CommandError with a kind and a message", line, err, err)
				}
				if events != nil {
					t.Fatalf("%s: rejected with events %+v", line, events)
				}
				if !bytes.Equal(before, after) {
					t.Fatalf("rejected %s (%v) changed the state", line, err)
				}
			} else {
				if len(events) == 0 {
					if s.Revision != rev {
						t.Fatalf("%s: no event, but the revision moved %d → %d", line, rev, s.Revision)
					}
					if c.Type != CmdSaveCheckpoints && !bytes.Equal(before, after) {
						t.Fatalf("%s: a no-op (no event) changed the state", line)
					}
				} else if s.Revision != idx {
					t.Fatalf("%s: %d events at index %d, but the revision is %d", line, len(events), idx, s.Revision)
				}
				for _, e := range events {
					if e.Revision != idx || e.Cause != c.Type {
						t.Fatalf("%s at %d: event %+v", line, idx, e)
					}
				}
			}
			for id, g := range guildsOf(s) {
				if old, ok := guildEpochs[id]; ok && g.Epoch < old {
					t.Fatalf("%s: guild %d epoch went from %d to %d", line, id, old, g.Epoch)
				}
			}
			for i, e := range s.ShardEpochs {
				if i < len(shardEpochs) && e < shardEpochs[i] {
					t.Fatalf("%s: shard %d holder epoch went from %d to %d", line, i, shardEpochs[i], e)
				}
			}
			v1 = v1 || (err == nil && c.Version == 1)
			if !v1 {
				checkInvariants(t, s)
			}
			assertSameState(t, s, snapshotRoundTrip(t, s))
		}
	})
}

// FuzzReadSnapshot gives arbitrary bytes to ReadSnapshot, the decoder of
// confignode.Store.Restore. With fixCRC the target first recomputes the
// CRC-32C trailer over what precedes it, so that the structure of a
// corrupted snapshot — not just its checksum — is exercised. Properties:
//
//   - nothing panics;
//   - a refused snapshot returns an error and no state (Restore swaps in
//     only a whole, decoded state: never half of one);
//   - without fixCRC, a mutation of a real snapshot is refused (the
//     checksum covers every byte before the trailer), so an accepted input
//     is one of the real snapshots, restored exactly;
//   - an accepted snapshot is a consistent state: its derived counts match
//     its guilds, and it survives snapshot → restore unchanged; a state
//     decoded from a real snapshot keeps the package invariants.
func FuzzReadSnapshot(f *testing.F) {
	fix, _, err := fuzzFixture()
	if err != nil {
		f.Fatal(err)
	}
	// The real snapshots, and whether this build wrote them (a version-1
	// state predates holder epochs, so checkInvariants does not apply).
	type realSnap struct {
		st      *State
		current bool
	}
	real := map[string]realSnap{}
	seed := func(b []byte, current bool) {
		st, err := ReadSnapshot(bytes.NewReader(b))
		if err != nil {
			f.Fatalf("seed does not restore: %v", err)
		}
		real[string(b)] = realSnap{st, current}
		f.Add(false, b)
		f.Add(true, b)
	}
	seed(encodeSnapshot(f, fix), true)
	seed(encodeSnapshot(f, New()), true)
	// What the previous build wrote (version 2) is real too: the seed corpus
	// in testdata/fuzz holds such snapshots.
	for _, st := range []*State{fix, New()} {
		var v2 bytes.Buffer
		if err := st.writeSnapshot(&v2, 2); err != nil {
			f.Fatal(err)
		}
		seed(v2.Bytes(), true)
	}
	v1, err := os.ReadFile("testdata/v1.snapshot")
	if err != nil {
		f.Fatal(err)
	}
	seed(v1, false)
	b := encodeSnapshot(f, fix)
	f.Add(false, b[:len(b)/2])
	f.Add(true, b[:len(b)-1])
	f.Add(false, []byte("MODBOTFSM"))
	f.Add(true, []byte("MODBOTFSM\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00"))

	f.Fuzz(func(t *testing.T, fixCRC bool, data []byte) {
		in := data
		if fixCRC && len(data) >= 4 {
			in = append([]byte(nil), data...)
			binary.LittleEndian.PutUint32(in[len(in)-4:], crc32.Checksum(in[:len(in)-4], castagnoli))
		}
		st, err := ReadSnapshot(bytes.NewReader(in))
		if err != nil {
			if st != nil {
				t.Fatalf("refused (%v) but returned a state", err)
			}
			return
		}
		if st == nil {
			t.Fatal("accepted without a state")
		}
		want, isReal := real[string(in)]
		if !fixCRC && !isReal {
			// Trailing bytes after the trailer are not read; anything else
			// must have been caught by the checksum.
			for k, w := range real {
				if bytes.HasPrefix(in, []byte(k)) {
					want, isReal = w, true
				}
			}
			if !isReal {
				t.Fatalf("a snapshot that is not a real one (nor one followed by junk) was accepted: %q", in)
			}
		}
		if isReal {
			assertSameState(t, want.st, st)
			if want.current {
				checkInvariants(t, st)
			}
		}
		assertSameState(t, st, snapshotRoundTrip(t, st))
	})
}

// TestCorruptSnapshotCountsAreRefusedWithoutHugeAllocations is the
// regression test of what FuzzReadSnapshot found: ReadSnapshot trusted the
// guild count of the snapshot — read before the checksum can be verified —
// and allocated every guild up front, so a 302-byte corrupted snapshot
// allocated 432 MB and a count near its bound (2^32) would kill the config
// node with an out-of-memory crash instead of refusing the snapshot. It
// must be refused with an error, allocating no more than the decoder's
// fixed read-ahead.
func TestCorruptSnapshotCountsAreRefusedWithoutHugeAllocations(t *testing.T) {
	for _, n := range []uint64{1 << 23, 1 << 32} {
		t.Run(fmt.Sprintf("%d guilds", n), func(t *testing.T) {
			// A valid empty state (no shards, pods, config nodes or
			// checkpoints), then the guild count, then nothing.
			b := []byte(snapshotMagic)
			for _, v := range []uint64{snapshotVersion, 7, 0, 0, 0, 0, n} {
				b = binary.AppendUvarint(b, v)
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			st, err := ReadSnapshot(bytes.NewReader(b))
			runtime.ReadMemStats(&after)
			if err == nil || st != nil {
				t.Fatalf("a snapshot claiming %d guilds and holding none: state %v, err %v", n, st != nil, err)
			}
			if got := after.TotalAlloc - before.TotalAlloc; got > 200<<20 {
				t.Fatalf("refusing it allocated %d MB", got>>20)
			} else {
				t.Logf("refused (%v) after allocating %.1f MB", err, float64(got)/(1<<20))
			}
		})
	}
}

// snapshotWithCRC is a hand-built snapshot: the fields given, then a valid
// CRC-32C trailer, as a buggy writer (or a corruption the checksum cannot
// see) would produce.
func snapshotWithCRC(fields func(u func(uint64), raw func(...byte))) []byte {
	b := []byte(snapshotMagic)
	fields(func(v uint64) { b = binary.AppendUvarint(b, v) }, func(x ...byte) { b = append(b, x...) })
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// TestCorruptSnapshotShardCountIsRefusedNotAPanic is the regression test
// of FuzzReadSnapshot's panic: a shard count of 2^63 or more turned
// negative as an int, passed the range check and made ReadSnapshot (and so
// the config node's Raft Restore) panic in makeslice. Input found:
// "MODBOTFSM\x027\x9b\xaf\xe0\xeb\xf8\xf7\xa40000".
func TestCorruptSnapshotShardCountIsRefusedNotAPanic(t *testing.T) {
	for _, in := range [][]byte{
		[]byte("MODBOTFSM\x027\x9b\xaf\xe0\xeb\xf8\xf7\xa40000"),
		snapshotWithCRC(func(u func(uint64), _ func(...byte)) {
			u(snapshotVersion)
			u(1)
			u(1 << 63)
			u(0)
			u(0)
			u(0)
			u(0)
		}),
		snapshotWithCRC(func(u func(uint64), _ func(...byte)) { u(snapshotVersion); u(1); u(65537) }),
	} {
		st, err := ReadSnapshot(bytes.NewReader(in))
		if err == nil || st != nil {
			t.Fatalf("%q: state %v, err %v; want a refusal", in, st != nil, err)
		}
	}
}

// TestSnapshotWithDuplicateGuildIDsIsRefused: guild ids are written
// strictly increasing (delta-encoded). A CRC-valid snapshot with a zero
// delta used to restore two guilds into one map entry while counting both
// for their owner, so the restored State broke its own derived counts
// (GuildCount 2 for one guild) and did not survive snapshot → restore; a
// delta that wraps around 2^64 went back to a lower id. Both are refused.
func TestSnapshotWithDuplicateGuildIDsIsRefused(t *testing.T) {
	withDeltas := func(deltas ...uint64) []byte {
		return snapshotWithCRC(func(u func(uint64), raw func(...byte)) {
			u(snapshotVersion)
			u(7) // revision
			u(0) // shards
			u(1) // one pod: id, ordinal, addr, state, since, flags
			u(2)
			raw('p', '0')
			u(0)
			u(1)
			raw('a', 0, 0, 0)
			u(0) // config nodes
			u(0) // checkpoints
			u(uint64(len(deltas)))
			for _, d := range deltas { // id delta, owner, state, epoch, revision, no migration
				u(d)
				u(0)
				raw(0)
				u(1)
				u(1)
				raw(0)
			}
		})
	}
	if st, err := ReadSnapshot(bytes.NewReader(withDeltas(5, 3))); err != nil || st.Guilds.Len() != 2 || st.GuildCount("p0") != 2 {
		t.Fatalf("the well-formed control snapshot: %v", err)
	}
	for name, in := range map[string][]byte{
		"zero delta":  withDeltas(5, 0),
		"guild id 0":  withDeltas(0),
		"wrap around": withDeltas(5, ^uint64(0)),
	} {
		if st, err := ReadSnapshot(bytes.NewReader(in)); err == nil {
			t.Errorf("%s: restored %d guilds, %d counted for their owner; want a refusal", name, st.Guilds.Len(), st.GuildCount("p0"))
		}
	}
}
