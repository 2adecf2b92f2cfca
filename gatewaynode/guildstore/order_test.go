package guildstore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// permutations calls fn with every ordering of n items (Heap's algorithm).
func permutations(n int, fn func(order []int)) {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	c := make([]int, n)
	fn(p)
	for i := 0; i < n; {
		if c[i] < i {
			if i%2 == 0 {
				p[0], p[i] = p[i], p[0]
			} else {
				p[c[i]], p[i] = p[i], p[c[i]]
			}
			fn(p)
			c[i]++
			i = 0
		} else {
			c[i] = 0
			i++
		}
	}
}

// withGuild returns op retargeted to guild g.
func withGuild(op Op, g uint64) Op {
	switch o := op.(type) {
	case MessageCreate:
		o.GuildID = g
		return o
	case MessageEdit:
		o.GuildID = g
		return o
	case MessageDelete:
		o.GuildID = g
		return o
	case PutSettings:
		o.GuildID = g
		return o
	case AddModAction:
		o.Action.GuildID = g
		return o
	}
	panic(fmt.Sprintf("withGuild: %T", op))
}

// guildRows is the guild's canonical export lines with its id replaced by
// "G", so the rows of two guilds can be compared.
func guildRows(t testing.TB, s *Store, g uint64) []string {
	t.Helper()
	data, _ := exportOf(t, s, g)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	rows := lines[1 : len(lines)-1] // no header, no trailer
	for i, l := range rows {
		rows[i] = strings.Replace(l, fmt.Sprintf(`",%d,`, g), `",G,`, 1)
		rows[i] = strings.Replace(rows[i], fmt.Sprintf(`",%d]`, g), `",G]`, 1)
	}
	return rows
}

// applyInEveryOrder applies ops in every order, each ordering to a guild of
// its own (1, 2, ...), and fails unless every guild ends with the rows of the
// first. It returns the number of orderings.
func applyInEveryOrder(t *testing.T, s *Store, ops []Op) int {
	t.Helper()
	var units [][]Write
	permutations(len(ops), func(order []int) {
		g := uint64(len(units) + 1)
		unit := make([]Write, len(order))
		for i, k := range order {
			unit[i] = Write{Op: withGuild(ops[k], g)}
		}
		units = append(units, unit)
	})
	for i := 0; i < len(units); i += 500 {
		res, err := s.ApplyBatch(context.Background(), units[i:min(len(units), i+500)])
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil {
				t.Fatal(r.Err)
			}
		}
	}
	want := guildRows(t, s, 1)
	for g := uint64(2); g <= uint64(len(units)); g++ {
		if got := guildRows(t, s, g); !reflect.DeepEqual(got, want) {
			t.Fatalf("ordering %d converged to\n%s\nordering 1 to\n%s", g, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	return len(units)
}

// TestMessageWritesConvergeInAnyOrder: a message's create, three edits (two
// at the same edited_timestamp) and a delete received twice give the same row
// in every arrival order, with the earliest delete time, the newest edit and
// a deterministic tie break. (A replayed create after edits and deletes:
// TestReplayedCreateDoesNotUndoEditOrDelete.)
func TestMessageWritesConvergeInAnyOrder(t *testing.T) {
	s := openTest(t, "order.db")
	create := MessageCreate{MessageID: 5, ChannelID: 2, AuthorID: 3, CreatedAt: t0, ContentLength: 4}
	ops := []Op{
		create,
		MessageEdit{MessageID: 5, EditedAt: t0.Add(time.Minute), ContentLength: 40},
		MessageEdit{MessageID: 5, EditedAt: t0.Add(2 * time.Minute), ContentLength: 20},
		MessageEdit{MessageID: 5, EditedAt: t0.Add(2 * time.Minute), ContentLength: 25},
		MessageDelete{MessageID: 5, DeletedAt: t0.Add(3 * time.Minute)},
		MessageDelete{MessageID: 5, DeletedAt: t0.Add(4 * time.Minute)}, // the same delete, received again later
	}
	n := applyInEveryOrder(t, s, ops)
	want := fmt.Sprintf(`["messages",G,5,2,3,%d,%d,%d,25]`, ms(t0), ms(t0.Add(2*time.Minute)), ms(t0.Add(3*time.Minute)))
	if got := guildRows(t, s, 1); !reflect.DeepEqual(got, []string{want}) {
		t.Fatalf("rows %v, want [%s]", got, want)
	}
	t.Logf("%d orderings converged", n)
}

// TestDeleteBeforeCreateStaysDeleted: a delete handled before its create
// leaves a tombstone that is not a message of its own; the create then
// stores the message as deleted, at the delete's time.
func TestDeleteBeforeCreateStaysDeleted(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "a.db")
	out := mustApply(t, s, Write{Op: MessageDelete{GuildID: 1, MessageID: 5, DeletedAt: t0.Add(time.Minute)}})
	if !out[0].Applied {
		t.Fatal("tombstone not recorded")
	}
	if d, _ := s.Dashboard(ctx, 1); d.Messages != 0 || d.MessagesDeleted != 0 {
		t.Fatalf("a tombstone alone counts: %+v", d)
	}
	// A replay of the delete is a no-op.
	if out := mustApply(t, s, Write{Op: MessageDelete{GuildID: 1, MessageID: 5, DeletedAt: t0.Add(2 * time.Minute)}}); out[0].Applied {
		t.Fatal("replayed delete changed the tombstone")
	}
	out = mustApply(t, s, Write{Op: MessageCreate{GuildID: 1, MessageID: 5, ChannelID: 2, AuthorID: 3, CreatedAt: t0, ContentLength: 4}})
	if !out[0].Applied {
		t.Fatal("create not applied")
	}
	d, _ := s.Dashboard(ctx, 1)
	if d.Messages != 0 || d.MessagesDeleted != 1 || len(d.TopAuthors) != 0 {
		t.Fatalf("late create counts as live: %+v", d)
	}
	c, _ := s.Counts(ctx, 1)
	if c["messages"] != 1 || c["unseen_messages"] != 0 {
		t.Fatalf("counts %v: the create must take the tombstone over", c)
	}
}

// TestEditBeforeCreateIsKept: an edit handled before its create is not lost.
func TestEditBeforeCreateIsKept(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "a.db")
	mustApply(t, s, Write{Op: MessageEdit{GuildID: 1, MessageID: 5, EditedAt: t0.Add(time.Minute), ContentLength: 40}})
	if d, _ := s.Dashboard(ctx, 1); d.Messages != 0 || d.MessagesEdited != 0 {
		t.Fatalf("a parked edit counts: %+v", d)
	}
	mustApply(t, s, Write{Op: MessageCreate{GuildID: 1, MessageID: 5, ChannelID: 2, AuthorID: 3, CreatedAt: t0, ContentLength: 4}})
	if d, _ := s.Dashboard(ctx, 1); d.Messages != 1 || d.MessagesEdited != 1 {
		t.Fatalf("edit lost: %+v", d)
	}
}

