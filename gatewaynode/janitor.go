package gatewaynode

import (
	"context"
	"os"
	"path/filepath"
	"time"
)

// removeCrashLeftovers deletes spool files of exports and imports that a
// crash interrupted (the move they belonged to was aborted).
func (n *Node) removeCrashLeftovers() {
	for _, pattern := range []string{"export-*.tmp", ".import-*.ndjson", "failover-*"} {
		files, _ := filepath.Glob(filepath.Join(n.cfg.DataDir, pattern))
		for _, f := range files {
			if err := os.RemoveAll(f); err == nil {
				n.log.Info("removed a spool file left by a crash", "file", f)
			}
		}
	}
}

// janitor deletes copies of guilds this pod holds rows for but does not own
// and is not moving — left when a move's clean-up request never reached the
// pod (it was down, or the leader died between commit and clean-up). Copies
// are fenced by their epoch either way, but a stray copy breaks "stored in
// its owner and nowhere else" and takes disk. It runs at start and then
// every Config.JanitorInterval (30 s; one indexed scan of the pod's guild
// ids): a copy skipped at start because the pod still held events for the
// guild (those are delivered first) was otherwise kept for 5 minutes (chaos
// seed 83: a drop cut short by a leader change).
func (n *Node) janitor() {
	if err := n.watch.WaitSynced(n.ctx); err != nil {
		return
	}
	for {
		n.sweepStrayCopies()
		n.pruneTombstones()
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(n.cfg.JanitorInterval):
		}
	}
}

func (n *Node) sweepStrayCopies() {
	ctx, cancel := context.WithTimeout(n.ctx, time.Minute)
	defer cancel()
	ids, err := n.store.GuildIDs(ctx)
	if err != nil {
		return
	}
	for _, g := range ids {
		gi, ok := n.watch.Lookup(g)
		if !ok || gi.Owner == n.cfg.ID || n.outbox.pending(g) {
			continue
		}
		if m := gi.Migration; m != nil && (m.To == n.cfg.ID || m.From == n.cfg.ID) {
			continue
		}
		if err := n.store.Fence(ctx, g, gi.Epoch); err != nil {
			continue // it came back here at a newer epoch
		}
		if err := n.store.DeleteGuild(ctx, g, gi.Epoch); err == nil {
			n.log.Info("deleted a stray copy of a guild owned elsewhere", "guild", g, "owner", gi.Owner)
		}
	}
}

// unseenRetention is how long a delete or edit of a message the pod never
// saw created is kept, waiting for the create to arrive late (a resume
// replay, a move, an owner that was down, a dead letter replayed). Past it,
// such a create would count as live.
const unseenRetention = 7 * 24 * time.Hour

func (n *Node) pruneTombstones() {
	ctx, cancel := context.WithTimeout(n.ctx, time.Minute)
	defer cancel()
	if k, err := n.store.PruneUnseenMessages(ctx, time.Now().Add(-unseenRetention)); err != nil {
		n.log.Warn("prune deletes of never-seen messages", "err", err)
	} else if k > 0 {
		n.log.Info("pruned deletes of never-seen messages", "rows", k, "older_than", unseenRetention)
	}
}
