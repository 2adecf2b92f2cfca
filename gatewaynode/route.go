package gatewaynode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/bot"
	"github.com/modbot/modbot/gatewaynode/guildstore"
	"github.com/modbot/modbot/internal/podapi"
)

// errNotOwner answers a forwarded event or request for a guild this pod does
// not own (per its map).
var errNotOwner = errors.New("not the owner")

// route delivers a shard batch: placing unknown guilds, processing this pod's
// guilds, forwarding the others' to their owners, and writing whatever cannot
// be delivered now to this pod's durable outbox. It returns nil only when
// every event is committed somewhere durable (ack after commit).
//
// Held events stay on the pod that received them from Discord: a guild that
// is migrating (in this pod's map) is not forwarded to its source but held
// here, and delivered — in order, before anything newer — to whoever owns
// the guild once the move settles. An owner never buffers forwarded events
// for someone else; it refuses what it cannot process now, and the refused
// events are held here.
func (n *Node) route(ctx context.Context, evs []bot.Event) error {
	if err := n.placeUnknown(ctx, evs); err != nil {
		return err
	}
	var local []bot.Event
	remote := map[string][]bot.Event{}
	var order []string
	for _, ev := range evs {
		g, ok := bot.GuildOf(ev)
		if !ok || ev.Type == "GUILD_CREATE" || ev.Type == "READY" || ev.Type == "RESUMED" {
			continue
		}
		gi, known := n.watch.Lookup(g)
		if n.outbox.pending(g) || !known || gi.State == fsm.GuildMigrating {
			// Older events wait in the outbox, placement failed (no active
			// pod), or the guild moves: keep it here, behind the older ones.
			if err := n.outbox.hold(ctx, g, ev); err != nil {
				return err
			}
			continue
		}
		if gi.Owner == n.cfg.ID {
			local = append(local, ev)
			continue
		}
		if _, ok := remote[gi.Owner]; !ok {
			order = append(order, gi.Owner)
		}
		remote[gi.Owner] = append(remote[gi.Owner], ev)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(order))
	for i, pod := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.forwardOrHold(ctx, pod, remote[pod])
		}()
	}
	var lerr error
	if len(local) > 0 {
		lerr = n.processLocal(ctx, local)
	}
	wg.Wait()
	return errors.Join(append(errs, lerr)...)
}

// forwardOrHold forwards one owner's share of a batch and holds, in order,
// whatever the owner refused or could not be reached for.
func (n *Node) forwardOrHold(ctx context.Context, pod string, evs []bot.Event) error {
	refused, err := n.forwardTo(ctx, pod, evs)
	if err != nil {
		n.metrics.forwardErrors.Inc()
		n.log.Warn("forward failed; keeping the events in the outbox", "owner", pod, "events", len(evs), "err", err)
		refused = allIndexes(len(evs))
	}
	for _, i := range refused {
		g, _ := bot.GuildOf(evs[i])
		if err := n.outbox.hold(ctx, g, evs[i]); err != nil {
			return err
		}
	}
	return nil
}

