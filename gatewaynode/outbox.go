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
// owner was down or unreachable or refused them, the guild was migrating or
// not yet placed, or the map changed under us. They wait in the guild's
// durable held buffer (guildstore's held_events) on this pod — the pod that
// received them from Discord — and are delivered in order, processed here if
// this pod owns the guild, forwarded otherwise, once the guild is active and
// its owner takes them.
//
// While a guild has held events it is pending: its new events are appended
// behind them instead of overtaking them. hold and the pending check share a
// mutex with the delivery's "is it empty now" step, so no event can slip in
// between the last delivery and the guild leaving the pending set. One
// delivery runs at a time (deliverMu), so no held event is delivered twice
// by two concurrent deliveries.
type outbox struct {
	n         *Node
	mu        sync.Mutex
	set       map[uint64]bool
	kick      chan struct{}
	deliverMu sync.Mutex
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

// outboxPage is how many held events one delivery step reads and sends.
const outboxPage = 500

// deliver sends one guild's held events on, in order, a page at a time,
// until the buffer is empty or the owner cannot take more now. A page is
// dropped from the buffer only up to the last event the owner committed.
func (o *outbox) deliver(ctx context.Context, g uint64) error {
	o.deliverMu.Lock()
	defer o.deliverMu.Unlock()
	n := o.n
	for {
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
			return fmt.Errorf("guild %d is migrating", g) // delivered to whoever owns it when the move settles
		}
		if gi.Owner != n.cfg.ID {
			if p, ok := n.watch.Pod(gi.Owner); !ok || p.State == fsm.PodDown {
				return fmt.Errorf("owner %s of guild %d is down or unknown", gi.Owner, g)
			}
		}
		held, err := n.store.HeldPage(ctx, g, 0, outboxPage)
		if err != nil {
			return err
		}
		if len(held) == 0 {
			break
		}
		evs := make([]bot.Event, 0, len(held))
		seqs := make([]int64, 0, len(held))
		for _, h := range held {
			ev, err := decodeEvent(h.Payload)
			if err != nil {
				// Not an event any handler could take: keep it for an
				// operator instead of dropping it.
				if derr := n.deadLetter(ctx, g, bot.Event{Type: h.Type, Data: h.Payload}, fmt.Errorf("undecodable held event %d: %w", h.Seq, err), 0); derr != nil {
					return derr
				}
				if derr := n.store.DropHeld(ctx, g, h.Seq); derr != nil {
					return derr
				}
				continue
			}
			evs = append(evs, ev)
			seqs = append(seqs, h.Seq)
		}
		if len(evs) == 0 {
			continue
		}
		var refused []int
		if gi.Owner == n.cfg.ID {
			inputs := make([]bot.Input, len(evs))
			for i, ev := range evs {
				inputs[i] = bot.Input{Event: ev, Epoch: gi.Epoch}
			}
			refused, err = n.handleOwned(ctx, inputs)
		} else {
			refused, err = n.forwardTo(ctx, gi.Owner, evs)
		}
		if err != nil {
			return err
		}
		done := len(evs)
		if len(refused) > 0 {
			done = refused[0]
		}
		if done > 0 {
			if err := n.store.DropHeld(ctx, g, seqs[done-1]); err != nil {
				return err
			}
			n.metrics.outboxDelivered.Add(float64(done))
		}
		if len(refused) > 0 {
			return fmt.Errorf("%d held events of guild %d refused by %s (map revision %d)", len(evs)-done, g, gi.Owner, n.watch.Revision())
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	left, err := n.store.HeldPage(ctx, g, 0, 1)
	if err != nil {
		return err
	}
	if len(left) == 0 {
		delete(o.set, g)
	}
	return nil
}

// pendingInShard counts the pending guilds of one shard.
func (o *outbox) pendingInShard(shard, shardCount int) int {
	if shardCount == 0 {
		return 0
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	k := 0
	for g := range o.set {
		if fsm.ShardOf(g, shardCount) == shard {
			k++
		}
	}
	return k
}
