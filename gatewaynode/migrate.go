package gatewaynode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/gorilla/mux"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/guildstore"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/podapi"
)

// The gateway side of a guild move (DESIGN §7; the leader drives it, see
// confignode/migrate.go):
//
//	source  GET    /internal/guilds/{id}/export?epoch=E   fence at E, export every data row of the guild
//	target  POST   /internal/guilds/{id}/import?epoch=E   pull the export from the source, verify it, import it in bounded transactions
//	        (a failover: …&replica=URL — restore the dead owner's replica and import from it, see failover.go)
//	either  DELETE /internal/guilds/{id}?epoch=E           drop a copy that is not (or no longer) the owner's
//
// Every step checks the map: the guild must be migrating at epoch E from the
// source to the target, so a stale orchestrator cannot move data under a
// newer move. Fencing the source's store at E first means any write still in
// flight with the old epoch fails instead of slipping in after the export.

// migrationFor waits briefly (5 s) for the map to show the guild migrating
// at epoch, woken by the map's changes.
func (n *Node) migrationFor(ctx context.Context, guild, epoch uint64) (fsm.Guild, error) {
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var g fsm.Guild
	var ok, stale bool
	err := waitMap(wctx, n.watch, func() bool {
		g, ok = n.watch.Lookup(guild)
		stale = ok && g.Epoch > epoch
		return stale || ok && g.Migration != nil && g.Migration.Epoch == epoch
	})
	switch {
	case stale:
		return g, fmt.Errorf("guild %d is at epoch %d, the move at epoch %d is stale", guild, g.Epoch, epoch)
	case err != nil && ctx.Err() != nil:
		return g, ctx.Err()
	case err != nil:
		return g, fmt.Errorf("guild %d is not migrating at epoch %d here (map revision %d)", guild, epoch, n.watch.Revision())
	}
	return g, nil
}

func guildAndEpoch(r *http.Request) (uint64, uint64, error) {
	g, err := fsm.ParseGuildID(mux.Vars(r)["id"])
	if err != nil {
		return 0, 0, err
	}
	e, err := strconv.ParseUint(r.URL.Query().Get("epoch"), 10, 64)
	if err != nil || e == 0 {
		return 0, 0, errors.New("epoch query parameter is required")
	}
	return g, e, nil
}

// moveStep reads the guild and epoch of a move request and checks that the
// map shows this pod in the given role (source or target) of that move.
func (n *Node) moveStep(w http.ResponseWriter, r *http.Request, asSource bool) (uint64, uint64, fsm.Guild, bool) {
	g, epoch, err := guildAndEpoch(r)
	if err != nil {
		httpapi.WriteError(w, http.StatusBadRequest, "%v", err)
		return 0, 0, fsm.Guild{}, false
	}
	gi, err := n.migrationFor(r.Context(), g, epoch)
	if err != nil {
		httpapi.WriteError(w, http.StatusConflict, "%v", err)
		return 0, 0, gi, false
	}
	role, pod := "to", gi.Migration.To
	if asSource {
		role, pod = "from", gi.Migration.From
	}
	if pod != n.cfg.ID {
		httpapi.WriteError(w, http.StatusConflict, "guild %d moves %s %s, not %s %s", g, role, pod, role, n.cfg.ID)
		return 0, 0, gi, false
	}
	return g, epoch, gi, true
}

