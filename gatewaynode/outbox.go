package gatewaynode

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/bot"
)

// outbox delivers events that could not be delivered when they arrived: the
// owner was down or unreachable, the guild was migrating or not yet placed,
// or the map changed under us. They wait in the guild's durable held buffer
// (guildstore's held_events) and are delivered in order — processed here if
// this pod owns the guild, forwarded otherwise — once the guild is active
// and its owner reachable.
//
// While a guild has held events it is pending: its new events are appended
// behind them instead of overtaking them. hold and the pending check share a
// mutex with the delivery's "is it empty now" step, so no event can slip in
// between the last delivery and the guild leaving the pending set.
type outbox struct {
	n    *Node
	mu   sync.Mutex
	set  map[uint64]bool
	kick chan struct{}
}

func newOutbox(n *Node) *outbox {
	return &outbox{n: n, set: map[uint64]bool{}, kick: make(chan struct{}, 1)}
}

func (o *outbox) pending(g uint64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.set[g]
}

func (o *outbox) hold(ctx context.Context, g uint64, ev bot.Event) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, err := o.n.store.Hold(ctx, g, ev.Type, encodeEvent(ev)); err != nil {
		return fmt.Errorf("hold %s for guild %d: %w", ev.Type, g, err)
	}
	o.set[g] = true
	o.n.metrics.held.Inc()
	select {
	case o.kick <- struct{}{}:
	default:
	}
	return nil
}

// markPending makes the guild's live events queue behind its held ones (an
// imported guild's held events are processed first).
func (o *outbox) markPending(g uint64) {
	o.mu.Lock()
	o.set[g] = true
	o.mu.Unlock()
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

func (o *outbox) size() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.set)
}

func (o *outbox) run() {
	n := o.n
	if err := n.watch.WaitSynced(n.ctx); err != nil {
		return
	}
	if ids, err := n.store.HeldGuilds(n.ctx); err == nil {
		o.mu.Lock()
		for _, g := range ids {
			o.set[g] = true
		}
		o.mu.Unlock()
	}
	changes, cancel := n.watch.Subscribe(16)
	defer cancel()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-o.kick:
		case <-changes:
		case <-tick.C:
		}
		o.mu.Lock()
		guilds := make([]uint64, 0, len(o.set))
		for g := range o.set {
			guilds = append(guilds, g)
		}
		o.mu.Unlock()
		slices.Sort(guilds)
		for _, g := range guilds {
			if n.ctx.Err() != nil {
				return
			}
			if err := o.deliver(n.ctx, g); err != nil {
				n.log.Debug("outbox delivery deferred", "guild", g, "err", err)
			}
		}
		n.metrics.outboxGuilds.Set(float64(o.size()))
	}
}

// deliver sends one guild's held events on, in order, when it can.
func (o *outbox) deliver(ctx context.Context, g uint64) error {
	n := o.n
	gi, ok := n.watch.Lookup(g)
	if !ok {
		if err := n.placeUnknown(ctx, []bot.Event{{Type: "GUILD_CREATE", Data: []byte(fmt.Sprintf(`{"id":"%d"}`, g))}}); err != nil {
			return err
		}
		if gi, ok = n.watch.Lookup(g); !ok {
			return fmt.Errorf("guild %d is not placed yet", g)
		}
	}
	if gi.State == fsm.GuildMigrating {
		return fmt.Errorf("guild %d is migrating", g) // the move carries or releases them
	}
	held, err := n.store.Held(ctx, g)
	if err != nil {
		return err
	}
	if len(held) > 0 {
		if len(held) > 1000 {
			held = held[:1000]
		}
		evs := make([]bot.Event, 0, len(held))
		for _, h := range held {
			ev, err := decodeEvent(h.Payload)
			if err != nil {
				n.log.Error("dropping an undecodable held event", "guild", g, "seq", h.Seq, "err", err)
				continue
			}
			evs = append(evs, ev)
		}
		if gi.Owner == n.cfg.ID {
			inputs := make([]bot.Input, len(evs))
			for i, ev := range evs {
				inputs[i] = bot.Input{Event: ev, Epoch: gi.Epoch}
			}
			err = n.handleOwned(ctx, inputs)
		} else {
			err = n.forward(ctx, gi.Owner, evs)
		}
		if err != nil {
			return err
		}
		if err := n.store.DropHeld(ctx, g, held[len(held)-1].Seq); err != nil {
			return err
		}
		n.metrics.outboxDelivered.Add(float64(len(evs)))
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	rest, err := n.store.Held(ctx, g)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		delete(o.set, g)
	}
	return nil
}
