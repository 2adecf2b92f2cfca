package fsm

import (
	"cmp"
	"iter"
	"maps"
	"slices"
	"strings"
)

// config holds the tuning knobs; tests shrink them to reach every path with
// few guilds.
type config struct {
	maxSeg int // records in a segment's base at most (<= 1<<16: positions are uint16)
	ovMin  int // an overlay is merged once it holds more than max(ovMin, base/ovFrac)
	ovFrac int
	// compactSlack: the class table is compacted once it holds more than
	// 2*live+compactSlack classes (dead classes are owners no longer seen).
	compactSlack int
}

var defaultConfig = config{maxSeg: 1 << 14, ovMin: 256, ovFrac: 4, compactSlack: 1024}

// GuildTable holds a set of Guild records, keyed by guild id, in a compact
// form without a pointer per guild. It is the State's guild map and a
// watcher's copy of it: a million guilds cost about 10 bytes each instead
// of a heap object, a map slot and two strings each (118 bytes), and the
// collector has nothing to scan in it but a few slice headers per 16,384
// guilds.
//
// # Representation
//
// Owners and states are interned: a guild refers to a class, a small integer
// naming one (owner, state, has-a-migration) triple; the strings live once in
// the table. Migrations, which only guilds being moved have, are kept as
// exceptions in a map by guild id.
//
// The records are split by id range into segments of at most 16,384. A
// segment's base is immutable between merges: its records, sorted by id, are
// cut into blocks of 128, and each block packs its records as fixed-width
// bit fields holding offsets from the block's minimum (frame of reference):
// the id from the block's first id, the epoch from the block's least epoch,
// the revision as revision−epoch from the block's least such difference, the
// class from the block's least class. Every record of a block has the same
// width, so the n-th is read in O(1) and a block is searched in place; the
// block headers (first id, minimums, widths) sit in their own array for the
// search across blocks. Both searches interpolate (ids are close to
// uniform) and gallop from the probe, so a lookup touches a line or two of
// each. Real placements (random snowflakes, epochs that are Raft indexes,
// revision = epoch until the guild moves) pack into about 9 bytes.
//
// Changes go to the segment's overlay, a small map of upserts and
// tombstones in front of the base; a bitset marks the base records the
// overlay shadows. When an overlay grows past 1/4 of its base (and 256
// records) the segment is rebuilt: base and overlay are merged into new
// blocks, a segment grown past the maximum is split and one shrunk below a
// quarter of it is merged with a neighbour. A rebuild costs O(segment), so
// each change costs amortised O(1) (about 4 records re-packed; 1/16 cost
// 16, which was a third of placing 10,000 guilds), and no rebuild holds
// more than two segments' worth of memory at once or takes more than about
// a millisecond (the watcher holds its write lock meanwhile). Once classes
// no guild uses outnumber the live ones (owners that came and went), the
// whole table is rebuilt to renumber them.
//
// SetMany takes a batch (a placement of 10,000) a segment at a time, sorted:
// a segment whose overlay would overflow is rebuilt once with the batch
// merged in, rather than overflowing record by record.
//
// Per-owner counters are kept exactly on every change. Each segment indexes
// its base by owner: for every owner present, the positions of its records,
// as an array of uint16 or, when the owner has more than 1/16 of the
// segment, as a bitmap (at most 2 bytes per guild, 1/8 byte per owner per
// guild when owners are few). OwnedBy reads the index and the overlays, not
// every record.
//
// # Invariants
//
//   - After any sequence of Set, Delete and BuildGuildTable, Get returns exactly what a
//     plain map[uint64]Guild given the same sequence would, field for
//     field (the Migration pointer is the one last set), and Len is that
//     map's length.
//   - All yields every guild once, in ascending id order.
//   - Count(owner) is the number of guilds whose Owner is owner, and
//     OwnedBy(owner) their ids in ascending order.
//   - The Owner and State of a guild returned are the table's interned
//     strings: reading allocates nothing beyond the Guild value.
//
// A GuildTable is not safe for concurrent use when one of the callers writes;
// concurrent reads (Get, Len, Count, OwnedBy, All) are safe. The zero GuildTable
// is empty and ready to use.
type GuildTable struct {
	cfg  config
	segs []segment // by id range; segs[0].lo == 0; never empty once initialised
	n    int       // guilds

	classes     []class
	liveClasses int // classes with live > 0
	owners      []owner
	ownerIdx    map[string]uint32
	states      []GuildState
	stateIdx    map[GuildState]uint32
	lastOwner   uint32 // the owner of the last Set, tried first

	mig map[uint64]*Migration // the guilds whose class has mig set
}

