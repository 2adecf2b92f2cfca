package confignode

import (
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"

	"github.com/gorilla/mux"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/httpmetrics"
)

func (n *Node) routes() *mux.Router {
	r := mux.NewRouter()
	notFound := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteError(w, http.StatusNotFound, "no route %s %s (see docs/operations.md for the API)", r.Method, r.URL.Path)
	})
	notAllowed := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteError(w, http.StatusMethodNotAllowed, "method %s not allowed on %s", r.Method, r.URL.Path)
	})
	r.NotFoundHandler, r.MethodNotAllowedHandler = notFound, notAllowed
	r.Use(httpmetrics.Middleware(n.metrics.httpLatency, "config", "/v1/watch"))

	r.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		httpapi.WriteJSON(w, 200, map[string]string{"status": "ok"})
	}).Methods("GET")
	r.HandleFunc("/readyz", n.handleReady).Methods("GET")
	r.Handle("/metrics", n.auth.Metrics(promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{}))).Methods("GET")
	if n.cfg.Pprof {
		// Go's profiler (go tool pprof URL/debug/pprof/profile), admin only.
		pp := http.NewServeMux()
		pp.HandleFunc("/debug/pprof/", pprof.Index) // and the named profiles: heap, goroutine, …
		pp.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		pp.HandleFunc("/debug/pprof/profile", pprof.Profile)
		pp.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		pp.HandleFunc("/debug/pprof/trace", pprof.Trace)
		r.PathPrefix("/debug/pprof/").Handler(n.scoped(httpapi.ScopeAdmin, pp))
	}

	// Every /v1 route requires a token of its scope (httpapi.Scope).
	// (Registered on the root router: gorilla/mux subrouters answer 404
	// instead of 405 for a wrong method.)
	v1 := func(need httpapi.Scope, method, path string, h http.HandlerFunc) {
		r.Handle("/v1"+path, n.scoped(need, h)).Methods(method)
	}
	read, internal, admin := httpapi.ScopeRead, httpapi.ScopeInternal, httpapi.ScopeAdmin
	v1(read, "GET", "/status", n.handleStatus)
	v1(read, "GET", "/cluster/servers", n.handleServers)
	v1(admin, "POST", "/cluster/join", n.leaderOnly(n.handleJoin))
	v1(admin, "DELETE", "/cluster/servers/{id}", n.leaderOnly(n.handleRemoveServer))
	v1(admin, "POST", "/cluster/transfer-leadership", n.leaderOnly(n.handleTransfer))
	v1(read, "GET", "/pods", n.reads(n.handlePods))
	v1(internal, "POST", "/pods", n.leaderOnly(n.handleRegisterPod))
	v1(internal, "POST", "/pods/{id}/heartbeat", n.leaderOnly(n.handleHeartbeat))
	v1(admin, "POST", "/pods/{id}/drain", n.leaderOnly(n.handleDrain))
	v1(internal, "POST", "/pods/{id}/leave", n.leaderOnly(n.handleLeave))
	// ?consistent=true: a pod taking a shard over reads the checkpoint to
	// resume from linearizably, never off a lagging follower.
	v1(read, "GET", "/shards", n.reads(n.handleShards))
	v1(internal, "POST", "/shards/checkpoints", n.leaderOnly(n.handleCheckpoints))
	v1(internal, "POST", "/identify", n.leaderOnly(n.handleIdentify))
	v1(read, "GET", "/guilds", n.reads(n.handleGuilds))
	v1(internal, "POST", "/guilds", n.leaderOnly(n.handlePlace))
	v1(read, "GET", "/guilds/{id}", n.reads(n.handleGuild))
	v1(admin, "POST", "/guilds/{id}/move", n.leaderOnly(n.handleMove))
	v1(admin, "POST", "/rebalance", n.leaderOnly(n.handleRebalance))
	v1(read, "GET", "/rebalance", n.leaderOnly(n.handleRebalanceStatus))
	v1(read, "GET", "/snapshot", n.reads(n.handleSnapshot))
	v1(read, "GET", "/watch", n.handleWatch)
	return r
}

