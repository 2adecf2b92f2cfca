package fsm

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

// odd strings: each is escaped or rewritten by encoding/json, or is a
// boundary of plain.
var oddStrings = []string{"", "gateway-0", `a"b`, `back\slash`, "<tag>", "a&b", "tab\there", "é", "\u2028", "\xff", " ", "~", "\x7f"}

func randString(r *rand.Rand) string {
	if r.IntN(3) == 0 {
		return oddStrings[r.IntN(len(oddStrings))]
	}
	return []string{"gateway-0", "gateway-17", "config-2", "copying", "active", "migrating"}[r.IntN(6)]
}

func randU64(r *rand.Rand) uint64 {
	switch r.IntN(4) {
	case 0:
		return 0
	case 1:
		return math.MaxUint64
	}
	return r.Uint64() >> r.IntN(64)
}

func randI64(r *rand.Rand) int64 {
	switch r.IntN(5) {
	case 0:
		return 0
	case 1:
		return -1
	case 2:
		return math.MinInt64
	}
	return r.Int64() >> r.IntN(63)
}

func randGuild(r *rand.Rand) *Guild {
	g := &Guild{ID: randU64(r), Owner: randString(r), State: GuildState(randString(r)), Epoch: randU64(r), Revision: randU64(r)}
	if r.IntN(3) == 0 {
		g.Migration = &Migration{From: randString(r), To: randString(r), Epoch: randU64(r), Phase: randString(r),
			StartedAt: randI64(r), Failover: r.IntN(2) == 0, LossWindowMs: randI64(r)}
	}
	return g
}

func randEvent(r *rand.Rand) Event {
	e := Event{Revision: randU64(r), Type: EventType(randString(r)), At: randI64(r), Cause: CommandType(randString(r))}
	if r.IntN(4) == 0 {
		e.ShardCount = int(randI64(r))
	}
	if r.IntN(4) == 0 {
		e.Reason = randString(r)
	}
	switch r.IntN(6) {
	case 0:
		e.Pod = &Pod{ID: randString(r), Addr: randString(r)}
	case 1:
		e.ConfigNode = &ConfigNode{ID: randString(r)}
	case 2:
	default:
		e.Guild = randGuild(r)
	}
	return e
}

// TestAppendEventJSONWritesWhatEncodingJSONWrites: the hand-written encoder
// and encoding/json agree byte for byte, odd strings included.
func TestAppendEventJSONWritesWhatEncodingJSONWrites(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	fast := 0
	for i := 0; i < 20000; i++ {
		e := randEvent(r)
		want, err := json.Marshal(&e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := AppendEventJSON([]byte("prefix"), &e)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[6:], want) || string(got[:6]) != "prefix" {
			t.Fatalf("event %+v:\n got %s\nwant %s", e, got, want)
		}
		if e.Guild != nil {
			want, _ := json.Marshal(e.Guild)
			got, err := AppendGuildJSON(nil, e.Guild)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("guild %+v:\n got %s\nwant %s (%v)", e.Guild, got, want, err)
			}
		}
		if _, ok := ParseEventJSON(want, &Event{}); ok {
			fast++
		}
	}
	if fast < 1000 {
		t.Fatalf("only %d of 20000 events took the hand-written path: the test exercises too little of it", fast)
	}
}

// TestParseEventJSONReadsWhatEncodingJSONReads: whatever the hand-written
// parser accepts, encoding/json reads as the same event; what encoding/json
// writes for a plain guild event, the parser accepts whole.
func TestParseEventJSONReadsWhatEncodingJSONReads(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 20000; i++ {
		e := randEvent(r)
		b, _ := json.Marshal(&e)
		b = append(b, `,{"next":1}`...) // the parser reads one event and stops
		var got Event
		n, ok := ParseEventJSON(b, &got)
		plainEvent := e.Pod == nil && e.ConfigNode == nil && e.Shard == nil && plain(string(e.Type)) && plain(string(e.Cause)) && plain(e.Reason) && (e.Guild == nil || guildPlain(e.Guild))
		if plainEvent != ok {
			t.Fatalf("event %+v (%s): parsed %v, want %v", e, b, ok, plainEvent)
		}
		if !ok {
			continue
		}
		var want Event
		if err := json.Unmarshal(b[:n], &want); err != nil {
			t.Fatalf("%s: %v", b[:n], err)
		}
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(got, e) {
			t.Fatalf("parsed %+v, encoding/json %+v, sent %+v", got, want, e)
		}
	}
}

