package guildstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Reads use the read pool and see every write whose Apply has returned
// (read-your-writes), because WAL readers see all committed transactions.

const dashboardListLimit = 10

// Settings returns the guild's settings (zero ids when /setup never ran).
func (s *Store) Settings(ctx context.Context, guildID uint64) (Settings, error) {
	st, err := settings(ctx, s.rdb, guildID)
	if err != nil {
		return Settings{}, fmt.Errorf("settings of guild %d: %w", guildID, err)
	}
	return st, nil
}

type queryer interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}

func settings(ctx context.Context, q queryer, guildID uint64) (Settings, error) {
	st := Settings{GuildID: guildID}
	var role, ch sql.NullInt64
	var upd int64
	err := q.QueryRowContext(ctx, `SELECT mod_role_id, modlog_channel_id, updated_at FROM guild_settings WHERE guild_id = ?`,
		int64(guildID)).Scan(&role, &ch, &upd)
	if errors.Is(err, sql.ErrNoRows) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	st.ModRoleID, st.ModlogChannelID, st.UpdatedAt = fromNullID(role), fromNullID(ch), fromMS(upd)
	return st, nil
}

// Epoch returns the guild's stored fencing epoch (0 if none).
func (s *Store) Epoch(ctx context.Context, guildID uint64) (uint64, error) {
	var v int64
	err := s.rdb.QueryRowContext(ctx, `SELECT epoch FROM guild_epochs WHERE guild_id = ?`, int64(guildID)).Scan(&v)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("epoch of guild %d: %w", guildID, err)
	}
	return uint64(v), nil
}

const reportCols = `id, guild_id, reporter_id, target_user_id, message_id, channel_id, message_content, reason, created_at, modlog_channel_id, modlog_posted_at`

func scanReports(rows *sql.Rows) ([]Report, error) {
	defer rows.Close()
	var out []Report
	for rows.Next() {
		var r Report
		var id, g, rep, tgt, created int64
		var msg, ch, mlc, posted sql.NullInt64
		var content sql.NullString
		if err := rows.Scan(&id, &g, &rep, &tgt, &msg, &ch, &content, &r.Reason, &created, &mlc, &posted); err != nil {
			return nil, err
		}
		r.ID, r.GuildID, r.ReporterID, r.TargetUserID = uint64(id), uint64(g), uint64(rep), uint64(tgt)
		r.MessageID, r.ChannelID, r.MessageContent = fromNullID(msg), fromNullID(ch), content.String
		r.CreatedAt, r.ModlogChannelID, r.ModlogPostedAt = fromMS(created), fromNullID(mlc), fromNullMS(posted)
		out = append(out, r)
	}
	return out, rows.Err()
}

// Report returns one report by id (ok=false if absent).
func (s *Store) Report(ctx context.Context, guildID, reportID uint64) (Report, bool, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+reportCols+` FROM reports WHERE guild_id = ? AND id = ?`, int64(guildID), int64(reportID))
	if err != nil {
		return Report{}, false, fmt.Errorf("report %d of guild %d: %w", reportID, guildID, err)
	}
	rs, err := scanReports(rows)
	if err != nil {
		return Report{}, false, fmt.Errorf("report %d of guild %d: %w", reportID, guildID, err)
	}
	if len(rs) == 0 {
		return Report{}, false, nil
	}
	return rs[0], true, nil
}

// UnpostedReports returns up to limit of the guild's reports created before
// before whose mod-log post was never acknowledged, oldest first.
func (s *Store) UnpostedReports(ctx context.Context, guildID uint64, before time.Time, limit int) ([]Report, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+reportCols+` FROM reports INDEXED BY reports_unposted
		WHERE guild_id = ? AND modlog_posted_at IS NULL AND modlog_channel_id IS NOT NULL AND modlog_channel_id != 0 AND created_at < ?
		ORDER BY id LIMIT ?`, int64(guildID), ms(before), limit)
	if err != nil {
		return nil, fmt.Errorf("unposted reports of guild %d: %w", guildID, err)
	}
	rs, err := scanReports(rows)
	if err != nil {
		return nil, fmt.Errorf("unposted reports of guild %d: %w", guildID, err)
	}
	return rs, nil
}

// ReportsForUser returns the reports against userID, newest first.
func (s *Store) ReportsForUser(ctx context.Context, guildID, userID uint64) ([]Report, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+reportCols+` FROM reports WHERE guild_id = ? AND target_user_id = ? ORDER BY id DESC`,
		int64(guildID), int64(userID))
	if err != nil {
		return nil, fmt.Errorf("reports for user %d in guild %d: %w", userID, guildID, err)
	}
	rs, err := scanReports(rows)
	if err != nil {
		return nil, fmt.Errorf("reports for user %d in guild %d: %w", userID, guildID, err)
	}
	return rs, nil
}

