package guildstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func openTest(t testing.TB, name string) *Store {
	t.Helper()
	s, err := OpenWithOptions(context.Background(), filepath.Join(t.TempDir(), name), Options{
		Now: func() time.Time { return t0.Add(time.Hour) }, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustApply(t testing.TB, s *Store, ws ...Write) []Outcome {
	t.Helper()
	out, err := s.Apply(context.Background(), ws...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustChecksum(t testing.TB, s *Store, g uint64) string {
	t.Helper()
	info, err := s.Checksum(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	return info.Checksum
}

// sampleWrites covers every op type for guild g.
func sampleWrites(g uint64, epoch uint64) []Write {
	ops := []Op{
		PutSettings{GuildID: g, ModRoleID: 11, ModlogChannelID: 12, Version: snowflakeAt(t0, 1), UpdatedAt: t0},
		MessageCreate{GuildID: g, MessageID: 100, ChannelID: 1, AuthorID: 7, CreatedAt: t0, ContentLength: 5},
		MessageCreate{GuildID: g, MessageID: 101, ChannelID: 1, AuthorID: 8, CreatedAt: t0, ContentLength: 6},
		MessageCreate{GuildID: g, MessageID: 102, ChannelID: 2, AuthorID: 7, CreatedAt: t0, ContentLength: 7},
		MessageEdit{GuildID: g, MessageID: 100, EditedAt: t0.Add(time.Minute), ContentLength: 50},
		MessageDelete{GuildID: g, MessageID: 101, DeletedAt: t0.Add(2 * time.Minute)},
		AddReport{Report{ID: 9000 + g, GuildID: g, ReporterID: 7, TargetUserID: 8, MessageID: 101, ChannelID: 1,
			MessageContent: "rude <words> & \"quotes\"\n", Reason: "spam", CreatedAt: t0, ModlogChannelID: 12}},
		MarkReportPosted{GuildID: g, ReportID: 9000 + g, PostedAt: t0.Add(time.Second)},
		AddModAction{ModAction{GuildID: g, Kind: ActionBan, UserID: 8, CreatedAt: t0, DedupeKey: "ban:8:s1:10"}},
		AddModAction{ModAction{GuildID: g, Kind: ActionUnban, UserID: 8, CreatedAt: t0.Add(time.Minute), DedupeKey: "unban:8:s1:11"}},
		AddModAction{ModAction{GuildID: g, Kind: ActionBan, UserID: 8, CreatedAt: t0.Add(2 * time.Minute), DedupeKey: "ban:8:s1:12"}},
		AddModAction{ModAction{GuildID: g, Kind: ActionLeave, UserID: 9, CreatedAt: t0}},
		AddModAction{ModAction{GuildID: g, Kind: ActionTimeout, UserID: 9, CreatedAt: t0, DedupeKey: "timeout:9:123"}},
	}
	ws := make([]Write, len(ops))
	for i, op := range ops {
		ws[i] = Write{Epoch: epoch, Op: op}
	}
	return ws
}

// snowflakeAt is a snowflake created at t (n in its low bits).
func snowflakeAt(t time.Time, n uint64) uint64 {
	return uint64(t.UnixMilli()-discordEpochMS)<<22 | n
}

func TestOpenMigratesOnceAndUsesWAL(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "pod.db")
	all, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	latest := all[len(all)-1].version
	for i := 0; i < 2; i++ {
		s, err := Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		v, err := s.SchemaVersion(ctx)
		if err != nil || v != latest {
			t.Fatalf("schema version = %d, %v; want %d", v, err, latest)
		}
		var n int
		var mode string
		if err := s.rdb.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&n); err != nil || n != len(all) {
			t.Fatalf("schema_migrations rows = %d, %v", n, err)
		}
		if err := s.rdb.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
			t.Fatalf("journal_mode = %q, %v", mode, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestApplyIsIdempotent(t *testing.T) {
	s := openTest(t, "a.db")
	const g = 42
	first := mustApply(t, s, sampleWrites(g, 1)...)
	for i, o := range first {
		if !o.Applied {
			t.Errorf("write %d not applied the first time", i)
		}
	}
	sum := mustChecksum(t, s, g)
	counts, _ := s.Counts(context.Background(), g)
	again := mustApply(t, s, sampleWrites(g, 1)...)
	for i, o := range again {
		if o.Applied {
			t.Errorf("replayed write %d (%T) applied again", i, sampleWrites(g, 1)[i].Op)
		}
	}
	if got := mustChecksum(t, s, g); got != sum {
		t.Fatalf("checksum changed on replay: %s -> %s", sum, got)
	}
	counts2, _ := s.Counts(context.Background(), g)
	if !reflect.DeepEqual(counts, counts2) {
		t.Fatalf("counts changed on replay: %v -> %v", counts, counts2)
	}
	d, err := s.Dashboard(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	if d.Messages != 2 || d.MessagesDeleted != 1 || d.MessagesEdited != 1 || d.Reports != 1 || d.ModActions != 5 {
		t.Fatalf("dashboard = %+v", d)
	}
	if d.Settings.ModlogChannelID != 12 || d.Settings.ModRoleID != 11 {
		t.Fatalf("settings = %+v", d.Settings)
	}
	if len(d.TopAuthors) == 0 || d.TopAuthors[0].ID != 7 || d.TopAuthors[0].Messages != 2 {
		t.Fatalf("top authors = %+v", d.TopAuthors)
	}
}

func TestReplayedCreateDoesNotUndoEditOrDelete(t *testing.T) {
	s := openTest(t, "a.db")
	create := Write{Op: MessageCreate{GuildID: 1, MessageID: 5, ChannelID: 2, AuthorID: 3, CreatedAt: t0, ContentLength: 4}}
	mustApply(t, s, create,
		Write{Op: MessageEdit{GuildID: 1, MessageID: 5, EditedAt: t0.Add(time.Minute), ContentLength: 40}},
		Write{Op: MessageDelete{GuildID: 1, MessageID: 5, DeletedAt: t0.Add(2 * time.Minute)}})
	before := mustChecksum(t, s, 1)
	// Replay out of order: an older edit, then the create.
	mustApply(t, s, Write{Op: MessageEdit{GuildID: 1, MessageID: 5, EditedAt: t0.Add(30 * time.Second), ContentLength: 9}}, create)
	if after := mustChecksum(t, s, 1); after != before {
		t.Fatal("replayed create/older edit changed the message")
	}
}

func TestModActionsWithoutIDsRecordStateChangesOnly(t *testing.T) {
	s := openTest(t, "a.db")
	ban := Write{Op: AddModAction{ModAction{GuildID: 1, Kind: ActionBan, UserID: 5, CreatedAt: t0}}}
	unban := Write{Op: AddModAction{ModAction{GuildID: 1, Kind: ActionUnban, UserID: 5, CreatedAt: t0}}}
	for i, tc := range []struct {
		w    Write
		want bool
	}{{ban, true}, {ban, false}, {unban, true}, {unban, false}, {ban, true}} {
		out := mustApply(t, s, tc.w)
		if out[0].Applied != tc.want {
			t.Fatalf("step %d: applied=%v want %v", i, out[0].Applied, tc.want)
		}
	}
	as, err := s.ModActionsForUser(context.Background(), 1, 5)
	if err != nil || len(as) != 3 {
		t.Fatalf("actions = %+v, %v", as, err)
	}
}

func TestStaleEpochWriteIsRejected(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "a.db")
	mustApply(t, s, Write{Epoch: 3, Op: MessageCreate{GuildID: 1, MessageID: 1, ChannelID: 1, AuthorID: 1, CreatedAt: t0}})
	if e, _ := s.Epoch(ctx, 1); e != 3 {
		t.Fatalf("epoch = %d, want 3", e)
	}
	before := mustChecksum(t, s, 1)
	// A unit mixing a fresh write with a stale one is rejected as a whole.
	_, err := s.Apply(ctx,
		Write{Epoch: 3, Op: MessageCreate{GuildID: 1, MessageID: 2, ChannelID: 1, AuthorID: 1, CreatedAt: t0}},
		Write{Epoch: 2, Op: MessageCreate{GuildID: 1, MessageID: 3, ChannelID: 1, AuthorID: 1, CreatedAt: t0}})
	if !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("err = %v, want ErrStaleEpoch", err)
	}
	if after := mustChecksum(t, s, 1); after != before {
		t.Fatal("rejected unit left rows behind")
	}
	// Fencing raises the epoch; the old owner's epoch is now stale.
	if err := s.Fence(ctx, 1, 4); err != nil {
		t.Fatal(err)
	}
	if err := s.Fence(ctx, 1, 2); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("lower fence err = %v", err)
	}
	if _, err := s.Apply(ctx, Write{Epoch: 3, Op: MessageDelete{GuildID: 1, MessageID: 1, DeletedAt: t0}}); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("err = %v, want ErrStaleEpoch", err)
	}
	// Other guilds in the same batch are unaffected.
	res, err := s.ApplyBatch(ctx, [][]Write{
		{{Epoch: 1, Op: MessageCreate{GuildID: 1, MessageID: 9, CreatedAt: t0}}},
		{{Epoch: 0, Op: MessageCreate{GuildID: 2, MessageID: 9, CreatedAt: t0}}},
	})
	if err != nil || !errors.Is(res[0].Err, ErrStaleEpoch) || res[1].Err != nil || !res[1].Outcomes[0].Applied {
		t.Fatalf("batch = %+v, %v", res, err)
	}
}

func TestGroupCommitSerializesConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "a.db")
	const producers, each = 8, 300
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				id := uint64(p*each + i + 1)
				if _, err := s.Apply(ctx, Write{Op: MessageCreate{GuildID: 7, MessageID: id, ChannelID: uint64(p), AuthorID: 1, CreatedAt: t0}}); err != nil {
					errs <- err
					return
				}
			}
		}(p)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	d, err := s.Dashboard(ctx, 7)
	if err != nil || d.Messages != producers*each {
		t.Fatalf("messages = %d, %v", d.Messages, err)
	}
	st := s.Stats()
	if st.Requests != producers*each || st.Commits > st.Requests {
		t.Fatalf("stats = %+v", st)
	}
	t.Logf("writer stats: %+v (%.1f requests/commit)", st, float64(st.Requests)/float64(st.Commits))
}

