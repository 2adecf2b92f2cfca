package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/proxy"
	"github.com/modbot/modbot/systest"
)

// ---- helpers shared by the migration and rebalance tests ----

// dbs reads the gateways' SQLite files directly through the system's cached
// read-only handles.
type dbs struct{ s *system }

func newDBs(s *system) *dbs { return &dbs{s: s} }

func (d *dbs) db(i int) *sql.DB { return d.s.db(i) }

// count is a guild's rows of a table in gateway i (-1 if unreadable, e.g.
// while the database is being created).
func (d *dbs) count(i int, table string, guild uint64) int {
	var n int
	if err := d.db(i).QueryRow(`SELECT count(*) FROM `+table+` WHERE guild_id = ?`, int64(guild)).Scan(&n); err != nil {
		return -1
	}
	return n
}

// messageIDs is the set of a guild's message ids in gateway i.
func (d *dbs) messageIDs(i int, guild uint64) (map[uint64]bool, error) {
	rows, err := d.db(i).Query(`SELECT message_id FROM messages WHERE guild_id = ?`, int64(guild))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[uint64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[uint64(id)] = true
	}
	return out, rows.Err()
}

// perGuild counts every guild's messages in gateway i in one query.
func (d *dbs) perGuild(i int) (map[uint64]int, error) {
	rows, err := d.db(i).Query(`SELECT guild_id, count(*) FROM messages GROUP BY guild_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[uint64]int{}
	for rows.Next() {
		var g int64
		var n int
		if err := rows.Scan(&g, &n); err != nil {
			return nil, err
		}
		out[uint64(g)] = n
	}
	return out, rows.Err()
}

// sender dispatches messages to guilds through the fake Discord from one
// bounded goroutine, remembering the id of every message Discord accepted.
type sender struct {
	mu   sync.Mutex
	ids  map[uint64][]uint64 // guild → message ids sent
	n    int
	stop chan struct{}
	done chan struct{}
}

// startSender sends up to max messages round-robin over guilds, one every
// pace, until stopped.
func startSender(t *testing.T, s *system, guilds []uint64, max int, pace time.Duration) *sender {
	sd := &sender{ids: map[uint64][]uint64{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(sd.done)
		for i := 0; i < max; i++ {
			select {
			case <-sd.stop:
				return
			default:
			}
			g := guilds[i%len(guilds)]
			if id, err := s.Discord.SendMessage(g, 0, uint64(3000+i%50), "traffic "+strconv.Itoa(i)); err == nil {
				sd.mu.Lock()
				sd.ids[g] = append(sd.ids[g], id)
				sd.n++
				sd.mu.Unlock()
			}
			time.Sleep(pace) // pacing the load generator
		}
	}()
	t.Cleanup(sd.halt)
	return sd
}

func (sd *sender) sent() int {
	sd.mu.Lock()
	defer sd.mu.Unlock()
	return sd.n
}

func (sd *sender) sentTo(g uint64) []uint64 {
	sd.mu.Lock()
	defer sd.mu.Unlock()
	return slices.Clone(sd.ids[g])
}

// halt stops the sender and waits for it.
func (sd *sender) halt() {
	select {
	case <-sd.stop:
	default:
		close(sd.stop)
	}
	<-sd.done
}

// wait waits for the sender to send everything it was asked to.
func (sd *sender) wait(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-sd.done:
	case <-time.After(d):
		t.Fatalf("the sender did not finish within %s (%d sent)", d, sd.sent())
	}
}

// waitForSent waits until the sender has sent at least n messages.
func (sd *sender) waitForSent(t *testing.T, n int) {
	t.Helper()
	waitFor(t, 60*time.Second, fmt.Sprintf("%d messages sent", n), func() bool { return sd.sent() >= n })
}

// guildEverywhere is the guild as every running config node's map has it;
// ok is false while they disagree.
func (s *system) guildEverywhere(g uint64) (fsm.Guild, bool) {
	var views []fsm.Guild
	for _, n := range s.Cluster.Nodes {
		if n == nil {
			continue
		}
		var v fsm.Guild
		n.Store().View(func(st *fsm.State) {
			if x, ok := st.Guilds.Get(g); ok {
				v = x
				v.Migration = nil
				if x.Migration != nil {
					m := *x.Migration
					v.Migration = &m
				}
			}
		})
		views = append(views, v)
	}
	for _, v := range views[1:] {
		if v.Owner != views[0].Owner || v.Epoch != views[0].Epoch || v.State != views[0].State || (v.Migration == nil) != (views[0].Migration == nil) {
			return views[0], false
		}
	}
	return views[0], len(views) > 0
}

// waitActiveOn waits until every running config node's map has the guild
// active on pod, with no migration in flight, and returns it.
func (s *system) waitActiveOn(g uint64, pod string, d time.Duration) fsm.Guild {
	s.t.Helper()
	var v fsm.Guild
	waitFor(s.t, d, fmt.Sprintf("guild %d active on %s in every config node's map", g, pod), func() bool {
		var ok bool
		v, ok = s.guildEverywhere(g)
		return ok && v.Owner == pod && v.State == fsm.GuildActive && v.Migration == nil
	})
	return v
}

// waitMoveSettled waits until every running config node's map has the
// guild active, with no migration, at an epoch at least the move's: the move
// committed, or aborted — a leader lost to a starved process aborts it, and
// the scenarios here assert what must hold either way.
func (s *system) waitMoveSettled(g, epoch uint64, d time.Duration) fsm.Guild {
	s.t.Helper()
	var v fsm.Guild
	waitFor(s.t, d, fmt.Sprintf("the move of guild %d at epoch %d settled in every config node's map", g, epoch), func() bool {
		var ok bool
		v, ok = s.guildEverywhere(g)
		return ok && v.Epoch >= epoch && v.State == fsm.GuildActive && v.Migration == nil
	})
	if v.Epoch > epoch {
		s.t.Logf("the move of guild %d at epoch %d aborted (now active on %s at epoch %d)", g, epoch, v.Owner, v.Epoch)
	}
	return v
}

// waitPhase polls the guild's move until it reaches phase (or has ended).
func (s *system) waitPhase(g uint64, epoch uint64, phase string, d time.Duration) bool {
	s.t.Helper()
	reached := false
	waitFor(s.t, d, "move phase "+phase, func() bool {
		v, err := s.Client.Guild(context.Background(), strconv.FormatUint(g, 10))
		if err != nil {
			return false
		}
		if v.Epoch < epoch {
			return false // this node has not applied the move's start yet
		}
		if v.Migration == nil || v.Migration.Epoch != epoch {
			return true // ended
		}
		reached = v.Migration.Phase == phase
		return reached
	})
	return reached
}

// waitFile polls for a file matching pattern in dir (the in-progress export
// or import spool of a move); false if stop() turned true first.
func waitFile(t *testing.T, dir, pattern string, d time.Duration, stop func() bool) bool {
	t.Helper()
	found := false
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if m, _ := filepath.Glob(filepath.Join(dir, pattern)); len(m) > 0 {
			return true
		}
		if stop() {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("no %s in %s within %s", pattern, dir, d)
	return found
}

// guildEvents collects the change events of one guild as a watcher sees them.
func guildEvents(t *testing.T, w *assignments.Watcher, g uint64) func() []fsm.Event {
	ch, cancel := w.Subscribe(1024)
	var mu sync.Mutex
	var evs []fsm.Event
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range ch {
			for _, ev := range c.Events {
				if ev.Guild != nil && ev.Guild.ID == g {
					mu.Lock()
					evs = append(evs, ev)
					mu.Unlock()
				}
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return func() []fsm.Event {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(evs)
	}
}

// fill writes n synthetic messages straight into the owner's store at the
// guild's current epoch (much faster than dispatching them).
func (s *system) fill(owner int, g uint64, n int) {
	s.t.Helper()
	ctx := context.Background()
	if err := systest.InsertMessages(ctx, s.Gateways[owner].Store(), g, s.owner(g).Epoch, 1<<40, n, 5000); err != nil {
		s.t.Fatal(err)
	}
}

// assertExactlyOnce checks that the guild's owner holds exactly the given
// synthetic rows plus every message the sender sent, and no other gateway
// holds any row of it.
func assertExactlyOnce(t *testing.T, s *system, d *dbs, g uint64, synthetic int, sd *sender, within time.Duration) {
	t.Helper()
	want := sd.sentTo(g)
	var owner int
	state := ""
	ok := false
	for deadline := time.Now().Add(within); !ok && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		v, agreed := s.guildEverywhere(g)
		owner = s.podIndex(v.Owner)
		state = fmt.Sprintf("owner %s (agreed %v, migrating %v)", v.Owner, agreed, v.Migration != nil)
		ok = agreed && v.Migration == nil
		for i := range s.Cfgs {
			m, h := d.count(i, "messages", g), d.count(i, "held_events", g)
			state += fmt.Sprintf("; %s: %d messages, %d held", s.Cfgs[i].ID, m, h)
			if i == owner && m != synthetic+len(want) || i != owner && m != 0 || h != 0 {
				ok = false
			}
		}
	}
	if !ok {
		missing := []int{}
		if have, err := d.messageIDs(owner, g); err == nil {
			for i, id := range want {
				if !have[id] {
					missing = append(missing, i)
				}
			}
		}
		t.Fatalf("guild %d: want %d messages in its owner only, none held; after %s: %s; missing (by send order): %v", g, synthetic+len(want), within, state, missing)
	}
	have, err := d.messageIDs(owner, g)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range want {
		if !have[id] {
			t.Fatalf("message %d (sent to guild %d) is missing from its owner %s", id, g, s.Cfgs[owner].ID)
		}
	}
}

// exportedRows is the guild's canonical export without the fencing epoch
// row (which a move raises by design): the guild's data as row lines.
func exportedRows(t *testing.T, s *system, i int, g uint64) []string {
	t.Helper()
	var buf bytes.Buffer
	if _, err := s.Gateways[i].Store().Export(context.Background(), g, &buf); err != nil {
		t.Fatal(err)
	}
	var out []string
	sc := bufio.NewScanner(&buf)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "[") && !strings.HasPrefix(line, `["guild_epochs"`) {
			out = append(out, line)
		}
	}
	return out
}

func countPrefix(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// ---- the tests ----

// dashboardHit is one answer of the proxy for the moving guild.
type dashboardHit struct {
	status   int
	owner    string
	state    string
	messages int64
}

// TestMoveUnderTrafficLosesNothing: messages flow to a guild while it moves
// to another pod and back. The final owner holds every message exactly once
// and the other pod none; a further quiet move carries exactly the source's
// rows (all but the fencing epoch, byte for byte in the canonical export);
// and the proxy, polled throughout, never served the guild from the old
// owner once the new one had answered, nor showed fewer messages than an
// earlier answer.
func TestMoveUnderTrafficLosesNothing(t *testing.T) {
	fullSuite(t)
	s := newSystem(t, 2)
	s.Discord.Seed(3)
	s.addGateway()
	s.addGateway()
	s.waitSettled(30 * time.Second)
	d := newDBs(s)
	ctx := context.Background()
	g := s.Discord.Guilds()[0].ID
	a := s.podIndex(s.owner(g).Owner)
	b := 1 - a
	idA, idB := s.Cfgs[a].ID, s.Cfgs[b].ID

	// A proxy on its own watcher, polled sequentially for the guild's dashboard.
	w := assignments.NewWatcher(s.Client, assignments.WatcherOptions{Logger: quiet(), Name: "e2e-proxy"})
	wctx, stopWatcher := context.WithCancel(ctx)
	wdone := make(chan struct{})
	go func() { defer close(wdone); _ = w.Run(wctx) }()
	t.Cleanup(func() { stopWatcher(); <-wdone })
	pub, _, _ := ed25519.GenerateKey(nil)
	p, err := proxy.New(proxy.Config{Map: w, PublicKey: pub, Token: token, TLS: s.TLS, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	purl, err := p.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	var hitsMu sync.Mutex
	var hits []dashboardHit
	pollStop, pollDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(pollDone)
		for i := 0; i < 20000; i++ { // bounded
			select {
			case <-pollStop:
				return
			default:
			}
			req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/guild/%d/dashboard", purl, g), nil)
			req.Header.Set("Accept", "application/json")
			req.Header.Set("Authorization", "Bearer "+token)
			h := dashboardHit{}
			if resp, err := httpc.Do(req); err == nil {
				h.status = resp.StatusCode
				var body struct {
					Owner    string `json:"owner"`
					State    string `json:"state"`
					Messages int64  `json:"messages"`
				}
				_ = json.NewDecoder(resp.Body).Decode(&body)
				resp.Body.Close()
				h.owner, h.state, h.messages = body.Owner, body.State, body.Messages
			}
			hitsMu.Lock()
			hits = append(hits, h)
			hitsMu.Unlock()
			time.Sleep(5 * time.Millisecond) // pacing the poller
		}
	}()
	stopPoller := func() {
		select {
		case <-pollStop:
		default:
			close(pollStop)
		}
		<-pollDone
	}
	t.Cleanup(stopPoller)

	const total = 2000
	sd := startSender(t, s, []uint64{g}, total, 2*time.Millisecond)
	sd.waitForSent(t, 300)
	if _, err := s.Client.Move(ctx, strconv.FormatUint(g, 10), idB); err != nil {
		t.Fatal(err)
	}
	s.waitActiveOn(g, idB, 30*time.Second)
	t.Logf("moved to %s at %d messages sent", idB, sd.sent())
	sd.waitForSent(t, 1200)
	if _, err := s.Client.Move(ctx, strconv.FormatUint(g, 10), idA); err != nil {
		t.Fatal(err)
	}
	s.waitActiveOn(g, idA, 30*time.Second)
	t.Logf("moved back to %s at %d messages sent", idA, sd.sent())
	sd.wait(t, 90*time.Second)
	if n := sd.sent(); n != total {
		t.Fatalf("the fake Discord accepted %d of %d messages", n, total)
	}
	assertExactlyOnce(t, s, d, g, 0, sd, 60*time.Second)
	stopPoller()

	// The proxy's view.
	hitsMu.Lock()
	defer hitsMu.Unlock()
	var owners []string
	codes := map[int]int{}
	var last int64
	for i, h := range hits {
		codes[h.status]++
		if h.status != http.StatusOK {
			if h.status != http.StatusServiceUnavailable {
				t.Errorf("dashboard answer %d: status %d (want 200, or 503 while a move outlasts the hold)", i, h.status)
			}
			continue
		}
		if h.owner != idA && h.owner != idB {
			t.Fatalf("dashboard answer %d served by %q", i, h.owner)
		}
		if h.messages < last {
			t.Errorf("dashboard answer %d from %s shows %d messages after an earlier answer showed %d: a read went back in time", i, h.owner, h.messages, last)
		}
		last = h.messages
		if len(owners) == 0 || owners[len(owners)-1] != h.owner {
			owners = append(owners, h.owner)
		}
	}
	t.Logf("%d dashboard requests through the proxy: %v; owners in order: %v", len(hits), codes, owners)
	if want := []string{idA, idB, idA}; !slices.Equal(owners, want) {
		t.Fatalf("the proxy served the guild from %v in turn, want %v: an old owner answered after the new one", owners, want)
	}

	// A quiet move carries exactly the source's rows.
	before := exportedRows(t, s, a, g)
	if n := countPrefix(before, `["messages"`); n != total {
		t.Fatalf("%d message rows exported before the quiet move, want %d", n, total)
	}
	mv, err := s.Client.Move(ctx, strconv.FormatUint(g, 10), idB)
	if err != nil {
		t.Fatal(err)
	}
	v := s.waitActiveOn(g, idB, 30*time.Second)
	if v.Epoch != mv.Epoch {
		t.Fatalf("guild at epoch %d after the move, want the move's epoch %d", v.Epoch, mv.Epoch)
	}
	after := exportedRows(t, s, b, g)
	if !slices.Equal(before, after) {
		t.Fatalf("the target's rows differ from the source's: %d rows before, %d after", len(before), len(after))
	}
	ep, err := s.Gateways[b].Store().Epoch(ctx, g)
	if err != nil || ep != mv.Epoch {
		t.Fatalf("the target's fencing epoch is %d (%v), want %d", ep, err, mv.Epoch)
	}
	waitFor(t, 20*time.Second, "the source's copy deleted", func() bool { return d.count(a, "messages", g) == 0 })
}

// faultSetup is a guild with many rows on one of two gateways, traffic to it
// flowing, and a move of it to the other gateway started.
type faultSetup struct {
	s        *system
	d        *dbs
	g        uint64
	src, dst int
	rows     int
	sd       *sender
	mv       assignments.MoveResponse
}

const faultRows = 120_000

func startFaultyMove(t *testing.T) *faultSetup {
	s, d := twoGateways(t, nil)
	f := &faultSetup{s: s, d: d, g: s.Discord.Guilds()[0].ID, rows: faultRows}
	f.src = s.podIndex(s.owner(f.g).Owner)
	f.dst = 1 - f.src
	s.fill(f.src, f.g, f.rows)
	f.sd = startSender(t, s, []uint64{f.g}, 600, 10*time.Millisecond)
	f.sd.waitForSent(t, 50)
	var err error
	f.mv, err = s.Client.Move(context.Background(), strconv.FormatUint(f.g, 10), s.Cfgs[f.dst].ID)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// moveEnded reports whether the move has left the map (completed or aborted).
func (f *faultSetup) moveEnded() bool { return f.s.moveEnded(f.g, f.mv.Epoch) }

// moveEnded reports whether the move of g at epoch has settled (completed or
// aborted) in the map of the config node the client reads. A follower that
// has not applied the StartMove yet shows the guild at an older epoch and no
// migration: that is "not started here yet", not "ended".
func (s *system) moveEnded(g, epoch uint64) bool {
	v, err := s.Client.Guild(context.Background(), strconv.FormatUint(g, 10))
	return err == nil && v.Epoch >= epoch && (v.Migration == nil || v.Migration.Epoch != epoch)
}

// finish lets the traffic run out and checks the end state: the guild
// active on its source in every config node's map, every row there exactly
// once, none on the target, and the move recorded as aborted.
func (f *faultSetup) finish(t *testing.T, events func() []fsm.Event, reason string) {
	t.Helper()
	f.sd.wait(t, 90*time.Second)
	v := f.s.waitActiveOn(f.g, f.s.Cfgs[f.src].ID, 30*time.Second)
	if v.Epoch <= f.mv.Epoch {
		t.Fatalf("guild at epoch %d after the abort, want above the move's %d (so the target's copy is fenced off)", v.Epoch, f.mv.Epoch)
	}
	assertExactlyOnce(t, f.s, f.d, f.g, f.rows, f.sd, 60*time.Second)
	var aborted *fsm.Event
	for _, ev := range events() {
		if ev.Cause == fsm.CmdAbortMove {
			aborted = &ev
		}
		if ev.Cause == fsm.CmdCompleteMove {
			t.Fatalf("the move completed at revision %d; it should have aborted", ev.Revision)
		}
	}
	if aborted == nil {
		t.Fatal("no abort_move in the change stream")
	}
	if !strings.Contains(aborted.Reason, reason) {
		t.Fatalf("abort reason %q, want it to mention %q", aborted.Reason, reason)
	}
	t.Logf("aborted: %s; %d rows + %d messages on %s", aborted.Reason, f.rows, f.sd.sent(), f.s.Cfgs[f.src].ID)
}

// TestSourceKilledMidExportAbortsAndLosesNothing: the source dies while it
// writes the export. The move aborts, the guild stays the source's, and
// once the source is back it has every row and every message dispatched
// meanwhile (held by the shard holders' outboxes) exactly once; the target
// has none.
func TestSourceKilledMidExportAbortsAndLosesNothing(t *testing.T) {
	fullSuite(t)
	f := startFaultyMove(t)
	s := f.s
	events := guildEvents(t, s.Gateways[f.dst].Watcher(), f.g)
	if !waitFile(t, s.Cfgs[f.src].DataDir, fmt.Sprintf("export-%d-*.tmp", f.g), 30*time.Second, f.moveEnded) {
		t.Fatal("the move ended before the source started exporting: give the guild more rows")
	}
	s.killGateway(f.src)
	t.Logf("killed the source %s mid-export at %d messages sent", s.Cfgs[f.src].ID, f.sd.sent())
	waitFor(t, 30*time.Second, "the move aborted", f.moveEnded)
	f.sd.waitForSent(t, f.sd.sent()+100) // traffic while the owner is down
	s.startGateway(f.src)
	f.finish(t, events, "copy to "+s.Cfgs[f.dst].ID)
}

// TestTargetKilledMidImportAbortsAndLosesNothing: the target dies while it
// spools the import. The move aborts, the guild stays active on the source
// with every row and message; the restarted target holds none of it.
func TestTargetKilledMidImportAbortsAndLosesNothing(t *testing.T) {
	fullSuite(t)
	f := startFaultyMove(t)
	s := f.s
	events := guildEvents(t, s.Gateways[f.src].Watcher(), f.g)
	if !waitFile(t, s.Cfgs[f.dst].DataDir, ".import-*.ndjson", 30*time.Second, f.moveEnded) {
		t.Fatal("the move ended before the target started importing: give the guild more rows")
	}
	s.killGateway(f.dst)
	t.Logf("killed the target %s mid-import at %d messages sent", s.Cfgs[f.dst].ID, f.sd.sent())
	waitFor(t, 30*time.Second, "the move aborted", f.moveEnded)
	f.sd.waitForSent(t, f.sd.sent()+100)
	s.startGateway(f.dst)
	f.finish(t, events, "copy to "+s.Cfgs[f.dst].ID)
}

// TestLeaderKilledMidMoveAbortsAndLosesNothing: the config leader dies
// while the guild is being copied. The new leader aborts the orphaned move
// ("the leader changed mid-move") and has the target drop whatever it
// imported; the guild stays the source's with every row and message.
func TestLeaderKilledMidMoveAbortsAndLosesNothing(t *testing.T) {
	fullSuite(t)
	f := startFaultyMove(t)
	s := f.s
	events := guildEvents(t, s.Gateways[f.src].Watcher(), f.g)
	if !waitFile(t, s.Cfgs[f.src].DataDir, fmt.Sprintf("export-%d-*.tmp", f.g), 30*time.Second, f.moveEnded) {
		t.Fatal("the move ended before the copy started: give the guild more rows")
	}
	li := s.Cluster.Leader()
	if li < 0 {
		t.Fatal("no leader")
	}
	s.Cluster.Kill(li)
	t.Logf("killed the leader config-%d mid-copy at %d messages sent", li, f.sd.sent())
	waitFor(t, 30*time.Second, "a new leader", func() bool { return s.Cluster.Leader() >= 0 })
	waitFor(t, 30*time.Second, "the move aborted", f.moveEnded)
	if err := s.Cluster.Start(li); err != nil {
		t.Fatal(err)
	}
	f.finish(t, events, "the leader changed mid-move")
}

// TestMoveRejectsInvalidRequests: the move API refuses what it cannot do
// safely, with the status that says why.
func TestMoveRejectsInvalidRequests(t *testing.T) {
	fullSuite(t)
	s := newSystem(t, 2)
	s.Discord.Seed(2)
	for i := 0; i < 3; i++ {
		s.addGateway()
	}
	s.waitSettled(30 * time.Second)
	ctx := context.Background()
	guilds := s.Discord.Guilds()
	// Make one pod down, keeping the guilds on live pods.
	var down int
	for i := range s.Cfgs {
		if len(s.Gateways[i].Watcher().GuildsOwnedBy(s.Cfgs[i].ID)) == 0 {
			down = i
		}
	}
	s.killGateway(down)
	waitFor(t, 20*time.Second, "the killed pod marked down", func() bool {
		pl, err := s.Client.Pods(ctx)
		if err != nil {
			return false
		}
		for _, p := range pl.Pods {
			if p.ID == s.Cfgs[down].ID {
				return p.State == fsm.PodDown
			}
		}
		return false
	})
	g := guilds[0].ID
	owner := s.owner(g).Owner
	other := ""
	for i, c := range s.Cfgs {
		if i != down && c.ID != owner {
			other = c.ID
		}
	}
	id := strconv.FormatUint(g, 10)
	cases := []struct {
		name, guild, to string
		status          int
	}{
		{"to its current owner", id, owner, http.StatusConflict},
		{"to a down pod", id, s.Cfgs[down].ID, http.StatusBadRequest},
		{"an unknown guild", "1575743137912066048", other, http.StatusNotFound},
		{"to an unknown pod", id, "gateway-99", http.StatusNotFound},
		{"a malformed guild id", "not-a-guild", other, http.StatusBadRequest},
	}
	for _, c := range cases {
		_, err := s.Client.Move(ctx, c.guild, c.to)
		if !assignments.IsStatus(err, c.status) {
			t.Errorf("moving %s: %v, want %d", c.name, err, c.status)
		}
	}
	// A guild already migrating: a big guild's move takes a while.
	s.fill(s.podIndex(owner), g, 60_000)
	mv, err := s.Client.Move(ctx, id, other)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Client.Move(ctx, id, other)
	if !assignments.IsStatus(err, http.StatusConflict) {
		v := s.owner(g)
		t.Fatalf("moving a migrating guild: %v, want 409 (guild now %+v, move epoch %d)", err, v, mv.Epoch)
	}
	s.waitActiveOn(g, other, 60*time.Second)
}
