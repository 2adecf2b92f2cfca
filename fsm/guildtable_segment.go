package fsm

import (
	"cmp"
	"math/bits"
	"slices"
)

const (
	blockShift = 7
	blockSize  = 1 << blockShift // records per block: a block of w-bit records is exactly 2w words
)

// segment is one id range of the table: a packed base and an overlay.
type segment struct {
	lo   uint64 // every id of the segment is >= lo and < the next segment's lo
	n    int    // records in the base
	live int    // records in the segment (base not shadowed, plus overlay upserts)

	blocks []blockHdr
	last   uint64   // the base's greatest id
	words  []uint64 // every block's records

	// The base's owner index: for each owner with records in the base, the
	// positions of those records.
	owners  []ownerSet // by owner
	posArr  []uint16
	posBits []uint64

	ov     map[uint64]ovEntry // changes since the base was built
	shadow []uint64           // bit per base position the overlay replaces (nil: none)
}

// blockHdr describes one block. Its records are w bits each, back to back
// from word off; a record holds, in this order, its id's offset from the
// block's first id, its epoch's from epochMin, its revision−epoch's from
// dMin and its class's from classMin, each field in a fixed number of bits.
type blockHdr struct {
	first    uint64 // the first (least) id
	epochMin uint64 // least epoch
	dMin     uint64 // least revision−epoch (mod 2^64)
	classMin uint32
	off      uint32 // the block's first word in words
	wID      uint8  // field widths in bits
	wE       uint8
	wD       uint8
	wC       uint8
	w        uint8 // record width: the sum
}

// ownerSet is one owner's records in a segment's base: n positions, at
// posArr[off:off+n] or, as a bitmap, at posBits[off:off+ceil(base/64)].
type ownerSet struct {
	owner  uint32
	bitmap bool
	off    uint32
	n      uint32
}

// ovEntry is one overlay record: an upsert, or (ovDeleted) a tombstone for
// a base record. ovInBase: the id is in the base, whose record it shadows.
type ovEntry struct {
	epoch, rev uint64
	class      uint32
	flags      uint8
}

const (
	ovDeleted uint8 = 1 << iota
	ovInBase
)

// getBits reads the w-bit field at bit offset bit.
func getBits(words []uint64, bit uint, w uint8) uint64 {
	if w == 0 {
		return 0
	}
	wi, sh := bit>>6, bit&63
	v := words[wi] >> sh
	if sh+uint(w) > 64 {
		v |= words[wi+1] << (64 - sh)
	}
	if w < 64 {
		v &= 1<<w - 1
	}
	return v
}

// setBits ors v (at most w bits) into the field at bit offset bit.
func setBits(words []uint64, bit uint, w uint8, v uint64) {
	if w == 0 {
		return
	}
	wi, sh := bit>>6, bit&63
	words[wi] |= v << sh
	if sh+uint(w) > 64 {
		words[wi+1] |= v >> (64 - sh)
	}
}

func (s *segment) blockLen(b int) int { return min(blockSize, s.n-b<<blockShift) }

// recBit is the bit offset of record i of block h.
func recBit(h *blockHdr, i int) uint { return uint(h.off)<<6 + uint(i)*uint(h.w) }