// reads serves a read locally, or linearizably with ?consistent=true: the
// leader confirms it still leads and that its state machine has applied
// everything committed before the read; followers forward such reads.
func (n *Node) reads(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if c := r.URL.Query().Get("consistent"); c == "true" || c == "1" {
			if n.raft.State() != raft.Leader {
				n.forward(w, r)
				return
			}
			if err := n.raft.VerifyLeader().Error(); err != nil {
				n.fail(w, r, errNotLeaderf("consistent read: %v", err))
				return
			}
			if err := n.raft.Barrier(n.cfg.WriteTimeout).Error(); err != nil {
				n.fail(w, r, errNotLeaderf("consistent read: %v", err))
				return
			}
		}
		w.Header().Set(hdrRevision, strconv.FormatUint(n.store.Revision(), 10))
		h(w, r)
	}
}

// readyLag is how far behind the commit index a node may apply and still
// call itself ready (a node replaying a long log is not).
const readyLag = 100

func (n *Node) handleReady(w http.ResponseWriter, r *http.Request) {
	leader := n.leaderID()
	switch {
	case leader == "":
		httpapi.WriteError(w, http.StatusServiceUnavailable, "no leader known")
	case n.raft.AppliedIndex()+readyLag < n.raft.CommitIndex():
		httpapi.WriteError(w, http.StatusServiceUnavailable, "catching up: applied %d of %d", n.raft.AppliedIndex(), n.raft.CommitIndex())
	default:
		httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready", "leader": leader})
	}
}

func (n *Node) servers() ([]assignments.Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	leader := n.leaderID()
	var out []assignments.Server
	n.store.View(func(st *fsm.State) {
		for _, s := range f.Configuration().Servers {
			out = append(out, assignments.Server{
				ID: string(s.ID), RaftAddr: string(s.Address), HTTPAddr: st.ConfigNodes[string(s.ID)].HTTPAddr,
				Suffrage: s.Suffrage.String(), Leader: string(s.ID) == leader,
			})
		}
	})
	return out, nil
}

func (n *Node) handleStatus(w http.ResponseWriter, r *http.Request) {
	srv, err := n.servers()
	if err != nil {
		n.fail(w, r, err)
		return
	}
	st := assignments.Status{
		ID: n.cfg.ID, State: n.raft.State().String(), Leader: n.leaderID(), LeaderAddr: n.leaderHTTP(),
		Term: n.raft.CurrentTerm(), AppliedIndex: n.raft.AppliedIndex(), CommitIndex: n.raft.CommitIndex(),
		Servers: srv,
	}
	n.store.View(func(s *fsm.State) {
		st.Revision, st.ShardCount, st.Guilds, st.Migrating = s.Revision, s.ShardCount, s.Guilds.Len(), s.Migrating()
		st.Pods = n.podSummaries(s)
	})
	httpapi.WriteJSON(w, http.StatusOK, st)
}

func (n *Node) podSummaries(s *fsm.State) []assignments.PodSummary {
	out := []assignments.PodSummary{}
	for _, p := range s.SortedPods() {
		out = append(out, assignments.PodSummary{Pod: *p, Guilds: s.GuildCount(p.ID), Shards: s.ShardsHeldBy(p.ID), LastHeartbeatMs: n.live.lastHeardMs(p.ID)})
	}
	return out
}

