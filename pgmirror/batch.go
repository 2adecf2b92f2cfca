package pgmirror

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

// errFenced: mirror_state is not at the revision this mirror last wrote, so
// another writer moved it. The mirror starts over from what is stored.
var errFenced = errors.New("mirror_state was moved by another writer")

// batchState is what one batch's transaction reads of the touched rows and
// then changes in memory, revision by revision, before writing it back.
type batchState struct {
	guilds map[int64]*guildRow // nil value: deleted
	pods   map[string]*podRow  // nil value: deleted
	shards map[int32]*shardRow
	// counted holds the guild count of every pod that owns or owned a
	// touched guild (guild counts change only through guild events).
	counted map[string]int32
	events  []eventRow
	samples []countSample
	now     time.Time
}

type countSample struct {
	Revision int64
	Pod      string
	At       time.Time
	Guilds   int32
}

// lockMirrorState locks mirror_state's row for the transaction and checks
// that it is at want (the revision this writer last wrote).
func lockMirrorState(ctx context.Context, tx pgx.Tx, want uint64) error {
	var cur int64
	if err := tx.QueryRow(ctx, `SELECT revision FROM mirror_state WHERE id FOR UPDATE`).Scan(&cur); err != nil {
		return fmt.Errorf("lock mirror_state: %w", err)
	}
	if uint64(cur) != want {
		return fmt.Errorf("%w: it is at %d, this mirror wrote %d", errFenced, cur, want)
	}
	return nil
}

