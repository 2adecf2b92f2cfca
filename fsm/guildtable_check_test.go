package fsm

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// checkStructure verifies the representation's own invariants: segment
// ranges, sorted bases, overlay flags against the base and the shadow
// bitset, every counter, the owner index and the migration exceptions.
func checkStructure(t *GuildTable) error {
	if len(t.segs) == 0 || t.segs[0].lo != 0 {
		return fmt.Errorf("%d segments, the first starting at %v", len(t.segs), t.segs)
	}
	classLive := make([]int, len(t.classes))
	ownerCount := make([]int, len(t.owners))
	total := 0
	for si := range t.segs {
		s := &t.segs[si]
		hi, last := uint64(0), si == len(t.segs)-1
		if !last {
			hi = t.segs[si+1].lo
			if hi <= s.lo {
				return fmt.Errorf("segment %d starts at %d, the next at %d", si, s.lo, hi)
			}
		}
		inRange := func(id uint64) bool { return id >= s.lo && (last || id < hi) }
		if s.n > t.cfg.maxSeg || len(s.blocks) != (s.n+blockSize-1)/blockSize || len(s.blocks) != len(s.blocks) {
			return fmt.Errorf("segment %d: %d records, %d blocks (max %d)", si, s.n, len(s.blocks), t.cfg.maxSeg)
		}
		if s.shadow != nil && len(s.shadow) != (s.n+63)/64 {
			return fmt.Errorf("segment %d: shadow of %d words for %d records", si, len(s.shadow), s.n)
		}
		live, shadowed := 0, 0
		var prev uint64
		wantIdx := map[uint32][]uint16{}
		for pos := range s.n {
			e := s.at(pos)
			if pos > 0 && e.id <= prev || !inRange(e.id) {
				return fmt.Errorf("segment %d [%d, %d): base id %d at %d after %d", si, s.lo, hi, e.id, pos, prev)
			}
			if pos&(blockSize-1) == 0 && s.blocks[pos>>blockShift].first != e.id {
				return fmt.Errorf("segment %d: block %d first id %d, holds %d", si, pos>>blockShift, s.blocks[pos>>blockShift].first, e.id)
			}
			if id := s.idAt(pos); id != e.id || s.classAt(pos) != e.class {
				return fmt.Errorf("segment %d pos %d: idAt/classAt disagree with at", si, pos)
			}
			if p, ok := s.find(e.id); !ok || p != pos {
				return fmt.Errorf("segment %d: find(%d) = %d, %v; want %d", si, e.id, p, ok, pos)
			}
			prev = e.id
			if int(e.class) >= len(t.classes) {
				return fmt.Errorf("segment %d: class %d of %d", si, e.class, len(t.classes))
			}
			o := t.classes[e.class].owner
			wantIdx[o] = append(wantIdx[o], uint16(pos))
			if s.shadowed(pos) {
				shadowed++
				oe, ok := s.ov[e.id]
				if !ok || oe.flags&ovInBase == 0 {
					return fmt.Errorf("segment %d: base %d shadowed without an overlay record", si, e.id)
				}
				continue
			}
			if _, ok := s.ov[e.id]; ok {
				return fmt.Errorf("segment %d: overlay holds %d without shadowing it", si, e.id)
			}
			live++
			classLive[e.class]++
			ownerCount[o]++
		}
		inBase := 0
		for id, oe := range s.ov {
			if !inRange(id) {
				return fmt.Errorf("segment %d [%d, %d): overlay id %d", si, s.lo, hi, id)
			}
			_, found := s.find(id)
			if found != (oe.flags&ovInBase != 0) {
				return fmt.Errorf("segment %d: overlay %d in base %v, flag says %v", si, id, found, oe.flags&ovInBase != 0)
			}
			if found {
				inBase++
			}
			if oe.flags&ovDeleted != 0 {
				if !found {
					return fmt.Errorf("segment %d: tombstone %d for nothing in the base", si, id)
				}
				continue
			}
			live++
			classLive[oe.class]++
			ownerCount[t.classes[oe.class].owner]++
		}
		if inBase != shadowed || live != s.live {
			return fmt.Errorf("segment %d: %d shadowed, %d overlay records in base; %d live, counted %d", si, shadowed, inBase, live, s.live)
		}
		total += live
		// The owner index lists exactly the base positions of each owner.
		if !slices.IsSortedFunc(s.owners, func(a, b ownerSet) int { return cmp.Compare(a.owner, b.owner) }) || len(s.owners) != len(wantIdx) {
			return fmt.Errorf("segment %d: index of %d owners, want %d", si, len(s.owners), len(wantIdx))
		}
		for _, os := range s.owners {
			var got []uint16
			if os.bitmap {
				for p := range s.n {
					if s.posBits[int(os.off)+p>>6]&(1<<(p&63)) != 0 {
						got = append(got, uint16(p))
					}
				}
			} else {
				got = s.posArr[os.off : os.off+os.n]
			}
			if !slices.Equal(got, wantIdx[os.owner]) || int(os.n) != len(got) {
				return fmt.Errorf("segment %d: owner %d indexed at %v, holds %v", si, os.owner, got, wantIdx[os.owner])
			}
		}
	}
	if total != t.n {
		return fmt.Errorf("%d live records, Len %d", total, t.n)
	}
	lc := 0
	for c := range t.classes {
		if classLive[c] != t.classes[c].live {
			return fmt.Errorf("class %d: %d live, counted %d", c, classLive[c], t.classes[c].live)
		}
		if classLive[c] > 0 {
			lc++
		}
		cl := t.classes[c]
		k := 2 * int(cl.stateIdx)
		if cl.mig {
			k++
		}
		if t.owners[cl.owner].classes[k] != uint32(c)+1 || t.states[cl.stateIdx] != cl.state {
			return fmt.Errorf("class %d not interned under its owner and state", c)
		}
	}
	if lc != t.liveClasses {
		return fmt.Errorf("%d live classes, counted %d", lc, t.liveClasses)
	}
	for i, st := range t.states {
		if t.stateIdx[st] != uint32(i) {
			return fmt.Errorf("state %q not interned", st)
		}
	}
	for o := range t.owners {
		if ownerCount[o] != t.owners[o].count || t.ownerIdx[t.owners[o].name] != uint32(o) {
			return fmt.Errorf("owner %q: %d guilds, counted %d", t.owners[o].name, ownerCount[o], t.owners[o].count)
		}
	}
	for id := range t.mig {
		g, ok := t.Get(id)
		if !ok || g.Migration == nil {
			return fmt.Errorf("migration kept for %d, which has none", id)
		}
	}
	return nil
}

