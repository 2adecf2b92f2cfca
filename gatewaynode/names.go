package gatewaynode

import (
	"context"
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
// (and its reloads) costs Discord a few calls at most. Bounded: cleared
// when full.
type nameCache struct {
	rest *discordgo.Session
	ttl  time.Duration
	mu   sync.Mutex
	m    map[string]nameEntry
}

type nameEntry struct {
	v  any
	at time.Time
}

const nameCacheSize = 20_000

func newNameCache(rest *discordgo.Session, ttl time.Duration) *nameCache {
	return &nameCache{rest: rest, ttl: ttl, m: map[string]nameEntry{}}
}

func (c *nameCache) cached(key string, fetch func() (any, error)) (any, bool) {
	c.mu.Lock()
	e, ok := c.m[key]
	c.mu.Unlock()
	if ok && time.Since(e.at) < c.ttl {
		return e.v, true
	}
	v, err := fetch()
	if err != nil {
		return nil, false
	}
	c.mu.Lock()
	if len(c.m) >= nameCacheSize {
		c.m = map[string]nameEntry{}
	}
	c.m[key] = nameEntry{v: v, at: time.Now()}
	c.mu.Unlock()
	return v, true
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
