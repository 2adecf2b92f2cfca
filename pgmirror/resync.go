package pgmirror

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/modbot/modbot/assignments"
)

// resyncStats is what a resync changed; it is the detail of its event.
type resyncStats struct {
	From           uint64 `json:"from_revision"`
	To             uint64 `json:"to_revision"`
	GuildsUpserted int64  `json:"guilds_upserted"`
	GuildsRemoved  int64  `json:"guilds_removed"`
	Pods           int    `json:"pods"`
	Shards         int    `json:"shards"`
}

// writeSnapshot makes the tables equal to a snapshot in one transaction: it
// writes only the difference (rows that changed, appeared or went), records
// the gap as one resync event at (snapshot revision, -1), recomputes the
// guild counts and moves mirror_state to the snapshot's revision.
func writeSnapshot(ctx context.Context, conn *pgx.Conn, prev uint64, s *assignments.Snapshot) (resyncStats, error) {
	st := resyncStats{From: prev, To: s.Revision, Pods: len(s.Pods), Shards: len(s.Shards)}
	now := time.Now().UTC()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return st, fmt.Errorf("begin resync to %d: %w", s.Revision, err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if err := lockMirrorState(ctx, tx, prev); err != nil {
		return st, err
	}
	if _, err := tx.Exec(ctx, `CREATE TEMP TABLE resync_guilds (LIKE guild_assignments) ON COMMIT DROP`); err != nil {
		return st, fmt.Errorf("resync: temp table: %w", err)
	}
	i := 0
	var convErr error
	_, err = tx.CopyFrom(ctx, pgx.Identifier{"resync_guilds"},
		[]string{"guild_id", "owner", "state", "epoch", "move_from", "move_to", "move_epoch", "move_phase", "move_started_at", "move_failover", "revision", "updated_at"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if i >= len(s.Guilds) {
				return nil, nil
			}
			g, err := guildRowOf(&s.Guilds[i], now)
			i++
			if err != nil {
				convErr = err
				return nil, err
			}
			return []any{g.ID, g.Owner, g.State, g.Epoch, g.MoveFrom, g.MoveTo, g.MoveEpoch, g.MovePhase, g.MoveStart, g.MoveFail, g.Revision, g.UpdatedAt}, nil
		}))
	if err != nil {
		if convErr != nil {
			err = convErr
		}
		return st, fmt.Errorf("resync: copy %d guilds: %w", len(s.Guilds), err)
	}
	tag, err := tx.Exec(ctx, `DELETE FROM guild_assignments g WHERE NOT EXISTS (SELECT 1 FROM resync_guilds r WHERE r.guild_id = g.guild_id)`)
	if err != nil {
		return st, fmt.Errorf("resync: remove guilds: %w", err)
	}
	st.GuildsRemoved = tag.RowsAffected()
	// Rows the snapshot does not change keep their updated_at.
	tag, err = tx.Exec(ctx, `INSERT INTO guild_assignments SELECT * FROM resync_guilds
		ON CONFLICT (guild_id) DO UPDATE SET owner = EXCLUDED.owner, state = EXCLUDED.state, epoch = EXCLUDED.epoch,
			move_from = EXCLUDED.move_from, move_to = EXCLUDED.move_to, move_epoch = EXCLUDED.move_epoch, move_phase = EXCLUDED.move_phase,
			move_started_at = EXCLUDED.move_started_at, move_failover = EXCLUDED.move_failover, revision = EXCLUDED.revision, updated_at = EXCLUDED.updated_at
		WHERE (guild_assignments.owner, guild_assignments.state, guild_assignments.epoch, guild_assignments.move_from, guild_assignments.move_to,
			guild_assignments.move_epoch, guild_assignments.move_phase, guild_assignments.move_started_at, guild_assignments.move_failover, guild_assignments.revision)
			IS DISTINCT FROM (EXCLUDED.owner, EXCLUDED.state, EXCLUDED.epoch, EXCLUDED.move_from, EXCLUDED.move_to,
			EXCLUDED.move_epoch, EXCLUDED.move_phase, EXCLUDED.move_started_at, EXCLUDED.move_failover, EXCLUDED.revision)`)
	if err != nil {
		return st, fmt.Errorf("resync: upsert guilds: %w", err)
	}
	st.GuildsUpserted = tag.RowsAffected()

	// Pods: replace them all (a handful), with counts from the guilds.
	counts := map[string]int32{}
	for i := range s.Guilds {
		counts[s.Guilds[i].Owner]++
	}
	var oldCounts = map[string]int32{}
	rows, err := tx.Query(ctx, `SELECT id, guilds FROM pods`)
	if err != nil {
		return st, fmt.Errorf("resync: read pods: %w", err)
	}
	for rows.Next() {
		var id string
		var n int32
		if err := rows.Scan(&id, &n); err != nil {
			rows.Close()
			return st, fmt.Errorf("resync: read pods: %w", err)
		}
		oldCounts[id] = n
	}
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("resync: read pods: %w", err)
	}
	var keep []string
	var pods []podRow
	for i := range s.Pods {
		p := &s.Pods[i]
		keep = append(keep, p.ID)
		pods = append(pods, podRowOf(p, s.Revision, now, counts[p.ID]))
	}
	if _, err := tx.Exec(ctx, `DELETE FROM pods WHERE NOT (id = ANY($1))`, keep); err != nil {
		return st, fmt.Errorf("resync: remove pods: %w", err)
	}
	if err := upsertPods(ctx, tx, pods); err != nil {
		return st, fmt.Errorf("resync: %w", err)
	}
	var shards []shardRow
	for _, sh := range s.Shards {
		shards = append(shards, shardRow{Shard: int32(sh.Shard), Holder: sh.Holder, Epoch: int64(sh.Epoch), Revision: int64(s.Revision), UpdatedAt: now})
	}
	if _, err := tx.Exec(ctx, `DELETE FROM shard_assignments WHERE shard >= $1`, s.ShardCount); err != nil {
		return st, fmt.Errorf("resync: remove shards: %w", err)
	}
	if err := upsertShards(ctx, tx, shards); err != nil {
		return st, fmt.Errorf("resync: %w", err)
	}
	var samples []countSample
	for id, n := range counts {
		if oldCounts[id] != n {
			samples = append(samples, countSample{Revision: int64(s.Revision), Pod: id, At: now, Guilds: n})
		}
	}
	for id, n := range oldCounts {
		if _, ok := counts[id]; !ok && n != 0 {
			samples = append(samples, countSample{Revision: int64(s.Revision), Pod: id, At: now, Guilds: 0})
		}
	}
	b := batchState{samples: samples, now: now}
	b.events = []eventRow{{Revision: int64(s.Revision), Seq: -1, At: now, Kind: KindResync, Cause: "snapshot", Detail: st}}
	if err := b.write(ctx, tx); err != nil {
		return st, fmt.Errorf("resync: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE mirror_state SET revision = $1, updated_at = $2, source_at = NULL WHERE id`, int64(s.Revision), now); err != nil {
		return st, fmt.Errorf("resync: advance mirror_state to %d: %w", s.Revision, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return st, fmt.Errorf("commit resync to %d: %w", s.Revision, err)
	}
	return st, nil
}