func allIndexes(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// forwardTo resolves the owner in the map and forwards to it.
func (n *Node) forwardTo(ctx context.Context, pod string, evs []bot.Event) ([]int, error) {
	p, ok := n.watch.Pod(pod)
	if !ok {
		return nil, fmt.Errorf("owner %s is not in the map", pod)
	}
	if p.State == fsm.PodDown {
		return nil, fmt.Errorf("owner %s is down", pod)
	}
	start := time.Now()
	refused, err := n.peers.Forward(ctx, p, evs)
	if err != nil {
		return nil, err
	}
	n.metrics.forwardDuration.Observe(time.Since(start).Seconds())
	n.metrics.forwarded.Add(float64(len(evs) - len(refused)))
	n.metrics.forwardRefused.Add(float64(len(refused)))
	return refused, nil
}

// placeUnknown asks the control plane to place guilds the map does not know
// (a GUILD_CREATE for a guild the bot just joined, or any event before it).
func (n *Node) placeUnknown(ctx context.Context, evs []bot.Event) error {
	var ids []string
	seen := map[uint64]bool{}
	for _, ev := range evs {
		g, ok := bot.GuildOf(ev)
		if !ok || seen[g] {
			continue
		}
		seen[g] = true
		if _, ok := n.watch.Lookup(g); !ok {
			ids = append(ids, strconv.FormatUint(g, 10))
		}
	}
	if len(ids) == 0 {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := n.client.PlaceGuilds(pctx, ids)
	if err != nil {
		n.log.Warn("place new guilds", "guilds", len(ids), "err", err)
		return nil // their events go to the outbox until placement works
	}
	n.metrics.placed.Add(float64(len(ids)))
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := n.watch.WaitRevision(wctx, res.Revision); err != nil {
		return fmt.Errorf("wait for placement at revision %d: %w", res.Revision, err)
	}
	return nil
}

// processLocal handles events this pod received from Discord for guilds it
// owns. An event whose guild is migrating, has older events still held here,
// or is no longer ours (the map moved on since routing) goes to the outbox,
// to be delivered in order later; the rest are handled at once. An event the
// store refuses as fenced is held too (and so is every later event of its
// guild: the outbox makes it pending).
func (n *Node) processLocal(ctx context.Context, evs []bot.Event) error {
	inputs := make([]bot.Input, 0, len(evs))
	for _, ev := range evs {
		g, _ := bot.GuildOf(ev)
		gi, ok := n.watch.Lookup(g)
		if !ok || gi.Owner != n.cfg.ID || gi.State == fsm.GuildMigrating || n.outbox.pending(g) {
			if err := n.outbox.hold(ctx, g, ev); err != nil {
				return err
			}
			continue
		}
		inputs = append(inputs, bot.Input{Event: ev, Epoch: gi.Epoch})
	}
	stale, err := n.handleOwned(ctx, inputs)
	if err != nil {
		return err
	}
	for _, i := range stale {
		g, _ := bot.GuildOf(inputs[i].Event)
		if err := n.outbox.hold(ctx, g, inputs[i].Event); err != nil {
			return err
		}
	}
	return nil
}

// acceptForwarded handles events a shard holder forwarded, as their owner.
// It processes what it can now and returns, in order, the indexes of the
// events it refuses: guilds it does not own at its map's epoch, migrating
// guilds, guilds with older events held here, and events the store fenced.
// Once one event of a guild is refused, every later one of that guild in
// the batch is refused too, so the holder keeps the guild's order.
func (n *Node) acceptForwarded(ctx context.Context, evs []bot.Event) ([]int, error) {
	var refused []int
	refusedGuild := map[uint64]bool{}
	inputs := make([]bot.Input, 0, len(evs))
	at := make([]int, 0, len(evs)) // index in evs of each input
	for i, ev := range evs {
		g, _ := bot.GuildOf(ev)
		gi, ok := n.watch.Lookup(g)
		if refusedGuild[g] || !ok || gi.Owner != n.cfg.ID || gi.State == fsm.GuildMigrating || n.outbox.pending(g) {
			refusedGuild[g] = true
			refused = append(refused, i)
			continue
		}
		inputs = append(inputs, bot.Input{Event: ev, Epoch: gi.Epoch})
		at = append(at, i)
	}
	stale, err := n.handleOwned(ctx, inputs)
	if err != nil {
		return nil, err
	}
	for _, j := range stale {
		refused = append(refused, at[j])
	}
	slices.Sort(refused)
	return refused, nil
}

// handleOwned runs events of owned, active guilds through the bot in one
// group commit, then performs their REST effects. It returns the indexes of
// the inputs the store refused as fenced (the guild was fenced for a move
// after routing): the caller keeps them — they must not be lost, and every
// later event of their guild in the batch is among them.
func (n *Node) handleOwned(ctx context.Context, inputs []bot.Input) (stale []int, err error) {
	if len(inputs) == 0 {
		return nil, nil
	}
	start := time.Now()
	results, err := n.bot.HandleBatch(ctx, inputs)
	if err != nil {
		return nil, err
	}
	n.metrics.processDuration.Observe(time.Since(start).Seconds())
	committed := make([]bot.Event, 0, len(inputs))
	for i, r := range results {
		if errors.Is(r.Err, guildstore.ErrStaleEpoch) {
			stale = append(stale, i)
			n.metrics.events.WithLabelValues(inputs[i].Event.Type, "fenced").Inc()
			continue
		}
		if r.Err != nil {
			if r, err = n.retryOrDeadLetter(ctx, inputs[i], r); err != nil {
				return nil, err // not dead-lettered: the batch is not acknowledged
			}
			if errors.Is(r.Err, guildstore.ErrStaleEpoch) {
				stale = append(stale, i)
				continue
			}
		}
		n.metrics.events.WithLabelValues(inputs[i].Event.Type, outcome(r)).Inc()
		if r.Err == nil {
			committed = append(committed, inputs[i].Event)
			n.performEffects(ctx, inputs[i], r)
		}
	}
	if n.cfg.OnCommit != nil && len(committed) > 0 {
		n.cfg.OnCommit(committed)
	}
	return stale, nil
}

func outcome(r bot.Result) string {
	switch {
	case r.Err != nil:
		return "error"
	case r.Ignored:
		return "ignored"
	case r.Duplicate:
		return "duplicate"
	}
	return "applied"
}

// toWire and fromWire convert events to and from how they travel between
// pods and sit in the outbox (podapi.Event). ReceivedAt travels along:
// handlers judge time-dependent effects by when the holder read the event
// from Discord, not by when a held or forwarded event is finally handled.
func toWire(ev bot.Event) podapi.Event {
	w := podapi.Event{Type: ev.Type, Data: ev.Data, DeliveryID: ev.DeliveryID}
	if !ev.ReceivedAt.IsZero() {
		w.ReceivedAt = ev.ReceivedAt.UnixMilli()
	}
	return w
}

func fromWire(w podapi.Event) bot.Event {
	ev := bot.Event{Type: w.Type, Data: w.Data, DeliveryID: w.DeliveryID}
	if w.ReceivedAt != 0 {
		ev.ReceivedAt = time.UnixMilli(w.ReceivedAt)
	}
	return bot.WithGuild(ev)
}

func encodeEvent(ev bot.Event) []byte {
	b, _ := json.Marshal(toWire(ev))
	return b
}

func decodeEvent(b []byte) (bot.Event, error) {
	var w podapi.Event
	if err := json.Unmarshal(b, &w); err != nil {
		return bot.Event{}, err
	}
	return fromWire(w), nil
}

// httpPeers is the production peerLink: the pods' internal API.
type httpPeers struct {
	api     podapi.Client
	timeout time.Duration
}

func (h httpPeers) Forward(ctx context.Context, p fsm.Pod, evs []bot.Event) ([]int, error) {
	wire := make([]podapi.Event, len(evs))
	for i, ev := range evs {
		wire[i] = toWire(ev)
	}
	fctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	res, err := h.api.Forward(fctx, p.Addr, wire)
	if err != nil {
		return nil, fmt.Errorf("forward %d events to %s: %w", len(evs), p.ID, err)
	}
	return res.Refused, nil
}

func (h httpPeers) Released(ctx context.Context, p fsm.Pod, shard int, wait time.Duration) (podapi.ReleasedResponse, error) {
	rctx, cancel := context.WithTimeout(ctx, wait+h.timeout)
	defer cancel()
	res, err := h.api.Released(rctx, p.Addr, shard, wait)
	if err != nil {
		return res, fmt.Errorf("ask %s whether it released shard %d: %w", p.ID, shard, err)
	}
	return res, nil
}
