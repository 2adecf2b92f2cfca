package fsm

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"
)

const benchGuilds = 1_000_000

// placements returns n guilds as a cluster holds them: random snowflakes
// (created 2015 to 2025), placed in batches of 10,000 (epoch = revision =
// the batch's Raft index) on the holders of their shards among pods pods,
// and then one in twenty moved (a later epoch and a revision past it).
// Every string is its own allocation, as decoded from JSON. Sorted by id.
func placements(n, pods int) []Guild {
	r := rand.New(rand.NewPCG(18, uint64(pods)))
	const tenYearsMs = 10 * 365 * 24 * 3600 * 1000
	gs := make([]Guild, n)
	seen := make(map[uint64]bool, n)
	for i := range gs {
		var id uint64
		for id == 0 || seen[id] {
			id = r.Uint64N(tenYearsMs)<<22 | r.Uint64N(1<<22)
		}
		seen[id] = true
		index := uint64(1000 + i/10_000)
		g := Guild{ID: id, State: GuildActive, Epoch: index, Revision: index}
		if r.IntN(20) == 0 {
			g.Epoch = index + uint64(r.IntN(5000))
			g.Revision = g.Epoch + uint64(r.IntN(20))
		}
		g.Owner = fmt.Sprintf("gateway-%d", ShardOf(id, 1024)%pods)
		g.State = GuildState(strings.Clone(string(g.State)))
		gs[i] = g
	}
	slices.SortFunc(gs, func(a, b Guild) int { return cmp.Compare(a.ID, b.ID) })
	return gs
}

func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkHeapPerGuild reports the live heap per guild at 1M guilds, for
// the table built from a snapshot (Build), the table fed by Set in a random
// order, and the watcher's former map[uint64]*Guild fed the same way.
func BenchmarkHeapPerGuild(b *testing.B) {
	for _, pods := range []int{3, 16, 128} {
		for _, how := range []string{"build", "set", "oldmap"} {
			b.Run(fmt.Sprintf("pods=%d/%s", pods, how), func(b *testing.B) {
				var per float64
				for b.Loop() {
					// Whatever the structure keeps of its input (strings,
					// for the old map) counts; the input itself does not.
					before := liveHeap()
					gs := placements(benchGuilds, pods)
					if how != "build" {
						rand.New(rand.NewPCG(1, 1)).Shuffle(len(gs), func(i, j int) { gs[i], gs[j] = gs[j], gs[i] })
					}
					var keep any
					switch how {
					case "build":
						keep = BuildGuildTable(gs)
					case "set":
						tb := NewGuildTable()
						for _, g := range gs {
							tb.Set(g)
						}
						keep = tb
					case "oldmap":
						m := map[uint64]*Guild{}
						for _, g := range gs {
							m[g.ID] = &g
						}
						keep = m
					}
					gs = nil
					per = (float64(liveHeap()) - float64(before)) / benchGuilds
					runtime.KeepAlive(keep)
				}
				b.ReportMetric(per, "B/guild")
			})
		}
	}
}

// BenchmarkGet reports ns per Get of a random guild among 1M (from the base
// and, for "overlay", with overlays half full of changes).
func BenchmarkGet(b *testing.B) {
	gs := placements(benchGuilds, 16)
	ids := make([]uint64, 1<<16)
	r := rand.New(rand.NewPCG(2, 2))
	for i := range ids {
		ids[i] = gs[r.IntN(len(gs))].ID
	}
	tb := BuildGuildTable(gs)
	b.Run("table", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, ok := tb.Get(ids[i&(len(ids)-1)]); !ok {
				b.Fatal("missing")
			}
			i++
		}
	})
	ov := BuildGuildTable(gs)
	for range benchGuilds / 32 / 2 {
		g := gs[r.IntN(len(gs))]
		g.Owner = "gateway-3"
		ov.Set(g)
	}
	b.Run("overlay", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, ok := ov.Get(ids[i&(len(ids)-1)]); !ok {
				b.Fatal("missing")
			}
			i++
		}
	})
	m := make(map[uint64]*Guild, len(gs))
	for i := range gs {
		m[gs[i].ID] = &gs[i]
	}
	b.Run("oldmap", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, ok := m[ids[i&(len(ids)-1)]]; !ok {
				b.Fatal("missing")
			}
			i++
		}
	})
}

// BenchmarkSet reports ns per Set at 1M guilds, merges included: moving
// existing guilds to another owner, and placing new ones.
func BenchmarkSet(b *testing.B) {
	gs := placements(benchGuilds, 16)
	ids := make([]uint64, len(gs))
	for i := range gs {
		ids[i] = gs[i].ID
	}
	r := rand.New(rand.NewPCG(3, 3))
	b.Run("move", func(b *testing.B) {
		tb := BuildGuildTable(gs)
		i := 0
		for b.Loop() {
			tb.Set(Guild{ID: ids[r.IntN(len(ids))], Owner: poolOwners[i&3], State: GuildActive, Epoch: 7000, Revision: 7000 + uint64(i)})
			i++
		}
	})
	b.Run("place", func(b *testing.B) {
		tb := BuildGuildTable(gs)
		i := 0
		for b.Loop() {
			tb.Set(Guild{ID: r.Uint64() | 1, Owner: poolOwners[i&3], State: GuildActive, Epoch: 5000, Revision: 5000})
			i++
		}
	})
	b.Run("oldmap/move", func(b *testing.B) {
		m := make(map[uint64]*Guild, len(gs))
		for i := range gs {
			m[gs[i].ID] = &gs[i]
		}
		i := 0
		for b.Loop() {
			m[ids[r.IntN(len(ids))]] = &Guild{ID: ids[r.IntN(len(ids))], Owner: poolOwners[i&3], State: GuildActive, Epoch: 7000, Revision: 7000 + uint64(i)}
			i++
		}
	})
}

// BenchmarkOwnedBy reports the cost of listing one of 16 pods' guilds at 1M,
// and of the scan and sort the watcher did before.
func BenchmarkOwnedBy(b *testing.B) {
	gs := placements(benchGuilds, 16)
	tb := BuildGuildTable(gs)
	b.Run("table", func(b *testing.B) {
		for b.Loop() {
			if len(tb.OwnedBy("gateway-3")) == 0 {
				b.Fatal("none")
			}
		}
	})
	m := make(map[uint64]*Guild, len(gs))
	for i := range gs {
		m[gs[i].ID] = &gs[i]
	}
	b.Run("oldmap", func(b *testing.B) {
		for b.Loop() {
			var out []uint64
			for id, g := range m {
				if g.Owner == "gateway-3" {
					out = append(out, id)
				}
			}
			slices.Sort(out)
			if !slices.Equal(out, tb.OwnedBy("gateway-3")) {
				b.Fatal("differs")
			}
		}
	})
}

// BenchmarkRebuild reports ns per record of rebuilding a full segment.
func BenchmarkRebuild(b *testing.B) {
	tb := BuildGuildTable(placements(benchGuilds, 16))
	s := &tb.segs[0]
	b.ReportMetric(float64(s.n), "records")
	for b.Loop() {
		tb.rebuild(0, 1, nil)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(tb.segs[0].n), "ns/record")
}
