package guildstore

import (
	"context"
	"errors"
	"testing"
)

// TestDropOfAnOldCopyNeverDeletesANewerImport: a guild moved away and back
// again — its old copy's drop (epoch 2) may still be running when the guild
// returns at a newer epoch (5). The drop must stop and leave every row of
// the new owner's data.
func TestDropOfAnOldCopyNeverDeletesANewerImport(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "a.db")
	mustApply(t, s, sampleWrites(10, 5)...) // the guild is back, at epoch 5
	before := mustChecksum(t, s, 10)
	err := s.DeleteGuild(ctx, 10, 2)
	if !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("drop at epoch 2 of a guild at epoch 5: %v, want ErrStaleEpoch", err)
	}
	if got := mustChecksum(t, s, 10); got != before {
		t.Fatal("the stale drop deleted rows of the newer copy")
	}
	if err := s.DeleteGuild(ctx, 10, 5); err != nil {
		t.Fatalf("a drop at the current epoch: %v", err)
	}
	counts, _ := s.Counts(ctx, 10)
	if counts["messages"] != 0 {
		t.Fatalf("%d messages left after a drop at the current epoch", counts["messages"])
	}
}
