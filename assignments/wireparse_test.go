package assignments

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"testing"

	"github.com/modbot/modbot/fsm"
)

// TestDecodeChangeFrameReadsWhatEncodingJSONReads: every frame the server
// writes — placements, moves with migrations, pod events, a frame split in
// fragments — decodes to what encoding/json reads from it.
func TestDecodeChangeFrameReadsWhatEncodingJSONReads(t *testing.T) {
	mig := fsm.Event{Revision: 9, Type: fsm.EventGuild, At: -5, Cause: fsm.CmdStartMove,
		Guild: &fsm.Guild{ID: 7, Owner: "gateway-1", State: fsm.GuildMigrating, Epoch: 9, Revision: 9,
			Migration: &fsm.Migration{From: "gateway-1", To: "gateway-2", Epoch: 9, Phase: "copying", StartedAt: 12, Failover: true, LossWindowMs: -1}}}
	pod := fsm.Event{Revision: 9, Type: fsm.EventPod, Cause: fsm.CmdRegisterPod, Pod: &fsm.Pod{ID: "gateway-3", Addr: "127.0.0.1:1"}}
	odd := fsm.Event{Revision: 9, Type: fsm.EventGuild, Cause: fsm.CmdPlaceGuilds, Reason: `a "quoted" <reason>`,
		Guild: &fsm.Guild{ID: 8, Owner: "gateway-é", State: fsm.GuildActive}}
	cases := map[string][]fsm.Event{
		"placement":      placement(9, 3000),
		"empty":          nil,
		"one move":       {mig},
		"pod and guilds": append([]fsm.Event{pod, mig}, placement(9, 2)...),
		"odd strings":    {odd, mig},
	}
	for name, events := range cases {
		b, frames, err := AppendChangeFrames(nil, 9, events)
		if err != nil {
			t.Fatal(err)
		}
		var got []fsm.Event
		for _, fr := range rawFrames(t, b) {
			var fast, slow ChangeFrame
			if err := DecodeChangeFrame([]byte(fr.msg.Data), &fast); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if err := json.Unmarshal([]byte(fr.msg.Data), &slow); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if !reflect.DeepEqual(fast, slow) {
				t.Fatalf("%s: fast %+v\nencoding/json %+v", name, fast, slow)
			}
			got = append(got, fast.Events...)
		}
		if len(got) != len(events) || len(events) > 0 && !reflect.DeepEqual(got, events) {
			t.Fatalf("%s: %d frames carried %d events, want %d", name, frames, len(got), len(events))
		}
	}
}

// FuzzDecodeChangeFrame: whatever the fast path accepts, encoding/json
// reads the same; what it does not, DecodeChangeFrame hands to encoding/json.
func FuzzDecodeChangeFrame(f *testing.F) {
	for _, events := range [][]fsm.Event{placement(3, 2), nil} {
		b, _, _ := AppendChangeFrames(nil, 3, events)
		for _, line := range bytes.Split(b, []byte("\n")) {
			if d, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
				f.Add(d)
			}
		}
	}
	f.Add([]byte(`{"revision":3,"more":true,"events":[]}`))
	f.Add([]byte(`{"revision":3,"events":[,]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var fast ChangeFrame
		if !parseChangeFrame(b, &fast) {
			return
		}
		var slow ChangeFrame
		if err := json.Unmarshal(b, &slow); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json refuses it: %v", b, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: fast %+v, encoding/json %+v", b, fast, slow)
		}
	})
}

func testSnapshot() Snapshot {
	s := Snapshot{Revision: 42, ShardCount: 4,
		Pods:        []fsm.Pod{{ID: "gateway-0", Addr: "127.0.0.1:1", State: fsm.PodActive}, {ID: "gate<way>-1", Addr: "x"}},
		Shards:      []fsm.ShardAssignment{{Shard: 0, Holder: "gateway-0"}, {Shard: 1}},
		ConfigNodes: []fsm.ConfigNode{{ID: "config-0", RaftAddr: "a:1", HTTPAddr: "a:2"}},
	}
	for _, e := range placement(40, 500) {
		s.Guilds = append(s.Guilds, *e.Guild)
	}
	s.Guilds[7].State, s.Guilds[7].Migration = fsm.GuildMigrating, &fsm.Migration{From: "gateway-0", To: "gateway-1", Epoch: 41, Phase: "copying", StartedAt: 3}
	return s
}

// TestSnapshotEncodingIsEncodingJSONs: AppendSnapshotJSON writes what
// json.Marshal writes, and DecodeSnapshot reads back the snapshot, also
// from encoding/json's own output with odd strings and from other layouts.
func TestSnapshotEncodingIsEncodingJSONs(t *testing.T) {
	for name, s := range map[string]Snapshot{"map": testSnapshot(), "empty": {}, "odd owner": func() Snapshot {
		s := testSnapshot()
		s.Guilds[3].Owner = `gate"way`
		return s
	}()} {
		want, err := json.Marshal(&s)
		if err != nil {
			t.Fatal(err)
		}
		got, err := AppendSnapshotJSON(nil, &s)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: AppendSnapshotJSON differs from json.Marshal (%v):\n%.300s\n%.300s", name, err, got, want)
		}
		indented, _ := json.MarshalIndent(&s, "", " ")
		for _, b := range [][]byte{want, append(want, '\n'), indented} {
			var back, slow Snapshot
			if err := DecodeSnapshot(b, &back); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if err := json.Unmarshal(b, &slow); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, slow) {
				t.Fatalf("%s: DecodeSnapshot %+v\nencoding/json %+v", name, back, slow)
			}
		}
	}
	var s Snapshot
	if err := DecodeSnapshot([]byte(`{"revision":1,"guilds":[{"id":"x"}]}`), &s); err == nil {
		t.Fatal("a snapshot with a bad guild id decoded")
	}
}

