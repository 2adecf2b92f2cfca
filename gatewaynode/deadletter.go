package gatewaynode

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/bot"
	"github.com/modbot/modbot/gatewaynode/guildstore"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/podapi"
)

// The policy for an event whose handler fails (an error other than a stale
// epoch, which is a move's fence and is held instead): it is re-run a few
// times, alone, and if it still fails it is stored in the dead-letter table
// — counted in modbot_gateway_dead_letters_total and listed by
// GET /internal/dead-letters — and then acknowledged, so one poison event
// does not stall its shard. Never silently: an operator replays it with
// POST /internal/dead-letters/{id}/replay once the cause is fixed.

const eventAttempts = 3

// retryOrDeadLetter re-runs a failed event; it returns the last result,
// with Err still set if the event was dead-lettered (or fenced meanwhile).
func (n *Node) retryOrDeadLetter(ctx context.Context, in bot.Input, r bot.Result) (bot.Result, error) {
	err := r.Err
	attempts := 1
	for attempt := 2; attempt <= eventAttempts && !errors.Is(err, bot.ErrMalformedEvent); attempt++ { // retrying cannot mend a malformed event
		attempts = attempt
		n.metrics.eventRetries.Inc()
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(time.Duration(attempt) * 20 * time.Millisecond):
		}
		res, herr := n.bot.Handle(ctx, in.Event, in.Epoch)
		if herr == nil {
			return res, nil
		}
		if errors.Is(herr, guildstore.ErrStaleEpoch) {
			res.Err = herr
			return res, nil
		}
		err = herr
	}
	if ctx.Value(replaying{}) != nil {
		return r, fmt.Errorf("replayed %s failed again: %w", in.Event.Type, err)
	}
	g, _ := bot.GuildOf(in.Event)
	if derr := n.deadLetter(ctx, g, in.Event, err, attempts); derr != nil {
		return r, derr
	}
	r.Err = err
	return r, nil
}

// deadLetter stores an event no handler could take.
func (n *Node) deadLetter(ctx context.Context, g uint64, ev bot.Event, cause error, attempts int) error {
	if ev.Guild == 0 {
		ev.Guild = g
	}
	_, err := n.store.AddDeadLetter(ctx, bot.NewDeadLetter(ev, cause, max(attempts, 1), time.Now()))
	if err != nil {
		return fmt.Errorf("dead-letter %s of guild %d: %w", ev.Type, g, err)
	}
	n.metrics.deadLetters.Inc()
	n.log.Error("event dead-lettered after repeated handler failures", "guild", g, "type", ev.Type, "delivery", ev.DeliveryID, "attempts", attempts, "err", cause)
	return nil
}

// handleDeadLetters is GET /internal/dead-letters[?guild=G&after=ID&limit=N].
func (n *Node) handleDeadLetters(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var guild uint64
	if s := q.Get("guild"); s != "" {
		g, err := fsm.ParseGuildID(s)
		if err != nil {
			httpapi.WriteError(w, http.StatusBadRequest, "%v", err)
			return
		}
		guild = g
	}
	after, limit := int64(0), 100
	if s := q.Get("after"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			httpapi.WriteError(w, http.StatusBadRequest, "after must be a dead-letter id")
			return
		}
		after = v
	}
	if s := q.Get("limit"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 1000 {
			httpapi.WriteError(w, http.StatusBadRequest, "limit must be 1..1000")
			return
		}
		limit = v
	}
	list, err := n.store.DeadLetters(r.Context(), guild, after, limit)
	if err != nil {
		httpapi.WriteError(w, http.StatusInternalServerError, "list dead letters: %v", err)
		return
	}
	total, err := n.store.DeadLetterCount(r.Context(), guild)
	if err != nil {
		httpapi.WriteError(w, http.StatusInternalServerError, "count dead letters: %v", err)
		return
	}
	out := podapi.DeadLetterList{Pod: n.cfg.ID, Total: total, DeadLetters: make([]podapi.DeadLetter, len(list))}
	for i, d := range list {
		out.DeadLetters[i] = podapi.DeadLetter{ID: d.ID, GuildID: d.GuildID, Type: d.Type, Payload: d.Payload, DeliveryID: d.DeliveryID,
			Error: d.Error, Attempts: d.Attempts, FirstFailedAt: d.FirstFailedAt, LastFailedAt: d.LastFailedAt}
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// replaying marks the context of an operator's replay: a handler that fails
// again then fails the replay (the dead letter stays, with the new error)
// instead of dead-lettering the event a second time.
type replaying struct{}

// handleReplayDeadLetter is POST /internal/dead-letters/{id}/replay: the
// event is routed again as if Discord had just delivered it (to its owner,
// or held), and leaves the table only once that is committed.
func (n *Node) handleReplayDeadLetter(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(mux.Vars(r)["id"], 10, 64)
	if err != nil || id <= 0 {
		httpapi.WriteError(w, http.StatusBadRequest, "dead-letter id must be a positive integer")
		return
	}
	var replayed guildstore.DeadLetter
	ctx := context.WithValue(r.Context(), replaying{}, true)
	err = n.store.ReplayDeadLetter(ctx, id, func(ctx context.Context, d guildstore.DeadLetter) error {
		replayed = d
		return n.route(ctx, []bot.Event{bot.EventFromDeadLetter(d)})
	})
	switch {
	case errors.Is(err, guildstore.ErrNoDeadLetter):
		httpapi.WriteError(w, http.StatusNotFound, "no dead letter %d on %s", id, n.cfg.ID)
	case err != nil:
		httpapi.WriteError(w, http.StatusConflict, "%v (the dead letter stays)", err)
	default:
		httpapi.WriteJSON(w, http.StatusOK, podapi.ReplayResponse{Replayed: id, GuildID: strconv.FormatUint(replayed.GuildID, 10), Type: replayed.Type})
	}
}
