// Package guildtable holds a set of fsm.Guild records, keyed by guild id, in
// a compact form without a pointer per guild: a watcher's copy of a
// million-guild map costs about 10 bytes per guild instead of a heap object,
// a map slot and two strings each (118 bytes), and the collector has nothing
// to scan in it but a few slice headers per 16,384 guilds.
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
// overlay shadows. When an overlay grows past 1/16 of its base (and 256
// records) the segment is rebuilt: base and overlay are merged into new
// blocks, a segment grown past the maximum is split and one shrunk below a
// quarter of it is merged with a neighbour. A rebuild costs O(segment), so
// each change costs amortised O(1) (about 16 records re-packed), and no
// rebuild holds more than two segments' worth of memory at once or takes
// more than about a millisecond (the watcher holds its write lock
// meanwhile). Once classes no guild uses outnumber the live ones (owners
// that came and went), the whole table is rebuilt to renumber them.
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
//   - After any sequence of Set, Delete and Build, Get returns exactly what a
//     plain map[uint64]fsm.Guild given the same sequence would, field for
//     field (the Migration pointer is the one last set), and Len is that
//     map's length.
//   - All yields every guild once, in ascending id order.
//   - Count(owner) is the number of guilds whose Owner is owner, and
//     OwnedBy(owner) their ids in ascending order.
//   - The Owner and State of a guild returned are the table's interned
//     strings: reading allocates nothing beyond the Guild value.
//
// A Table is not safe for concurrent use when one of the callers writes;
// concurrent reads (Get, Len, Count, OwnedBy, All) are safe. The zero Table
// is empty and ready to use.
package guildtable