// class is one interned (owner, state, has-a-migration) triple.
type class struct {
	owner    uint32
	stateIdx uint32
	state    GuildState // states[stateIdx]
	mig      bool
	live     int // guilds of this class
}

type owner struct {
	name  string
	count int // guilds owned
	// classes[2*state+mig] is 1 + the class of (this owner, state, mig),
	// or 0 when there is none yet.
	classes []uint32
}

// entry is one record unpacked.
type entry struct {
	id, epoch, rev uint64
	class          uint32
}

// New returns an empty table.
func NewGuildTable() *GuildTable {
	t := &GuildTable{}
	t.init(defaultConfig)
	return t
}

func newGuildTableWithConfig(c config) *GuildTable {
	t := &GuildTable{}
	t.init(c)
	return t
}

func (t *GuildTable) init(c config) {
	t.cfg = c
	t.segs = []segment{{}}
	t.ownerIdx = map[string]uint32{}
	t.stateIdx = map[GuildState]uint32{}
	t.mig = map[uint64]*Migration{}
}

// Build returns a table holding gs, as if each were Set in order (a later
// record with the same id wins). gs is not modified or kept. It costs
// O(n) when gs is sorted by id (a snapshot is) and O(n log n) otherwise.
func BuildGuildTable(gs []Guild) *GuildTable {
	return buildGuildTableWithConfig(defaultConfig, gs)
}

func buildGuildTableWithConfig(c config, gs []Guild) *GuildTable {
	sorted := true
	for i := 1; i < len(gs); i++ {
		if gs[i].ID <= gs[i-1].ID {
			sorted = false
			break
		}
	}
	b := newGuildTableBuilder(c)
	if sorted {
		for i := range gs {
			b.add(&gs[i])
		}
		return b.finish()
	}
	order := make([]int, len(gs)) // indexes into gs, by id
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(gs[a].ID, gs[b].ID) })
	for i, k := range order {
		if i+1 < len(order) && gs[order[i+1]].ID == gs[k].ID {
			continue // a later record of the same id wins
		}
		b.add(&gs[k])
	}
	return b.finish()
}

// guildTableBuilder builds a table from guilds given in strictly ascending
// id order, one at a time, holding at most one segment's records unpacked:
// a snapshot is restored through it without a slice of every guild.
type guildTableBuilder struct {
	t       *GuildTable
	pending []entry
	target  int // records per segment: 3/4 of the maximum, so that segments take inserts before splitting
}

func newGuildTableBuilder(c config) *guildTableBuilder {
	t := newGuildTableWithConfig(c)
	t.segs = t.segs[:0]
	target := max(c.maxSeg*3/4, 1)
	return &guildTableBuilder{t: t, target: target, pending: make([]entry, 0, target)}
}

// add appends g, whose id must be above every id added before.
func (b *guildTableBuilder) add(g *Guild) {
	t := b.t
	c := t.classFor(g.Owner, g.State, g.Migration != nil)
	t.ref(c)
	if g.Migration != nil {
		t.mig[g.ID] = g.Migration
	}
	b.pending = append(b.pending, entry{id: g.ID, epoch: g.Epoch, rev: g.Revision, class: c})
	if len(b.pending) == b.target {
		b.flush()
	}
}

func (b *guildTableBuilder) flush() {
	t := b.t
	i := 0
	next := func() entry { i++; return b.pending[i-1] }
	s := t.encodeSegment(next, len(b.pending), len(b.pending)*12/8+64)
	if len(t.segs) > 0 {
		s.lo = s.blocks[0].first
	}
	t.segs = append(t.segs, s)
	t.n += len(b.pending)
	b.pending = b.pending[:0]
}

// finish returns the table; the builder must not be used after it.
func (b *guildTableBuilder) finish() *GuildTable {
	if len(b.pending) > 0 {
		b.flush()
	}
	if len(b.t.segs) == 0 {
		b.t.segs = []segment{{}}
	}
	return b.t
}

func (t *GuildTable) ensure() {
	if t.segs == nil {
		t.init(defaultConfig)
	}
}

// Len returns the number of guilds.
func (t *GuildTable) Len() int { return t.n }

