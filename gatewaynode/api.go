package gatewaynode

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/bwmarrin/discordgo"
	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/bot"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/httpmetrics"
	"github.com/modbot/modbot/internal/podapi"
)

const maxBody = 8 << 20

func (n *Node) routes(reg *prometheus.Registry) *mux.Router {
	r := mux.NewRouter()
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteError(w, http.StatusNotFound, "no route %s %s", r.Method, r.URL.Path)
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteError(w, http.StatusMethodNotAllowed, "method %s not allowed on %s", r.Method, r.URL.Path)
	})
	r.Use(httpmetrics.Middleware(n.metrics.httpLatency, "gateway"))
	r.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		httpapi.WriteJSON(w, 200, map[string]string{"status": "ok"})
	}).Methods("GET")
	r.HandleFunc("/readyz", n.handleReady).Methods("GET")
	r.Handle("/metrics", n.auth.Metrics(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))).Methods("GET")
	// Every other route requires a token of its scope (httpapi.Scope).
	route := func(need httpapi.Scope, method, path string, h http.HandlerFunc) {
		r.Handle(path, n.auth.Require(need, h)).Methods(method)
	}
	read, internal, admin := httpapi.ScopeRead, httpapi.ScopeInternal, httpapi.ScopeAdmin
	r.Handle(podapi.RouteDashboard, n.dashboardAuth(n.handleDashboard)).Methods("GET")
	r.Handle(podapi.RouteSettings, n.dashboardAuth(n.handleSettings)).Methods("POST")
	route(internal, "POST", podapi.PathEvents, n.handleEvents)
	route(internal, "POST", podapi.PathInteractions, n.handleInteraction)
	route(read, "GET", podapi.PathStatus, n.handleStatus)
	route(internal, "GET", podapi.RouteExport, n.handleExport)
	route(internal, "POST", podapi.RouteImport, n.handleImport)
	route(internal, "DELETE", podapi.RouteGuild, n.handleDropCopy)
	route(internal, "GET", podapi.RouteShardReleased, n.handleShardReleased)
	route(admin, "GET", podapi.PathDeadLetters, n.handleDeadLetters)
	route(admin, "POST", podapi.RouteReplayDeadLetter, n.handleReplayDeadLetter)
	return r
}

func (n *Node) handleReady(w http.ResponseWriter, r *http.Request) {
	switch {
	case n.watch.Revision() == 0:
		httpapi.WriteError(w, http.StatusServiceUnavailable, "no map yet")
	case !n.registered():
		httpapi.WriteError(w, http.StatusServiceUnavailable, "not registered as an active pod yet")
	case !n.shards.ready():
		httpapi.WriteError(w, http.StatusServiceUnavailable, "shard sessions are not all up")
	default:
		httpapi.WriteJSON(w, http.StatusOK, map[string]any{"status": "ready", "shards": n.shards.held(), "revision": n.watch.Revision()})
	}
}

func (n *Node) registered() bool {
	p, ok := n.watch.Pod(n.cfg.ID)
	return ok && p.State == fsm.PodActive
}

// notOwner answers 421 so the caller (a proxy or a peer) re-reads its map.
func (n *Node) notOwner(w http.ResponseWriter, g fsm.Guild, known bool) {
	owner := ""
	if known {
		owner = g.Owner
	}
	httpapi.WriteJSON(w, http.StatusMisdirectedRequest, map[string]any{
		"error": fmt.Sprintf("%s does not own guild %d", n.cfg.ID, g.ID), "owner": owner, "revision": n.watch.Revision(),
	})
}

// ownedGuild reads the {id} of a guild route and answers for it when this
// pod does not own the guild (400 for a bad id, 421 with the owner); ok
// says whether the handler goes on.
func (n *Node) ownedGuild(w http.ResponseWriter, r *http.Request) (fsm.Guild, bool) {
	id, err := fsm.ParseGuildID(mux.Vars(r)["id"])
	if err != nil {
		httpapi.WriteError(w, http.StatusBadRequest, "%v", err)
		return fsm.Guild{}, false
	}
	g, known := n.watch.Lookup(id)
	if !known || g.Owner != n.cfg.ID {
		g.ID = id
		n.notOwner(w, g, known)
		return fsm.Guild{}, false
	}
	return g, true
}

