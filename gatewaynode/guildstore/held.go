package guildstore

import (
	"context"
	"fmt"
)

// Hold appends an event to the guild's durable held buffer (used while the
// guild migrates, or its owner is unreachable) and returns its sequence
// number once committed. Holding is not fenced: buffering is always safe, and
// duplicates in the buffer are harmless because handlers are idempotent.
//
// The buffer belongs to this pod, not to the guild's data: Export never
// ships it, Import and DeleteGuild never touch it; only DropHeld removes
// events, after this pod delivered them.
func (s *Store) Hold(ctx context.Context, guildID uint64, eventType string, payload []byte) (int64, error) {
	out, err := s.Apply(ctx, Write{Op: HoldEvent{GuildID: guildID, Type: eventType, Payload: payload, ReceivedAt: s.opts.Now()}})
	if err != nil {
		return 0, fmt.Errorf("hold event for guild %d: %w", guildID, err)
	}
	return out[0].Seq, nil
}

// DefaultHeldPage is a reasonable page size for HeldPage.
const DefaultHeldPage = 1000

// HeldPage returns up to limit of the guild's held events with seq > afterSeq,
// in seq order. Draining the buffer page by page (afterSeq = the last seq of
// the previous page, or 0; DropHeld after each delivered page) reads every
// event once, however long the buffer is. An empty page means nothing is held
// after afterSeq; HeldPage(ctx, g, 0, 1) is the cheap emptiness test.
func (s *Store) HeldPage(ctx context.Context, guildID uint64, afterSeq int64, limit int) ([]HeldEvent, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("held events of guild %d after %d: limit %d, want > 0", guildID, afterSeq, limit)
	}
	out, err := s.heldPage(ctx, guildID, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("held events of guild %d after %d: %w", guildID, afterSeq, err)
	}
	return out, nil
}

func (s *Store) heldPage(ctx context.Context, guildID uint64, afterSeq int64, limit int) ([]HeldEvent, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT seq, type, payload, received_at FROM held_events
		WHERE guild_id = ? AND seq > ? ORDER BY seq LIMIT ?`, int64(guildID), afterSeq, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []HeldEvent
	for rows.Next() {
		e := HeldEvent{GuildID: guildID}
		var recv int64
		if err := rows.Scan(&e.Seq, &e.Type, &e.Payload, &recv); err != nil {
			return nil, err
		}
		e.ReceivedAt = fromMS(recv)
		out = append(out, e)
	}
	return out, rows.Err()
}

// HeldCount is the number of events this pod holds for the guild. It counts
// the rows (cost linear in the buffer): to test for emptiness use HeldPage
// with limit 1.
func (s *Store) HeldCount(ctx context.Context, guildID uint64) (int64, error) {
	var n int64
	if err := s.rdb.QueryRowContext(ctx, `SELECT count(*) FROM held_events WHERE guild_id = ?`, int64(guildID)).Scan(&n); err != nil {
		return 0, fmt.Errorf("count held events of guild %d: %w", guildID, err)
	}
	return n, nil
}

// DropHeld deletes the guild's held events with seq <= uptoSeq (after they
// were processed). Idempotent; events held later have higher seqs and stay.
func (s *Store) DropHeld(ctx context.Context, guildID uint64, uptoSeq int64) error {
	if _, err := s.Apply(ctx, Write{Op: DropHeldOp{GuildID: guildID, UpTo: uptoSeq}}); err != nil {
		return fmt.Errorf("drop held events of guild %d up to %d: %w", guildID, uptoSeq, err)
	}
	return nil
}

// HeldGuilds lists the guilds that have held events, ascending.
func (s *Store) HeldGuilds(ctx context.Context) ([]uint64, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT DISTINCT guild_id FROM held_events ORDER BY guild_id`)
	if err != nil {
		return nil, fmt.Errorf("list guilds with held events: %w", err)
	}
	defer rows.Close()
	var out []uint64
	for rows.Next() {
		var g int64
		if err := rows.Scan(&g); err != nil {
			return nil, fmt.Errorf("list guilds with held events: %w", err)
		}
		out = append(out, uint64(g))
	}
	return out, rows.Err()
}