// FuzzDecodeSnapshot: whatever the fast path accepts, encoding/json reads
// the same.
func FuzzDecodeSnapshot(f *testing.F) {
	s := testSnapshot()
	s.Guilds = s.Guilds[:3]
	b, _ := json.Marshal(&s)
	f.Add(b)
	f.Add([]byte(`{"revision":1,"shard_count":0,"pods":null,"shards":null,"guilds":[],"config_nodes":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var fast Snapshot
		if !parseSnapshot(b, &fast) {
			return
		}
		var slow Snapshot
		if err := json.Unmarshal(b, &slow); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json refuses it: %v", b, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: fast %+v, encoding/json %+v", b, fast, slow)
		}
	})
}

// TestPlaceResponseDecodesWhatEncodingJSONDecodes: the hand-written path of
// PlaceResponse.UnmarshalJSON and encoding/json agree, the fallback too.
func TestPlaceResponseDecodesWhatEncodingJSONDecodes(t *testing.T) {
	s := testSnapshot()
	for name, b := range map[string]string{
		"server form": "",
		"empty":       `{"revision":3,"guilds":[]}`,
		"null":        `{"revision":3,"guilds":null}`,
		"reordered":   `{"guilds":[{"id":"5","owner":"g","state":"active","epoch":1,"revision":2}],"revision":3}`,
		"spaced":      `{ "revision": 3, "guilds": [] }`,
	} {
		if b == "" {
			enc, _ := json.Marshal(struct {
				Revision uint64      `json:"revision"`
				Guilds   []fsm.Guild `json:"guilds"`
			}{9, s.Guilds})
			b = string(enc)
		}
		var got PlaceResponse
		if err := json.Unmarshal([]byte(b), &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		type plain PlaceResponse
		var want plain
		if err := json.Unmarshal([]byte(b), &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, PlaceResponse(want)) {
			t.Fatalf("%s: got %+v, want %+v", name, got, want)
		}
	}
	var p PlaceResponse
	if err := json.Unmarshal([]byte(`{"revision":3,"guilds":[{"id":"x"}]}`), &p); err == nil {
		t.Fatal("a bad guild id decoded")
	}
}

// placeRequestInputs: bodies as json.Marshal writes a PlaceRequest, and
// the variations the fast path must leave to the strict decoder.
var placeRequestInputs = []string{
	`{"guild_ids":["1","2","18446744073709551615"]}`, `{"guild_ids":["42"]} `, `{"guild_ids":[]}`, `{"guild_ids":null}`,
	`{"guild_ids":["0"]}`, `{"guild_ids":["01"]}`, `{"guild_ids":[" 1"]}`, `{"guild_ids":["18446744073709551616"]}`,
	`{"guild_ids":["1",]}`, `{"guild_ids":["1"],"x":1}`, `{"guild_ids":["1"]}x`, `{"guild_ids":[1]}`, `{"guild_ids":["\u0031"]}`,
	`{ "guild_ids":["1"]}`, `{"guild_ids":["1"]`, `{"guild_ids":["1""2"]}`, `{"guild_ids":["-1"]}`,
}

// TestPlaceRequestFastPathReadsWhatTheStrictDecoderReads: every body
// ParsePlaceRequestIDs takes, encoding/json and fsm.ParseGuildID read to
// the same ids, and a request as the client writes it is taken.
func TestPlaceRequestFastPathReadsWhatTheStrictDecoderReads(t *testing.T) {
	for _, in := range placeRequestInputs {
		checkPlaceRequestFast(t, []byte(in))
	}
	for n := 1; n < 200; n += 7 {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = strconv.FormatUint(snowflake(i), 10)
		}
		b, _ := json.Marshal(PlaceRequest{GuildIDs: ids})
		if _, ok := ParsePlaceRequestIDs(b); !ok {
			t.Fatalf("%.80s: the fast path refused a request as the client writes it", b)
		}
		checkPlaceRequestFast(t, b)
	}
}

func checkPlaceRequestFast(t *testing.T, b []byte) {
	t.Helper()
	got, ok := ParsePlaceRequestIDs(b)
	if !ok {
		return
	}
	var req PlaceRequest
	if err := json.Unmarshal(b, &req); err != nil {
		t.Fatalf("%.80q: the fast path read %v, encoding/json refuses it: %v", b, got, err)
	}
	want := make([]uint64, 0, len(req.GuildIDs))
	for _, s := range req.GuildIDs {
		id, err := fsm.ParseGuildID(s)
		if err != nil {
			t.Fatalf("%.80q: the fast path read %v, ParseGuildID refuses %q: %v", b, got, s, err)
		}
		want = append(want, id)
	}
	if len(want) == 0 || !reflect.DeepEqual(got, want) {
		t.Fatalf("%.80q: the fast path read %v, the strict decoder %v", b, got, want)
	}
}

// FuzzPlaceRequestFastPath holds ParsePlaceRequestIDs to the strict
// decoder on any input.
func FuzzPlaceRequestFastPath(f *testing.F) {
	for _, in := range placeRequestInputs {
		f.Add([]byte(in))
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkPlaceRequestFast(t, b) })
}