// Get returns a guild's record.
func (t *GuildTable) Get(id uint64) (Guild, bool) {
	if t.n == 0 {
		return Guild{}, false
	}
	s := &t.segs[t.segFor(id)]
	if len(s.ov) > 0 {
		if e, ok := s.ov[id]; ok {
			if e.flags&ovDeleted != 0 {
				return Guild{}, false
			}
			return t.guild(entry{id: id, epoch: e.epoch, rev: e.rev, class: e.class}), true
		}
	}
	pos, ok := s.find(id)
	if !ok {
		return Guild{}, false
	}
	return t.guild(s.at(pos)), true
}

func (t *GuildTable) guild(e entry) Guild {
	c := &t.classes[e.class]
	g := Guild{ID: e.id, Owner: t.owners[c.owner].name, State: c.state, Epoch: e.epoch, Revision: e.rev}
	if c.mig {
		g.Migration = t.mig[e.id]
	}
	return g
}

// Set inserts or replaces a guild's record. The Migration pointer is kept
// as given (the caller must not modify what it points to afterwards).
func (t *GuildTable) Set(g Guild) {
	t.ensure()
	si := t.segFor(g.ID)
	t.setIn(si, t.entryOf(&g))
	t.maybeMerge(si)
	t.maybeCompact()
}

// entryOf interns g's class, refers to it and records its migration.
func (t *GuildTable) entryOf(g *Guild) entry {
	c := t.classFor(g.Owner, g.State, g.Migration != nil)
	t.ref(c)
	if g.Migration != nil {
		t.mig[g.ID] = g.Migration
	} else if len(t.mig) > 0 {
		delete(t.mig, g.ID)
	}
	return entry{id: g.ID, epoch: g.Epoch, rev: g.Revision, class: c}
}

// setIn puts e, whose class is already referred to, into segment si's
// overlay, dropping the record it replaces.
func (t *GuildTable) setIn(si int, e entry) {
	s := &t.segs[si]
	var flags uint8
	if old, ok := s.ov[e.id]; ok {
		flags = old.flags & ovInBase
		if old.flags&ovDeleted == 0 {
			t.unref(old.class)
		} else {
			t.n++
			s.live++
		}
	} else if pos, ok := s.find(e.id); ok {
		flags = ovInBase
		t.unref(s.classAt(pos))
		s.shade(pos)
	} else {
		t.n++
		s.live++
	}
	if s.ov == nil {
		s.ov = map[uint64]ovEntry{}
	}
	s.ov[e.id] = ovEntry{epoch: e.epoch, rev: e.rev, class: e.class, flags: flags}
}

// SetMany is Set of each of gs in order (a later record of an id wins),
// done a segment at a time: the records are sorted by id, and a segment
// that would outgrow its overlay is rebuilt once with them merged in rather
// than taking them one by one. gs is not modified or kept; the Migration
// pointers are, as with Set.
func (t *GuildTable) SetMany(gs []Guild) {
	if len(gs) == 0 {
		return
	}
	t.ensure()
	type seq struct {
		e entry
		i int // in gs: of two records of one id, the later wins
	}
	ss := make([]seq, len(gs))
	for i := range gs {
		ss[i] = seq{t.entryOf(&gs[i]), i}
	}
	slices.SortFunc(ss, func(a, b seq) int {
		if c := cmp.Compare(a.e.id, b.e.id); c != 0 {
			return c
		}
		return cmp.Compare(a.i, b.i)
	})
	es := make([]entry, 0, len(ss))
	for k := range ss {
		if k+1 < len(ss) && ss[k+1].e.id == ss[k].e.id {
			t.unref(ss[k].e.class) // replaced by the later record
			continue
		}
		es = append(es, ss[k].e)
	}
	// From the last segment to the first: a rebuild changes only the
	// segments at and after the one it starts at, or the one before it,
	// whose records come later in this loop and look their segment up then.
	for len(es) > 0 {
		si := t.segFor(es[len(es)-1].id)
		lo := t.segs[si].lo
		k := len(es) - 1
		for k > 0 && es[k-1].id >= lo {
			k--
		}
		group := es[k:]
		es = es[:k]
		s := &t.segs[si]
		if len(s.ov)+len(group) <= max(t.cfg.ovMin, s.n/t.cfg.ovFrac) {
			for _, e := range group {
				t.setIn(si, e)
			}
			continue
		}
		t.mergeIn(si, group)
	}
	t.maybeCompact()
}

