package guildstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
)

// Dead letters: events whose handler failed (other than with a stale epoch)
// after the caller's retries. They are never dropped silently: each stays in
// dead_letters until an operator replays it (ReplayDeadLetter) or discards it
// (DeleteDeadLetter). Like held events they belong to the pod that received
// them, not to the guild's data: Export, Import and DeleteGuild never touch
// them, and writing them is not fenced (a replay goes back through routing,
// which sends the event to the guild's owner wherever it is now).

// ErrNoDeadLetter: no dead letter with that id.
var ErrNoDeadLetter = errors.New("no such dead letter")

// maxDeadLetterError bounds the stored error message (bytes).
const maxDeadLetterError = 4096

// AddDeadLetter records a failed event and returns its id. d.Attempts (at
// least 1) is how many handlings failed this round; FirstFailedAt and
// LastFailedAt default to now. A dead letter with a DeliveryID is recorded
// once per (guild, delivery): failing again adds the attempts, keeps the first
// failure time and takes the latest error — so re-dead-lettering a replayed
// event updates its row instead of adding one.
func (s *Store) AddDeadLetter(ctx context.Context, d DeadLetter) (int64, error) {
	now := s.opts.Now()
	if d.Attempts < 1 {
		d.Attempts = 1
	}
	if d.LastFailedAt.IsZero() {
		d.LastFailedAt = now
	}
	if d.FirstFailedAt.IsZero() || d.FirstFailedAt.After(d.LastFailedAt) {
		d.FirstFailedAt = d.LastFailedAt
	}
	if d.Payload == nil {
		d.Payload = []byte{}
	}
	msg := clipError(d.Error)
	var id int64
	err := s.w.job(ctx, func(ctx context.Context, t *wtx) error {
		return t.queryRow(ctx, `INSERT INTO dead_letters (guild_id, type, payload, delivery_id, received_at, error, attempts,
				first_failed_at, last_failed_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (guild_id, delivery_id) WHERE delivery_id != '' DO UPDATE SET
				error = CASE WHEN excluded.last_failed_at >= dead_letters.last_failed_at THEN excluded.error ELSE dead_letters.error END,
				attempts = dead_letters.attempts + excluded.attempts,
				first_failed_at = min(dead_letters.first_failed_at, excluded.first_failed_at),
				last_failed_at = max(dead_letters.last_failed_at, excluded.last_failed_at),
				received_at = coalesce(dead_letters.received_at, excluded.received_at)
			RETURNING id`,
			int64(d.GuildID), d.Type, d.Payload, d.DeliveryID, nullMS(d.ReceivedAt), msg, d.Attempts,
			ms(d.FirstFailedAt), ms(d.LastFailedAt)).Scan(&id)
	})
	if err != nil {
		return 0, fmt.Errorf("dead-letter %s of guild %d (delivery %q): %w", d.Type, d.GuildID, d.DeliveryID, err)
	}
	s.log.Warn("event dead-lettered", "id", id, "guild", d.GuildID, "type", d.Type, "delivery", d.DeliveryID,
		"attempts", d.Attempts, "err", msg)
	return id, nil
}

const deadLetterCols = `id, guild_id, type, payload, delivery_id, received_at, error, attempts, first_failed_at, last_failed_at`

func scanDeadLetters(rows *sql.Rows) ([]DeadLetter, error) {
	defer rows.Close()
	var out []DeadLetter
	for rows.Next() {
		var d DeadLetter
		var g, first, last int64
		var recv sql.NullInt64
		if err := rows.Scan(&d.ID, &g, &d.Type, &d.Payload, &d.DeliveryID, &recv, &d.Error, &d.Attempts, &first, &last); err != nil {
			return nil, err
		}
		d.GuildID, d.ReceivedAt, d.FirstFailedAt, d.LastFailedAt = uint64(g), fromNullMS(recv), fromMS(first), fromMS(last)
		out = append(out, d)
	}
	return out, rows.Err()
}

// DeadLetters lists up to limit dead letters with id > afterID, in id order
// (the order they were first recorded): of one guild, or of every guild when
// guildID is 0. Page on with afterID = the last id returned.
func (s *Store) DeadLetters(ctx context.Context, guildID uint64, afterID int64, limit int) ([]DeadLetter, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("list dead letters: limit %d, want > 0", limit)
	}
	q := `SELECT ` + deadLetterCols + ` FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?`
	args := []any{afterID, limit}
	if guildID != 0 {
		q = `SELECT ` + deadLetterCols + ` FROM dead_letters WHERE guild_id = ? AND id > ? ORDER BY id LIMIT ?`
		args = []any{int64(guildID), afterID, limit}
	}
	rows, err := s.rdb.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list dead letters of guild %d after %d: %w", guildID, afterID, err)
	}
	out, err := scanDeadLetters(rows)
	if err != nil {
		return nil, fmt.Errorf("list dead letters of guild %d after %d: %w", guildID, afterID, err)
	}
	return out, nil
}

