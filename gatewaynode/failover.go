package gatewaynode

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/guildstore"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/podapi"
)

// Guild failover, the target's side. When the leader moves a guild off an
// owner that stayed down past its grace period, the map shows a failover
// migration and the import request names the dead owner's replica. The
// target restores that replica once per dead pod — with `modbot restore`, a
// child process, because Litestream's SQLite must never share a process
// with the gateway's (DESIGN §9); the restore is integrity-checked — into a
// temporary file, fences its copy of the guild at the failover's epoch and
// imports it with Store.ImportFrom: the import's bounded steps, SQLite
// copying the rows from the attached copy, the result checked against the
// copy's checksum, all or nothing. The restored copy is shared by every guild of that pod the
// target receives and deleted once unused for failoverCopyIdle.

// failoverCopyIdle is how long an unused restored replica is kept.
const failoverCopyIdle = 2 * time.Minute

type failoverCopies struct {
	n      *Node
	mu     sync.Mutex
	copies map[string]*restoredCopy // by dead pod id and its down-since
}

type restoredCopy struct {
	ready    chan struct{} // closed when the restore finished (err says how)
	path     string
	store    *guildstore.Store
	err      error
	users    int
	lastUsed time.Time
}

func newFailoverCopies(n *Node) *failoverCopies {
	return &failoverCopies{n: n, copies: map[string]*restoredCopy{}}
}

// acquire returns the restored copy of pod's replica, restoring it on first
// use; release must be called when done.
func (f *failoverCopies) acquire(ctx context.Context, pod fsm.Pod, replica string) (*restoredCopy, error) {
	key := pod.ID + "@" + strconv.FormatInt(pod.Since, 10)
	f.mu.Lock()
	c, ok := f.copies[key]
	if !ok {
		c = &restoredCopy{ready: make(chan struct{})}
		f.copies[key] = c
		go f.restore(c, pod.ID, replica)
	}
	c.users++
	f.mu.Unlock()
	select {
	case <-c.ready:
	case <-ctx.Done():
		f.release(c)
		return nil, ctx.Err()
	}
	if c.err != nil {
		f.mu.Lock()
		if f.copies[key] == c {
			delete(f.copies, key) // the next import tries again
		}
		f.mu.Unlock()
		f.release(c)
		return nil, c.err
	}
	return c, nil
}

func (f *failoverCopies) release(c *restoredCopy) {
	f.mu.Lock()
	c.users--
	c.lastUsed = time.Now()
	f.mu.Unlock()
}

// restore runs `modbot restore` into a fresh temporary path and opens it.
func (f *failoverCopies) restore(c *restoredCopy, pod, replica string) {
	n := f.n
	defer close(c.ready)
	start := time.Now()
	dir, err := os.MkdirTemp(n.cfg.DataDir, "failover-"+pod+"-*")
	if err != nil {
		c.err = fmt.Errorf("restore %s's replica: %w", pod, err)
		return
	}
	c.path = filepath.Join(dir, "restored.db")
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Minute)
	defer cancel()
	if err := n.runRestore(ctx, c.path, replica); err != nil {
		os.RemoveAll(dir)
		c.err = fmt.Errorf("restore %s's replica: %w", pod, err)
		n.metrics.failoverRestores.WithLabelValues("failed").Inc()
		return
	}
	st, err := guildstore.Open(ctx, c.path)
	if err != nil {
		os.RemoveAll(dir)
		c.err = fmt.Errorf("open %s's restored replica: %w", pod, err)
		n.metrics.failoverRestores.WithLabelValues("failed").Inc()
		return
	}
	c.store = st
	n.metrics.failoverRestores.WithLabelValues("restored").Inc()
	n.log.Info("restored a dead pod's replica for failover", "pod", pod, "replica", replica, "took", time.Since(start).Round(time.Millisecond))
}

// sweep deletes restored copies unused for failoverCopyIdle (all of them
// when final).
func (f *failoverCopies) sweep(final bool) {
	f.mu.Lock()
	var drop []*restoredCopy
	for k, c := range f.copies {
		select {
		case <-c.ready:
		default:
			continue
		}
		if final || c.users == 0 && time.Since(c.lastUsed) > failoverCopyIdle {
			delete(f.copies, k)
			drop = append(drop, c)
		}
	}
	f.mu.Unlock()
	for _, c := range drop {
		if c.store != nil {
			_ = c.store.Close()
		}
		if c.path != "" {
			_ = os.RemoveAll(filepath.Dir(c.path))
		}
	}
}