// mergeIn rebuilds segment si (and a neighbour, when it is small) with the
// records of group, ascending ids within its range, merged in: a record of
// group replaces the segment's record of its id.
func (t *GuildTable) mergeIn(si int, group []entry) {
	s := &t.segs[si]
	for _, e := range group {
		if old, ok := s.ov[e.id]; ok {
			if old.flags&ovDeleted == 0 {
				t.unref(old.class)
				continue
			}
		} else if pos, ok := s.find(e.id); ok && !s.shadowed(pos) {
			t.unref(s.classAt(pos))
			continue
		}
		t.n++
		s.live++
	}
	i, j := t.rebuildRange(si)
	t.rebuildWith(i, j, group, nil)
}

// Delete removes a guild's record (nothing when it has none).
func (t *GuildTable) Delete(id uint64) {
	if t.n == 0 {
		return
	}
	si := t.segFor(id)
	s := &t.segs[si]
	if e, ok := s.ov[id]; ok {
		if e.flags&ovDeleted != 0 {
			return
		}
		t.unref(e.class)
		if e.flags&ovInBase != 0 {
			s.ov[id] = ovEntry{flags: ovInBase | ovDeleted}
		} else {
			delete(s.ov, id)
		}
	} else if pos, ok := s.find(id); ok {
		t.unref(s.classAt(pos))
		s.shade(pos)
		if s.ov == nil {
			s.ov = map[uint64]ovEntry{}
		}
		s.ov[id] = ovEntry{flags: ovInBase | ovDeleted}
	} else {
		return
	}
	t.n--
	s.live--
	delete(t.mig, id)
	t.maybeMerge(si)
}

// Count returns the number of guilds owner owns.
func (t *GuildTable) Count(owner string) int {
	o, ok := t.ownerIdx[owner]
	if !ok {
		return 0
	}
	return t.owners[o].count
}

// OwnedBy returns the ids of the guilds owner owns, ascending (nil when
// none). It reads each segment's owner index and overlay, not every guild.
func (t *GuildTable) OwnedBy(owner string) []uint64 {
	o, ok := t.ownerIdx[owner]
	if !ok || t.owners[o].count == 0 {
		return nil
	}
	out := make([]uint64, 0, t.owners[o].count)
	var extra []uint64
	for i := range t.segs {
		s := &t.segs[i]
		start := len(out)
		out = s.appendOwned(out, o)
		extra = extra[:0]
		for id, e := range s.ov {
			if e.flags&ovDeleted == 0 && t.classes[e.class].owner == o {
				extra = append(extra, id)
			}
		}
		if len(extra) == 0 {
			continue
		}
		slices.Sort(extra)
		// Merge extra into out[start:] from the back, in place.
		nb := len(out) - start
		out = append(out, extra...)
		b, x, k := start+nb-1, len(extra)-1, len(out)-1
		for x >= 0 {
			if b >= start && out[b] > extra[x] {
				out[k] = out[b]
				b--
			} else {
				out[k] = extra[x]
				x--
			}
			k--
		}
	}
	return out
}

// All yields every guild in ascending id order. The table must not be
// changed while the iteration runs.
func (t *GuildTable) All() iter.Seq[Guild] {
	return func(yield func(Guild) bool) {
		for i := range t.segs {
			it := newSegIter(&t.segs[i])
			for e, ok := it.next(); ok; e, ok = it.next() {
				if !yield(t.guild(e)) {
					return
				}
			}
		}
	}
}

// After yields the guilds with ids above after in ascending id order (a
// page of a list starts there). It skips at most one segment's records
// before the first. The table must not be changed while the iteration runs.
func (t *GuildTable) After(after uint64) iter.Seq[Guild] {
	return func(yield func(Guild) bool) {
		if t.n == 0 {
			return
		}
		for i := t.segFor(after); i < len(t.segs); i++ {
			it := newSegIter(&t.segs[i])
			for e, ok := it.next(); ok; e, ok = it.next() {
				if e.id > after && !yield(t.guild(e)) {
					return
				}
			}
		}
	}
}