func (n *Node) handleServers(w http.ResponseWriter, r *http.Request) {
	srv, err := n.servers()
	if err != nil {
		n.fail(w, r, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, srv)
}

func (n *Node) handleJoin(w http.ResponseWriter, r *http.Request) {
	var req assignments.JoinRequest
	if err := n.decodeBody(w, r, &req); err != nil {
		n.fail(w, r, err)
		return
	}
	if req.ID == "" || req.RaftAddr == "" {
		n.fail(w, r, badRequest("join needs id and raft_addr"))
		return
	}
	if _, _, err := net.SplitHostPort(req.RaftAddr); err != nil {
		n.fail(w, r, badRequest("raft_addr %q is not host:port", req.RaftAddr))
		return
	}
	res, err := n.join(r.Context(), req)
	if err != nil {
		n.fail(w, r, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, res)
}

func (n *Node) handleRemoveServer(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["id"]
	res, err := n.removeServer(r.Context(), id)
	if err != nil {
		n.fail(w, r, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, res)
}

func (n *Node) handleTransfer(w http.ResponseWriter, r *http.Request) {
	var req assignments.TransferRequest
	if r.ContentLength != 0 {
		if err := n.decodeBody(w, r, &req); err != nil {
			n.fail(w, r, err)
			return
		}
	}
	res, err := n.transferLeadership(req.To)
	if err != nil {
		n.fail(w, r, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, res)
}

func (n *Node) handlePods(w http.ResponseWriter, r *http.Request) {
	var out assignments.PodList
	n.store.View(func(s *fsm.State) { out.Revision, out.Pods = s.Revision, n.podSummaries(s) })
	httpapi.WriteJSON(w, http.StatusOK, out)
}

func (n *Node) handleRegisterPod(w http.ResponseWriter, r *http.Request) {
	var req assignments.RegisterPodRequest
	if err := n.decodeBody(w, r, &req); err != nil {
		n.fail(w, r, err)
		return
	}
	ord := fsm.OrdinalFromID(req.ID)
	if req.Ordinal != nil {
		ord = *req.Ordinal
		if ord < 0 {
			n.fail(w, r, badRequest("ordinal must be >= 0, got %d", ord))
			return
		}
	}
	if ord < 0 {
		n.fail(w, r, badRequest("pod id %q has no ordinal suffix (like gateway-1); send \"ordinal\"", req.ID))
		return
	}
	res, err := n.propose(r.Context(), fsm.Command{Type: fsm.CmdRegisterPod, Pod: &fsm.PodSpec{ID: req.ID, Ordinal: ord, Addr: req.Addr}})
	if err != nil {
		n.fail(w, r, err)
		return
	}
	n.live.heard(req.ID)
	n.writeResult(w, res, "registered pod "+req.ID)
}

func (n *Node) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["id"]
	var pod *fsm.Pod
	n.store.View(func(s *fsm.State) {
		if p, ok := s.Pods[id]; ok {
			cp := *p
			pod = &cp
		}
	})
	if pod == nil {
		httpapi.WriteError(w, http.StatusNotFound, "unknown pod %q: register it first (POST /v1/pods)", id)
		return
	}
	lag := int64(-1)
	if v := r.URL.Query().Get("replication_lag_ms"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			httpapi.WriteError(w, http.StatusBadRequest, "replication_lag_ms must be a non-negative integer, got %q", v)
			return
		}
		lag = ms
	}
	n.live.heard(id)
	n.live.reportedLag(id, lag)
	if pod.State == fsm.PodDown {
		// A pod that was marked down and is back returns to what it was:
		// active, or draining if it was draining (a missed heartbeat never
		// cancels an operator's drain).
		if _, err := n.propose(r.Context(), fsm.Command{Type: fsm.CmdPodAlive, PodID: pod.ID}); err != nil {
			n.fail(w, r, err)
			return
		}
		n.store.View(func(s *fsm.State) {
			if p, ok := s.Pods[id]; ok {
				pod.State = p.State
			}
		})
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"pod": pod.ID, "state": pod.State})
}

// handleLeave marks a pod down at its own request before a planned stop
// (SIGTERM): its shards go to the other pods at once instead of after
// PodTimeout of silence; its guilds stay its own, their events held by the
// shard holders until it is back (or fail over after the grace). The pod
// stopped heartbeating first; its next registration makes it active again.
// Leaving twice is a no-op.
func (n *Node) handleLeave(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["id"]
	var state fsm.PodState
	known := false
	n.store.View(func(s *fsm.State) {
		if p, ok := s.Pods[id]; ok {
			state, known = p.State, true
		}
	})
	if !known {
		httpapi.WriteError(w, http.StatusNotFound, "unknown pod %q", id)
		return
	}
	if state != fsm.PodDown {
		if _, err := n.propose(r.Context(), fsm.Command{Type: fsm.CmdMarkPodDown, PodID: id}); err != nil {
			n.fail(w, r, err)
			return
		}
		n.log.Info("pod left for a planned stop; marked down", "pod", id)
		n.metrics.podsLeft.Inc()
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"pod": id, "state": fsm.PodDown, "revision": n.store.Revision()})
}

