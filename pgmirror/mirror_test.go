package pgmirror

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/pgtest"
)

// TestTwoMirrorsOnOneDatabaseOneWrites: two mirrors on one database;
// exactly one holds the lock at any time, the other stands by, and when
// the writer stops the other takes over from the stored revision.
func TestTwoMirrorsOnOneDatabaseOneWrites(t *testing.T) {
	srv := pgtest.Start(t)
	url := pgtest.Database(t, srv)
	c := startCluster(t, 1, nil)
	ref := watchAll(t, c, 0)
	a := startMirror(t, Options{ConfigURLs: c.URLs(), PGURL: url, Name: "a"})
	b := startMirror(t, Options{ConfigURLs: c.URLs(), PGURL: url, Name: "b"})
	p := newProposer(t, c, 3)
	p.registerPods(2)
	conn := connect(t, url)
	for i := 0; i < 30; i++ {
		p.randomWindow(8)
		if a.Status().Writing == b.Status().Writing {
			// Both false is allowed only before either took the lock.
			if a.Status().Writing || storedRevision(conn) > 0 {
				t.Fatalf("writing: a=%v b=%v: exactly one mirror must write", a.Status().Writing, b.Status().Writing)
			}
		}
	}
	waitMirrored(t, c, conn, 10*time.Second)
	var holders int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND ((classid::bigint << 32) | objid::bigint) = $1`, lockKey).Scan(&holders); err != nil {
		t.Fatal(err)
	}
	if holders != 1 {
		t.Fatalf("%d sessions hold the mirror lock, want 1", holders)
	}
	writer, standby := a, b
	if b.Status().Writing {
		writer, standby = b, a
	}
	writer.stop()
	for i := 0; i < 10; i++ {
		p.randomWindow(8)
	}
	rev := waitMirrored(t, c, conn, 10*time.Second)
	if !standby.Status().Writing {
		t.Fatal("the standby did not take over")
	}
	assertEqualsFSM(t, c, conn)
	assertEventsAreTheStream(t, conn, ref, rev)
}

// TestPostgresDownThenBackTheMirrorCatchesUp: Postgres stops while changes
// keep coming; the config plane keeps accepting writes; when Postgres is
// back the mirror catches up from its stored revision, losing nothing of
// the history.
func TestPostgresDownThenBackTheMirrorCatchesUp(t *testing.T) {
	srv := pgtest.Start(t)
	url := pgtest.Database(t, srv)
	c := startCluster(t, 3, nil)
	ref := watchAll(t, c, 0)
	m := startMirror(t, Options{ConfigURLs: nodeURLs(c, 0), PGURL: url, Name: "config-0"})
	p := newProposer(t, c, 4)
	p.registerPods(3)
	for i := 0; i < 10; i++ {
		p.randomWindow(16)
	}
	conn := connect(t, url)
	waitMirrored(t, c, conn, 10*time.Second)
	conn.Close(context.Background())
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	// Writes go on, at full speed, while Postgres is down.
	start := time.Now()
	for i := 0; i < 40; i++ {
		p.randomWindow(16)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("640 writes took %s with Postgres down", d)
	}
	if err := systestPoll(10*time.Second, func() bool { return m.Status().Err != nil && !m.Status().Writing }); err != nil {
		t.Fatalf("the mirror did not notice Postgres is down: %+v", m.Status())
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	conn = connect(t, url)
	rev := waitMirrored(t, c, conn, 30*time.Second)
	assertEqualsFSM(t, c, conn)
	assertEventsAreTheStream(t, conn, ref, rev)
	if m.Status().Resyncs != 0 {
		t.Fatalf("caught up by %d resyncs; the history was retained, so it should have replayed", m.Status().Resyncs)
	}
}

// TestAResyncAfterGoneWritesTheDiffAndRecordsIt: the mirror is away while
// more changes happen than the nodes retain; back, it gets 410 Gone, lists
// the snapshot and writes the difference, with one resync event.
func TestAResyncAfterGoneWritesTheDiffAndRecordsIt(t *testing.T) {
	srv := pgtest.Start(t)
	url := pgtest.Database(t, srv)
	c := startCluster(t, 1, func(cfg *confignode.Config) { cfg.WatchHistory = 200 })
	m := startMirror(t, Options{ConfigURLs: c.URLs(), PGURL: url, Name: "m"})
	p := newProposer(t, c, 5)
	p.registerPods(3)
	for i := 0; i < 2; i++ {
		p.randomWindow(16)
	}
	conn := connect(t, url)
	before := waitMirrored(t, c, conn, 10*time.Second)
	m.stop()
	for i := 0; i < 40; i++ {
		p.randomWindow(16)
	}
	m2 := startMirror(t, Options{ConfigURLs: c.URLs(), PGURL: url, Name: "m2"})
	rev := waitMirrored(t, c, conn, 20*time.Second)
	assertEqualsFSM(t, c, conn)
	if m2.Status().Resyncs != 1 {
		t.Fatalf("%d resyncs, want 1", m2.Status().Resyncs)
	}
	var from, to int64
	var kind string
	err := conn.QueryRow(context.Background(), `SELECT kind, (detail->>'from_revision')::bigint, (detail->>'to_revision')::bigint FROM assignment_events WHERE seq = -1`).Scan(&kind, &from, &to)
	if err != nil {
		t.Fatal(err)
	}
	if kind != KindResync || uint64(from) != before || uint64(to) > rev || uint64(to) <= before {
		t.Fatalf("resync event %s from %d to %d; the mirror was at %d, the FSM is at %d", kind, from, to, before, rev)
	}
	// Nothing of the gap is made up: no event between the two revisions.
	var inGap int
	_ = conn.QueryRow(context.Background(), `SELECT count(*) FROM assignment_events WHERE revision > $1 AND revision < $2`, int64(from), int64(to)).Scan(&inGap)
	if inGap != 0 {
		t.Fatalf("%d events recorded inside the gap", inGap)
	}
}

// TestEventsAreExactlyTheStreamNoneDoubledNoneMissing: replaying a batch
// that is already stored is refused by the fencing check and changes
// nothing; a mirror restarted from the stored revision adds each later
// event once.
func TestEventsAreExactlyTheStreamNoneDoubledNoneMissing(t *testing.T) {
	srv := pgtest.Start(t)
	url := pgtest.Database(t, srv)
	c := startCluster(t, 1, nil)
	ref := watchAll(t, c, 0)
	m := startMirror(t, Options{ConfigURLs: c.URLs(), PGURL: url, Name: "m"})
	p := newProposer(t, c, 6)
	p.registerPods(2)
	for i := 0; i < 5; i++ {
		p.randomWindow(16)
	}
	conn := connect(t, url)
	rev := waitMirrored(t, c, conn, 10*time.Second)
	m.stop()
	// A replay of stored revisions (a writer that did not see its own
	// commit) is refused.
	old := ref.upTo(rev)
	_, err := writeBatch(context.Background(), conn, old[len(old)-3].Revision, old[len(old)-2:], nil)
	if !errors.Is(err, errFenced) {
		t.Fatalf("replaying stored revisions: %v, want errFenced", err)
	}
	for i := 0; i < 5; i++ {
		p.randomWindow(16)
	}
	startMirror(t, Options{ConfigURLs: c.URLs(), PGURL: url, Name: "m2"})
	rev = waitMirrored(t, c, conn, 10*time.Second)
	assertEqualsFSM(t, c, conn)
	assertEventsAreTheStream(t, conn, ref, rev)
}

// TestMoveDurationsAndKindsFollowTheHistory: a scripted history at leader
// times the test chooses gives the event kinds, reasons and durations it
// must.
func TestMoveDurationsAndKindsFollowTheHistory(t *testing.T) {
	srv := pgtest.Start(t)
	url := pgtest.Database(t, srv)
	c := startCluster(t, 1, nil)
	startMirror(t, Options{ConfigURLs: c.URLs(), PGURL: url, Name: "m"})
	p := newProposer(t, c, 7)
	p.registerPods(2)
	g := guildID(1)
	p.apply(fsm.Command{Type: fsm.CmdPlaceGuilds, GuildIDs: []uint64{g}, At: 1_000_000})
	var owner string
	var epoch uint64
	p.leaderState(func(s *fsm.State) { x, _ := s.Guilds.Get(g); owner, epoch = x.Owner, x.Epoch })
	to := "gateway-0"
	if owner == to {
		to = "gateway-1"
	}
	p.apply(fsm.Command{Type: fsm.CmdStartMove, Guild: g, To: to, At: 2_000_000})
	p.leaderState(func(s *fsm.State) { x, _ := s.Guilds.Get(g); epoch = x.Epoch })
	p.apply(fsm.Command{Type: fsm.CmdSetMovePhase, Guild: g, Epoch: epoch, Phase: "exporting", At: 2_000_500})
	p.apply(fsm.Command{Type: fsm.CmdAbortMove, Guild: g, Epoch: epoch, Reason: "import checksum mismatch", At: 2_003_000})
	p.apply(fsm.Command{Type: fsm.CmdStartMove, Guild: g, To: to, At: 3_000_000})
	p.leaderState(func(s *fsm.State) { x, _ := s.Guilds.Get(g); epoch = x.Epoch })
	p.apply(fsm.Command{Type: fsm.CmdCompleteMove, Guild: g, Epoch: epoch, At: 3_001_250})
	conn := connect(t, url)
	waitMirrored(t, c, conn, 10*time.Second)
	rows, err := conn.Query(context.Background(), `SELECT kind || ' ' || coalesce(phase, '') || ' ' || coalesce(reason, '') || ' ' || coalesce(duration_ms::text, '') || ' ' || coalesce(from_pod, '') || '>' || coalesce(to_pod, '')
		FROM assignment_events WHERE guild_id = $1 ORDER BY revision, seq`, int64(g))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	want := []string{
		"guild_placed    >",
		fmt.Sprintf("move_started started   %s>%s", owner, to),
		fmt.Sprintf("move_phase exporting   %s>%s", owner, to),
		fmt.Sprintf("move_aborted  import checksum mismatch 3000 %s>%s", owner, to),
		fmt.Sprintf("move_started started   %s>%s", owner, to),
		fmt.Sprintf("move_completed   1250 %s>%s", owner, to),
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestBadInputIsAClearErrorAndTheConfigNodeServes: a malformed URL fails
// New; a wrong password, a missing database, a database a newer schema
// created and a server refusing connections are each an error that says
// so, of its own kind, while the config node the mirror runs beside keeps
// answering writes.
func TestBadInputIsAClearErrorAndTheConfigNodeServes(t *testing.T) {
	srv := pgtest.Start(t)
	c := startCluster(t, 1, nil)
	if _, err := New(Options{ConfigURLs: c.URLs(), PGURL: "postgres://%zz"}); err == nil || !strings.Contains(err.Error(), "not a PostgreSQL URL") {
		t.Fatalf("malformed URL: %v", err)
	}
	newer := pgtest.Database(t, srv)
	{
		conn := connect(t, newer)
		if err := migrateSchema(context.Background(), conn); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(context.Background(), `UPDATE `+versionTable+` SET version = version + 1`); err != nil {
			t.Fatal(err)
		}
	}
	refused, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedPort := refused.Addr().(*net.TCPAddr).Port
	refused.Close()
	wrongPassword := strings.Replace(srv.URL("postgres"), ":"+srv.Password()+"@", ":wrong@", 1)
	for _, tc := range []struct {
		name, url, kind, says string
	}{
		{"wrong password", wrongPassword, ErrKindAuth, "password authentication failed"},
		{"no such database", srv.URL("nosuchdb"), ErrKindAuth, `database "nosuchdb" does not exist`},
		{"newer schema", newer, ErrKindSchema, "newer than this build"},
		{"refusing connections", fmt.Sprintf("postgres://postgres:x@127.0.0.1:%d/db?connect_timeout=2", refusedPort), ErrKindConnect, "is PostgreSQL running"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			m := startMirror(t, Options{ConfigURLs: c.URLs(), PGURL: tc.url, Name: "bad"})
			if err := systestPoll(15*time.Second, func() bool { return m.Status().Err != nil }); err != nil {
				t.Fatal("no error reported")
			}
			st := m.Status()
			if st.ErrKind != tc.kind || !strings.Contains(st.Err.Error(), tc.says) || st.Writing {
				t.Fatalf("status %+v: want kind %s and an error saying %q", st, tc.kind, tc.says)
			}
			t.Logf("%s: %v", tc.name, st.Err)
			if err := m.Check(context.Background()); err == nil {
				t.Fatal("Check passed")
			}
			// The config plane does not notice.
			cl := c.Client()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := cl.RegisterPod(ctx, registerReq(fmt.Sprintf("gateway-%d", len(tc.name)))); err != nil {
				t.Fatalf("config node write failed beside a broken mirror: %v", err)
			}
			resp, err := http.Get(c.URLs()[0] + "/readyz")
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("readyz: %v %v", resp, err)
			}
			resp.Body.Close()
		})
	}
}