// Clone returns a copy of the table for reading while the original goes
// on changing: a list of ten million guilds is written from it without
// holding the state's lock. The packed bases, which change only by being
// replaced, are shared; the overlays, shadow bitsets and interning tables
// are copied, so a clone costs O(segments + overlay records), not O(guilds).
// The clone must not be changed (Set, SetMany, Delete).
func (t *GuildTable) Clone() *GuildTable {
	c := *t
	c.segs = slices.Clone(t.segs)
	for i := range c.segs {
		s := &c.segs[i]
		s.ov = maps.Clone(s.ov)
		s.shadow = slices.Clone(s.shadow)
	}
	c.classes = slices.Clone(t.classes)
	c.owners = slices.Clone(t.owners)
	for i := range c.owners {
		c.owners[i].classes = slices.Clone(c.owners[i].classes)
	}
	c.ownerIdx = maps.Clone(t.ownerIdx)
	c.states = slices.Clone(t.states)
	c.stateIdx = maps.Clone(t.stateIdx)
	c.mig = maps.Clone(t.mig)
	return &c
}

// Migrating returns how many guilds have a Migration.
func (t *GuildTable) Migrating() int { return len(t.mig) }

// Migrations yields the guilds that have a Migration, in ascending id order.
func (t *GuildTable) Migrations() iter.Seq[Guild] {
	return func(yield func(Guild) bool) {
		ids := make([]uint64, 0, len(t.mig))
		for id := range t.mig {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			if g, ok := t.Get(id); ok && !yield(g) {
				return
			}
		}
	}
}

// AppendTo appends every guild to dst in ascending id order.
func (t *GuildTable) AppendTo(dst []Guild) []Guild {
	dst = slices.Grow(dst, t.n)
	for g := range t.All() {
		dst = append(dst, g)
	}
	return dst
}