func (n *Node) writeResult(w http.ResponseWriter, res proposeResult, msg string) {
	httpapi.WriteJSON(w, http.StatusOK, assignments.WriteResult{Revision: n.store.Revision(), Index: res.Index, Message: msg})
}

func (n *Node) handleShards(w http.ResponseWriter, r *http.Request) {
	var out assignments.ShardList
	n.store.View(func(s *fsm.State) {
		out.Revision, out.ShardCount = s.Revision, s.ShardCount
		out.Shards = shardAssignments(s)
	})
	httpapi.WriteJSON(w, http.StatusOK, out)
}

func (n *Node) handleGuilds(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 1000
	if v := q.Get("limit"); v != "" {
		l, err := strconv.Atoi(v)
		if err != nil || l < 1 || l > 10000 {
			n.fail(w, r, badRequest("limit must be between 1 and 10000"))
			return
		}
		limit = l
	}
	var after uint64
	if v := q.Get("after"); v != "" {
		a, err := fsm.ParseGuildID(v)
		if err != nil {
			n.fail(w, r, badRequest("after: %v", err))
			return
		}
		after = a
	}
	pod := q.Get("pod")
	out := assignments.GuildList{Guilds: []fsm.Guild{}}
	var unknownPod bool
	n.store.View(func(s *fsm.State) {
		if pod != "" {
			p, ok := s.ResolvePod(pod)
			if !ok {
				unknownPod = true
				return
			}
			pod = p.ID
		}
		out.Revision = s.Revision
		page := s.Guilds.After(after)
		if pod != "" {
			ids := s.Guilds.OwnedBy(pod) // the owner index, not a scan of every guild
			ids = ids[searchAfter(ids, after):]
			page = func(yield func(fsm.Guild) bool) {
				for _, id := range ids {
					if g, ok := s.Guilds.Get(id); ok && !yield(g) {
						return
					}
				}
			}
		}
		for g := range page {
			if len(out.Guilds) == limit {
				out.Next = strconv.FormatUint(out.Guilds[limit-1].ID, 10)
				break
			}
			out.Guilds = append(out.Guilds, g)
		}
	})
	if unknownPod {
		httpapi.WriteError(w, http.StatusNotFound, "unknown pod %q", pod)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// shardAssignments lists every shard with its holder, holder epoch and
// checkpoint (GET /v1/shards, /v1/snapshot).
func shardAssignments(s *fsm.State) []fsm.ShardAssignment {
	out := make([]fsm.ShardAssignment, len(s.Shards))
	for i := range s.Shards {
		out[i] = s.Shard(i)
	}
	return out
}

func (n *Node) handleCheckpoints(w http.ResponseWriter, r *http.Request) {
	var req assignments.CheckpointRequest
	if err := n.decodeBody(w, r, &req); err != nil {
		n.fail(w, r, err)
		return
	}
	cps := make(map[int]fsm.Checkpoint, len(req.Checkpoints))
	for k, v := range req.Checkpoints {
		sh, err := strconv.Atoi(k)
		if err != nil {
			n.fail(w, r, badRequest("shard %q is not a number", k))
			return
		}
		cps[sh] = v
	}
	res, err := n.propose(r.Context(), fsm.Command{Type: fsm.CmdSaveCheckpoints, PodID: req.Pod, Checkpoints: cps})
	if err != nil {
		n.fail(w, r, err)
		return
	}
	n.writeResult(w, res, "saved")
}

// searchAfter returns the index of the first id greater than after.
func searchAfter(ids []uint64, after uint64) int {
	lo, hi := 0, len(ids)
	for lo < hi {
		m := (lo + hi) / 2
		if ids[m] <= after {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

func (n *Node) handleGuild(w http.ResponseWriter, r *http.Request) {
	id, err := fsm.ParseGuildID(mux.Vars(r)["id"])
	if err != nil {
		n.fail(w, r, badRequest("%v", err))
		return
	}
	var out *assignments.GuildView
	n.store.View(func(s *fsm.State) {
		g, ok := s.Guilds.Get(id)
		if !ok {
			return
		}
		v := assignments.GuildView{Guild: g, Shard: fsm.ShardOf(id, s.ShardCount), ShardHolder: s.HolderOf(id), MapRevision: s.Revision}
		if g.Migration != nil {
			m := *g.Migration
			v.Migration = &m
		}
		if p := s.Pods[g.Owner]; p != nil {
			v.OwnerAddr = p.Addr
		}
		out = &v
	})
	if out == nil {
		httpapi.WriteError(w, http.StatusNotFound, "unknown guild %d: it was never placed (POST /v1/guilds places it)", id)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

func (n *Node) handlePlace(w http.ResponseWriter, r *http.Request) {
	body, err := httpapi.ReadBody(w, r, n.cfg.MaxBodyBytes)
	if err != nil {
		n.fail(w, r, err)
		return
	}
	ids, ok := assignments.ParsePlaceRequestIDs(body) // the form our client writes, without reflection
	if !ok {
		var req assignments.PlaceRequest
		if err := httpapi.DecodeJSONBody(body, &req, httpapi.DecodeOptions{}); err != nil {
			n.fail(w, r, err)
			return
		}
		ids = make([]uint64, 0, len(req.GuildIDs))
		for _, s := range req.GuildIDs {
			id, err := fsm.ParseGuildID(s)
			if err != nil {
				n.fail(w, r, badRequest("%v", err))
				return
			}
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		n.fail(w, r, badRequest("guild_ids is empty"))
		return
	}
	if _, err := n.propose(r.Context(), fsm.Command{Type: fsm.CmdPlaceGuilds, GuildIDs: ids}); err != nil {
		n.fail(w, r, err)
		return
	}
	out := assignments.PlaceResponse{Guilds: make([]fsm.Guild, 0, len(ids))}
	n.store.View(func(s *fsm.State) {
		out.Revision = s.Revision
		for _, id := range ids {
			if g, ok := s.Guilds.Get(id); ok {
				out.Guilds = append(out.Guilds, g)
			}
		}
	})
	// json.Marshal(out), the guilds written by hand: a batch is 10,000.
	b := strconv.AppendUint(append(make([]byte, 0, 64+96*len(out.Guilds)), `{"revision":`...), out.Revision, 10)
	b, err = assignments.AppendGuildsJSON(append(b, `,"guilds":`...), out.Guilds)
	if err != nil {
		n.fail(w, r, err)
		return
	}
	httpapi.WriteRawJSON(w, http.StatusOK, append(b, '}'))
}

// handleSnapshot streams the whole map at one revision. The guilds are
// written from a clone of the table taken under the state's lock (shared
// packed records, copied overlays), so a list of ten million neither holds
// Apply up while it is sent nor costs the node a copy of every guild.
func (n *Node) handleSnapshot(w http.ResponseWriter, r *http.Request) {
	snap, guilds := n.snapshotHead()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(assignments.SnapshotGuildsHeader, strconv.Itoa(guilds.Len())) // the length is not known up front
	w.WriteHeader(http.StatusOK)
	if err := assignments.WriteSnapshotJSON(w, &snap, guilds.All()); err != nil {
		// The status is sent: the client reads a cut-off body, which
		// fails to decode, and lists again.
		n.log.Warn("snapshot stream ended early", "revision", snap.Revision, "guilds", guilds.Len(), "err", err)
	}
}

// snapshotHead copies the map at one revision but for its guilds, and
// returns them as a clone of the table.
func (n *Node) snapshotHead() (assignments.Snapshot, *fsm.GuildTable) {
	var out assignments.Snapshot
	var guilds *fsm.GuildTable
	n.store.View(func(s *fsm.State) {
		out.Revision, out.ShardCount = s.Revision, s.ShardCount
		out.Pods = make([]fsm.Pod, 0, len(s.Pods))
		for _, p := range s.SortedPods() {
			out.Pods = append(out.Pods, *p)
		}
		out.Shards = shardAssignments(s)
		guilds = s.Guilds.Clone()
		out.ConfigNodes = make([]fsm.ConfigNode, 0, len(s.ConfigNodes))
		for _, c := range s.ConfigNodes {
			out.ConfigNodes = append(out.ConfigNodes, c)
		}
	})
	return out, guilds
}