func TestHeldEventsRoundTripInOrder(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "a.db")
	for i := 1; i <= 5; i++ {
		seq, err := s.Hold(ctx, 3, "MESSAGE_CREATE", []byte(fmt.Sprintf(`{"n":%d}`, i)))
		if err != nil || seq != int64(i) {
			t.Fatalf("hold %d: seq=%d err=%v", i, seq, err)
		}
	}
	if err := s.DropHeld(ctx, 3, 2); err != nil {
		t.Fatal(err)
	}
	if err := s.DropHeld(ctx, 3, 2); err != nil { // idempotent
		t.Fatal(err)
	}
	seq, _ := s.Hold(ctx, 3, "MESSAGE_DELETE", []byte(`{}`))
	if seq != 6 {
		t.Fatalf("seq after drop = %d, want 6 (never reused)", seq)
	}
	held, err := s.HeldPage(ctx, 3, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []int64
	for _, h := range held {
		seqs = append(seqs, h.Seq)
	}
	if !reflect.DeepEqual(seqs, []int64{3, 4, 5, 6}) || string(held[0].Payload) != `{"n":3}` {
		t.Fatalf("held = %v", seqs)
	}
	// Holding is not fenced: a guild fenced at epoch 5 still buffers.
	if err := s.Fence(ctx, 3, 5); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Hold(ctx, 3, "X", nil); err != nil {
		t.Fatal(err)
	}
}

