package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
)

// Snapshot encoding (version 3), designed for a million guilds: a header, the
// pods as a table, then the guilds sorted by id with delta-encoded ids and the
// owner as an index into the pod table — about 8 bytes per guild, encoded and
// decoded in one pass with no reflection. A CRC-32C trailer catches
// corruption. Integers are unsigned varints unless noted.
//
//	magic "MODBOTFSM" | version=3 | revision | shard_count
//	pods: count, then per pod: id, ordinal, addr, state, since(zigzag),
//	        flags byte (bit 0: drain)                                  [v2]
//	shards: per shard: holder index (pod index + 1, 0 = none),
//	        holder epoch                                               [v2]
//	config nodes: count, then per node in id order: id, raft_addr, http_addr
//	checkpoints: count, then per shard in order: shard, session_id,
//	        seq(zigzag), resume_url, holder, at(zigzag), epoch         [v2]
//	guilds: count, then per guild in id order: id delta, owner index,
//	        state byte, epoch, revision delta-free, migration byte (0 none,
//	        1 a move, 2 a failover [v3]) [from index, to index, epoch, phase,
//	        started_at(zigzag), (failover only) loss_window_ms(zigzag)]
//	crc32c of everything above (4 bytes, little endian)
//
// ReadSnapshot also reads version 1 (written by older builds), which lacks
// the fields marked [v2]: they restore as zero — no drain remembered, holder
// epoch 0, checkpoint epoch 0 — exactly what replaying the version-1 log
// entries that produced the snapshot yields (see CommandVersion), so every
// node reaches the same state whatever snapshot it starts from.
const (
	snapshotMagic   = "MODBOTFSM"
	snapshotVersion = 3
	podFlagDrain    = 1 << 0
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// snapWriter appends to a buffer and writes it, checksummed, 64 KiB at a
// time: per field it only appends (a snapshot is ~10 fields per guild).
type snapWriter struct {
	w   io.Writer
	out []byte
	crc uint32
	err error
}

const snapChunk = 1 << 16

func (sw *snapWriter) flush() {
	if sw.err == nil && len(sw.out) > 0 {
		sw.crc = crc32.Update(sw.crc, castagnoli, sw.out)
		_, sw.err = sw.w.Write(sw.out)
	}
	sw.out = sw.out[:0]
}

// maybeFlush writes the buffer once it holds a chunk.
func (sw *snapWriter) maybeFlush() {
	if len(sw.out) >= snapChunk {
		sw.flush()
	}
}

func (sw *snapWriter) write(b []byte)   { sw.out = append(sw.out, b...); sw.maybeFlush() }
func (sw *snapWriter) uvarint(v uint64) { sw.out = binary.AppendUvarint(sw.out, v) }
func (sw *snapWriter) varint(v int64)   { sw.out = binary.AppendVarint(sw.out, v) }
func (sw *snapWriter) str(s string) {
	sw.uvarint(uint64(len(s)))
	sw.out = append(sw.out, s...)
	sw.maybeFlush()
}
func (sw *snapWriter) byte1(b byte) { sw.out = append(sw.out, b) }

var podStates = []PodState{PodActive, PodDown, PodDraining}
var guildStates = []GuildState{GuildActive, GuildMigrating}

func podStateCode(s PodState) byte {
	for i, v := range podStates {
		if v == s {
			return byte(i)
		}
	}
	return 0
}

func guildStateCode(s GuildState) byte {
	for i, v := range guildStates {
		if v == s {
			return byte(i)
		}
	}
	return 0
}

// WriteSnapshot encodes the state to w.
func (s *State) WriteSnapshot(w io.Writer) error {
	return s.writeSnapshot(w, snapshotVersion)
}

// writeSnapshot encodes the state in the given version, 2 or 3 (tests
// write version 2 to check that this build still reads what the previous
// one wrote); version 2 cannot hold a failover migration.
func (s *State) writeSnapshot(w io.Writer, version uint64) error {
	if version < 2 || version > snapshotVersion {
		return fmt.Errorf("write snapshot: version %d is not writable (2..%d)", version, snapshotVersion)
	}
	sw := &snapWriter{w: w, out: make([]byte, 0, snapChunk+4096)}
	sw.write([]byte(snapshotMagic))
	sw.uvarint(version)
	sw.uvarint(s.Revision)
	sw.uvarint(uint64(s.ShardCount))
	pods := s.SortedPods()
	index := make(map[string]uint64, len(pods))
	sw.uvarint(uint64(len(pods)))
	for i, p := range pods {
		index[p.ID] = uint64(i)
		sw.str(p.ID)
		sw.uvarint(uint64(p.Ordinal))
		sw.str(p.Addr)
		sw.byte1(podStateCode(p.State))
		sw.varint(p.Since)
		var flags byte
		if p.Drain {
			flags |= podFlagDrain
		}
		sw.byte1(flags)
	}
	for i, h := range s.Shards {
		if h == "" {
			sw.uvarint(0)
		} else {
			sw.uvarint(index[h] + 1)
		}
		sw.uvarint(s.ShardEpochs[i])
	}
	cn := make([]string, 0, len(s.ConfigNodes))
	for id := range s.ConfigNodes {
		cn = append(cn, id)
	}
	slices.Sort(cn)
	sw.uvarint(uint64(len(cn)))
	for _, id := range cn {
		n := s.ConfigNodes[id]
		sw.str(n.ID)
		sw.str(n.RaftAddr)
		sw.str(n.HTTPAddr)
	}
	cps := make([]int, 0, len(s.Checkpoints))
	for sh := range s.Checkpoints {
		cps = append(cps, sh)
	}
	slices.Sort(cps)
	sw.uvarint(uint64(len(cps)))
	for _, sh := range cps {
		cp := s.Checkpoints[sh]
		sw.uvarint(uint64(sh))
		sw.str(cp.SessionID)
		sw.varint(cp.Seq)
		sw.str(cp.ResumeURL)
		sw.str(cp.Holder)
		sw.varint(cp.At)
		sw.uvarint(cp.Epoch)
	}
	sw.uvarint(uint64(s.Guilds.Len()))
	var prev uint64
	for g := range s.Guilds.All() {
		sw.uvarint(g.ID - prev)
		prev = g.ID
		sw.uvarint(index[g.Owner])
		sw.byte1(guildStateCode(g.State))
		sw.uvarint(g.Epoch)
		sw.uvarint(g.Revision)
		if m := g.Migration; m != nil {
			if m.Failover && version < 3 {
				return fmt.Errorf("write snapshot: guild %d's failover migration needs version 3", g.ID)
			}
			if m.Failover {
				sw.byte1(2)
			} else {
				sw.byte1(1)
			}
			sw.uvarint(index[m.From])
			sw.uvarint(index[m.To])
			sw.uvarint(m.Epoch)
			sw.str(m.Phase)
			sw.varint(m.StartedAt)
			if m.Failover {
				sw.varint(m.LossWindowMs)
			}
		} else {
			sw.byte1(0)
		}
		sw.maybeFlush()
	}
	sw.flush()
	if sw.err != nil {
		return fmt.Errorf("write snapshot: %w", sw.err)
	}
	var trailer [4]byte
	binary.LittleEndian.PutUint32(trailer[:], sw.crc)
	if _, err := w.Write(trailer[:]); err != nil {
		return fmt.Errorf("write snapshot trailer: %w", err)
	}
	return nil
}

// snapReader reads through its own buffer and checksums what it consumed
// a buffer at a time, not a byte at a time.
type snapReader struct {
	r      io.Reader
	buf    []byte
	pos    int // next unread byte of buf
	summed int // buf[:summed] is in crc
	crc    uint32
	err    error
}

// sum adds the consumed, not yet checksummed bytes to the checksum.
func (sr *snapReader) sum() {
	sr.crc = crc32.Update(sr.crc, castagnoli, sr.buf[sr.summed:sr.pos])
	sr.summed = sr.pos
}

// fill reads more after checksumming what was consumed; false at the end.
func (sr *snapReader) fill() bool {
	sr.sum()
	n := copy(sr.buf[:cap(sr.buf)], sr.buf[sr.pos:])
	sr.buf, sr.pos, sr.summed = sr.buf[:n], 0, 0
	for {
		m, err := sr.r.Read(sr.buf[n:cap(sr.buf)])
		sr.buf = sr.buf[:n+m]
		if m > 0 {
			return true
		}
		if err != nil {
			return false
		}
	}
}

func (sr *snapReader) ReadByte() (byte, error) {
	if sr.pos == len(sr.buf) && !sr.fill() {
		return 0, io.ErrUnexpectedEOF
	}
	b := sr.buf[sr.pos]
	sr.pos++
	return b, nil
}

// readFull fills b from the stream (checksummed like every byte consumed).
func (sr *snapReader) readFull(b []byte) error {
	for len(b) > 0 {
		if sr.pos == len(sr.buf) && !sr.fill() {
			return io.ErrUnexpectedEOF
		}
		n := copy(b, sr.buf[sr.pos:])
		sr.pos += n
		b = b[n:]
	}
	return nil
}

func (sr *snapReader) uvarint() uint64 {
	if sr.err != nil {
		return 0
	}
	if len(sr.buf)-sr.pos >= binary.MaxVarintLen64 {
		v, n := binary.Uvarint(sr.buf[sr.pos:])
		if n > 0 {
			sr.pos += n
			return v
		}
	}
	v, err := binary.ReadUvarint(sr)
	if err != nil {
		sr.err = err
	}
	return v
}

func (sr *snapReader) varint() int64 {
	if sr.err != nil {
		return 0
	}
	v, err := binary.ReadVarint(sr)
	if err != nil {
		sr.err = err
	}
	return v
}

func (sr *snapReader) bytes(n uint64) []byte {
	if sr.err != nil {
		return nil
	}
	if n > 1<<20 {
		sr.err = fmt.Errorf("field of %d bytes is too long", n)
		return nil
	}
	b := make([]byte, n)
	if err := sr.readFull(b); err != nil {
		sr.err = err
		return nil
	}
	return b
}

func (sr *snapReader) str() string { return string(sr.bytes(sr.uvarint())) }

func (sr *snapReader) byte1() byte {
	if sr.err != nil {
		return 0
	}
	b, err := sr.ReadByte()
	if err != nil {
		sr.err = err
	}
	return b
}

// ReadSnapshot decodes a state written by WriteSnapshot.
func ReadSnapshot(r io.Reader) (*State, error) {
	sr := &snapReader{r: r, buf: make([]byte, 0, snapChunk)}
	if string(sr.bytes(uint64(len(snapshotMagic)))) != snapshotMagic {
		return nil, errors.New("read snapshot: not a modbot FSM snapshot")
	}
	version := sr.uvarint()
	if version < 1 || version > snapshotVersion {
		return nil, fmt.Errorf("read snapshot: unsupported snapshot version %d (this build reads 1..%d)", version, snapshotVersion)
	}
	v2 := version >= 2
	s := New()
	s.Revision = sr.uvarint()
	// Checked before the conversion: a corrupted count of 2^63 or more
	// would turn negative as an int.
	shardCount := sr.uvarint()
	if shardCount > 65536 {
		return nil, fmt.Errorf("read snapshot: shard count %d out of range", shardCount)
	}
	s.ShardCount = int(shardCount)
	npods := sr.uvarint()
	if npods > 1<<20 {
		return nil, fmt.Errorf("read snapshot: %d pods is not plausible", npods)
	}
	pods := make([]*Pod, 0, npods)
	for i := uint64(0); i < npods && sr.err == nil; i++ {
		p := &Pod{ID: sr.str(), Ordinal: int(sr.uvarint()), Addr: sr.str()}
		st := sr.byte1()
		if int(st) >= len(podStates) {
			return nil, fmt.Errorf("read snapshot: bad pod state %d", st)
		}
		p.State = podStates[st]
		p.Since = sr.varint()
		if v2 {
			flags := sr.byte1()
			if flags&^podFlagDrain != 0 {
				return nil, fmt.Errorf("read snapshot: pod %s has unknown flags %#x", p.ID, flags)
			}
			p.Drain = flags&podFlagDrain != 0
		}
		pods = append(pods, p)
		s.Pods[p.ID] = p
	}
	podAt := func(i uint64) string {
		if i >= uint64(len(pods)) {
			if sr.err == nil {
				sr.err = fmt.Errorf("pod index %d out of range", i)
			}
			return ""
		}
		return pods[i].ID
	}
	s.Shards = make([]string, s.ShardCount)
	s.ShardEpochs = make([]uint64, s.ShardCount)
	for i := range s.Shards {
		if h := sr.uvarint(); h > 0 {
			s.Shards[i] = podAt(h - 1)
		}
		if v2 {
			s.ShardEpochs[i] = sr.uvarint()
		}
	}
	ncn := sr.uvarint()
	if ncn > 1<<16 {
		return nil, fmt.Errorf("read snapshot: %d config nodes is not plausible", ncn)
	}
	for i := uint64(0); i < ncn && sr.err == nil; i++ {
		n := ConfigNode{ID: sr.str(), RaftAddr: sr.str(), HTTPAddr: sr.str()}
		s.ConfigNodes[n.ID] = n
	}
	ncp := sr.uvarint()
	if ncp > 65536 {
		return nil, fmt.Errorf("read snapshot: %d checkpoints is not plausible", ncp)
	}
	for i := uint64(0); i < ncp && sr.err == nil; i++ {
		sh := int(sr.uvarint())
		cp := Checkpoint{SessionID: sr.str(), Seq: sr.varint(), ResumeURL: sr.str(), Holder: sr.str(), At: sr.varint()}
		if v2 {
			cp.Epoch = sr.uvarint()
		}
		s.Checkpoints[sh] = cp
	}
	n := sr.uvarint()
	if n > 1<<32 {
		return nil, fmt.Errorf("read snapshot: %d guilds is not plausible", n)
	}
	// n is read from the snapshot, whose checksum is only verified at the
	// end: a corrupted count must not allocate gigabytes up front. The
	// guilds go into the table as they are read, a segment at a time.
	b := newGuildTableBuilder(defaultConfig)
	var prev uint64
	for i := uint64(0); i < n && sr.err == nil; i++ {
		var gv Guild
		g := &gv
		// Ids are written strictly increasing: a zero (or wrapping) delta
		// is corruption, and would store two guilds under one id.
		d := sr.uvarint()
		if sr.err == nil && (d == 0 || prev+d < prev) {
			return nil, fmt.Errorf("read snapshot: guild id delta %d after guild %d does not increase the id", d, prev)
		}
		g.ID = prev + d
		prev = g.ID
		g.Owner = podAt(sr.uvarint())
		st := sr.byte1()
		if int(st) >= len(guildStates) {
			return nil, fmt.Errorf("read snapshot: bad guild state %d", st)
		}
		g.State = guildStates[st]
		g.Epoch = sr.uvarint()
		g.Revision = sr.uvarint()
		switch mb := sr.byte1(); {
		case mb == 1 || mb == 2 && version >= 3:
			g.Migration = &Migration{From: podAt(sr.uvarint()), To: podAt(sr.uvarint()), Epoch: sr.uvarint(), Phase: sr.str(), StartedAt: sr.varint()}
			if mb == 2 {
				g.Migration.Failover, g.Migration.LossWindowMs = true, sr.varint()
			}
		case mb != 0:
			return nil, fmt.Errorf("read snapshot: guild %d: bad migration byte %d", g.ID, mb)
		}
		if sr.err != nil {
			break
		}
		b.add(g)
	}
	if sr.err != nil {
		return nil, fmt.Errorf("read snapshot: %w", sr.err)
	}
	sr.sum()
	want := sr.crc
	var trailer [4]byte
	if err := sr.readFull(trailer[:]); err != nil {
		return nil, fmt.Errorf("read snapshot trailer: %w", err)
	}
	if got := binary.LittleEndian.Uint32(trailer[:]); got != want {
		return nil, fmt.Errorf("read snapshot: checksum mismatch (stored %08x, computed %08x)", got, want)
	}
	s.Guilds = b.finish()
	return s, nil
}