// segFor returns the index of the segment whose range holds id.
func (t *GuildTable) segFor(id uint64) int {
	lo, hi := 1, len(t.segs) // the answer is the last segment with lo <= id
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if t.segs[mid].lo <= id {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo - 1
}

// ---- interning ----

func (t *GuildTable) classFor(ownerName string, state GuildState, mig bool) uint32 {
	o := t.lastOwner
	if int(o) >= len(t.owners) || t.owners[o].name != ownerName {
		var ok bool
		o, ok = t.ownerIdx[ownerName]
		if !ok {
			name := strings.Clone(ownerName) // never keep a caller's larger buffer alive
			o = uint32(len(t.owners))
			t.owners = append(t.owners, owner{name: name})
			t.ownerIdx[name] = o
		}
		t.lastOwner = o
	}
	si := t.stateFor(state)
	k := 2 * int(si)
	if mig {
		k++
	}
	ow := &t.owners[o]
	if k < len(ow.classes) && ow.classes[k] != 0 {
		return ow.classes[k] - 1
	}
	c := uint32(len(t.classes))
	t.classes = append(t.classes, class{owner: o, stateIdx: si, state: t.states[si], mig: mig})
	if k >= len(ow.classes) {
		ow.classes = append(ow.classes, make([]uint32, k+1-len(ow.classes))...)
	}
	ow.classes[k] = c + 1
	return c
}

func (t *GuildTable) stateFor(state GuildState) uint32 {
	for i := range min(len(t.states), 4) { // there are two in practice
		if t.states[i] == state {
			return uint32(i)
		}
	}
	si, ok := t.stateIdx[state]
	if !ok {
		st := GuildState(strings.Clone(string(state)))
		si = uint32(len(t.states))
		t.states = append(t.states, st)
		t.stateIdx[st] = si
	}
	return si
}

func (t *GuildTable) ref(c uint32) {
	cl := &t.classes[c]
	if cl.live == 0 {
		t.liveClasses++
	}
	cl.live++
	t.owners[cl.owner].count++
}

func (t *GuildTable) unref(c uint32) {
	cl := &t.classes[c]
	cl.live--
	if cl.live == 0 {
		t.liveClasses--
	}
	t.owners[cl.owner].count--
}

// maybeCompact drops the classes and owners no guild uses once they
// outnumber the live ones, renumbering the rest (a full rebuild: rare,
// amortised over at least compactSlack new classes).
func (t *GuildTable) maybeCompact() {
	if len(t.classes) <= 2*t.liveClasses+t.cfg.compactSlack {
		return
	}
	remap := make([]uint32, len(t.classes))
	oldOwners, oldStates := t.owners, t.states
	t.owners, t.ownerIdx, t.states, t.stateIdx = nil, map[string]uint32{}, nil, map[GuildState]uint32{}
	classes := t.classes
	t.classes, t.liveClasses, t.lastOwner = nil, 0, 0
	for i, c := range classes {
		if c.live == 0 {
			continue
		}
		n := t.classFor(oldOwners[c.owner].name, oldStates[c.stateIdx], c.mig)
		remap[i] = n
		nc := &t.classes[n]
		nc.live = c.live
		t.liveClasses++
		t.owners[nc.owner].count += c.live
	}
	t.rebuild(0, len(t.segs), remap)
}

// ---- merging ----

// maybeMerge rebuilds segment si once its overlay has outgrown its base,
// taking a neighbour along when it has shrunk to under a quarter of the
// maximum.
func (t *GuildTable) maybeMerge(si int) {
	s := &t.segs[si]
	if len(s.ov) <= max(t.cfg.ovMin, s.n/t.cfg.ovFrac) {
		return
	}
	i, j := t.rebuildRange(si)
	t.rebuild(i, j, nil)
}

// rebuildRange is the segments [i, j) a rebuild of segment si takes: si,
// and a neighbour when si has shrunk to under a quarter of the maximum.
func (t *GuildTable) rebuildRange(si int) (i, j int) {
	i, j = si, si+1
	if t.segs[si].live < t.cfg.maxSeg/4 && len(t.segs) > 1 {
		if j < len(t.segs) {
			j++
		} else {
			i--
		}
	}
	return i, j
}

// rebuild replaces segments [i, j) by new ones holding their live records,
// with classes renumbered through remap when it is not nil.
func (t *GuildTable) rebuild(i, j int, remap []uint32) { t.rebuildWith(i, j, nil, remap) }

// rebuildWith is rebuild with the records of extra (ascending ids, within
// the segments' range, already counted in their live counts) merged in,
// each replacing the segments' record of its id.
func (t *GuildTable) rebuildWith(i, j int, extra []entry, remap []uint32) {
	m, words, base := 0, 0, 0
	its := make([]*segIter, 0, j-i)
	for k := i; k < j; k++ {
		s := &t.segs[k]
		m += s.live
		words += len(s.words)
		base += s.n
		its = append(its, newSegIter(s))
	}
	var cur entry // the segments' next record; cur.id == 0 when none is read
	more := true
	nextOld := func() {
		for len(its) > 0 {
			if e, ok := its[0].next(); ok {
				if remap != nil {
					e.class = remap[e.class]
				}
				cur = e
				return
			}
			its = its[1:]
		}
		cur, more = entry{}, false
	}
	nextOld()
	next := func() entry {
		if len(extra) > 0 && (!more || extra[0].id <= cur.id) {
			e := extra[0]
			extra = extra[1:]
			if more && e.id == cur.id {
				nextOld() // replaced
			}
			return e
		}
		e := cur
		nextOld()
		return e
	}
	hint := m*12/8 + 64
	if base > 0 {
		hint = int(float64(words)*float64(m)/float64(base)*1.05) + 64
	}
	out := t.encodeSegments(t.segs[i].lo, next, m, hint)
	t.segs = slices.Replace(t.segs, i, j, out...)
	if len(t.segs) > 1 {
		// An empty segment goes; its range joins its left neighbour's (or,
		// for the first, the next one starts at 0).
		t.segs = slices.DeleteFunc(t.segs, func(s segment) bool { return s.n == 0 && len(s.ov) == 0 })
		if len(t.segs) == 0 {
			t.segs = []segment{{}}
		}
		t.segs[0].lo = 0
	}
}

// encodeSegments encodes m records pulled from next (ascending ids) into
// segments, the first starting its range at lo: one, or when m is over the
// maximum, as many as fill each to 3/4 of it (so that they take inserts
// before splitting).
func (t *GuildTable) encodeSegments(lo uint64, next func() entry, m, wordsHint int) []segment {
	nseg := 1
	if m > t.cfg.maxSeg {
		target := max(t.cfg.maxSeg*3/4, 1)
		nseg = (m + target - 1) / target
	}
	out := make([]segment, 0, nseg)
	for k := range nseg {
		size := m / nseg
		if k < m%nseg {
			size++
		}
		s := t.encodeSegment(next, size, wordsHint/nseg+64)
		if k == 0 {
			s.lo = lo
		} else {
			s.lo = s.blocks[0].first
		}
		out = append(out, s)
	}
	return out
}