// gallop returns the last i in [lo, hi) with le(i), given le(lo) and
// le false from hi on (le is monotone: true, then false). It gallops from
// the probe g (lo <= g < hi) in steps that double, then halves what is
// left: O(log distance) from a good probe.
func gallop(lo, hi, g int, le func(i int) bool) int {
	if le(g) {
		lo = g
		for step := 1; lo+step < hi; step <<= 1 {
			if !le(lo + step) {
				hi = lo + step
				break
			}
			lo += step
		}
	} else {
		hi = g
		for step := 1; hi-step > lo; step <<= 1 {
			if le(hi - step) {
				lo = hi - step
				break
			}
			hi -= step
		}
	}
	for hi-lo > 1 {
		mid := int(uint(lo+hi) >> 1)
		if le(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}

// guess interpolates where x falls between lo (at 0) and hi (at n-1),
// given lo <= x < hi: a probe to start a search from.
func guess(x, lo, hi uint64, n int) int {
	g := int(float64(x-lo) / float64(hi-lo) * float64(n-1))
	return min(max(g, 0), n-2)
}

// find returns the base position of id. Ids are roughly uniform, so both
// searches start from an interpolated probe and gallop from it: a lookup
// touches a line or two of each array instead of one per halving, and a
// skewed distribution costs at most about twice a binary search.
func (s *segment) find(id uint64) (int, bool) {
	n := len(s.blocks)
	if n == 0 || id < s.blocks[0].first || id > s.last {
		return 0, false
	}
	// The block: the last whose first id is <= id.
	b := n - 1
	if id < s.blocks[b].first {
		// blocks[0].first <= id < blocks[b].first
		b = gallop(0, b, guess(id, s.blocks[0].first, s.blocks[b].first, n), func(i int) bool { return s.blocks[i].first <= id })
	}
	// The record: the last i with key(i) <= want, where key(i) is record
	// i's id offset (key(0) = 0); it interpolates up to the next block's
	// first id (or the base's last), which needs no read of the block.
	h := &s.blocks[b]
	want := id - h.first
	key := func(i int) uint64 { return getBits(s.words, recBit(h, i), h.wID) }
	k := s.blockLen(b)
	end := s.last + 1 // past the block's ids
	if b+1 < n {
		end = s.blocks[b+1].first
	}
	lo := 0 // key(0) <= want < key(k), with key(k) = ∞
	if k > 1 {
		span := end - h.first
		if span == 0 { // the last block ends at the top of the id range
			span = ^uint64(0)
		}
		g := min(max(int(float64(want)/float64(span)*float64(k)), 0), k-1)
		lo = gallop(0, k, g, func(i int) bool { return key(i) <= want })
	}
	if key(lo) == want {
		return b<<blockShift + lo, true
	}
	return 0, false
}

// decode unpacks record i of block b.
func (s *segment) decode(b, i int) entry {
	h := &s.blocks[b]
	bit := recBit(h, i)
	id := s.blocks[b].first + getBits(s.words, bit, h.wID)
	bit += uint(h.wID)
	epoch := h.epochMin + getBits(s.words, bit, h.wE)
	bit += uint(h.wE)
	d := h.dMin + getBits(s.words, bit, h.wD)
	bit += uint(h.wD)
	c := h.classMin + uint32(getBits(s.words, bit, h.wC))
	return entry{id: id, epoch: epoch, rev: epoch + d, class: c}
}

// at unpacks the base record at pos.
func (s *segment) at(pos int) entry { return s.decode(pos>>blockShift, pos&(blockSize-1)) }

func (s *segment) idAt(pos int) uint64 {
	b := pos >> blockShift
	h := &s.blocks[b]
	return s.blocks[b].first + getBits(s.words, recBit(h, pos&(blockSize-1)), h.wID)
}

func (s *segment) classAt(pos int) uint32 {
	h := &s.blocks[pos>>blockShift]
	bit := recBit(h, pos&(blockSize-1)) + uint(h.wID) + uint(h.wE) + uint(h.wD)
	return h.classMin + uint32(getBits(s.words, bit, h.wC))
}

// decodeBlock unpacks block b into buf and returns how many records it has.
func (s *segment) decodeBlock(b int, buf *[blockSize]entry) int {
	k := s.blockLen(b)
	for i := range k {
		buf[i] = s.decode(b, i)
	}
	return k
}

// decodeClasses unpacks block b's classes into buf and returns how many
// records the block has.
func (s *segment) decodeClasses(b int, buf *[blockSize]uint32) int {
	k := s.blockLen(b)
	h := &s.blocks[b]
	bit := recBit(h, 0) + uint(h.wID) + uint(h.wE) + uint(h.wD)
	for i := range k {
		buf[i] = h.classMin + uint32(getBits(s.words, bit, h.wC))
		bit += uint(h.w)
	}
	return k
}

func (s *segment) shade(pos int) {
	if s.shadow == nil {
		s.shadow = make([]uint64, (s.n+63)/64)
	}
	s.shadow[pos>>6] |= 1 << (pos & 63)
}

func (s *segment) shadowed(pos int) bool {
	return s.shadow != nil && s.shadow[pos>>6]&(1<<(pos&63)) != 0
}

// appendOwned appends the ids of owner o's base records the overlay does
// not shadow, ascending.
func (s *segment) appendOwned(out []uint64, o uint32) []uint64 {
	k, ok := slices.BinarySearchFunc(s.owners, o, func(a ownerSet, o uint32) int { return cmp.Compare(a.owner, o) })
	if !ok {
		return out
	}
	set := s.owners[k]
	if !set.bitmap {
		for _, p := range s.posArr[set.off : set.off+set.n] {
			if !s.shadowed(int(p)) {
				out = append(out, s.idAt(int(p)))
			}
		}
		return out
	}
	nw := (s.n + 63) / 64
	for w, word := range s.posBits[int(set.off) : int(set.off)+nw] {
		if s.shadow != nil {
			word &^= s.shadow[w]
		}
		for word != 0 {
			p := w<<6 + bits.TrailingZeros64(word)
			word &= word - 1
			out = append(out, s.idAt(p))
		}
	}
	return out
}

// segIter yields a segment's live records in ascending id order.
type segIter struct {
	s   *segment
	pos int // next base position
	blk int // block in buf (-1: none)
	buf [blockSize]entry
	ov  []entry // the overlay's upserts, by id
	oi  int
}

func newSegIter(s *segment) *segIter {
	it := &segIter{s: s, blk: -1}
	for id, e := range s.ov {
		if e.flags&ovDeleted == 0 {
			it.ov = append(it.ov, entry{id: id, epoch: e.epoch, rev: e.rev, class: e.class})
		}
	}
	slices.SortFunc(it.ov, func(a, b entry) int { return cmp.Compare(a.id, b.id) })
	return it
}

func (it *segIter) next() (entry, bool) {
	s := it.s
	for it.pos < s.n && s.shadowed(it.pos) {
		it.pos++
	}
	var be entry
	haveBase := it.pos < s.n
	if haveBase {
		if b := it.pos >> blockShift; b != it.blk {
			s.decodeBlock(b, &it.buf)
			it.blk = b
		}
		be = it.buf[it.pos&(blockSize-1)]
	}
	if it.oi < len(it.ov) && (!haveBase || it.ov[it.oi].id < be.id) {
		it.oi++
		return it.ov[it.oi-1], true
	}
	if haveBase {
		it.pos++
		return be, true
	}
	return entry{}, false
}

// encodeSegment packs the next m records (ascending ids) into a new base
// and indexes it by owner.
func (t *GuildTable) encodeSegment(next func() entry, m, wordsHint int) segment {
	nb := (m + blockSize - 1) / blockSize
	s := segment{n: m, live: m, blocks: make([]blockHdr, nb)}
	words := make([]uint64, 0, wordsHint)
	count := make([]uint32, len(t.owners)) // records per owner
	var buf [blockSize]entry
	for b := range nb {
		k := min(blockSize, m-b<<blockShift)
		for i := range k {
			e := next()
			buf[i] = e
			o := t.classes[e.class].owner
			if int(o) >= len(count) { // Build interns as it goes
				count = append(count, make([]uint32, len(t.owners)-len(count))...)
			}
			count[o]++
		}
		s.blocks[b], words = encodeBlock(buf[:k], words)
		s.last = buf[k-1].id
	}
	if cap(words)-len(words) > len(words)/16 {
		words = slices.Clone(words)
	}
	s.words = words
	t.index(&s, count)
	return s
}

// encodeBlock appends the records of es (at most blockSize, ascending ids)
// to words.
func encodeBlock(es []entry, words []uint64) (blockHdr, []uint64) {
	first := es[0].id
	eMin, eMax := es[0].epoch, es[0].epoch
	dMin, dMax := es[0].rev-es[0].epoch, es[0].rev-es[0].epoch
	cMin, cMax := es[0].class, es[0].class
	for _, e := range es[1:] {
		eMin, eMax = min(eMin, e.epoch), max(eMax, e.epoch)
		d := e.rev - e.epoch
		dMin, dMax = min(dMin, d), max(dMax, d)
		cMin, cMax = min(cMin, e.class), max(cMax, e.class)
	}
	h := blockHdr{
		first: first, epochMin: eMin, dMin: dMin, classMin: cMin, off: uint32(len(words)),
		wID: uint8(bits.Len64(es[len(es)-1].id - first)),
		wE:  uint8(bits.Len64(eMax - eMin)),
		wD:  uint8(bits.Len64(dMax - dMin)),
		wC:  uint8(bits.Len32(cMax - cMin)),
	}
	h.w = h.wID + h.wE + h.wD + h.wC
	start := len(words)
	nw := 2 * int(h.w)
	words = slices.Grow(words, nw)[:start+nw]
	clear(words[start:])
	for i, e := range es {
		bit := recBit(&h, i)
		setBits(words, bit, h.wID, e.id-first)
		bit += uint(h.wID)
		setBits(words, bit, h.wE, e.epoch-eMin)
		bit += uint(h.wE)
		setBits(words, bit, h.wD, e.rev-e.epoch-dMin)
		bit += uint(h.wD)
		setBits(words, bit, h.wC, uint64(e.class-cMin))
	}
	return h, words
}

// index builds a new base's owner index, given the number of records of
// each owner: an owner with more than 1/16 of the records gets a bitmap (n
// bits), the others an array (16 bits each).
func (t *GuildTable) index(s *segment, count []uint32) {
	if s.n == 0 {
		return
	}
	var buf [blockSize]uint32
	nw := (s.n + 63) / 64
	set := make([]int32, len(count)) // owner → index in s.owners
	nArr, nBits := 0, 0
	for o, c := range count {
		set[o] = -1
		if c == 0 {
			continue
		}
		set[o] = int32(len(s.owners))
		os := ownerSet{owner: uint32(o), n: c, bitmap: int(c)*16 > s.n}
		if os.bitmap {
			os.off = uint32(nBits)
			nBits += nw
		} else {
			os.off = uint32(nArr)
			nArr += int(c)
		}
		s.owners = append(s.owners, os)
	}
	s.posArr = make([]uint16, nArr)
	s.posBits = make([]uint64, nBits)
	fill := make([]uint32, len(s.owners)) // array positions written so far
	for b := range s.blocks {
		for i, c := range buf[:s.decodeClasses(b, &buf)] {
			j := set[t.classes[c].owner]
			os := &s.owners[j]
			pos := b<<blockShift + i
			if os.bitmap {
				s.posBits[int(os.off)+pos>>6] |= 1 << (pos & 63)
			} else {
				s.posArr[os.off+fill[j]] = uint16(pos)
				fill[j]++
			}
		}
	}
}
