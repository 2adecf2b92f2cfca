package guildstore

import (
	"context"
	"fmt"
	"time"
)

// discordEpochMS is the first millisecond of 2015, Discord's snowflake epoch.
const discordEpochMS = 1420070400000

// snowflakeBefore is the smallest snowflake created at or after t.
func snowflakeBefore(t time.Time) int64 {
	msec := t.UnixMilli() - discordEpochMS
	if msec <= 0 {
		return 0
	}
	return msec << 22
}

// PruneUnseenMessages deletes the parked edits and tombstones
// (unseen_messages) of messages created before createdBefore (by their
// snowflake), in chunked transactions, and returns how many it deleted.
//
// A row waits for its message's MESSAGE_CREATE; deletes and edits of
// messages the bot never sees created (older than the bot's arrival, or
// created by bots, whose creates are ignored) would otherwise wait forever.
// Pick createdBefore older than the longest a create can still arrive late:
// the RESUME window, the held buffer and the outbox of a stuck move, and
// dead letters awaiting a replay (a create replayed after its tombstone was
// pruned counts as live). Not fenced: it is housekeeping on this pod's copy.
func (s *Store) PruneUnseenMessages(ctx context.Context, createdBefore time.Time) (int64, error) {
	cut := snowflakeBefore(createdBefore)
	var total int64
	for {
		var n int64
		err := s.w.job(ctx, func(ctx context.Context, t *wtx) error {
			var err error
			n, err = rowsChanged(t.exec(ctx, `DELETE FROM unseen_messages WHERE (guild_id, message_id) IN
				(SELECT guild_id, message_id FROM unseen_messages WHERE message_id < ? LIMIT ?)`, cut, deleteChunk))
			return err
		})
		if err != nil {
			return total, fmt.Errorf("prune unseen messages created before %s: %w", createdBefore.Format(time.RFC3339), err)
		}
		total += n
		if n < deleteChunk {
			return total, nil
		}
	}
}