// writeBatch applies consecutive revisions after prev in one transaction,
// moving mirror_state to the last of them. beforeCommit (tests) runs inside
// the transaction, after every write.
func writeBatch(ctx context.Context, conn *pgx.Conn, prev uint64, changes []assignments.WatchChange, beforeCommit func(last uint64)) (uint64, error) {
	last := changes[len(changes)-1].Revision
	tx, err := conn.Begin(ctx)
	if err != nil {
		return prev, fmt.Errorf("begin batch %d..%d: %w", changes[0].Revision, last, err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if err := lockMirrorState(ctx, tx, prev); err != nil {
		return prev, err
	}
	b, err := loadBatchState(ctx, tx, changes)
	if err != nil {
		return prev, err
	}
	for _, ch := range changes {
		if err := b.apply(ch); err != nil {
			return prev, err
		}
	}
	if err := b.write(ctx, tx); err != nil {
		return prev, fmt.Errorf("write batch %d..%d: %w", changes[0].Revision, last, err)
	}
	var at *time.Time
	if evs := changes[len(changes)-1].Events; len(evs) > 0 {
		at = ptr(ms(evs[0].At))
	}
	if _, err := tx.Exec(ctx, `UPDATE mirror_state SET revision = $1, updated_at = $2, source_at = $3 WHERE id`, int64(last), b.now, at); err != nil {
		return prev, fmt.Errorf("advance mirror_state to %d: %w", last, err)
	}
	if beforeCommit != nil {
		beforeCommit(last)
	}
	if err := tx.Commit(ctx); err != nil {
		return prev, fmt.Errorf("commit batch %d..%d: %w", changes[0].Revision, last, err)
	}
	return last, nil
}

// loadBatchState reads every row the changes touch.
func loadBatchState(ctx context.Context, tx pgx.Tx, changes []assignments.WatchChange) (*batchState, error) {
	b := &batchState{guilds: map[int64]*guildRow{}, pods: map[string]*podRow{}, shards: map[int32]*shardRow{}, counted: map[string]int32{}, now: time.Now().UTC()}
	var guildIDs []int64
	var shardIDs []int32
	podSet := map[string]bool{}
	for _, ch := range changes {
		for i := range ch.Events {
			e := &ch.Events[i]
			switch {
			case e.Guild != nil:
				id, err := sqlID(e.Guild.ID)
				if err != nil {
					return nil, fmt.Errorf("revision %d: %w", ch.Revision, err)
				}
				guildIDs = append(guildIDs, id)
				podSet[e.Guild.Owner] = true
				if m := e.Guild.Migration; m != nil {
					podSet[m.From], podSet[m.To] = true, true
				}
			case e.Pod != nil:
				podSet[e.Pod.ID] = true
			case e.Shard != nil:
				shardIDs = append(shardIDs, int32(e.Shard.Shard))
			}
		}
	}
	if len(guildIDs) > 0 {
		rows, err := tx.Query(ctx, `SELECT guild_id, owner, state, epoch, move_from, move_to, move_epoch, move_phase, move_started_at, move_failover, revision, updated_at
			FROM guild_assignments WHERE guild_id = ANY($1)`, guildIDs)
		if err != nil {
			return nil, fmt.Errorf("read the batch's guilds: %w", err)
		}
		for rows.Next() {
			var g guildRow
			if err := rows.Scan(&g.ID, &g.Owner, &g.State, &g.Epoch, &g.MoveFrom, &g.MoveTo, &g.MoveEpoch, &g.MovePhase, &g.MoveStart, &g.MoveFail, &g.Revision, &g.UpdatedAt); err != nil {
				rows.Close()
				return nil, fmt.Errorf("read the batch's guilds: %w", err)
			}
			b.guilds[g.ID] = &g
			podSet[g.Owner] = true
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("read the batch's guilds: %w", err)
		}
	}
	if len(podSet) > 0 {
		ids := make([]string, 0, len(podSet))
		for id := range podSet {
			ids = append(ids, id)
		}
		rows, err := tx.Query(ctx, `SELECT id, ordinal, addr, state, since, drain, guilds, revision, updated_at FROM pods WHERE id = ANY($1)`, ids)
		if err != nil {
			return nil, fmt.Errorf("read the batch's pods: %w", err)
		}
		for rows.Next() {
			var p podRow
			if err := rows.Scan(&p.ID, &p.Ordinal, &p.Addr, &p.State, &p.Since, &p.Drain, &p.Guilds, &p.Revision, &p.UpdatedAt); err != nil {
				rows.Close()
				return nil, fmt.Errorf("read the batch's pods: %w", err)
			}
			b.pods[p.ID] = &p
			b.counted[p.ID] = p.Guilds
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("read the batch's pods: %w", err)
		}
	}
	if len(shardIDs) > 0 {
		rows, err := tx.Query(ctx, `SELECT shard, holder, epoch, revision, updated_at FROM shard_assignments WHERE shard = ANY($1)`, shardIDs)
		if err != nil {
			return nil, fmt.Errorf("read the batch's shards: %w", err)
		}
		for rows.Next() {
			var s shardRow
			if err := rows.Scan(&s.Shard, &s.Holder, &s.Epoch, &s.Revision, &s.UpdatedAt); err != nil {
				rows.Close()
				return nil, fmt.Errorf("read the batch's shards: %w", err)
			}
			b.shards[s.Shard] = &s
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("read the batch's shards: %w", err)
		}
	}
	return b, nil
}

// apply changes the in-memory rows by one revision and records its events
// and the guild counts it changed.
func (b *batchState) apply(ch assignments.WatchChange) error {
	rev := int64(ch.Revision)
	before := map[string]int32{}
	count := func(pod string, d int32) {
		if _, ok := before[pod]; !ok {
			before[pod] = b.counted[pod]
		}
		b.counted[pod] += d
	}
	var at time.Time
	for i := range ch.Events {
		e := &ch.Events[i]
		at = ms(e.At)
		row := eventRow{Revision: rev, Seq: int32(i), At: at, Cause: string(e.Cause)}
		switch e.Type {
		case fsm.EventGuild, fsm.EventGuildGone:
			id, err := sqlID(e.Guild.ID)
			if err != nil {
				return fmt.Errorf("revision %d: %w", rev, err)
			}
			old := b.guilds[id]
			if e.Type == fsm.EventGuildGone {
				row.Kind, row.Guild, row.Pod = KindGuildRemoved, &id, ptr(e.Guild.Owner)
				if old != nil {
					count(old.Owner, -1)
				}
				b.guilds[id] = nil
				break
			}
			classifyGuild(old, e, &row)
			nr, err := guildRowOf(e.Guild, at)
			if err != nil {
				return err
			}
			nr.Revision = rev
			if old == nil {
				count(nr.Owner, +1)
			} else if old.Owner != nr.Owner {
				count(old.Owner, -1)
				count(nr.Owner, +1)
			}
			b.guilds[id] = &nr
		case fsm.EventPod, fsm.EventPodRemove:
			old := b.pods[e.Pod.ID]
			classifyPod(old, e, &row)
			if e.Type == fsm.EventPodRemove {
				b.pods[e.Pod.ID] = nil
				break
			}
			nr := podRowOf(e.Pod, ch.Revision, at, b.counted[e.Pod.ID])
			b.pods[e.Pod.ID] = &nr
		case fsm.EventShard:
			sh := int32(e.Shard.Shard)
			row.Shard, row.Pod, row.Epoch = &sh, ptr(e.Shard.Holder), ptr(int64(e.Shard.Epoch))
			old := b.shards[sh]
			if old != nil {
				row.From = ptr(old.Holder)
			}
			row.To = ptr(e.Shard.Holder)
			row.Kind = KindShardHolder
			if old != nil && old.Holder == e.Shard.Holder && old.Epoch == int64(e.Shard.Epoch) {
				row.Kind = KindShardCheckpoint // the holder's session is up and committing
			}
			b.shards[sh] = &shardRow{Shard: sh, Holder: e.Shard.Holder, Epoch: int64(e.Shard.Epoch), Revision: rev, UpdatedAt: at}
		case fsm.EventInit:
			row.Kind = KindInit
			row.Detail = map[string]int{"shard_count": e.ShardCount}
		case fsm.EventConfigNode, fsm.EventConfigNodeRemove:
			row.Kind = KindConfigNode
			if e.Type == fsm.EventConfigNodeRemove {
				row.Kind = KindConfigNodeRemoved
			}
			if c := e.ConfigNode; c != nil {
				row.Pod = ptr(c.ID)
				row.Detail = c
			}
		default:
			row.Kind = string(e.Type)
		}
		b.events = append(b.events, row)
	}
	pods := make([]string, 0, len(before))
	for pod, was := range before {
		if b.counted[pod] != was {
			pods = append(pods, pod)
		}
	}
	slices.Sort(pods)
	for _, pod := range pods {
		b.samples = append(b.samples, countSample{Revision: rev, Pod: pod, At: at, Guilds: b.counted[pod]})
		if p := b.pods[pod]; p != nil {
			p.Guilds = b.counted[pod]
		}
	}
	return nil
}

// write stores the batch's rows.
func (b *batchState) write(ctx context.Context, tx pgx.Tx) error {
	var up []guildRow
	var gone []int64
	for id, g := range b.guilds {
		if g == nil {
			gone = append(gone, id)
		} else {
			up = append(up, *g)
		}
	}
	if len(gone) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM guild_assignments WHERE guild_id = ANY($1)`, gone); err != nil {
			return fmt.Errorf("delete guilds: %w", err)
		}
	}
	if err := upsertGuilds(ctx, tx, up); err != nil {
		return err
	}
	var podUp []podRow
	var podGone []string
	for id, p := range b.pods {
		if p == nil {
			podGone = append(podGone, id)
		} else {
			podUp = append(podUp, *p)
		}
	}
	if len(podGone) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM pods WHERE id = ANY($1)`, podGone); err != nil {
			return fmt.Errorf("delete pods: %w", err)
		}
	}
	if err := upsertPods(ctx, tx, podUp); err != nil {
		return err
	}
	var shards []shardRow
	for _, s := range b.shards {
		shards = append(shards, *s)
	}
	if err := upsertShards(ctx, tx, shards); err != nil {
		return err
	}
	if err := insertEvents(ctx, tx, b.events, b.now); err != nil {
		return err
	}
	if len(b.samples) > 0 {
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"pod_guild_counts"}, []string{"revision", "pod", "at", "guilds"},
			pgx.CopyFromSlice(len(b.samples), func(i int) ([]any, error) {
				s := b.samples[i]
				return []any{s.Revision, s.Pod, s.At, s.Guilds}, nil
			}))
		if err != nil {
			return fmt.Errorf("record guild counts: %w", err)
		}
	}
	return nil
}