// FuzzParseEventJSON: the parser never accepts what encoding/json reads
// differently or refuses.
func FuzzParseEventJSON(f *testing.F) {
	r := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 50; i++ {
		e := randEvent(r)
		b, _ := json.Marshal(&e)
		f.Add(b)
	}
	f.Add([]byte(`{"revision":01,"type":"guild","at":1,"cause":"x"}`))
	f.Add([]byte(`{"revision":1,"type":"guild","at":-0,"cause":"x","shard_count":0}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var got Event
		n, ok := ParseEventJSON(b, &got)
		if !ok {
			return
		}
		var want Event
		if err := json.Unmarshal(b[:n], &want); err != nil {
			t.Fatalf("parser accepted %q, encoding/json refuses it: %v", b[:n], err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: parsed %+v, encoding/json %+v", b[:n], got, want)
		}
	})
}

// commandFastInputs are commands as Encode writes them and variations the
// fast decoder must leave to encoding/json (or read the same).
var commandFastInputs = []string{
	`{"v":3,"type":"place_guilds","at":1764700000000,"guild_ids":[1,2,3]}`,
	` { "guild_ids" : [ 5 ] , "at" : -3 , "type" : "remove_guilds" , "v" : 1 } `,
	`{"v":3,"type":"place_guilds","at":1,"guild_ids":[]}`, `{"v":3,"type":"place_guilds","at":1,"guild_ids":[1,]}`,
	`{"v":3,"type":"place_guilds","at":1,"guild_ids":[,1]}`, `{"v":3,"type":"place_guilds","at":1,"guild_ids":[1]} `,
	`{"v":3,"type":"place_guilds","at":1,"guild_ids":[1]`, `{"v":3,"type":"place_guilds","at":1,"guild_ids":[1 ]}`,
	`{"v":3,"type":"place_guilds","at":1,"guild_ids":null}`,
	`{"v":3,"type":"place_guilds","at":1,"guild_ids":[1],"pod_id":"x"}`,
	`{"v":3,"type":"place_guilds","v":2}`,
	`{"V":3,"Type":"place_guilds"}`,
	`{"v":3.0}`, `{"v":1e2}`, `{"v":01}`, `{"v":-0}`, `{"at":9223372036854775808}`, `{"v":"3"}`,
	`{"type":"a\"b"}`, `{"type":"é"}`, `{"type":"\u0041"}`, `{}`, `{"v":3}x`, `{"v":3`, `{"v":3,}`, `[1]`, `null`,
	`{"v":3,"guild_ids":[1,2,]}`, `{"v":3,"guild_ids":[01]}`, `{"guild_ids":[18446744073709551616]}`,
}

// TestDecodeCommandFastReadsWhatEncodingJSONReads: every command the fast
// path takes, encoding/json reads to the same value; and a placement as
// Encode writes it is taken by the fast path.
func TestDecodeCommandFastReadsWhatEncodingJSONReads(t *testing.T) {
	for _, in := range commandFastInputs {
		checkDecodeCommandFast(t, []byte(in))
	}
	r := rand.New(rand.NewPCG(5, 5))
	for range 200 {
		ids := make([]uint64, 1+r.IntN(30))
		for i := range ids {
			ids[i] = randU64(r)
		}
		c := Command{Type: []CommandType{CmdPlaceGuilds, CmdRemoveGuilds}[r.IntN(2)], At: randI64(r), GuildIDs: ids}
		b, err := c.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := decodeCommandFast(b); !ok {
			t.Fatalf("%s: the fast path refused a placement as Encode writes it", b)
		}
		checkDecodeCommandFast(t, b)
	}
}

func checkDecodeCommandFast(t *testing.T, b []byte) {
	t.Helper()
	got, ok := decodeCommandFast(b)
	if !ok {
		return
	}
	var want Command
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatalf("%.120q: the fast path read %+v, encoding/json refuses it: %v", b, got, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%.120q: the fast path read %+v, encoding/json %+v", b, got, want)
	}
}

// FuzzDecodeCommandFast holds the fast path to encoding/json on any input.
func FuzzDecodeCommandFast(f *testing.F) {
	for _, in := range commandFastInputs {
		f.Add([]byte(in))
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkDecodeCommandFast(t, b) })
}
