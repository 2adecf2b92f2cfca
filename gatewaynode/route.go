package gatewaynode

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/bot"
	"github.com/modbot/modbot/gatewaynode/guildstore"
)

// errNotOwner answers a forwarded event or request for a guild this pod does
// not own (per its map).
var errNotOwner = errors.New("not the owner")

// route delivers a shard batch: placing unknown guilds, processing this pod's
// guilds, forwarding the others' to their owners, and writing whatever cannot
// be delivered now to the durable outbox. It returns nil only when every
// event is committed somewhere durable.
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
		if n.outbox.pending(g) {
			if err := n.outbox.hold(ctx, g, ev); err != nil {
				return err
			}
			continue
		}
		gi, ok := n.watch.Lookup(g)
		if !ok {
			// Placement failed (no active pod): keep it until it succeeds.
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
			evs := remote[pod]
			if err := n.forward(ctx, pod, evs); err != nil {
				n.metrics.forwardErrors.Inc()
				n.log.Warn("forward failed; keeping the events in the outbox", "owner", pod, "events", len(evs), "err", err)
				for _, ev := range evs {
					g, _ := bot.GuildOf(ev)
					if herr := n.outbox.hold(ctx, g, ev); herr != nil {
						errs[i] = herr
						return
					}
				}
			}
		}()
	}
	var lerr error
	if len(local) > 0 {
		lerr = n.processLocal(ctx, local)
	}
	wg.Wait()
	return errors.Join(append(errs, lerr)...)
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

// processLocal handles events routed to this pod as the owner. An event
// whose guild is migrating, has older events still held, or is no longer
// ours (the map moved on since routing) goes to the durable buffer, to be
// delivered in order later; the rest are handled at once.
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
	return n.handleOwned(ctx, inputs)
}

// handleOwned runs events of owned, active guilds through the bot in one
// group commit, then performs their REST effects.
func (n *Node) handleOwned(ctx context.Context, inputs []bot.Input) error {
	if len(inputs) == 0 {
		return nil
	}
	start := time.Now()
	results, err := n.bot.HandleBatch(ctx, inputs)
	if err != nil {
		return err
	}
	n.metrics.processDuration.Observe(time.Since(start).Seconds())
	if n.cfg.OnCommit != nil {
		evs := make([]bot.Event, len(inputs))
		for i, in := range inputs {
			evs[i] = in.Event
		}
		n.cfg.OnCommit(evs)
	}
	for i, r := range results {
		n.metrics.events.WithLabelValues(inputs[i].Event.Type, outcome(r)).Inc()
		if errors.Is(r.Err, guildstore.ErrStaleEpoch) {
			// The guild was fenced for a move after we routed the event: it
			// must not be lost, so it waits in the durable buffer and goes to
			// whoever owns the guild when the move settles.
			g, _ := bot.GuildOf(inputs[i].Event)
			if err := n.outbox.hold(ctx, g, inputs[i].Event); err != nil {
				return err
			}
			continue
		}
		if r.Err != nil {
			n.log.Warn("event failed", "type", inputs[i].Event.Type, "guild", r.GuildID, "err", r.Err)
			continue
		}
		n.performEffects(ctx, inputs[i], r)
	}
	return nil
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

// wireEvent is how events travel between pods and sit in the outbox.
type wireEvent struct {
	Type       string          `json:"t"`
	Data       json.RawMessage `json:"d"`
	DeliveryID string          `json:"delivery_id,omitempty"`
}

func encodeEvent(ev bot.Event) []byte {
	b, _ := json.Marshal(wireEvent{Type: ev.Type, Data: ev.Data, DeliveryID: ev.DeliveryID})
	return b
}

func decodeEvent(b []byte) (bot.Event, error) {
	var w wireEvent
	if err := json.Unmarshal(b, &w); err != nil {
		return bot.Event{}, err
	}
	return bot.WithGuild(bot.Event{Type: w.Type, Data: w.Data, DeliveryID: w.DeliveryID}), nil
}

// forwardRequest is POST /internal/events.
type forwardRequest struct {
	Events []wireEvent `json:"events"`
}

// forward sends events to their owner, which commits them before answering.
func (n *Node) forward(ctx context.Context, pod string, evs []bot.Event) error {
	p, ok := n.watch.Pod(pod)
	if !ok {
		return fmt.Errorf("owner %s is not in the map", pod)
	}
	if p.State == fsm.PodDown {
		return fmt.Errorf("owner %s is down", pod)
	}
	req := forwardRequest{Events: make([]wireEvent, len(evs))}
	for i, ev := range evs {
		req.Events[i] = wireEvent{Type: ev.Type, Data: ev.Data, DeliveryID: ev.DeliveryID}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, n.cfg.ForwardTimeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(fctx, http.MethodPost, "http://"+p.Addr+"/internal/events", bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Authorization", "Bearer "+n.cfg.Token)
	hr.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := n.peers.Do(hr)
	if err != nil {
		return fmt.Errorf("forward %d events to %s at %s: %w", len(evs), pod, p.Addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("forward %d events to %s: %d %s", len(evs), pod, resp.StatusCode, e.Error)
	}
	n.metrics.forwardDuration.Observe(time.Since(start).Seconds())
	n.metrics.forwarded.Add(float64(len(evs)))
	return nil
}