func (n *Node) handleExport(w http.ResponseWriter, r *http.Request) {
	g, epoch, _, ok := n.moveStep(w, r, true)
	if !ok {
		return
	}
	start := time.Now()
	if err := n.store.Fence(r.Context(), g, epoch); err != nil {
		httpapi.WriteError(w, http.StatusConflict, "fence guild %d at epoch %d: %v", g, epoch, err)
		return
	}
	// Export to a file first: the checksum goes in a header, before the body.
	tmp, info, size, err := n.exportToSpool(r.Context(), n.store, g)
	if err != nil {
		httpapi.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	n.metrics.migrationSteps.WithLabelValues("export").Observe(time.Since(start).Seconds())
	n.log.Info("exported guild for a move", "guild", g, "epoch", epoch, "rows", info.Rows, "bytes", size, "took", time.Since(start).Round(time.Millisecond))
	w.Header().Set(podapi.HeaderChecksum, info.Checksum)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	_, _ = io.Copy(w, tmp)
}

func (n *Node) handleImport(w http.ResponseWriter, r *http.Request) {
	g, epoch, gi, ok := n.moveStep(w, r, false)
	if !ok {
		return
	}
	if gi.Migration.Failover {
		n.importFromReplica(w, r, g, epoch, gi)
		return
	}
	src, ok := n.watch.Pod(gi.Migration.From)
	if !ok {
		httpapi.WriteError(w, http.StatusConflict, "source pod %s is not in the map", gi.Migration.From)
		return
	}
	start := time.Now()
	resp, err := n.pods.Export(r.Context(), src.Addr, g, epoch)
	if podapi.Refused(err) {
		httpapi.WriteError(w, http.StatusBadGateway, "source %s refused the export: %v", src.ID, err)
		return
	}
	if err != nil {
		httpapi.WriteError(w, http.StatusBadGateway, "pull export of guild %d from %s: %v", g, src.ID, err)
		return
	}
	defer resp.Body.Close()
	want := resp.Header.Get(podapi.HeaderChecksum)
	info, err := n.store.Import(r.Context(), g, resp.Body, want)
	if err != nil {
		httpapi.WriteError(w, importErrorStatus(err, http.StatusBadGateway), "import guild %d: %v", g, err)
		return
	}
	n.metrics.migrationSteps.WithLabelValues("import").Observe(time.Since(start).Seconds())
	httpapi.WriteJSON(w, http.StatusOK, podapi.ImportResponse{GuildID: strconv.FormatUint(g, 10), Rows: info.Rows, Checksum: info.Checksum,
		TookMs: time.Since(start).Milliseconds()})
}

// exportToSpool exports a guild from store into a spool file in the data
// directory, rewound for reading; the caller closes and removes it.
func (n *Node) exportToSpool(ctx context.Context, store *guildstore.Store, g uint64) (*os.File, guildstore.ExportInfo, int64, error) {
	tmp, err := os.CreateTemp(n.cfg.DataDir, fmt.Sprintf("export-%d-*.tmp", g))
	if err != nil {
		return nil, guildstore.ExportInfo{}, 0, fmt.Errorf("export guild %d: %w", g, err)
	}
	info, err := store.Export(ctx, g, tmp)
	if err == nil {
		var size int64
		if size, err = tmp.Seek(0, io.SeekCurrent); err == nil {
			if _, err = tmp.Seek(0, io.SeekStart); err == nil {
				return tmp, info, size, nil
			}
		}
		err = fmt.Errorf("export guild %d: %w", g, err)
	}
	tmp.Close()
	os.Remove(tmp.Name())
	return nil, guildstore.ExportInfo{}, 0, err
}

// importErrorStatus is the status of a failed import: 422 for an export
// that is refused as such (bad, or not matching its checksum), else other.
func importErrorStatus(err error, other int) int {
	if errors.Is(err, guildstore.ErrChecksumMismatch) || errors.Is(err, guildstore.ErrBadExport) {
		return http.StatusUnprocessableEntity
	}
	return other
}

// handleDropCopy deletes this pod's copy of a guild it does not own after a
// move committed (the source) or aborted (the target). Events this pod holds
// for the guild are not part of the copy: they stay in its outbox, which
// delivers them to the owner (DeleteGuild keeps the held buffer).
func (n *Node) handleDropCopy(w http.ResponseWriter, r *http.Request) {
	g, epoch, err := guildAndEpoch(r)
	if err != nil {
		httpapi.WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	var settled fsm.Guild
	var ours, elsewhere bool
	wctx, wcancel := context.WithTimeout(r.Context(), 5*time.Second)
	_ = waitMap(wctx, n.watch, func() bool {
		gi, ok := n.watch.Lookup(g)
		settled = gi
		elsewhere = ok && gi.Owner != n.cfg.ID && gi.Epoch >= epoch && gi.Migration == nil
		ours = ok && gi.Owner == n.cfg.ID && gi.Migration == nil
		return elsewhere || ours
	})
	wcancel()
	if ours {
		httpapi.WriteError(w, http.StatusConflict, "%s owns guild %d; refusing to delete its data", n.cfg.ID, g)
		return
	}
	if !elsewhere {
		httpapi.WriteError(w, http.StatusConflict, "guild %d is not settled on another owner at epoch >= %d here", g, epoch)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	// Fence at the settled epoch first: an import of this move that is still
	// in flight here (the target after an abort) then fails instead of
	// landing after the delete.
	if err := n.store.Fence(ctx, g, settled.Epoch); err != nil && !errors.Is(err, guildstore.ErrStaleEpoch) {
		httpapi.WriteError(w, http.StatusInternalServerError, "fence guild %d before deleting: %v", g, err)
		return
	}
	if err := n.store.DeleteGuild(ctx, g, settled.Epoch); err != nil {
		if errors.Is(err, guildstore.ErrStaleEpoch) {
			httpapi.WriteError(w, http.StatusConflict, "guild %d came back here at a newer epoch; kept its data: %v", g, err)
			return
		}
		httpapi.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	n.log.Info("deleted the copy of a guild owned elsewhere", "guild", g, "epoch", epoch)
	httpapi.WriteJSON(w, http.StatusOK, map[string]string{"deleted": strconv.FormatUint(g, 10)})
}