func (f *failoverCopies) run() {
	t := time.NewTicker(failoverCopyIdle / 4)
	defer t.Stop()
	for {
		select {
		case <-f.n.ctx.Done():
			f.sweep(true)
			return
		case <-t.C:
			f.sweep(false)
		}
	}
}

// replicationLagMs reads the sidecar's lag for the heartbeat (-1: no
// sidecar configured, or it did not answer).
func (n *Node) replicationLagMs(ctx context.Context) int64 {
	if n.cfg.ReplicationStatus == "" {
		return -1
	}
	rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, n.cfg.ReplicationStatus, nil)
	if err != nil {
		return -1
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var st struct {
		Lag *float64 `json:"lag_seconds"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&st); err != nil || st.Lag == nil || *st.Lag < 0 {
		return -1
	}
	return int64(*st.Lag * 1000)
}

// restoreIfMissing restores the pod's own database from RestoreFrom when
// it does not exist (its disk was lost), before the pod opens it.
func (n *Node) restoreIfMissing(dbPath string) error {
	if n.cfg.RestoreFrom == "" {
		return nil
	}
	if _, err := os.Stat(dbPath); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("check %s before restoring it: %w", dbPath, err)
	}
	start := time.Now()
	if err := n.runRestore(n.ctx, dbPath, n.cfg.RestoreFrom, "--if-db-not-exists", "--if-replica-exists"); err != nil {
		return fmt.Errorf("restore the missing database: %w", err)
	}
	_, statErr := os.Stat(dbPath)
	n.log.Info("database was missing; restore from the replica ran", "db", dbPath, "replica", n.cfg.RestoreFrom,
		"restored", statErr == nil, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// importFromReplica is handleImport for a failover migration.
func (n *Node) importFromReplica(w http.ResponseWriter, r *http.Request, g, epoch uint64, gi fsm.Guild) {
	replica := r.URL.Query().Get("replica")
	if replica == "" {
		httpapi.WriteError(w, http.StatusBadRequest, "guild %d fails over from %s: the replica query parameter is required", g, gi.Migration.From)
		return
	}
	dead, ok := n.watch.Pod(gi.Migration.From)
	if !ok {
		dead = fsm.Pod{ID: gi.Migration.From}
	}
	start := time.Now()
	c, err := n.failover.acquire(r.Context(), dead, replica)
	if err != nil {
		httpapi.WriteError(w, http.StatusBadGateway, "fail guild %d over from %s: %v", g, dead.ID, err)
		return
	}
	defer n.failover.release(c)
	// Our private copy: fence it at the failover's epoch, as a live source
	// fences itself, so the copy carries that epoch.
	if err := c.store.Fence(r.Context(), g, epoch); err != nil && !errors.Is(err, guildstore.ErrStaleEpoch) {
		httpapi.WriteError(w, http.StatusInternalServerError, "fence the restored copy of guild %d: %v", g, err)
		return
	}
	info, err := n.store.ImportFrom(r.Context(), g, c.store)
	if err != nil {
		httpapi.WriteError(w, importErrorStatus(err, http.StatusInternalServerError), "import guild %d from %s's replica: %v", g, dead.ID, err)
		return
	}
	n.metrics.migrationSteps.WithLabelValues("failover_import").Observe(time.Since(start).Seconds())
	n.log.Info("imported a guild from a dead pod's replica", "guild", g, "from", dead.ID, "epoch", epoch, "rows", info.Rows,
		"loss_window_ms", gi.Migration.LossWindowMs, "took", time.Since(start).Round(time.Millisecond))
	httpapi.WriteJSON(w, http.StatusOK, podapi.ImportResponse{GuildID: strconv.FormatUint(g, 10), Rows: info.Rows, Checksum: info.Checksum,
		TookMs: time.Since(start).Milliseconds()})
}

// runRestore runs `modbot restore` (Config.RestoreCommand) as a child
// process: Litestream's SQLite never shares this process.
func (n *Node) runRestore(ctx context.Context, db, replica string, flags ...string) error {
	args := append(append([]string(nil), n.cfg.RestoreCommand[1:]...), "--db", db, "--replica", replica)
	cmd := exec.CommandContext(ctx, n.cfg.RestoreCommand[0], append(args, flags...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("modbot restore --db %s --replica %s: %w: %s", db, replica, err, lastLines(out.String(), 5))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