// model runs a table next to the plain map it must agree with.
type model struct {
	tb  *GuildTable
	ref map[uint64]Guild
}

func newModel(c config) *model {
	return &model{tb: newGuildTableWithConfig(c), ref: map[uint64]Guild{}}
}

func (m *model) set(g Guild) { m.tb.Set(g); m.ref[g.ID] = g }

// setMany is SetMany of gs, each id's last record winning in the reference.
func (m *model) setMany(gs []Guild) {
	m.tb.SetMany(gs)
	for _, g := range gs {
		m.ref[g.ID] = g
	}
}

func (m *model) del(id uint64) { m.tb.Delete(id); delete(m.ref, id) }

// rebuild replaces the table by Build of the reference's records in a
// random order, with stale duplicates before the final ones.
func (m *model) rebuild(r *rand.Rand) {
	gs := make([]Guild, 0, len(m.ref))
	for _, g := range m.ref {
		gs = append(gs, g)
	}
	if r.IntN(2) == 0 {
		slices.SortFunc(gs, func(a, b Guild) int { return cmp.Compare(a.ID, b.ID) })
	} else {
		r.Shuffle(len(gs), func(i, j int) { gs[i], gs[j] = gs[j], gs[i] })
		withStale := make([]Guild, 0, len(gs)*5/4)
		for i, g := range gs {
			if i%4 == 0 {
				stale := g
				stale.Owner, stale.Epoch = "stale-owner", stale.Epoch+1
				withStale = append(withStale, stale)
			}
			withStale = append(withStale, g)
		}
		gs = withStale
	}
	m.tb = buildGuildTableWithConfig(m.tb.cfg, gs)
}