// handleEvents takes events forwarded by a shard holder. It answers 200 once
// every event it accepted is committed, listing the ones it refused; the
// holder keeps those in its own outbox before acknowledging them to Discord.
func (n *Node) handleEvents(w http.ResponseWriter, r *http.Request) {
	var req podapi.ForwardRequest
	// Strict (unknown fields, trailing data, size), but a repeated key keeps
	// encoding/json's last-wins: the events carry Discord's payloads
	// verbatim, and the holder took them that way too.
	if err := httpapi.DecodeJSON(w, r, &req, httpapi.DecodeOptions{MaxBytes: maxBody, AllowDuplicateKeys: true}); err != nil {
		httpapi.WriteError(w, httpapi.BodyStatus(err), "events: %v", err)
		return
	}
	evs := make([]bot.Event, 0, len(req.Events))
	for _, e := range req.Events {
		ev := fromWire(e)
		if _, ok := bot.GuildOf(ev); !ok {
			httpapi.WriteError(w, http.StatusBadRequest, "event %s has no guild", e.Type)
			return
		}
		evs = append(evs, ev)
	}
	refused, err := n.acceptForwarded(r.Context(), evs)
	if err != nil {
		httpapi.WriteError(w, http.StatusServiceUnavailable, "commit forwarded events: %v", err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, podapi.ForwardResponse{Accepted: len(evs) - len(refused), Refused: refused})
}

// handleInteraction answers an interaction the proxy received over the
// webhook. If the proxy gives up first (it then answers Discord with a
// deferred response), the answer is sent as an edit of the original response.
func (n *Node) handleInteraction(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		httpapi.WriteError(w, http.StatusRequestEntityTooLarge, "interaction body: %v", err)
		return
	}
	var it discordgo.Interaction
	if err := json.Unmarshal(body, &it); err != nil {
		httpapi.WriteError(w, http.StatusBadRequest, "malformed interaction: %v", err)
		return
	}
	ev := bot.Event{Type: bot.EventInteractionCreate, Data: body}
	gid, ok := bot.GuildOf(ev)
	if !ok {
		httpapi.WriteJSON(w, http.StatusOK, &discordgo.InteractionResponse{Type: discordgo.InteractionResponseChannelMessageWithSource,
			Data: &discordgo.InteractionResponseData{Content: "modbot works inside servers; use its commands there.", Flags: discordgo.MessageFlagsEphemeral}})
		return
	}
	g, known := n.watch.Lookup(gid)
	if !known || g.Owner != n.cfg.ID {
		g.ID = gid
		n.notOwner(w, g, known)
		return
	}
	if g.State == fsm.GuildMigrating {
		httpapi.WriteJSON(w, http.StatusOK, &discordgo.InteractionResponse{Type: discordgo.InteractionResponseChannelMessageWithSource,
			Data: &discordgo.InteractionResponseData{Content: "This server's data is being moved; try again in a few seconds.", Flags: discordgo.MessageFlagsEphemeral}})
		return
	}
	// Handle on a context that survives the proxy giving up, so the work
	// completes and the answer goes out as a follow-up.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 30*time.Second)
	defer cancel()
	res, err := n.bot.Handle(ctx, ev, g.Epoch)
	if err != nil {
		httpapi.WriteError(w, http.StatusInternalServerError, "handle interaction: %v", err)
		return
	}
	n.metrics.events.WithLabelValues(ev.Type, outcome(res)).Inc()
	n.post(ctx, res.GuildID, res.Posts, g.Epoch)
	if res.Response == nil {
		httpapi.WriteError(w, http.StatusInternalServerError, "no response for interaction %s", it.ID)
		return
	}
	if r.Context().Err() != nil {
		// The proxy already answered "deferred": edit the original response.
		edit := &discordgo.WebhookEdit{}
		if d := res.Response.Data; d != nil {
			edit.Content, edit.Embeds = &d.Content, &d.Embeds
		}
		if _, err := n.rest.InteractionResponseEdit(&it, edit, discordgo.WithContext(ctx)); err != nil {
			n.metrics.restErrors.WithLabelValues("interaction_followup").Inc()
			n.log.Warn("follow up a deferred interaction", "interaction", it.ID, "err", err)
		}
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, res.Response)
}

func (n *Node) handleStatus(w http.ResponseWriter, r *http.Request) {
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{
		"pod": n.cfg.ID, "addr": n.addr, "revision": n.watch.Revision(), "staleness_ms": n.watch.Staleness().Milliseconds(),
		"shards": n.shards.held(), "ready": n.shards.ready(), "outbox_guilds": n.outbox.size(),
		"guilds_owned": n.watch.GuildCount(n.cfg.ID),
	})
}

// handleShardReleased is GET /internal/shards/{id}/released?wait_ms=N: a
// long poll by a shard's new holder, answered once this pod runs no session
// of the shard (or after wait_ms, at most 30 s, with released=false).
func (n *Node) handleShardReleased(w http.ResponseWriter, r *http.Request) {
	shard, err := strconv.Atoi(mux.Vars(r)["id"])
	if err != nil || shard < 0 {
		httpapi.WriteError(w, http.StatusBadRequest, "shard must be a non-negative integer")
		return
	}
	wait := time.Duration(0)
	if s := r.URL.Query().Get("wait_ms"); s != "" {
		ms, err := strconv.Atoi(s)
		if err != nil || ms < 0 {
			httpapi.WriteError(w, http.StatusBadRequest, "wait_ms must be a non-negative integer")
			return
		}
		wait = min(time.Duration(ms)*time.Millisecond, 30*time.Second)
	}
	released := n.shards.shardReleased(r.Context(), shard, wait)
	httpapi.WriteJSON(w, http.StatusOK, podapi.ReleasedResponse{Shard: shard, Released: released, ClosedSession: n.shards.closedSession(shard)})
}
