package pgmirror

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/systest"
)

func testLogger() *slog.Logger {
	if os.Getenv("MODBOT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startCluster starts real config nodes (Raft over loopback TCP) for a test.
func startCluster(t *testing.T, size int, tweak func(*confignode.Config)) *systest.Cluster {
	t.Helper()
	// The leader's orphan sweep would abort the moves the tests leave in
	// flight while they compare; a new leader still sweeps at once.
	c, err := systest.StartCluster(context.Background(), t.TempDir(), size, func(cfg *confignode.Config) {
		cfg.OrphanCheckInterval = time.Hour
		if tweak != nil {
			tweak(cfg)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// runningMirror is a mirror started by a test.
type runningMirror struct {
	*Mirror
	cancel context.CancelFunc
	done   chan struct{}
}

// stop ends the mirror cleanly (its connection closes: the lock is freed).
func (r *runningMirror) stop() {
	r.cancel()
	<-r.done
}

func startMirror(t *testing.T, o Options) *runningMirror {
	t.Helper()
	if o.Token == "" {
		o.Token = systest.ReadToken
	}
	if o.Logger == nil {
		o.Logger = testLogger()
	}
	if o.LockRetry == 0 {
		o.LockRetry = 100 * time.Millisecond
	}
	if o.RetryMax == 0 {
		o.RetryMax = 500 * time.Millisecond
	}
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningMirror{Mirror: m, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(r.done); _ = m.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

// nodeURLs puts node i's URL first: a config node's mirror follows its own
// node and fails over to the others.
func nodeURLs(c *systest.Cluster, i int) []string {
	urls := c.URLs()
	return append([]string{urls[i]}, append(urls[:i:i], urls[i+1:]...)...)
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func storedRevision(conn *pgx.Conn) uint64 {
	var rev int64
	if err := conn.QueryRow(context.Background(), `SELECT revision FROM mirror_state`).Scan(&rev); err != nil {
		return 0
	}
	return uint64(rev)
}

// waitMirrored waits until Postgres is at the leader's revision.
func waitMirrored(t *testing.T, c *systest.Cluster, conn *pgx.Conn, d time.Duration) uint64 {
	t.Helper()
	var want uint64
	err := systest.Poll(context.Background(), d, "the mirror to reach the FSM's revision", func() bool {
		l := c.Leader()
		if l < 0 {
			return false
		}
		want = c.Nodes[l].Store().Revision()
		return storedRevision(conn) == want
	})
	if err != nil {
		t.Fatalf("%v: postgres at %d, FSM at %d", err, storedRevision(conn), want)
	}
	return want
}

// proposer writes commands straight into the leader's Raft log, as the
// leader's own API handlers do after validation: the test drives moves,
// aborts and pod state without gateway pods. Commands the state refuses
// are rejected by Apply and change nothing.
type proposer struct {
	t   *testing.T
	c   *systest.Cluster
	rng *rand.Rand
	now int64 // the leader clock the commands carry (unix ms)
	// step advances now per command (0: the real clock).
	step    int64
	nextID  uint64
	reasons []string
}

func newProposer(t *testing.T, c *systest.Cluster, seed uint64) *proposer {
	return &proposer{t: t, c: c, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), nextID: 1,
		reasons: []string{"export failed", "import checksum mismatch", "timeout", "operator"}}
}

func (p *proposer) at() int64 {
	if p.step == 0 {
		return time.Now().UnixMilli()
	}
	p.now += p.step
	return p.now
}

// guildID makes a realistic snowflake.
func guildID(n uint64) uint64 { return (1_100_000_000_000+n)<<22 | n%4096 }

// apply proposes cmds in order, pipelined, and waits for all of them. It
// retries on a leader change.
func (p *proposer) apply(cmds ...fsm.Command) {
	p.t.Helper()
	for attempt := 0; ; attempt++ {
		l := p.c.Leader()
		if l >= 0 {
			var futs []interface{ Error() error }
			for _, cmd := range cmds {
				cmd.Version = fsm.CommandVersion
				if cmd.At == 0 {
					cmd.At = p.at()
				}
				b, err := cmd.Encode()
				if err != nil {
					p.t.Fatal(err)
				}
				futs = append(futs, p.c.Nodes[l].Raft().Apply(b, 5*time.Second))
			}
			failed := false
			for _, f := range futs {
				if f.Error() != nil {
					failed = true
				}
			}
			if !failed {
				return
			}
		}
		if attempt > 100 {
			p.t.Fatalf("no leader accepted %d commands", len(cmds))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *proposer) registerPods(n int) {
	var cmds []fsm.Command
	for i := 0; i < n; i++ {
		cmds = append(cmds, fsm.Command{Type: fsm.CmdRegisterPod, Pod: &fsm.PodSpec{ID: fmt.Sprintf("gateway-%d", i), Ordinal: i, Addr: fmt.Sprintf("127.0.0.1:%d", 19000+i)}})
	}
	p.apply(cmds...)
}

func (p *proposer) leaderState(f func(*fsm.State)) {
	for {
		if l := p.c.Leader(); l >= 0 {
			p.c.Nodes[l].Store().View(f)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// randomWindow proposes n random commands chosen from the leader's state:
// placements, moves and each of their phases, completions, aborts, guild
// removals, drains, pods down and back up.
func (p *proposer) randomWindow(n int) {
	var cmds []fsm.Command
	p.leaderState(func(s *fsm.State) {
		var active, down, all []string
		for _, pod := range s.SortedPods() {
			all = append(all, pod.ID)
			switch pod.State {
			case fsm.PodActive:
				active = append(active, pod.ID)
			case fsm.PodDown:
				down = append(down, pod.ID)
			}
		}
		ids := make([]uint64, 0, s.Guilds.Len())
		for g := range s.Guilds.All() {
			ids = append(ids, g.ID)
		}
		used := map[uint64]bool{}
		pick := func() *fsm.Guild {
			for try := 0; try < 8 && len(ids) > 0; try++ {
				id := ids[p.rng.IntN(len(ids))]
				if !used[id] {
					used[id] = true
					g, _ := s.Guilds.Get(id)
					return &g
				}
			}
			return nil
		}
		podsChanged := false
		for len(cmds) < n {
			r := p.rng.IntN(100)
			switch {
			case r < 25 || len(ids) < 20:
				var place []uint64
				for k := 1 + p.rng.IntN(4); k > 0; k-- {
					place = append(place, guildID(p.nextID))
					p.nextID++
				}
				cmds = append(cmds, fsm.Command{Type: fsm.CmdPlaceGuilds, GuildIDs: place})
			case r < 45:
				g := pick()
				if g == nil || g.Migration != nil || len(active) == 0 {
					continue
				}
				to := active[p.rng.IntN(len(active))]
				if to == g.Owner {
					continue
				}
				cmds = append(cmds, fsm.Command{Type: fsm.CmdStartMove, Guild: g.ID, To: to})
			case r < 80:
				g := pick()
				if g == nil || g.Migration == nil {
					continue
				}
				switch q := p.rng.IntN(10); {
				case q < 4:
					phase := []string{"exporting", "importing", "committing"}[p.rng.IntN(3)]
					cmds = append(cmds, fsm.Command{Type: fsm.CmdSetMovePhase, Guild: g.ID, Epoch: g.Epoch, Phase: phase})
				case q < 8:
					cmds = append(cmds, fsm.Command{Type: fsm.CmdCompleteMove, Guild: g.ID, Epoch: g.Epoch})
				default:
					cmds = append(cmds, fsm.Command{Type: fsm.CmdAbortMove, Guild: g.ID, Epoch: g.Epoch, Reason: p.reasons[p.rng.IntN(len(p.reasons))]})
				}
			case r < 84:
				g := pick()
				if g == nil || g.Migration != nil {
					continue
				}
				cmds = append(cmds, fsm.Command{Type: fsm.CmdRemoveGuilds, GuildIDs: []uint64{g.ID}})
			default:
				if podsChanged {
					continue // one pod change per window: the view stays close
				}
				podsChanged = true
				switch q := p.rng.IntN(4); {
				case q == 0 && len(active) > 2:
					cmds = append(cmds, fsm.Command{Type: fsm.CmdMarkPodDown, PodID: active[p.rng.IntN(len(active))]})
				case q == 1 && len(active) > 2:
					cmds = append(cmds, fsm.Command{Type: fsm.CmdDrainPod, PodID: active[p.rng.IntN(len(active))]})
				case q == 2 && len(down) > 0:
					cmds = append(cmds, fsm.Command{Type: fsm.CmdPodAlive, PodID: down[p.rng.IntN(len(down))]})
				default:
					id := all[p.rng.IntN(len(all))]
					o := fsm.OrdinalFromID(id)
					cmds = append(cmds, fsm.Command{Type: fsm.CmdRegisterPod, Pod: &fsm.PodSpec{ID: id, Ordinal: o, Addr: fmt.Sprintf("127.0.0.1:%d", 19000+o)}})
				}
			}
		}
	})
	p.apply(cmds...)
}

// revisionCounter counts the revisions a stream from revision 0 delivers,
// and keeps them (a reference copy of the change stream).
type revisionCounter struct {
	mu      sync.Mutex
	changes []assignments.WatchChange
}

func watchAll(t *testing.T, c *systest.Cluster, node int) *revisionCounter {
	t.Helper()
	rc := &revisionCounter{}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := c.Client().OpenStream(ctx, c.URLs()[node], assignments.StreamOptions{From: 0})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := s.Next()
			if err != nil {
				return
			}
			if msg.Change != nil {
				rc.mu.Lock()
				rc.changes = append(rc.changes, *msg.Change)
				rc.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { cancel(); s.Close(); <-done })
	return rc
}

func (rc *revisionCounter) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.changes)
}

func (rc *revisionCounter) last() uint64 {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.changes) == 0 {
		return 0
	}
	return rc.changes[len(rc.changes)-1].Revision
}

func (rc *revisionCounter) upTo(rev uint64) []assignments.WatchChange {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []assignments.WatchChange
	for _, ch := range rc.changes {
		if ch.Revision <= rev {
			out = append(out, ch)
		}
	}
	return out
}

// assertEqualsFSM compares every table with the leader's FSM, row for row,
// at one revision. The leader's own tasks (the orphan sweep aborting the
// test's unfinished moves) may add a revision meanwhile, and a follower's
// stream may bring it to the mirror before the leader's FSM has applied
// it: then both are read again.
func assertEqualsFSM(t *testing.T, c *systest.Cluster, conn *pgx.Conn) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		waitMirrored(t, c, conn, 30*time.Second)
		if compareWithFSM(t, c, conn, time.Now().After(deadline)) {
			return
		}
		time.Sleep(20 * time.Millisecond) // the sweep is still aborting moves
	}
}

// compareWithFSM returns false when Postgres and the FSM were not at the
// same revision (unless final, then it fails the test).
func compareWithFSM(t *testing.T, c *systest.Cluster, conn *pgx.Conn, final bool) bool {
	t.Helper()
	ctx := context.Background()
	l := c.Leader()
	if l < 0 {
		t.Fatal("no leader")
	}
	var wantGuilds, wantPods, wantShards []string
	var rev uint64
	c.Nodes[l].Store().View(func(s *fsm.State) {
		rev = s.Revision
		for g := range s.Guilds.All() {
			mv := "-"
			if m := g.Migration; m != nil {
				mv = fmt.Sprintf("%s>%s@%d/%s/%d/%v", m.From, m.To, m.Epoch, m.Phase, m.StartedAt, m.Failover)
			}
			wantGuilds = append(wantGuilds, fmt.Sprintf("%d %s %s %d %s %d", g.ID, g.Owner, g.State, g.Epoch, mv, g.Revision))
		}
		for _, p := range s.SortedPods() {
			wantPods = append(wantPods, fmt.Sprintf("%s %d %s %s %d %v %d", p.ID, p.Ordinal, p.Addr, p.State, p.Since, p.Drain, s.GuildCount(p.ID)))
		}
		for i := 0; i < s.ShardCount; i++ {
			sa := s.Shard(i)
			wantShards = append(wantShards, fmt.Sprintf("%d %s %d", i, sa.Holder, sa.Epoch))
		}
	})
	// One snapshot of Postgres for every table.
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var stored int64
	if err := tx.QueryRow(ctx, `SELECT revision FROM mirror_state`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if uint64(stored) != rev {
		if !final {
			return false
		}
		t.Fatalf("mirror_state.revision = %d, FSM at %d", stored, rev)
	}
	query := func(sql string) []string {
		rows, err := tx.Query(ctx, sql)
		if err != nil {
			t.Fatal(err)
		}
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	gotGuilds := query(`SELECT guild_id || ' ' || owner || ' ' || state || ' ' || epoch || ' ' ||
		CASE WHEN move_to IS NULL THEN '-' ELSE move_from || '>' || move_to || '@' || move_epoch || '/' || move_phase || '/' ||
			(extract(epoch from move_started_at) * 1000)::bigint || '/' || move_failover END || ' ' || revision
		FROM guild_assignments ORDER BY guild_id`)
	gotPods := query(`SELECT id || ' ' || ordinal || ' ' || addr || ' ' || state || ' ' || (extract(epoch from since) * 1000)::bigint || ' ' || drain || ' ' || guilds
		FROM pods ORDER BY ordinal, id`)
	gotShards := query(`SELECT shard || ' ' || holder || ' ' || epoch FROM shard_assignments ORDER BY shard`)
	for _, cmp := range []struct {
		what      string
		got, want []string
	}{{"guild_assignments", gotGuilds, wantGuilds}, {"pods", gotPods, wantPods}, {"shard_assignments", gotShards, wantShards}} {
		if !slices.Equal(cmp.got, cmp.want) {
			n := 0
			for i := 0; i < max(len(cmp.got), len(cmp.want)) && n < 5; i++ {
				var g, w string
				if i < len(cmp.got) {
					g = cmp.got[i]
				}
				if i < len(cmp.want) {
					w = cmp.want[i]
				}
				if g != w {
					t.Errorf("%s row %d: mirror %q, FSM %q", cmp.what, i, g, w)
					n++
				}
			}
			t.Fatalf("%s: %d rows in the mirror, %d in the FSM, not equal", cmp.what, len(cmp.got), len(cmp.want))
		}
	}
	return true
}

// assertEventsAreTheStream checks assignment_events against the reference
// stream: one row per event of every revision up to rev, none doubled,
// none missing, of the same revision and position.
func assertEventsAreTheStream(t *testing.T, conn *pgx.Conn, ref *revisionCounter, rev uint64) {
	t.Helper()
	if err := systestPoll(10*time.Second, func() bool { return ref.last() >= rev }); err != nil {
		t.Fatalf("the reference stream did not reach revision %d", rev)
	}
	var want []string
	for _, ch := range ref.upTo(rev) {
		for i := range ch.Events {
			want = append(want, fmt.Sprintf("%d/%d/%s", ch.Revision, i, ch.Events[i].Cause))
		}
	}
	rows, err := conn.Query(context.Background(), `SELECT revision || '/' || seq || '/' || cause FROM assignment_events WHERE seq >= 0 AND revision <= $1 ORDER BY revision, seq`, int64(rev))
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("assignment_events: %d rows, the stream has %d events up to %d (first difference: %s)", len(got), len(want), rev, firstDiff(got, want))
	}
}

func firstDiff(a, b []string) string {
	for i := 0; i < min(len(a), len(b)); i++ {
		if a[i] != b[i] {
			return fmt.Sprintf("row %d: %q vs %q", i, a[i], b[i])
		}
	}
	return fmt.Sprintf("one is a prefix of the other (%d vs %d rows)", len(a), len(b))
}

func registerReq(id string) assignments.RegisterPodRequest {
	return assignments.RegisterPodRequest{ID: id, Addr: "127.0.0.1:1"}
}