func upsertGuilds(ctx context.Context, tx pgx.Tx, rows []guildRow) error {
	if len(rows) == 0 {
		return nil
	}
	const chunk = 20_000
	for lo := 0; lo < len(rows); lo += chunk {
		part := rows[lo:min(lo+chunk, len(rows))]
		cols := struct {
			id, epoch, moveEpoch, rev []*int64
			owner, state, from, to    []*string
			phase                     []*string
			start, updated            []*time.Time
			fail                      []*bool
		}{}
		for i := range part {
			g := &part[i]
			cols.id = append(cols.id, &g.ID)
			cols.owner = append(cols.owner, &g.Owner)
			cols.state = append(cols.state, &g.State)
			cols.epoch = append(cols.epoch, &g.Epoch)
			cols.from = append(cols.from, g.MoveFrom)
			cols.to = append(cols.to, g.MoveTo)
			cols.moveEpoch = append(cols.moveEpoch, g.MoveEpoch)
			cols.phase = append(cols.phase, g.MovePhase)
			cols.start = append(cols.start, g.MoveStart)
			cols.fail = append(cols.fail, g.MoveFail)
			cols.rev = append(cols.rev, &g.Revision)
			cols.updated = append(cols.updated, &g.UpdatedAt)
		}
		_, err := tx.Exec(ctx, `INSERT INTO guild_assignments (guild_id, owner, state, epoch, move_from, move_to, move_epoch, move_phase, move_started_at, move_failover, revision, updated_at)
			SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::bigint[], $8::text[], $9::timestamptz[], $10::boolean[], $11::bigint[], $12::timestamptz[])
			ON CONFLICT (guild_id) DO UPDATE SET owner = EXCLUDED.owner, state = EXCLUDED.state, epoch = EXCLUDED.epoch,
				move_from = EXCLUDED.move_from, move_to = EXCLUDED.move_to, move_epoch = EXCLUDED.move_epoch, move_phase = EXCLUDED.move_phase,
				move_started_at = EXCLUDED.move_started_at, move_failover = EXCLUDED.move_failover, revision = EXCLUDED.revision, updated_at = EXCLUDED.updated_at`,
			cols.id, cols.owner, cols.state, cols.epoch, cols.from, cols.to, cols.moveEpoch, cols.phase, cols.start, cols.fail, cols.rev, cols.updated)
		if err != nil {
			return fmt.Errorf("upsert %d guilds: %w", len(part), err)
		}
	}
	return nil
}

