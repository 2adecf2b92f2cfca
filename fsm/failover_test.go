package fsm

import (
	"bytes"
	"errors"
	"testing"
)

// A failover move is only for a guild whose owner is down (a live owner's
// guild is moved, with its own export), needs command version 3, records
// the loss window in the migration, and survives a snapshot.
func TestFailoverMovesOnlyGuildsOfADownOwner(t *testing.T) {
	s := cluster(t, 2, 2)
	mustApply(t, s, 10, Command{Type: CmdPlaceGuilds, GuildIDs: []uint64{42}})
	owner := guildAt(s, 42).Owner
	to := "gateway-0"
	if owner == to {
		to = "gateway-1"
	}
	fail := Command{Version: CommandVersion, Type: CmdStartMove, Guild: 42, To: to, Failover: true, LossWindowMs: 1200}
	if _, err := s.Apply(11, fail); !errors.Is(err, ErrConflict) {
		t.Fatalf("failover of a guild whose owner is up: %v, want ErrConflict", err)
	}
	mustApply(t, s, 12, Command{Type: CmdMarkPodDown, PodID: owner})
	if _, err := s.Apply(13, Command{Version: CommandVersion, Type: CmdStartMove, Guild: 42, To: to}); !errors.Is(err, ErrConflict) {
		t.Fatalf("plain move off a down owner: %v, want ErrConflict", err)
	}
	old := fail
	old.Version = 2
	if _, err := s.Apply(14, old); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("failover at command version 2: %v, want ErrUnsupported", err)
	}
	if g := guildAt(s, 42); g.Migration != nil || g.Epoch != 10 {
		t.Fatalf("a rejected command changed the guild: %+v", g)
	}
	mustApply(t, s, 15, fail)
	m := guildAt(s, 42).Migration
	if m == nil || !m.Failover || m.LossWindowMs != 1200 || m.From != owner || m.To != to || m.Epoch != 15 {
		t.Fatalf("migration after the failover start: %+v", m)
	}
	var buf bytes.Buffer
	if err := s.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	r, err := ReadSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := guildAt(r, 42).Migration; got == nil || *got != *m {
		t.Fatalf("migration after a snapshot round trip: %+v, want %+v", got, m)
	}
	mustApply(t, s, 16, Command{Type: CmdCompleteMove, Guild: 42, Epoch: 15})
	if g := guildAt(s, 42); g.Owner != to || g.Migration != nil || g.Epoch != 15 {
		t.Fatalf("after the failover commits: %+v", g)
	}
}
