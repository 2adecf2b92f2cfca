package proxy

import (
	"container/heap"
	"crypto/sha256"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// parseTimestamp reads X-Signature-Timestamp: Unix seconds in decimal, as
// Discord sends it. Anything else (signs, spaces, fractions, empty) is
// refused, so what was signed is exactly what is checked for freshness.
func parseTimestamp(ts string) (time.Time, bool) {
	if ts == "" || len(ts) > 12 { // 12 digits reach the year 33658
		return time.Time{}, false
	}
	for i := 0; i < len(ts); i++ {
		if ts[i] < '0' || ts[i] > '9' {
			return time.Time{}, false
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(sec, 0), true
}

// freshness explains why a signed timestamp is outside ±maxSkew of now
// ("" when it is inside). It compares instants, not their difference: a
// time.Duration holds only ±292 years, and the difference to a timestamp
// further away saturates (negating the minimum leaves it negative), so
// such a timestamp passed as fresh.
func freshness(ts, now time.Time, maxSkew time.Duration) string {
	switch {
	case ts.Before(now.Add(-maxSkew)):
		return fmt.Sprintf("signed %s ago, outside the ±%s window", now.Sub(ts).Round(time.Second), maxSkew)
	case ts.After(now.Add(maxSkew)):
		return fmt.Sprintf("signed %s in the future, outside the ±%s window", ts.Sub(now).Round(time.Second), maxSkew)
	}
	return ""
}

// replayKey identifies one interaction: the SHA-256 of its id (Discord's
// snowflake, unique per interaction), so the same interaction is refused
// even if it comes back signed at another timestamp. A body without an id
// is keyed by its Ed25519 signature: signatures are deterministic and
// crypto/ed25519 accepts only the canonical encoding, so the same
// (timestamp, body) always has that key and a different one (almost) never
// does.
type replayKey [sha256.Size]byte

func keyOf(interactionID string, sig []byte) replayKey {
	if interactionID != "" {
		return sha256.Sum256([]byte("interaction:" + interactionID))
	}
	return sha256.Sum256(sig)
}

// replayCache remembers the signed interactions this replica accepted, each
// until its timestamp leaves the freshness window (after that the window
// refuses a replay on its own). It holds at most max entries: when full, the
// entry whose window ends first is evicted (the one a replay could still use
// for the shortest time). It is per replica by design; see docs/proxy.md.
type replayCache struct {
	mu        sync.Mutex
	max       int
	keys      map[replayKey]struct{}
	byExpiry  expiryHeap
	evictions uint64 // entries dropped before their window ended
}

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, keys: make(map[replayKey]struct{}, min(max, 1024))}
}

// firstUse records k (remembered until expires) and reports whether it is
// new; false means the same signed request was accepted before: a replay.
func (c *replayCache) firstUse(k replayKey, expires, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(now)
	if _, dup := c.keys[k]; dup {
		return false
	}
	for len(c.keys) >= c.max {
		old := heap.Pop(&c.byExpiry).(expiryEntry)
		delete(c.keys, old.key)
		c.evictions++
	}
	c.keys[k] = struct{}{}
	heap.Push(&c.byExpiry, expiryEntry{key: k, expires: expires.UnixNano()})
	return true
}

func (c *replayCache) expireLocked(now time.Time) {
	t := now.UnixNano()
	for len(c.byExpiry) > 0 && c.byExpiry[0].expires < t {
		old := heap.Pop(&c.byExpiry).(expiryEntry)
		delete(c.keys, old.key)
	}
}

// stats returns the number of entries and of early evictions.
func (c *replayCache) stats() (entries int, evictions uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.keys), c.evictions
}

type expiryEntry struct {
	key     replayKey
	expires int64 // Unix nanoseconds
}

// expiryHeap is a min-heap of entries by expiry (container/heap).
type expiryHeap []expiryEntry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryEntry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