func TestGuildIDsAndDeleteGuildKeepsFence(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "a.db")
	mustApply(t, s, sampleWrites(10, 2)...)
	mustApply(t, s, sampleWrites(20, 0)...)
	ids, err := s.GuildIDs(ctx)
	if err != nil || !reflect.DeepEqual(ids, []uint64{10, 20}) {
		t.Fatalf("guild ids = %v, %v", ids, err)
	}
	other := mustChecksum(t, s, 20)
	if err := s.DeleteGuild(ctx, 10, 1<<62); err != nil {
		t.Fatal(err)
	}
	counts, _ := s.Counts(ctx, 10)
	for tbl, n := range counts {
		if tbl != "guild_epochs" && n != 0 {
			t.Errorf("%s still has %d rows", tbl, n)
		}
	}
	if e, _ := s.Epoch(ctx, 10); e != 2 {
		t.Fatalf("fence tombstone lost: epoch %d", e)
	}
	if _, err := s.Apply(ctx, Write{Epoch: 1, Op: MessageCreate{GuildID: 10, MessageID: 1, CreatedAt: t0}}); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("stale write after delete: %v", err)
	}
	if mustChecksum(t, s, 20) != other {
		t.Fatal("deleting guild 10 touched guild 20")
	}
	ids, _ = s.GuildIDs(ctx)
	if !reflect.DeepEqual(ids, []uint64{20}) {
		t.Fatalf("guild ids after delete = %v", ids)
	}
}