func scanActions(rows *sql.Rows) ([]ModAction, error) {
	defer rows.Close()
	var out []ModAction
	for rows.Next() {
		var a ModAction
		var g, u, created int64
		var mod sql.NullInt64
		if err := rows.Scan(&g, &a.Kind, &u, &mod, &a.Reason, &created, &a.DedupeKey); err != nil {
			return nil, err
		}
		a.GuildID, a.UserID, a.ModeratorID, a.CreatedAt = uint64(g), uint64(u), fromNullID(mod), fromMS(created)
		out = append(out, a)
	}
	return out, rows.Err()
}

// ModActionsForUser returns the actions against userID, newest first (by
// the time they happened, then key: the same order whatever order they were
// processed in).
func (s *Store) ModActionsForUser(ctx context.Context, guildID, userID uint64) ([]ModAction, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT guild_id, kind, user_id, moderator_id, reason, created_at, dedupe_key
		FROM mod_actions WHERE guild_id = ? AND user_id = ? ORDER BY created_at DESC, dedupe_key DESC`, int64(guildID), int64(userID))
	if err != nil {
		return nil, fmt.Errorf("mod actions for user %d in guild %d: %w", userID, guildID, err)
	}
	as, err := scanActions(rows)
	if err != nil {
		return nil, fmt.Errorf("mod actions for user %d in guild %d: %w", userID, guildID, err)
	}
	return as, nil
}

// GuildIDs lists the guilds that have any data rows besides a fencing epoch,
// ascending. Held events and dead letters are the pod's, not guild data: a
// guild with only those is not listed (see HeldGuilds, DeadLetters).
func (s *Store) GuildIDs(ctx context.Context) ([]uint64, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT guild_id FROM guild_settings
		UNION SELECT DISTINCT guild_id FROM messages
		UNION SELECT DISTINCT guild_id FROM unseen_messages
		UNION SELECT DISTINCT guild_id FROM reports
		UNION SELECT DISTINCT guild_id FROM mod_actions
		ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("guild ids: %w", err)
	}
	defer rows.Close()
	var out []uint64
	for rows.Next() {
		var g int64
		if err := rows.Scan(&g); err != nil {
			return nil, fmt.Errorf("guild ids: %w", err)
		}
		out = append(out, uint64(g))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("guild ids: %w", err)
	}
	return out, nil
}

// Counts returns the number of rows the guild has in each table of its data
// (exportTables: the rows Export ships and Checksum covers; not the pod's
// held events or dead letters, see HeldCount and DeadLetterCount).
func (s *Store) Counts(ctx context.Context, guildID uint64) (map[string]int64, error) {
	out := map[string]int64{}
	for _, t := range exportTables {
		var n int64
		if err := s.rdb.QueryRowContext(ctx, `SELECT count(*) FROM `+t.name+` WHERE guild_id = ?`, int64(guildID)).Scan(&n); err != nil {
			return nil, fmt.Errorf("count %s of guild %d: %w", t.name, guildID, err)
		}
		out[t.name] = n
	}
	return out, nil
}

// Dashboard summarizes a guild's activity. All figures come from one read
// transaction, so they are mutually consistent; a guild nothing was written
// to since its last read, in the same UTC hour, is answered from that read
// (dashcache.go), which is the same answer.
func (s *Store) Dashboard(ctx context.Context, guildID uint64) (Dashboard, error) {
	version, cacheable := s.dc.version(guildID) // before the read transaction begins
	now := s.opts.Now()
	var r *dashRead
	lead := false
	if cacheable { // no commit of the guild under way
		var d Dashboard
		var ok bool
		if d, ok, r, lead = s.dc.join(guildID, version, unixHour(now)); ok {
			return d, nil
		}
		if !lead {
			select {
			case <-r.done:
				if r.err == nil {
					return r.d.clone(), nil
				}
				// Its reader gave up (its own context, say): read for ourselves.
			case <-ctx.Done():
				return Dashboard{}, fmt.Errorf("dashboard of guild %d: %w", guildID, ctx.Err())
			}
		}
	}
	d, err := s.dashboard(ctx, guildID, now)
	if lead {
		s.dc.finish(guildID, r, d, err)
	}
	if err != nil {
		return Dashboard{}, fmt.Errorf("dashboard of guild %d: %w", guildID, err)
	}
	return d, nil
}

// dashboard reads the dashboard at now without the cache.
func (s *Store) dashboard(ctx context.Context, guildID uint64, now time.Time) (Dashboard, error) {
	var d Dashboard
	s.dc.reads.Add(1)
	err := s.dash.readTx(ctx, func(q queryer) error {
		var err error
		d, err = s.dashboardTx(ctx, q, guildID, now)
		return err
	})
	return d, err
}

// dashboardTx reads the dashboard in the read transaction q: the message
// figures from the rollups (rollup.go), the rest from the raw rows.
func (s *Store) dashboardTx(ctx context.Context, tx queryer, guildID uint64, now time.Time) (Dashboard, error) {
	g := int64(guildID)
	d := Dashboard{GuildID: guildID, ModActionsByKind: map[string]int64{}, TopChannels: []IDCount{}, TopAuthors: []IDCount{},
		RecentReports: []Report{}, RecentActions: []ModAction{}}
	// The single figures in one statement.
	var epoch int64
	if err := tx.QueryRowContext(ctx, `SELECT coalesce((SELECT epoch FROM guild_epochs WHERE guild_id = ?1), 0),
			coalesce((SELECT live FROM rollup_messages WHERE guild_id = ?1), 0),
			coalesce((SELECT deleted FROM rollup_messages WHERE guild_id = ?1), 0),
			coalesce((SELECT edited FROM rollup_messages WHERE guild_id = ?1), 0),
			(SELECT count(*) FROM reports WHERE guild_id = ?1),
			(SELECT count(*) FROM held_events WHERE guild_id = ?1)`, g).Scan(
		&epoch, &d.Messages, &d.MessagesDeleted, &d.MessagesEdited, &d.Reports, &d.HeldEvents); err != nil {
		return d, fmt.Errorf("epoch and counts: %w", err)
	}
	d.Epoch = uint64(epoch)
	rows, err := tx.QueryContext(ctx, `SELECT kind, count(*) FROM mod_actions WHERE guild_id = ? GROUP BY kind`, g)
	if err != nil {
		return d, fmt.Errorf("action counts: %w", err)
	}
	for rows.Next() {
		var k string
		var n int64
		if err := rows.Scan(&k, &n); err != nil {
			rows.Close()
			return d, err
		}
		d.ModActionsByKind[k] = n
		d.ModActions += n
	}
	rows.Close()
	for _, top := range []struct {
		what, q string
		dst     *[]IDCount
	}{
		{"top channels", `SELECT channel_id, live FROM rollup_message_channels
			WHERE guild_id = ? ORDER BY live DESC, channel_id LIMIT ?`, &d.TopChannels},
		{"top authors", `SELECT author_id, live FROM rollup_message_authors INDEXED BY rollup_message_authors_top
			WHERE guild_id = ? ORDER BY live DESC, author_id LIMIT ?`, &d.TopAuthors},
	} {
		rows, err := tx.QueryContext(ctx, top.q, g, dashboardListLimit)
		if err != nil {
			return d, fmt.Errorf("%s: %w", top.what, err)
		}
		for rows.Next() {
			var id, n int64
			if err := rows.Scan(&id, &n); err != nil {
				rows.Close()
				return d, fmt.Errorf("%s: %w", top.what, err)
			}
			*top.dst = append(*top.dst, IDCount{ID: uint64(id), Messages: n})
		}
		if err := rows.Close(); err != nil {
			return d, fmt.Errorf("%s: %w", top.what, err)
		}
	}
	rrows, err := tx.QueryContext(ctx, `SELECT `+reportCols+` FROM reports WHERE guild_id = ? ORDER BY id DESC LIMIT ?`, g, dashboardListLimit)
	if err != nil {
		return d, fmt.Errorf("recent reports: %w", err)
	}
	rs, err := scanReports(rrows)
	if err != nil {
		return d, fmt.Errorf("recent reports: %w", err)
	}
	d.RecentReports = append(d.RecentReports, rs...)
	arows, err := tx.QueryContext(ctx, `SELECT guild_id, kind, user_id, moderator_id, reason, created_at, dedupe_key
		FROM mod_actions WHERE guild_id = ? ORDER BY created_at DESC, dedupe_key DESC LIMIT ?`, g, dashboardListLimit)
	if err != nil {
		return d, fmt.Errorf("recent actions: %w", err)
	}
	as, err := scanActions(arows)
	if err != nil {
		return d, fmt.Errorf("recent actions: %w", err)
	}
	d.RecentActions = append(d.RecentActions, as...)
	if d.Settings, err = settings(ctx, tx, guildID); err != nil {
		return d, fmt.Errorf("settings: %w", err)
	}
	var later int64
	if d.Activity, later, err = activity(ctx, tx, guildID, now); err != nil {
		return d, err
	}
	// The last 24 hourly buckets (the hour of now and the 23 before it) and
	// any later (a clock ahead of ours): hour resolution, from the rollup.
	d.MessagesLast24h = later
	for _, n := range d.Activity.MessagesHourly.Counts[hoursShown-24:] {
		d.MessagesLast24h += n
	}
	return d, nil
}