// checkID: Get of one id is what the map says.
func (m *model) checkID(id uint64) error {
	got, ok := m.tb.Get(id)
	want, wok := m.ref[id]
	if ok != wok || got != want {
		return fmt.Errorf("Get(%d) = %+v, %v; the map has %+v, %v", id, got, ok, want, wok)
	}
	return nil
}

// checkAll compares everything the table answers with the map, and the
// table's structure.
func (m *model) checkAll(owners []string) error {
	if m.tb.Len() != len(m.ref) {
		return fmt.Errorf("Len %d, the map has %d", m.tb.Len(), len(m.ref))
	}
	want := make([]Guild, 0, len(m.ref))
	for _, g := range m.ref {
		want = append(want, g)
	}
	slices.SortFunc(want, func(a, b Guild) int { return cmp.Compare(a.ID, b.ID) })
	got := m.tb.AppendTo(nil)
	if !slices.Equal(got, want) {
		return fmt.Errorf("All: %d guilds, the map has %d (first difference at %d)", len(got), len(want), firstDiff(got, want))
	}
	for _, g := range want {
		if err := m.checkID(g.ID); err != nil {
			return err
		}
		if err := m.checkID(g.ID + 1); err != nil {
			return err
		}
	}
	byOwner := map[string][]uint64{}
	for _, g := range want {
		byOwner[g.Owner] = append(byOwner[g.Owner], g.ID)
	}
	for _, o := range owners {
		if c := m.tb.Count(o); c != len(byOwner[o]) {
			return fmt.Errorf("Count(%q) = %d, the map has %d", o, c, len(byOwner[o]))
		}
		if ids := m.tb.OwnedBy(o); !slices.Equal(ids, byOwner[o]) {
			return fmt.Errorf("OwnedBy(%q): %d ids, the map has %d", o, len(ids), len(byOwner[o]))
		}
	}
	for o, ids := range byOwner {
		if c := m.tb.Count(o); c != len(ids) {
			return fmt.Errorf("Count(%q) = %d, the map has %d", o, c, len(ids))
		}
		if got := m.tb.OwnedBy(o); !slices.Equal(got, ids) {
			return fmt.Errorf("OwnedBy(%q): %d ids, the map has %d", o, len(got), len(ids))
		}
	}
	if err := checkStructure(m.tb); err != nil {
		return fmt.Errorf("structure: %w", err)
	}
	return nil
}

func firstDiff(a, b []Guild) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// ops draws random operations for the model from src: upserts (new guilds,
// owner changes, migrations set and cleared, odd states, extreme values),
// deletes, runs of consecutive ids (to fill blocks and split segments),
// mass deletes of a range (to coalesce them) and rebuilds by Build.
type ops struct {
	src     func(n int) int // a number in [0, n)
	m       *model
	fresh   int // owners made up so far
	touched []uint64
}

var poolOwners = []string{"gateway-0", "gateway-1", "gateway-2", "gateway-3", "gateway-10"}

func (o *ops) owner() string {
	if o.src(50) == 0 {
		o.fresh++
		return fmt.Sprintf("pod-%d", o.fresh)
	}
	return poolOwners[o.src(len(poolOwners))]
}

func (o *ops) id() uint64 {
	switch o.src(20) {
	case 0:
		return 0
	case 1:
		return ^uint64(0) - uint64(o.src(3))
	case 2:
		return uint64(o.src(1<<16)) << 40
	default:
		return uint64(o.src(2000))
	}
}

