package guildstore

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// dashCache keeps each guild's last dashboard read, so a page reloaded (or
// loaded by many moderators) while nothing was written to its guild costs no
// query. Invariants: Dashboard answers exactly what a fresh read
// transaction would, including every write whose Apply (or job) has
// returned (TestDashboardCacheAnswersWhatTheDatabaseHolds,
// TestDashboardReadsItsOwnWritesUnderConcurrentCommits), and a caller's
// successive reads never go back to an older state (the same test). They
// hold because
//
//   - every commit on the writer advances seq before its COMMIT: a commit
//     whose units name their guilds (commitBatch) marks those guilds with
//     the new seq, any other (a job: fence, hold, import, delete, …; a
//     connJob) marks all guilds (all = seq), before it runs; and the marked
//     guilds stay pending until the COMMIT has returned, which is before
//     the writer answers its callers;
//   - a guild's version is max(guild's mark, all), read before the read
//     transaction begins; while the guild is pending, reads go to the
//     database and neither use nor store entries;
//   - so a read stored at version v began its transaction after the
//     commits up to v had returned: it holds them all. If it also saw a
//     later commit, it began after that commit's mark, so whoever got its
//     answer reads a higher version next time and never this entry again;
//   - an entry is used only at the version and the UTC hour it was read
//     at: the charts' buckets and "last 24 h" move with the hour (the
//     days are whole hours);
//   - a read that finds one under way for the same guild, version and hour
//     waits for it instead of reading too: that read is the one it would
//     have made (TestConcurrentDashboardMissesReadTheDatabaseOnce).
//
// The entries are bounded by the guilds read; a deleted guild's entry is
// invalidated by its delete (a job) and replaced or dropped on its next read.
type dashCache struct {
	mu      sync.Mutex
	seq     uint64            // commits so far
	all     uint64            // seq of the last commit not limited to named guilds
	marks   map[uint64]uint64 // guild → seq of the last commit that wrote it
	pending map[uint64]bool   // guilds whose commit has not returned yet
	allPend bool              // a commit not limited to named guilds has not returned yet
	entries map[uint64]dashEntry
	flight  map[uint64]*dashRead // reads under way, by guild
	reads   atomic.Uint64        // read transactions made (tests count them)
}

// dashRead is a read of a guild's dashboard under way; done is closed when
// d and err are set.
type dashRead struct {
	version uint64
	hour    int64
	done    chan struct{}
	d       Dashboard
	err     error
}

type dashEntry struct {
	version uint64
	hour    int64 // Unix hour of the read's Now
	d       Dashboard
}

// dashCacheMax bounds the entries: past it the cache starts over (a pod's
// moderators look at a few guilds at a time; marks are one word per guild).
const dashCacheMax = 4096

func newDashCache() *dashCache {
	return &dashCache{marks: map[uint64]uint64{}, pending: map[uint64]bool{}, entries: map[uint64]dashEntry{}, flight: map[uint64]*dashRead{}}
}

// committing records a commit about to write exactly guilds (nil: any
// guild): call it before COMMIT (before a job), and committed after.
func (c *dashCache) committing(guilds map[uint64]struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	if guilds == nil {
		c.all, c.allPend = c.seq, true
		return
	}
	for g := range guilds {
		c.marks[g], c.pending[g] = c.seq, true
	}
}

// committed records that the commit of guilds has returned.
func (c *dashCache) committed(guilds map[uint64]struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if guilds == nil {
		c.allPend = false
		return
	}
	for g := range guilds {
		delete(c.pending, g)
	}
}

// version is guild's version now, and whether reads at it may use the
// cache (no commit of the guild under way); read it before the read
// transaction.
func (c *dashCache) version(guild uint64) (v uint64, cacheable bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return max(c.marks[guild], c.all), !c.allPend && !c.pending[guild]
}

// join returns guild's entry for version and hour if one is stored (ok);
// else the read under way for them, which the caller waits for (lead
// false), or a new one the caller makes and ends with finish (lead true).
func (c *dashCache) join(guild, version uint64, hour int64) (d Dashboard, ok bool, r *dashRead, lead bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, found := c.entries[guild]; found && e.version == version && e.hour == hour {
		return e.d.clone(), true, nil, false
	}
	if r := c.flight[guild]; r != nil && r.version == version && r.hour == hour {
		return Dashboard{}, false, r, false
	}
	r = &dashRead{version: version, hour: hour, done: make(chan struct{})}
	c.flight[guild] = r
	return Dashboard{}, false, r, true
}

// finish ends the read r of guild: stores it (when it succeeded) and wakes
// those waiting for it.
func (c *dashCache) finish(guild uint64, r *dashRead, d Dashboard, err error) {
	r.err = err
	c.mu.Lock()
	if err == nil {
		r.d = d.clone() // the entry's and the waiters' copy: only ever cloned from
		c.putLocked(guild, r.version, r.hour, r.d)
	}
	if c.flight[guild] == r {
		delete(c.flight, guild)
	}
	c.mu.Unlock()
	close(r.done)
}

// putLocked stores d, a read made at version and hour that no one else
// holds, unless a newer one is there. c.mu is held.
func (c *dashCache) putLocked(guild, version uint64, hour int64, d Dashboard) {
	if e, ok := c.entries[guild]; ok && (e.version > version || e.hour > hour) {
		return
	}
	if len(c.entries) >= dashCacheMax {
		c.entries = map[uint64]dashEntry{}
	}
	c.entries[guild] = dashEntry{version: version, hour: hour, d: d}
}

func unixHour(t time.Time) int64 { return t.Unix() / 3600 }

// clone copies d's maps and slices, so neither the cache nor a caller sees
// the other's changes.
func (d Dashboard) clone() Dashboard {
	c := d
	c.ModActionsByKind = maps.Clone(d.ModActionsByKind)
	c.TopChannels = slices.Clone(d.TopChannels)
	c.TopAuthors = slices.Clone(d.TopAuthors)
	c.RecentReports = slices.Clone(d.RecentReports)
	c.RecentActions = slices.Clone(d.RecentActions)
	c.Activity = d.Activity.Clone()
	return c
}

// Clone copies a's series, so neither copy sees the other's changes.
func (a Activity) Clone() Activity {
	c := a
	c.MessagesHourly = a.MessagesHourly.clone()
	c.MessagesDaily = a.MessagesDaily.clone()
	c.ReportsDaily = a.ReportsDaily.clone()
	if a.ActionsDaily != nil {
		c.ActionsDaily = make(map[string]Series, len(a.ActionsDaily))
		for k, s := range a.ActionsDaily {
			c.ActionsDaily[k] = s.clone()
		}
	}
	return c
}

func (s Series) clone() Series {
	s.Counts = slices.Clone(s.Counts)
	return s
}