func TestApplyAfterCloseFails(t *testing.T) {
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := s.Apply(context.Background(), Write{Op: MessageCreate{GuildID: 1, MessageID: 1}}); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v", err)
	}
}

// TestOverlappingSessionsDoNotDoubleCountModActions: during a planned shard
// handoff two sessions deliver the same ban under different delivery keys;
// it is recorded once, while real ban → unban → ban sequences and a user
// leaving again later are all recorded.
func TestOverlappingSessionsDoNotDoubleCountModActions(t *testing.T) {
	s := openTest(t, "overlap.db")
	const g = 42
	t0 := time.UnixMilli(1_700_000_000_000)
	act := func(kind string, at time.Duration, key string) Write {
		return Write{Epoch: 1, Op: AddModAction{ModAction{GuildID: g, Kind: kind, UserID: 9, CreatedAt: t0.Add(at), DedupeKey: key}}}
	}
	mustApply(t, s,
		act(ActionBan, 0, "ban:9:old:5"), act(ActionBan, 10*time.Millisecond, "ban:9:new:2"), // same ban, two sessions
		act(ActionUnban, time.Second, "unban:9:new:3"), act(ActionUnban, time.Second, "unban:9:old:6"),
		act(ActionBan, 2*time.Second, "ban:9:new:4"), // a real second ban
		act(ActionLeave, 3*time.Second, "leave:9:new:5"), act(ActionLeave, 3*time.Second+5*time.Millisecond, "leave:9:old:8"),
		act(ActionLeave, 5*time.Minute, "leave:9:new:40"), // left again, much later
	)
	got := map[string]int64{}
	d, err := s.Dashboard(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range d.ModActionsByKind {
		got[k] = v
	}
	if got[ActionBan] != 2 || got[ActionUnban] != 1 || got[ActionLeave] != 2 {
		t.Fatalf("mod actions by kind %v, want ban 2, unban 1, leave 2", got)
	}
}

// TestCheckpointsRunBesideTheWriterNotInItsCommits: the writer's own
// connection never checkpoints (wal_autocheckpoint is 0, so no commit
// copies WAL frames), and the store's checkpointer still moves committed
// pages into the database file within a few intervals.
func TestCheckpointsRunBesideTheWriterNotInItsCommits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var auto int
	if err := s.w.connJob(context.Background(), func(ctx context.Context, c *sql.Conn) error {
		return c.QueryRowContext(ctx, "PRAGMA wal_autocheckpoint").Scan(&auto)
	}); err != nil || auto != 0 {
		t.Fatalf("the writer's wal_autocheckpoint is %d (%v), want 0", auto, err)
	}
	size := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	before := size()
	fillMessages(t, s, 7, 1, 1, 20_000) // ~600 KB of pages, committed to the WAL
	deadline := time.Now().Add(10 * checkpointInterval)
	for size() < before+256<<10 {
		if time.Now().After(deadline) {
			t.Fatalf("the database file is %d bytes, %d before 20,000 messages: nothing was checkpointed within %s", size(), before, 10*checkpointInterval)
		}
		time.Sleep(checkpointInterval / 5)
	}
}