// DeadLetterCount is the number of dead letters of one guild, or of every
// guild when guildID is 0 (for the metric).
func (s *Store) DeadLetterCount(ctx context.Context, guildID uint64) (int64, error) {
	q, args := `SELECT count(*) FROM dead_letters`, []any{}
	if guildID != 0 {
		q, args = `SELECT count(*) FROM dead_letters WHERE guild_id = ?`, []any{int64(guildID)}
	}
	var n int64
	if err := s.rdb.QueryRowContext(ctx, q, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count dead letters of guild %d: %w", guildID, err)
	}
	return n, nil
}

// DeadLetter returns one dead letter by id (ok=false if there is none).
func (s *Store) DeadLetter(ctx context.Context, id int64) (DeadLetter, bool, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+deadLetterCols+` FROM dead_letters WHERE id = ?`, id)
	if err != nil {
		return DeadLetter{}, false, fmt.Errorf("read dead letter %d: %w", id, err)
	}
	ds, err := scanDeadLetters(rows)
	if err != nil {
		return DeadLetter{}, false, fmt.Errorf("read dead letter %d: %w", id, err)
	}
	if len(ds) == 0 {
		return DeadLetter{}, false, nil
	}
	return ds[0], true, nil
}

// ReplayDeadLetter takes dead letter id back out for replay: it calls replay
// with it and deletes it only once replay returned nil (the event was
// re-handled and committed). If replay fails the dead letter stays, with one
// more attempt and replay's error recorded, and the error is returned. The
// row is not locked while replay runs, so replay must not hold the store's
// writer (it normally hands the event to the router); a concurrent replay of
// the same id handles the event twice, which idempotent handlers absorb.
// An unknown id fails with ErrNoDeadLetter.
func (s *Store) ReplayDeadLetter(ctx context.Context, id int64, replay func(context.Context, DeadLetter) error) error {
	d, ok, err := s.DeadLetter(ctx, id)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("replay dead letter %d: %w", id, ErrNoDeadLetter)
	}
	if rerr := replay(ctx, d); rerr != nil {
		if err := s.recordDeadLetterFailure(ctx, id, rerr); err != nil {
			return errors.Join(fmt.Errorf("replay dead letter %d: %w", id, rerr), err)
		}
		return fmt.Errorf("replay dead letter %d: %w", id, rerr)
	}
	if err := s.DeleteDeadLetter(ctx, id); err != nil && !errors.Is(err, ErrNoDeadLetter) {
		return fmt.Errorf("replayed dead letter %d: %w", id, err)
	}
	s.log.Info("dead letter replayed", "id", id, "guild", d.GuildID, "type", d.Type, "delivery", d.DeliveryID)
	return nil
}

func (s *Store) recordDeadLetterFailure(ctx context.Context, id int64, cause error) error {
	msg := clipError(cause.Error())
	err := s.w.job(ctx, func(ctx context.Context, t *wtx) error {
		_, err := t.exec(ctx, `UPDATE dead_letters SET attempts = attempts + 1, error = ?, last_failed_at = max(last_failed_at, ?)
			WHERE id = ?`, msg, ms(s.opts.Now()), id)
		return err
	})
	if err != nil {
		return fmt.Errorf("record failed replay of dead letter %d: %w", id, err)
	}
	return nil
}

// DeleteDeadLetter removes a dead letter (after it was replayed, or because
// an operator decided to discard it). An unknown id fails with ErrNoDeadLetter.
func (s *Store) DeleteDeadLetter(ctx context.Context, id int64) error {
	var n int64
	err := s.w.job(ctx, func(ctx context.Context, t *wtx) error {
		var err error
		n, err = rowsChanged(t.exec(ctx, `DELETE FROM dead_letters WHERE id = ?`, id))
		return err
	})
	if err != nil {
		return fmt.Errorf("delete dead letter %d: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("delete dead letter %d: %w", id, ErrNoDeadLetter)
	}
	return nil
}

// clipError bounds an error message to maxDeadLetterError bytes, on a rune boundary.
func clipError(msg string) string {
	if len(msg) <= maxDeadLetterError {
		return msg
	}
	return strings.ToValidUTF8(msg[:maxDeadLetterError], "") // drops a rune cut in half
}
