package guildstore

import (
	"context"
	"fmt"
)

// Hold appends an event to the guild's durable held buffer (used while the
// guild migrates) and returns its sequence number once committed. Holding is
// not fenced: buffering is always safe, and duplicates in the buffer are
// harmless because handlers are idempotent.
func (s *Store) Hold(ctx context.Context, guildID uint64, eventType string, payload []byte) (int64, error) {
	out, err := s.Apply(ctx, Write{Op: HoldEvent{GuildID: guildID, Type: eventType, Payload: payload, ReceivedAt: s.opts.Now()}})
	if err != nil {
		return 0, fmt.Errorf("hold event for guild %d: %w", guildID, err)
	}
	return out[0].Seq, nil
}

// Held returns the guild's held events in sequence order.
func (s *Store) Held(ctx context.Context, guildID uint64) ([]HeldEvent, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT seq, type, payload, received_at FROM held_events WHERE guild_id = ? ORDER BY seq`, int64(guildID))
	if err != nil {
		return nil, fmt.Errorf("held events of guild %d: %w", guildID, err)
	}
	defer rows.Close()
	var out []HeldEvent
	for rows.Next() {
		e := HeldEvent{GuildID: guildID}
		var recv int64
		if err := rows.Scan(&e.Seq, &e.Type, &e.Payload, &recv); err != nil {
			return nil, fmt.Errorf("held events of guild %d: %w", guildID, err)
		}
		e.ReceivedAt = fromMS(recv)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("held events of guild %d: %w", guildID, err)
	}
	return out, nil
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
