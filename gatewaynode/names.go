package gatewaynode

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/bwmarrin/discordgo"
)

// namedID is a channel, role or user with its Discord name.
type namedID struct {
	ID   uint64 `json:"id,string"`
	Name string `json:"name"`
}

// directory is what the dashboard shows names from: the guild's channels
// and roles, and the users it asked for. A name Discord did not give (an
// error, a timeout) is simply missing: the page falls back to the id.
type directory struct {
	Guild    string // the guild's name ("" if unknown)
	Channels []namedID
	Roles    []namedID
	Users    map[uint64]string
}

func (d directory) channel(id uint64) string { return lookupName(d.Channels, id) }
func (d directory) role(id uint64) string    { return lookupName(d.Roles, id) }

func lookupName(xs []namedID, id uint64) string {
	for _, x := range xs {
		if x.ID == id {
			return x.Name
		}
	}
	return ""
}

// nameCache keeps REST answers for the dashboard a short while, so a page
// (and its reloads) costs Discord a few calls at most. A failed lookup (a
// deleted user, a 429, a timeout) is remembered too, for failTTL, and
// concurrent pages wanting the same name wait for one call: a name Discord
// does not give costs neither every page load a REST call nor the bot's
// rate limit a burst (TestANameLookupIsOneCallPerTTLWhateverItsAnswer).
// Bounded: cleared when full.
type nameCache struct {
	rest    *discordgo.Session
	ttl     time.Duration
	failTTL time.Duration
	now     func() time.Time
	mu      sync.Mutex
	m       map[string]nameEntry
	flight  map[string]chan struct{} // lookups under way
}

type nameEntry struct {
	v  any
	ok bool // false: the lookup failed
	at time.Time
}

const nameCacheSize = 20_000

func newNameCache(rest *discordgo.Session, ttl time.Duration) *nameCache {
	return &nameCache{rest: rest, ttl: ttl, failTTL: min(ttl, 10*time.Second), now: time.Now,
		m: map[string]nameEntry{}, flight: map[string]chan struct{}{}}
}

func (c *nameCache) cached(key string, fetch func() (any, error)) (any, bool) {
	c.mu.Lock()
	for {
		if e, ok := c.m[key]; ok {
			ttl := c.ttl
			if !e.ok {
				ttl = c.failTTL
			}
			if c.now().Sub(e.at) < ttl {
				c.mu.Unlock()
				return e.v, e.ok
			}
		}
		wait, busy := c.flight[key]
		if !busy {
			break
		}
		c.mu.Unlock()
		<-wait
		c.mu.Lock()
	}
	done := make(chan struct{})
	c.flight[key] = done
	c.mu.Unlock()
	v, err := fetch()
	e := nameEntry{v: v, ok: err == nil, at: c.now()}
	if !e.ok {
		e.v = nil
	}
	c.mu.Lock()
	if len(c.m) >= nameCacheSize {
		c.m = map[string]nameEntry{}
	}
	if !errors.Is(err, context.Canceled) { // the page went away: not Discord's answer
		c.m[key] = e
	}
	delete(c.flight, key)
	c.mu.Unlock()
	close(done)
	return e.v, e.ok
}

// resolve fetches (or reuses) the guild's channels and roles and the names
// of users, within ctx.
func (c *nameCache) resolve(ctx context.Context, guild uint64, users []uint64) directory {
	d := directory{Users: map[uint64]string{}}
	if c == nil || c.rest == nil {
		return d
	}
	gid := strconv.FormatUint(guild, 10)
	opt := discordgo.WithContext(ctx)
	if v, ok := c.cached("c:"+gid, func() (any, error) {
		chs, err := c.rest.GuildChannels(gid, opt)
		out := make([]namedID, 0, len(chs))
		for _, ch := range chs {
			if id, perr := strconv.ParseUint(ch.ID, 10, 64); perr == nil {
				out = append(out, namedID{ID: id, Name: ch.Name})
			}
		}
		return out, err
	}); ok {
		d.Channels = v.([]namedID)
	}
	if v, ok := c.cached("g:"+gid, func() (any, error) {
		g, err := c.rest.Guild(gid, opt)
		if err != nil {
			return nil, err
		}
		return g.Name, nil
	}); ok {
		d.Guild = v.(string)
	}
	if v, ok := c.cached("r:"+gid, func() (any, error) {
		rs, err := c.rest.GuildRoles(gid, opt)
		out := make([]namedID, 0, len(rs))
		for _, r := range rs {
			if id, perr := strconv.ParseUint(r.ID, 10, 64); perr == nil && id != guild { // not @everyone
				out = append(out, namedID{ID: id, Name: r.Name})
			}
		}
		return out, err
	}); ok {
		d.Roles = v.([]namedID)
	}
	for _, u := range users {
		if ctx.Err() != nil {
			break
		}
		uid := strconv.FormatUint(u, 10)
		if v, ok := c.cached("u:"+uid, func() (any, error) {
			usr, err := c.rest.User(uid, opt)
			if err != nil {
				return nil, err
			}
			if usr.GlobalName != "" {
				return usr.GlobalName, nil
			}
			return usr.Username, nil
		}); ok {
			d.Users[u] = v.(string)
		}
	}
	return d
}
