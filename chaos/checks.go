package chaos

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

// The invariants checked after every chaos schedule (docs/reliability.md):
//
//  1. one owner per guild, the same on every config node, no move left
//     in flight;
//  2. every message Discord dispatched is stored exactly once, in its
//     owner, and nowhere else;
//  3. per guild, effects are applied in dispatch order: a message's last
//     edit wins, a deleted message stays deleted, the last acknowledged
//     /setup wins, each ban and acknowledged /report is stored once;
//  4. no shard has two live sessions;
//  5. no event is left held or dead-lettered;
//  6. a guild's rows survive a final move unchanged (checksums).

// Tally counts what the checks saw.
type Tally struct {
	Messages, Lost, Doubled, OutOfOrder, Bans, Interactions, Uncertain int
}

// Add adds o to t.
func (t *Tally) Add(o Tally) {
	t.Messages += o.Messages
	t.Lost += o.Lost
	t.Doubled += o.Doubled
	t.OutOfOrder += o.OutOfOrder
	t.Bans += o.Bans
	t.Interactions += o.Interactions
	t.Uncertain += o.Uncertain
}

// Owners reads the guild map from every config node (each its local copy)
// and returns it if all agree and no guild is migrating.
func Owners(ctx context.Context, s *System) (map[uint64]string, error) {
	var first map[uint64]string
	for i, u := range s.ConfigURLs {
		c, err := assignments.NewClient([]string{u}, s.Token)
		if err != nil {
			return nil, err
		}
		gl, err := c.Guilds(ctx, "")
		if err != nil {
			return nil, fmt.Errorf("config-%d: %w", i, err)
		}
		m := map[uint64]string{}
		for _, g := range gl.Guilds {
			if g.Migration != nil || g.State != fsm.GuildActive {
				return nil, fmt.Errorf("config-%d: guild %d is %s", i, g.ID, g.State)
			}
			m[g.ID] = g.Owner
		}
		if first == nil {
			first = m
			continue
		}
		if len(m) != len(first) {
			return nil, fmt.Errorf("config-%d knows %d guilds, config-0 %d", i, len(m), len(first))
		}
		for g, o := range first {
			if m[g] != o {
				return nil, fmt.Errorf("guild %d: config-0 says %s, config-%d says %q", g, o, i, m[g])
			}
		}
	}
	return first, nil
}

func openRO(path string) (*sql.DB, error) {
	return sql.Open("sqlite3", "file:"+path+"?mode=ro&_busy_timeout=5000")
}

