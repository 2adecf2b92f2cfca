package fsm

import (
	"cmp"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"unsafe"
)

// TestGetAfterAnySequenceIsWhatAPlainMapReturns runs long random sequences of
// sets, deletes, owner changes, migrations set and cleared, runs, range
// deletes and rebuilds against a plain map, checking every id touched after
// each step and everything (Len, All, Count, OwnedBy, the structure) every
// few hundred steps, on configurations small enough that merges, splits,
// coalescing and class compaction all happen many times.
func TestGetAfterAnySequenceIsWhatAPlainMapReturns(t *testing.T) {
	testOnConfigs(t, func(t *testing.T, c config) {
		steps := 6000
		if testing.Short() || raceEnabled {
			steps = 1500
		}
		for seed := range uint64(3) {
			r := rand.New(rand.NewPCG(seed, 18))
			o := &ops{src: r.IntN, m: newModel(c)}
			merges := 0
			for i := range steps {
				segsBefore, nBefore := len(o.m.tb.segs), o.m.tb.segs[0].n
				if err := o.step(r); err != nil {
					t.Fatalf("seed %d step %d: %v", seed, i, err)
				}
				if len(o.m.tb.segs) != segsBefore || o.m.tb.segs[0].n != nBefore {
					merges++
				}
				if i%300 == 299 {
					if err := o.m.checkAll(o.knownOwners()); err != nil {
						t.Fatalf("seed %d step %d: %v", seed, i, err)
					}
				}
			}
			if err := o.m.checkAll(o.knownOwners()); err != nil {
				t.Fatalf("seed %d at the end: %v", seed, err)
			}
			if c != defaultConfig && merges < 10 {
				t.Fatalf("seed %d: only %d merges in %d steps: the test does not reach the merge paths", seed, merges, steps)
			}
		}
	})
}

// TestAllIteratesInAscendingIDOrder: whatever order guilds arrive in, and
// whether they sit in a base or an overlay, All yields them by id.
func TestAllIteratesInAscendingIDOrder(t *testing.T) {
	testOnConfigs(t, func(t *testing.T, c config) {
		r := rand.New(rand.NewPCG(1, 2))
		tb := newGuildTableWithConfig(c)
		want := map[uint64]bool{}
		for range 5000 {
			id := r.Uint64N(1 << 50)
			tb.Set(Guild{ID: id, Owner: "gateway-0", State: GuildActive})
			want[id] = true
		}
		var got []uint64
		for g := range tb.All() {
			got = append(got, g.ID)
		}
		if !slices.IsSorted(got) || len(got) != len(want) {
			t.Fatalf("All yielded %d ids (sorted: %v), want %d sorted", len(got), slices.IsSorted(got), len(want))
		}
		for i := 1; i < len(got); i++ {
			if got[i] == got[i-1] {
				t.Fatalf("All yielded %d twice", got[i])
			}
		}
		n := 0
		for range tb.All() {
			if n++; n == 10 {
				break // stopping early is allowed
			}
		}
		if n != 10 {
			t.Fatalf("early stop after %d", n)
		}
	})
}

// TestCountsEqualGuildsPerOwner: per-owner counters follow places, moves
// and removals exactly, and OwnedBy lists the same guilds, ascending.
func TestCountsEqualGuildsPerOwner(t *testing.T) {
	testOnConfigs(t, func(t *testing.T, c config) {
		r := rand.New(rand.NewPCG(3, 4))
		tb := newGuildTableWithConfig(c)
		owner := map[uint64]string{}
		pods := []string{"gateway-0", "gateway-1", "gateway-2"}
		for i := range 20000 {
			id := uint64(r.IntN(3000))
			if r.IntN(4) == 0 {
				tb.Delete(id)
				delete(owner, id)
			} else {
				p := pods[r.IntN(len(pods))]
				tb.Set(Guild{ID: id, Owner: p, State: GuildActive, Epoch: uint64(i)})
				owner[id] = p
			}
		}
		for _, p := range append(pods, "gateway-9") {
			var ids []uint64
			for id, o := range owner {
				if o == p {
					ids = append(ids, id)
				}
			}
			slices.Sort(ids)
			if tb.Count(p) != len(ids) {
				t.Fatalf("Count(%s) = %d, want %d", p, tb.Count(p), len(ids))
			}
			if got := tb.OwnedBy(p); !slices.Equal(got, ids) {
				t.Fatalf("OwnedBy(%s): %d ids, want %d", p, len(got), len(ids))
			}
		}
		if err := checkStructure(tb); err != nil {
			t.Fatal(err)
		}
	})
}

