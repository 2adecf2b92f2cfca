package pgmirror

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modbot/modbot/internal/pgtest"
)

// TestMirrorEqualsTheFSMAfterRandomChanges: a real 3-node cluster, a mirror
// in (beside) every node on one database, 10,000 random changes —
// placements, moves and their phases, completions, aborts, removals,
// drains, pods down and up. Postgres then equals the FSM row for row, and
// assignment_events holds exactly the stream's events.
func TestMirrorEqualsTheFSMAfterRandomChanges(t *testing.T) {
	changes := 10_000
	if testing.Short() {
		changes = 1000
	}
	srv := pgtest.Start(t)
	url := pgtest.Database(t, srv)
	c := startCluster(t, 3, nil)
	ref := watchAll(t, c, 0)
	for i := range c.Nodes {
		startMirror(t, Options{ConfigURLs: nodeURLs(c, i), PGURL: url, Name: c.Cfgs[i].ID})
	}
	p := newProposer(t, c, 1)
	p.registerPods(4)
	start := ref.count()
	for ref.count()-start < changes {
		p.randomWindow(64)
	}
	conn := connect(t, url)
	rev := waitMirrored(t, c, conn, 60*time.Second)
	assertEqualsFSM(t, c, conn)
	assertEventsAreTheStream(t, conn, ref, rev)
	var kinds int
	_ = conn.QueryRow(context.Background(), `SELECT count(DISTINCT kind) FROM assignment_events WHERE kind IN ('guild_placed','move_started','move_phase','move_completed','move_aborted','guild_removed','pod_down','pod_up','pod_draining')`).Scan(&kinds)
	if kinds != 9 {
		t.Fatalf("the random history covered %d of the 9 kinds of change it should", kinds)
	}
	t.Logf("%d revisions mirrored (revision %d)", ref.count()-start, rev)
}

// TestAWriterKilledMidBatchLeavesNothingHalfWritten: the config node whose
// mirror holds the lock dies in the middle of a batch (its connection
// drops with the transaction open, as under SIGKILL). Another mirror takes
// the lock, the mirror equals the FSM again, and assignment_events has each
// event exactly once.
func TestAWriterKilledMidBatchLeavesNothingHalfWritten(t *testing.T) {
	srv := pgtest.Start(t)
	url := pgtest.Database(t, srv)
	c := startCluster(t, 3, nil)
	ref := watchAll(t, c, 1)
	p := newProposer(t, c, 2)
	p.registerPods(3)
	// Node 0's mirror starts first, so it takes the lock.
	var inBatch atomic.Int32
	hold := make(chan struct{})
	first := startMirror(t, Options{ConfigURLs: nodeURLs(c, 0), PGURL: url, Name: "config-0", hooks: &testHooks{beforeCommit: func(uint64) {
		if inBatch.Add(1) == 20 {
			<-hold // the 20th batch is written, not committed, when the node dies
		}
	}}})
	conn := connect(t, url)
	if err := systestPoll(10*time.Second, func() bool { return first.Status().Writing }); err != nil {
		t.Fatal("the first mirror never took the lock")
	}
	var others []*runningMirror
	for i := 1; i < 3; i++ {
		others = append(others, startMirror(t, Options{ConfigURLs: nodeURLs(c, i), PGURL: url, Name: c.Cfgs[i].ID}))
	}
	for inBatch.Load() < 20 {
		p.randomWindow(16)
	}
	before := storedRevision(conn)
	// Kill node 0 and its mirror: the open transaction is lost with the
	// connection.
	first.Kill()
	c.Kill(0)
	close(hold)
	if err := systestPoll(15*time.Second, func() bool { return others[0].Status().Writing || others[1].Status().Writing }); err != nil {
		t.Fatal("no other mirror took the lock after the writer died")
	}
	for i := 0; i < 20; i++ {
		p.randomWindow(16)
	}
	rev := waitMirrored(t, c, conn, 30*time.Second)
	if rev <= before {
		t.Fatalf("nothing mirrored after the takeover (revision %d)", rev)
	}
	assertEqualsFSM(t, c, conn)
	assertEventsAreTheStream(t, conn, ref, rev)
}

func systestPoll(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return context.DeadlineExceeded
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}