// CheckStores compares every gateway's SQLite with what the traffic
// dispatched. It returns the tally and the problems found.
func CheckStores(ctx context.Context, s *System, t *Traffic, owners map[uint64]string) (Tally, []string, error) {
	var tally Tally
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	dbs := make([]*sql.DB, len(s.Gateways))
	for i := range s.Gateways {
		db, err := openRO(s.GatewayDB(i))
		if err != nil {
			return tally, nil, err
		}
		defer db.Close()
		dbs[i] = db
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	tally.Uncertain = t.Uncertain
	byGuild := map[uint64][]*SentMessage{}
	for _, m := range t.msgs {
		byGuild[m.Guild] = append(byGuild[m.Guild], m)
	}
	for _, g := range t.Guilds {
		owner := s.GatewayIndex(owners[g])
		if owner < 0 {
			bad("guild %d: owner %q is no gateway", g, owners[g])
			continue
		}
		type row struct {
			len     int
			deleted bool
		}
		rows := map[uint64]row{}
		q, err := dbs[owner].QueryContext(ctx, `SELECT message_id, content_length, deleted_at IS NOT NULL FROM messages WHERE guild_id = ?`, g)
		if err != nil {
			return tally, nil, fmt.Errorf("read %s: %w", s.Gateways[owner].Name, err)
		}
		for q.Next() {
			var id uint64
			var r row
			if err := q.Scan(&id, &r.len, &r.deleted); err != nil {
				q.Close()
				return tally, nil, err
			}
			rows[id] = r
		}
		q.Close()
		for _, m := range byGuild[g] {
			tally.Messages++
			r, ok := rows[m.ID]
			switch {
			case !ok:
				tally.Lost++
				bad("guild %d: message %d was dispatched but is not in its owner %s", g, m.ID, owners[g])
			case m.Uncertain:
			case m.Deleted != r.deleted:
				tally.OutOfOrder++
				bad("guild %d: message %d deleted=%v, stored deleted=%v", g, m.ID, m.Deleted, r.deleted)
			case !m.Deleted && r.len != m.Len:
				tally.OutOfOrder++
				bad("guild %d: message %d's last edit has length %d, stored %d (an older edit won)", g, m.ID, m.Len, r.len)
			}
		}
		for i, db := range dbs {
			if i == owner {
				continue
			}
			var n int
			if err := db.QueryRowContext(ctx, `SELECT count(*) FROM messages WHERE guild_id = ?`, g).Scan(&n); err != nil {
				return tally, nil, err
			}
			if n > 0 {
				tally.Doubled += n
				bad("guild %d: %d message rows on %s, which does not own it (owner %s)", g, n, s.Gateways[i].Name, owners[g])
			}
		}
	}
	for _, b := range t.bans {
		tally.Bans++
		owner := s.GatewayIndex(owners[b.Guild])
		if owner < 0 {
			continue
		}
		var n int
		if err := dbs[owner].QueryRowContext(ctx, `SELECT count(*) FROM mod_actions WHERE guild_id = ? AND kind = 'ban' AND user_id = ?`, b.Guild, b.User).Scan(&n); err != nil {
			return tally, nil, err
		}
		if n != 1 {
			if n == 0 {
				tally.Lost++
			} else {
				tally.Doubled++
			}
			bad("guild %d: ban of user %d stored %d times", b.Guild, b.User, n)
		}
	}
	// The last acknowledged /setup wins, unless a later unacknowledged one
	// was applied after all.
	allowed := map[uint64]map[int]bool{}
	for _, in := range t.interactions {
		tally.Interactions++
		owner := s.GatewayIndex(owners[in.Guild])
		if owner < 0 {
			continue
		}
		switch in.Name {
		case "report":
			if in.ID == 0 {
				continue // its delivery failed before the fake named it
			}
			var n int
			if err := dbs[owner].QueryRowContext(ctx, `SELECT count(*) FROM reports WHERE id = ?`, in.ID).Scan(&n); err != nil {
				return tally, nil, err
			}
			if n > 1 || in.OK && n != 1 {
				bad("guild %d: acknowledged=%v /report %d stored %d times", in.Guild, in.OK, in.ID, n)
				if n == 0 {
					tally.Lost++
				} else {
					tally.Doubled++
				}
			}
		case "setup":
			if allowed[in.Guild] == nil || in.OK {
				allowed[in.Guild] = map[int]bool{}
				if !in.OK {
					allowed[in.Guild][0] = true // none stored
				}
			}
			allowed[in.Guild][in.Value] = true
		}
	}
	for g, vals := range allowed {
		owner := s.GatewayIndex(owners[g])
		if owner < 0 {
			continue
		}
		var role sql.NullInt64
		err := dbs[owner].QueryRowContext(ctx, `SELECT mod_role_id FROM guild_settings WHERE guild_id = ?`, g).Scan(&role)
		if err != nil && err != sql.ErrNoRows {
			return tally, nil, err
		}
		if !vals[int(role.Int64)] {
			tally.OutOfOrder++
			bad("guild %d: mod_role %d stored; the last acknowledged /setup allows only %v", g, role.Int64, keys(vals))
		}
	}
	for i, db := range dbs {
		var held, dead int
		if err := db.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM held_events), (SELECT count(*) FROM dead_letters)`).Scan(&held, &dead); err != nil {
			return tally, nil, err
		}
		if held > 0 || dead > 0 {
			bad("%s: %d events still held, %d dead letters", s.Gateways[i].Name, held, dead)
		}
	}
	return tally, problems, nil
}

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// CheckSessions asks the fake Discord how many live sessions each shard
// has: exactly one each.
func CheckSessions(s *System) []string {
	var sess []struct {
		SessionID string `json:"session_id"`
		Shard     [2]int `json:"shard"`
		Connected bool   `json:"connected"`
	}
	if err := get(s.DiscordURL+"/_fake/sessions", &sess); err != nil {
		return []string{"list sessions: " + err.Error()}
	}
	live := map[int][]string{}
	for _, x := range sess {
		if x.Connected {
			live[x.Shard[0]] = append(live[x.Shard[0]], x.SessionID)
		}
	}
	var problems []string
	for sh := 0; sh < s.Opts.Shards; sh++ {
		if n := len(live[sh]); n != 1 {
			problems = append(problems, fmt.Sprintf("shard %d has %d live sessions %v", sh, n, live[sh]))
		}
	}
	return problems
}

// Checksum is a digest of every row a guild has in the gateway's store.
func Checksum(ctx context.Context, path string, guild uint64) (string, int, error) {
	db, err := openRO(path)
	if err != nil {
		return "", 0, err
	}
	defer db.Close()
	h := sha256.New()
	rows := 0
	for _, q := range []string{
		`SELECT message_id, channel_id, author_id, created_at, edited_at, deleted_at, content_length FROM messages WHERE guild_id = ? ORDER BY message_id`,
		`SELECT kind, user_id, moderator_id, reason, created_at, dedupe_key FROM mod_actions WHERE guild_id = ? ORDER BY dedupe_key`,
		`SELECT id, reporter_id, target_user_id, message_id, reason, created_at FROM reports WHERE guild_id = ? ORDER BY id`,
		`SELECT mod_role_id, modlog_channel_id FROM guild_settings WHERE guild_id = ?`,
	} {
		r, err := db.QueryContext(ctx, q, guild)
		if err != nil {
			return "", 0, fmt.Errorf("checksum %s: %w", path, err)
		}
		cols, _ := r.Columns()
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for r.Next() {
			if err := r.Scan(ptrs...); err != nil {
				r.Close()
				return "", 0, err
			}
			rows++
			var b strings.Builder
			for _, v := range vals {
				fmt.Fprintf(&b, "%v|", v)
			}
			h.Write([]byte(b.String() + "\n"))
		}
		r.Close()
		h.Write([]byte("--\n"))
	}
	return hex.EncodeToString(h.Sum(nil)), rows, nil
}
