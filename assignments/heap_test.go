package assignments

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/modbot/modbot/fsm"
)

// The live heap the watcher's map keeps per guild (issue 18: a proxy's
// resident memory per guild at 1M guilds), measured as the change of
// HeapAlloc after full collections, with the map fed the two ways a watcher
// is fed: a listed snapshot, and placement events in batches of 10,000.

const (
	heapGuilds = 1_000_000
	heapBatch  = 10_000
	heapPods   = 16
)

// heapPlacements returns n guilds as a config node places them: random
// Discord snowflakes (creation times from 2015 to 2025, in random order),
// placed in batches of heapBatch, one Raft entry each (epoch = revision = its
// index), owned by the holder of their shard. Every string is its own
// allocation, as decoding JSON makes it.
func heapPlacements(n int) []fsm.Guild {
	r := rand.New(rand.NewPCG(18, 1))
	const tenYearsMs = 10 * 365 * 24 * 3600 * 1000
	gs := make([]fsm.Guild, n)
	seen := make(map[uint64]bool, n)
	for i := range gs {
		var id uint64
		for id == 0 || seen[id] {
			id = r.Uint64N(tenYearsMs)<<22 | r.Uint64N(1<<22)
		}
		seen[id] = true
		index := uint64(1000 + i/heapBatch)
		owner := fmt.Sprintf("gateway-%d", fsm.ShardOf(id, 1024)%heapPods)
		gs[i] = fsm.Guild{ID: id, Owner: owner, State: fsm.GuildState(strings.Clone(string(fsm.GuildActive))), Epoch: index, Revision: index}
	}
	return gs
}

// liveHeap is HeapAlloc after the collector has freed all it can.
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// heapPerGuild returns the live heap per guild of a map built by build
// (which owns the input it is given: whatever it keeps is counted).
func heapPerGuild(n int, build func([]fsm.Guild) *localMap) (float64, *localMap) {
	before := liveHeap()
	m := build(heapPlacements(n))
	after := liveHeap()
	return (float64(after) - float64(before)) / float64(n), m
}

func mapFromPlacementSnapshot(gs []fsm.Guild) *localMap {
	return mapFromSnapshot(&Snapshot{Revision: gs[len(gs)-1].Revision, ShardCount: 1024, Guilds: gs})
}

func mapFromPlacementEvents(gs []fsm.Guild) *localMap {
	m := newLocalMap()
	for len(gs) > 0 {
		batch := gs[:min(heapBatch, len(gs))]
		gs = gs[len(batch):]
		evs := make([]fsm.Event, len(batch))
		for i := range batch {
			g := batch[i] // an event's guild is its own allocation, as decoded
			evs[i] = fsm.Event{Revision: g.Revision, Type: fsm.EventGuild, Cause: fsm.CmdPlaceGuilds, Guild: &g}
		}
		m.apply(batch[0].Revision, evs)
	}
	return m
}

func BenchmarkWatcherHeapPerGuild(b *testing.B) {
	for _, c := range []struct {
		name  string
		build func([]fsm.Guild) *localMap
	}{{"snapshot", mapFromPlacementSnapshot}, {"apply", mapFromPlacementEvents}} {
		b.Run(c.name, func(b *testing.B) {
			var per float64
			for b.Loop() {
				var m *localMap
				per, m = heapPerGuild(heapGuilds, c.build)
				runtime.KeepAlive(m)
			}
			b.ReportMetric(per, "B/guild")
		})
	}
}

// TestWatcherMapLiveHeapPerGuild: at 1M guilds the watcher's map keeps at
// most 32 bytes of live heap per guild (issue 18: at most 64 bytes of
// resident memory with the collector's default headroom), whether it was
// listed or fed placement events in batches of 10,000, and it answers for
// every guild it was given.
func TestWatcherMapLiveHeapPerGuild(t *testing.T) {
	n := heapGuilds
	if testing.Short() || raceEnabled {
		n /= 10 // the same per guild at 100K, in a tenth of the time
	}
	for _, c := range []struct {
		name  string
		build func([]fsm.Guild) *localMap
	}{{"snapshot", mapFromPlacementSnapshot}, {"apply", mapFromPlacementEvents}} {
		t.Run(c.name, func(t *testing.T) {
			per, m := heapPerGuild(n, c.build)
			t.Logf("%d guilds: %.1f B/guild of live heap", n, per)
			if per > 32 {
				t.Errorf("%.1f B/guild of live heap, want at most 32", per)
			}
			want := heapPlacements(n)
			if m.guilds.Len() != n {
				t.Fatalf("%d guilds in the map, want %d", m.guilds.Len(), n)
			}
			for i := 0; i < n; i += 997 {
				if g, ok := m.guilds.Get(want[i].ID); !ok || g != want[i] {
					t.Fatalf("guild %d: %+v, %v; want %+v", want[i].ID, g, ok, want[i])
				}
			}
			total := 0
			for p := range heapPods {
				total += m.guilds.Count(fmt.Sprintf("gateway-%d", p))
			}
			if total != n {
				t.Fatalf("per-pod counts add up to %d, want %d", total, n)
			}
		})
	}
}