func (o *ops) value() uint64 {
	switch o.src(6) {
	case 0:
		return ^uint64(0) - uint64(o.src(2))
	case 1:
		return 0
	default:
		return 1000 + uint64(o.src(500))
	}
}

func (o *ops) guild(id uint64) Guild {
	g := Guild{ID: id, Owner: o.owner(), State: GuildActive, Epoch: o.value()}
	switch o.src(4) {
	case 0:
		g.Revision = g.Epoch
	case 1:
		g.Revision = o.value() // may be below the epoch
	default:
		g.Revision = g.Epoch + uint64(o.src(100))
	}
	switch o.src(8) {
	case 0:
		g.State = GuildMigrating
		g.Migration = &Migration{From: g.Owner, To: o.owner(), Epoch: g.Epoch, Phase: "started"}
	case 1:
		g.State = ""
	case 2:
		g.State = GuildState(fmt.Sprintf("state-%d", o.src(3)))
	}
	return g
}

// step runs one operation and checks the ids it touched.
func (o *ops) step(r *rand.Rand) error {
	o.touched = o.touched[:0]
	switch k := o.src(100); {
	case k < 55:
		g := o.guild(o.id())
		if old, ok := o.m.ref[g.ID]; ok && o.src(3) == 0 {
			g = old // a change of owner only, or a migration cleared
			g.Owner, g.Migration, g.Revision = o.owner(), nil, g.Revision+1
			if g.State == GuildMigrating {
				g.State = GuildActive
			}
		}
		o.m.set(g)
		o.touched = append(o.touched, g.ID)
	case k < 85:
		id := o.id()
		o.m.del(id)
		o.touched = append(o.touched, id)
	case k < 93: // a run of consecutive ids
		first, n := o.id(), 1+o.src(300)
		for i := range n {
			g := o.guild(first + uint64(i))
			o.m.set(g)
			o.touched = append(o.touched, g.ID)
		}
	case k < 96: // one SetMany of new, changed and repeated ids, runs and strays
		var gs []Guild
		for range 1 + o.src(600) {
			var g Guild
			switch o.src(4) {
			case 0: // a run continues
				if len(gs) > 0 {
					g = o.guild(gs[len(gs)-1].ID + 1)
					break
				}
				fallthrough
			case 1, 2:
				g = o.guild(o.id())
			default: // an id given before in this batch, changed
				if len(gs) == 0 {
					g = o.guild(o.id())
					break
				}
				g = gs[o.src(len(gs))]
				g.Owner, g.Revision = o.owner(), g.Revision+1
			}
			gs = append(gs, g)
			o.touched = append(o.touched, g.ID)
		}
		o.m.setMany(gs)
	case k < 99: // delete a range
		first, n := o.id(), 1+o.src(400)
		for i := range n {
			o.m.del(first + uint64(i))
			o.touched = append(o.touched, first+uint64(i))
		}
	default:
		o.m.rebuild(r)
	}
	for _, id := range o.touched {
		if err := o.m.checkID(id); err != nil {
			return err
		}
	}
	return nil
}

func (o *ops) knownOwners() []string {
	out := slices.Clone(poolOwners)
	for i := 1; i <= o.fresh; i++ {
		out = append(out, fmt.Sprintf("pod-%d", i))
	}
	return append(out, "stale-owner", "nobody")
}

// small configurations reach splits, coalescing, merges and compaction with
// a few thousand guilds.
var testConfigs = []struct {
	name string
	cfg  config
}{
	{"tiny", config{maxSeg: 40, ovMin: 1, ovFrac: 2, compactSlack: 0}},
	{"small", config{maxSeg: 300, ovMin: 4, ovFrac: 4, compactSlack: 3}},
	{"blocks", config{maxSeg: 1 << 12, ovMin: 32, ovFrac: 8, compactSlack: 16}},
	{"default", defaultConfig},
}

func testOnConfigs(t *testing.T, f func(t *testing.T, c config)) {
	for _, c := range testConfigs {
		t.Run(c.name, func(t *testing.T) { f(t, c.cfg) })
	}
}