func TestPruneUnseenMessagesByMessageAge(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "a.db")
	old, recent := snowflakeAt(t0.Add(-10*24*time.Hour), 1), snowflakeAt(t0, 1)
	for _, m := range []uint64{old, recent} {
		mustApply(t, s, Write{Op: MessageDelete{GuildID: 1, MessageID: m, DeletedAt: t0}})
	}
	n, err := s.PruneUnseenMessages(ctx, t0.Add(-24*time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("pruned %d, %v; want 1", n, err)
	}
	mustApply(t, s, Write{Op: MessageCreate{GuildID: 1, MessageID: recent, ChannelID: 2, AuthorID: 3, CreatedAt: t0}})
	if d, _ := s.Dashboard(ctx, 1); d.MessagesDeleted != 1 {
		t.Fatalf("the recent tombstone was pruned: %+v", d)
	}
}

// TestOlderSettingsNeverOverwriteNewer: /setup fields converge to the value
// of the newest interaction that set each, in every arrival order; a field
// only an older /setup set is kept.
func TestOlderSettingsNeverOverwriteNewer(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "settings.db")
	v := func(n int) (uint64, time.Time) {
		at := t0.Add(time.Duration(n) * time.Second)
		return snowflakeAt(at, uint64(n)), at
	}
	v1, at1 := v(1)
	v2, at2 := v(2)
	v3, at3 := v(3)
	ops := []Op{
		PutSettings{ModRoleID: 11, ModlogChannelID: 21, Version: v1, UpdatedAt: at1},
		PutSettings{ModlogChannelID: 22, Version: v2, UpdatedAt: at2},
		PutSettings{ModRoleID: 13, Version: v3, UpdatedAt: at3},
		PutSettings{ModRoleID: 13, Version: v3, UpdatedAt: at3}, // a replayed webhook
		PutSettings{ModRoleID: 12, Version: v3, UpdatedAt: at3}, // same version: the larger id wins
	}
	n := applyInEveryOrder(t, s, ops)
	st, err := s.Settings(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if st.ModRoleID != 13 || st.ModlogChannelID != 22 || !st.UpdatedAt.Equal(at3) {
		t.Fatalf("settings %+v, want role 13, channel 22, updated %s", st, at3)
	}
	t.Logf("%d orderings converged", n)
	// Stale and empty writes report that they changed nothing.
	for _, op := range []PutSettings{{GuildID: 1, ModRoleID: 99, Version: v1}, {GuildID: 1, Version: v3 + 1}} {
		if out := mustApply(t, s, Write{Op: op}); out[0].Applied {
			t.Fatalf("%+v applied", op)
		}
	}
	if _, err := s.Apply(ctx, Write{Op: PutSettings{GuildID: 1, ModRoleID: 1}}); err == nil {
		t.Fatal("a settings write without a version was accepted")
	}
}