// TestBuildIsSetInOrder: Build of an unsorted slice with duplicates holds
// what Set of each record in order would (the last of an id wins), and
// leaves its input alone.
func TestBuildIsSetInOrder(t *testing.T) {
	testOnConfigs(t, func(t *testing.T, c config) {
		r := rand.New(rand.NewPCG(5, 6))
		o := &ops{src: r.IntN, m: newModel(c)}
		var gs []Guild
		for range 3000 {
			gs = append(gs, o.guild(uint64(r.IntN(2000))))
		}
		in := slices.Clone(gs)
		for _, sorted := range []bool{false, true} {
			if sorted {
				gs = dedupeSorted(gs)
				in = slices.Clone(gs)
			}
			ref := newModel(c)
			for _, g := range gs {
				ref.set(g)
			}
			built := &model{tb: buildGuildTableWithConfig(c, gs), ref: ref.ref}
			if err := built.checkAll(o.knownOwners()); err != nil {
				t.Fatalf("sorted %v: %v", sorted, err)
			}
			if !slices.Equal(gs, in) {
				t.Fatalf("sorted %v: Build modified its input", sorted)
			}
		}
	})
}

func dedupeSorted(gs []Guild) []Guild {
	last := map[uint64]Guild{}
	for _, g := range gs {
		last[g.ID] = g
	}
	out := make([]Guild, 0, len(last))
	for _, g := range last {
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b Guild) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// TestGetReturnsInternedStringsWithoutAllocating: every Get of any guild of
// an owner returns the same string data, not the caller's, and reading
// allocates nothing.
func TestGetReturnsInternedStringsWithoutAllocating(t *testing.T) {
	tb := NewGuildTable()
	for i := range 1000 {
		owner := fmt.Sprintf("gateway-%d", i%2) // a new string each time, as decoded
		tb.Set(Guild{ID: uint64(i), Owner: owner, State: GuildState(string([]byte("active")))})
	}
	tb2 := BuildGuildTable([]Guild{{ID: 1, Owner: fmt.Sprintf("gateway-%d", 0)}})
	a, _ := tb.Get(0)
	b, _ := tb.Get(998)
	if a.Owner != "gateway-0" || unsafe.StringData(a.Owner) != unsafe.StringData(b.Owner) || unsafe.StringData(string(a.State)) != unsafe.StringData(string(b.State)) {
		t.Fatalf("owners %q and %q are not one interned string", a.Owner, b.Owner)
	}
	c, _ := tb2.Get(1)
	if c.Owner != "gateway-0" {
		t.Fatalf("built table: owner %q", c.Owner)
	}
	var sink Guild
	allocs := testing.AllocsPerRun(100, func() {
		for i := range 1000 {
			sink, _ = tb.Get(uint64(i))
		}
		_ = tb.Count("gateway-1")
	})
	if allocs != 0 || sink.Owner != "gateway-1" {
		t.Fatalf("%v allocations per 1000 Gets", allocs)
	}
}

// TestExtremeValuesRoundTrip: ids, epochs and revisions at the ends of the
// range (64-bit columns, a revision below its epoch) come back exactly,
// from the base as from the overlay.
func TestExtremeValuesRoundTrip(t *testing.T) {
	const top = ^uint64(0)
	gs := []Guild{
		{ID: 0, Owner: "a", Epoch: 0, Revision: top},
		{ID: 1, Owner: "b", Epoch: top, Revision: 0},
		{ID: 1 << 63, Owner: "a", Epoch: top, Revision: top},
		{ID: top - 1, Owner: "", State: "", Epoch: 5, Revision: 4},
		{ID: top, Owner: "c", State: GuildMigrating, Migration: &Migration{From: "c", To: "a"}, Epoch: 1 << 40, Revision: 1<<40 + 1},
	}
	for _, viaBuild := range []bool{false, true} {
		var tb *GuildTable
		if viaBuild {
			tb = BuildGuildTable(gs)
		} else {
			tb = NewGuildTable()
			for _, g := range gs {
				tb.Set(g)
			}
		}
		for _, g := range gs {
			if got, ok := tb.Get(g.ID); !ok || got != g {
				t.Fatalf("build %v: Get(%d) = %+v, %v; want %+v", viaBuild, g.ID, got, ok, g)
			}
		}
		if got := tb.AppendTo(nil); !slices.Equal(got, gs) {
			t.Fatalf("build %v: All = %+v", viaBuild, got)
		}
		if err := checkStructure(tb); err != nil {
			t.Fatal(err)
		}
	}
}

// TestZeroTableIsEmptyAndUsable: a zero GuildTable answers as an empty map and
// takes writes.
func TestZeroTableIsEmptyAndUsable(t *testing.T) {
	var tb GuildTable
	if _, ok := tb.Get(1); ok || tb.Len() != 0 || tb.Count("x") != 0 || tb.OwnedBy("x") != nil {
		t.Fatal("the zero table is not empty")
	}
	tb.Delete(1)
	for range tb.All() {
		t.Fatal("All yields from the zero table")
	}
	tb.Set(Guild{ID: 1, Owner: "x"})
	if g, ok := tb.Get(1); !ok || g.Owner != "x" || tb.Count("x") != 1 || !slices.Equal(tb.OwnedBy("x"), []uint64{1}) {
		t.Fatalf("after a Set: %+v, %v", g, ok)
	}
}

// TestSegmentsSplitAndCoalesce: inserting many guilds splits segments at
// the maximum, deleting most of them merges segments back, and the
// contents agree with the map throughout.
func TestSegmentsSplitAndCoalesce(t *testing.T) {
	c := config{maxSeg: 500, ovMin: 8, ovFrac: 8, compactSlack: 8}
	m := newModel(c)
	r := rand.New(rand.NewPCG(7, 8))
	for i := range 20000 {
		m.set(Guild{ID: r.Uint64N(1 << 40), Owner: poolOwners[i%3], Epoch: uint64(i), Revision: uint64(i)})
	}
	if err := m.checkAll(poolOwners); err != nil {
		t.Fatal(err)
	}
	grown := len(m.tb.segs)
	if grown < 20000/500 {
		t.Fatalf("%d segments for 20000 guilds of at most 500", grown)
	}
	for id := range m.ref {
		if len(m.ref) == 100 {
			break
		}
		m.del(id)
	}
	if err := m.checkAll(poolOwners); err != nil {
		t.Fatal(err)
	}
	if len(m.tb.segs) > grown/4 {
		t.Fatalf("%d segments left for 100 guilds (were %d)", len(m.tb.segs), grown)
	}
	for id := range m.ref {
		m.del(id)
	}
	if err := m.checkAll(poolOwners); err != nil {
		t.Fatal(err)
	}
}

// TestDeadOwnersAreCompactedAway: a stream of owners each seen once does
// not grow the class table without bound.
func TestDeadOwnersAreCompactedAway(t *testing.T) {
	m := newModel(config{maxSeg: 1000, ovMin: 16, ovFrac: 8, compactSlack: 64})
	for i := range 10000 {
		m.set(Guild{ID: uint64(i % 50), Owner: fmt.Sprintf("pod-%d", i), State: GuildActive})
	}
	if len(m.tb.classes) > 2*50+64+1 || len(m.tb.owners) > 2*50+64+1 {
		t.Fatalf("%d classes, %d owners interned for 50 guilds", len(m.tb.classes), len(m.tb.owners))
	}
	owners := []string{"pod-0", "pod-9999", "pod-9950", "pod-9949"}
	if err := m.checkAll(owners); err != nil {
		t.Fatal(err)
	}
}

// TestMigrationIsTheOneSet: a migrating guild's Migration is the pointer
// last set; clearing it (or deleting the guild) drops the exception.
func TestMigrationIsTheOneSet(t *testing.T) {
	tb := NewGuildTable()
	mig := &Migration{From: "a", To: "b", Epoch: 3, Phase: "started"}
	tb.Set(Guild{ID: 7, Owner: "a", State: GuildMigrating, Migration: mig, Epoch: 3})
	if g, _ := tb.Get(7); g.Migration != mig {
		t.Fatalf("Migration %p, set %p", g.Migration, mig)
	}
	tb.Set(Guild{ID: 7, Owner: "b", State: GuildActive, Epoch: 3, Revision: 4})
	if g, _ := tb.Get(7); g.Migration != nil || len(tb.mig) != 0 {
		t.Fatalf("Migration %+v after completing the move (%d kept)", g.Migration, len(tb.mig))
	}
	tb.Set(Guild{ID: 8, Owner: "a", Migration: mig})
	tb.Delete(8)
	if len(tb.mig) != 0 {
		t.Fatalf("%d migrations kept after the delete", len(tb.mig))
	}
}

// TestCloneKeepsItsGuildsWhileTheOriginalChanges: a clone taken at any
// point still reads exactly what the table held then (Get, All, Count,
// OwnedBy, Migrating, its own structure) after the original has gone
// through hundreds more changes, merges, splits and compactions; and the
// original still agrees with its map.
func TestCloneKeepsItsGuildsWhileTheOriginalChanges(t *testing.T) {
	testOnConfigs(t, func(t *testing.T, c config) {
		r := rand.New(rand.NewPCG(7, 7))
		o := &ops{src: r.IntN, m: newModel(c)}
		for round := range 6 {
			for range 400 {
				if err := o.step(r); err != nil {
					t.Fatal(err)
				}
			}
			frozen := &model{tb: o.m.tb.Clone(), ref: maps.Clone(o.m.ref)}
			for range 600 {
				if err := o.step(r); err != nil {
					t.Fatal(err)
				}
			}
			if err := frozen.checkAll(o.knownOwners()); err != nil {
				t.Fatalf("round %d: the clone: %v", round, err)
			}
			if err := checkStructure(frozen.tb); err != nil {
				t.Fatalf("round %d: the clone's structure: %v", round, err)
			}
			if err := o.m.checkAll(o.knownOwners()); err != nil {
				t.Fatalf("round %d: the original: %v", round, err)
			}
		}
	})
}