func upsertPods(ctx context.Context, tx pgx.Tx, rows []podRow) error {
	if len(rows) == 0 {
		return nil
	}
	var id, addr, state []string
	var ord, guilds []int32
	var since, updated []time.Time
	var drain []bool
	var rev []int64
	for _, p := range rows {
		id, addr, state = append(id, p.ID), append(addr, p.Addr), append(state, p.State)
		ord, guilds = append(ord, p.Ordinal), append(guilds, p.Guilds)
		since, updated = append(since, p.Since), append(updated, p.UpdatedAt)
		drain, rev = append(drain, p.Drain), append(rev, p.Revision)
	}
	_, err := tx.Exec(ctx, `INSERT INTO pods (id, ordinal, addr, state, since, drain, guilds, revision, updated_at)
		SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::timestamptz[], $6::boolean[], $7::int[], $8::bigint[], $9::timestamptz[])
		ON CONFLICT (id) DO UPDATE SET ordinal = EXCLUDED.ordinal, addr = EXCLUDED.addr, state = EXCLUDED.state, since = EXCLUDED.since,
			drain = EXCLUDED.drain, guilds = EXCLUDED.guilds, revision = EXCLUDED.revision, updated_at = EXCLUDED.updated_at`,
		id, ord, addr, state, since, drain, guilds, rev, updated)
	if err != nil {
		return fmt.Errorf("upsert %d pods: %w", len(rows), err)
	}
	return nil
}

func upsertShards(ctx context.Context, tx pgx.Tx, rows []shardRow) error {
	if len(rows) == 0 {
		return nil
	}
	var shard []int32
	var holder []string
	var epoch, rev []int64
	var updated []time.Time
	for _, s := range rows {
		shard, holder, epoch, rev, updated = append(shard, s.Shard), append(holder, s.Holder), append(epoch, s.Epoch), append(rev, s.Revision), append(updated, s.UpdatedAt)
	}
	_, err := tx.Exec(ctx, `INSERT INTO shard_assignments (shard, holder, epoch, revision, updated_at)
		SELECT * FROM unnest($1::int[], $2::text[], $3::bigint[], $4::bigint[], $5::timestamptz[])
		ON CONFLICT (shard) DO UPDATE SET holder = EXCLUDED.holder, epoch = EXCLUDED.epoch, revision = EXCLUDED.revision, updated_at = EXCLUDED.updated_at`,
		shard, holder, epoch, rev, updated)
	if err != nil {
		return fmt.Errorf("upsert %d shards: %w", len(rows), err)
	}
	return nil
}

var eventColumns = []string{"revision", "seq", "at", "mirrored_at", "kind", "cause", "guild_id", "pod", "shard", "from_pod", "to_pod", "epoch", "phase", "reason", "failover", "duration_ms", "detail"}

func insertEvents(ctx context.Context, tx pgx.Tx, events []eventRow, now time.Time) error {
	if len(events) == 0 {
		return nil
	}
	_, err := tx.CopyFrom(ctx, pgx.Identifier{"assignment_events"}, eventColumns, pgx.CopyFromSlice(len(events), func(i int) ([]any, error) {
		e := &events[i]
		return []any{e.Revision, e.Seq, e.At, now, e.Kind, e.Cause, e.Guild, e.Pod, e.Shard, e.From, e.To, e.Epoch, e.Phase, e.Reason, e.Failover, e.DurationMs, e.Detail}, nil
	}))
	if err != nil {
		return fmt.Errorf("insert %d events: %w", len(events), err)
	}
	return nil
}