// TestUpgradeOrdersExistingSettingsByTheirTime: settings stored before
// migration 0002 are ordered by their updated_at (the snowflake time of the
// /setup that wrote them): an older /setup cannot overwrite them afterwards,
// a newer one can, and a field they never set is still settable.
func TestUpgradeOrdersExistingSettingsByTheirTime(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	if err := migrateTo(ctx, db, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO guild_settings (guild_id, mod_role_id, modlog_channel_id, updated_at) VALUES (1, 11, NULL, ?)`, ms(t0)); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := OpenWithOptions(ctx, path, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	older, newer := snowflakeAt(t0.Add(-time.Second), 0), snowflakeAt(t0.Add(time.Second), 0)
	mustApply(t, s, Write{Op: PutSettings{GuildID: 1, ModRoleID: 99, ModlogChannelID: 5, Version: older, UpdatedAt: t0.Add(-time.Second)}})
	if st, _ := s.Settings(ctx, 1); st.ModRoleID != 11 || st.ModlogChannelID != 5 {
		t.Fatalf("after an older /setup: %+v, want role 11 kept, channel 5 set", st)
	}
	mustApply(t, s, Write{Op: PutSettings{GuildID: 1, ModRoleID: 77, Version: newer, UpdatedAt: t0.Add(time.Second)}})
	if st, _ := s.Settings(ctx, 1); st.ModRoleID != 77 {
		t.Fatalf("after a newer /setup: %+v", st)
	}
}

// TestModActionsOfOneSessionConvergeInAnyOrder: bans, unbans and leaves
// delivered by one session (keys differ by seq) are stored as the same rows,
// in the same order, whatever order they arrive in — including a replay.
func TestModActionsOfOneSessionConvergeInAnyOrder(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "actions.db")
	act := func(kind string, seq int) Op {
		return AddModAction{ModAction{Kind: kind, UserID: 9, CreatedAt: t0.Add(time.Duration(seq) * time.Millisecond),
			DedupeKey: fmt.Sprintf("%s:9:sess:%d", kind, seq)}}
	}
	ops := []Op{act(ActionBan, 1), act(ActionUnban, 2), act(ActionBan, 3), act(ActionLeave, 4), act(ActionLeave, 5), act(ActionUnban, 2)}
	n := applyInEveryOrder(t, s, ops)
	d, err := s.Dashboard(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{ActionBan: 2, ActionUnban: 1, ActionLeave: 2}
	if !reflect.DeepEqual(d.ModActionsByKind, want) {
		t.Fatalf("actions %v, want %v", d.ModActionsByKind, want)
	}
	if d.RecentActions[0].DedupeKey != "leave:9:sess:5" || d.RecentActions[4].DedupeKey != "ban:9:sess:1" {
		t.Fatalf("recent actions not in the order they happened: %+v", d.RecentActions)
	}
	t.Logf("%d orderings converged", n)
}

func TestDeliveryKeysNameTheirSession(t *testing.T) {
	for key, want := range map[string]string{
		"ban:9:abc:12":   "abc",
		"leave:9:s:1:40": "s:1",
		"ban:9:1":        "",
		"timeout:9:123":  "",
		"x":              "",
	} {
		if got := keySession(key); got != want {
			t.Errorf("keySession(%q) = %q, want %q", key, got, want)
		}
	}
}

// TestExportOfAnotherFormatVersionIsRefused: a pod of another release
// exported it; the import fails (the move aborts) and changes nothing.
func TestExportOfAnotherFormatVersionIsRefused(t *testing.T) {
	ctx := context.Background()
	src, dst := openTest(t, "src.db"), openTest(t, "dst.db")
	mustApply(t, src, sampleWrites(3, 1)...)
	data, info := exportOf(t, src, 3)
	old := bytes.Replace(data, []byte(`"version":2`), []byte(`"version":1`), 1)
	if _, err := dst.Import(ctx, 3, bytes.NewReader(old), info.Checksum); !errors.Is(err, ErrBadExport) || !strings.Contains(err.Error(), "version 1") {
		t.Fatalf("import of a version 1 export: %v", err)
	}
	if c, _ := dst.Counts(ctx, 3); c["messages"] != 0 {
		t.Fatal("refused import left rows")
	}
}
