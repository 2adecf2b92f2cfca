package fsm

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Validate checks a command against the current state without changing it.
// The leader calls it before proposing so that a bad request is refused with a
// clear error and never reaches the log; Apply checks again because the state
// may have moved on between the two.
func (s *State) Validate(c Command) error {
	if c.Version > CommandVersion || c.Version < 1 {
		return reject(ErrUnsupported, "command version %d is not supported (this build knows 1..%d)", c.Version, CommandVersion)
	}
	switch c.Type {
	case CmdInit:
		if c.ShardCount < 1 || c.ShardCount > 65536 {
			return reject(ErrInvalid, "shard count must be between 1 and 65536, got %d", c.ShardCount)
		}
		if s.ShardCount != 0 && s.ShardCount != c.ShardCount {
			return reject(ErrConflict, "shard count is already %d; resharding is not supported", s.ShardCount)
		}
	case CmdRegisterPod:
		p := c.Pod
		if p == nil || p.ID == "" {
			return reject(ErrInvalid, "register pod: id is required")
		}
		if len(p.ID) > 128 || strings.ContainsAny(p.ID, " /\t\n") {
			return reject(ErrInvalid, "register pod: id %q must be at most 128 characters without spaces or slashes", p.ID)
		}
		if p.Addr == "" {
			return reject(ErrInvalid, "register pod %s: addr is required", p.ID)
		}
		if p.Ordinal < 0 {
			return reject(ErrInvalid, "register pod %s: ordinal must be >= 0", p.ID)
		}
		for _, o := range s.Pods {
			if o.ID != p.ID && o.Ordinal == p.Ordinal {
				return reject(ErrConflict, "register pod %s: ordinal %d already belongs to %s", p.ID, p.Ordinal, o.ID)
			}
		}
	case CmdPodAlive:
		if c.Version < 2 {
			return reject(ErrUnsupported, "%s needs command version 2, got %d", c.Type, c.Version)
		}
		if _, ok := s.Pods[c.PodID]; !ok {
			return reject(ErrNotFound, "unknown pod %q", c.PodID)
		}
	case CmdMarkPodDown, CmdDrainPod, CmdRemovePod:
		p, ok := s.Pods[c.PodID]
		if !ok {
			return reject(ErrNotFound, "unknown pod %q", c.PodID)
		}
		if c.Type == CmdRemovePod {
			if n := s.Guilds.Count(p.ID); n > 0 {
				return reject(ErrConflict, "pod %s still owns %d guilds; drain it first", p.ID, n)
			}
			for g := range s.Guilds.Migrations() {
				if g.Migration.To == p.ID {
					return reject(ErrConflict, "pod %s is the target of the move of guild %d", p.ID, g.ID)
				}
			}
		}
	case CmdPlaceGuilds, CmdRemoveGuilds:
		if len(c.GuildIDs) == 0 {
			return reject(ErrInvalid, "guild_ids is empty")
		}
		if len(c.GuildIDs) > maxGuildsPerCmd {
			return reject(ErrInvalid, "at most %d guilds per command, got %d", maxGuildsPerCmd, len(c.GuildIDs))
		}
		for _, id := range c.GuildIDs {
			if id == 0 {
				return reject(ErrInvalid, "guild id 0 is not a snowflake")
			}
		}
		if c.Type == CmdPlaceGuilds {
			if s.ShardCount == 0 {
				return reject(ErrConflict, "the cluster is not initialised (no shard count); bootstrap it with --shards")
			}
			for _, id := range c.GuildIDs {
				if _, ok := s.Guilds.Get(id); !ok {
					if s.placementFor(id, nil) == nil {
						return reject(ErrNoActivePods, "cannot place guild %d: no active pod", id)
					}
					break
				}
			}
		} else {
			for _, id := range c.GuildIDs {
				if g, ok := s.Guilds.Get(id); ok && g.Migration != nil {
					return reject(ErrConflict, "guild %d is migrating; abort the move first", id)
				}
			}
		}
	case CmdStartMove:
		g, ok := s.Guilds.Get(c.Guild)
		if !ok {
			return reject(ErrNotFound, "unknown guild %d", c.Guild)
		}
		to, ok := s.Pods[c.To]
		if !ok {
			return reject(ErrNotFound, "unknown pod %q", c.To)
		}
		if g.Migration != nil {
			return reject(ErrConflict, "guild %d is already migrating from %s to %s (epoch %d)", g.ID, g.Migration.From, g.Migration.To, g.Migration.Epoch)
		}
		if g.Owner == to.ID {
			return reject(ErrConflict, "guild %d is already owned by %s", g.ID, to.ID)
		}
		if to.State != PodActive {
			return reject(ErrInvalid, "cannot move guild %d to %s: the pod is %s", g.ID, to.ID, to.State)
		}
		from := s.Pods[g.Owner]
		switch {
		case c.Failover && c.Version < 3:
			return reject(ErrUnsupported, "a failover move needs command version 3, got %d", c.Version)
		case c.Failover && from != nil && from.State != PodDown:
			return reject(ErrConflict, "cannot fail guild %d over: its owner %s is %s, not down (move it instead)", g.ID, g.Owner, from.State)
		case !c.Failover && (from == nil || from.State == PodDown):
			return reject(ErrConflict, "cannot move guild %d: its owner %s is down and cannot export its data", g.ID, g.Owner)
		}
	case CmdSetMovePhase, CmdCompleteMove, CmdAbortMove:
		g, ok := s.Guilds.Get(c.Guild)
		if !ok {
			return reject(ErrNotFound, "unknown guild %d", c.Guild)
		}
		if g.Migration == nil {
			return reject(ErrConflict, "guild %d is not migrating", g.ID)
		}
		if c.Epoch != g.Migration.Epoch {
			return reject(ErrStaleEpoch, "guild %d: epoch %d is stale, the current move has epoch %d", g.ID, c.Epoch, g.Migration.Epoch)
		}
		if c.Type == CmdSetMovePhase && c.Phase == "" {
			return reject(ErrInvalid, "phase is required")
		}
	case CmdSetConfigNode:
		n := c.ConfigNode
		if n == nil || n.ID == "" || n.RaftAddr == "" || n.HTTPAddr == "" {
			return reject(ErrInvalid, "config node needs id, raft_addr and http_addr")
		}
	case CmdSaveCheckpoints:
		if len(c.Checkpoints) == 0 {
			return reject(ErrInvalid, "no checkpoints given")
		}
		if c.Version >= 2 && c.PodID == "" {
			return reject(ErrInvalid, "save checkpoints: pod is required")
		}
		for shard, cp := range c.Checkpoints {
			if shard < 0 || shard >= s.ShardCount {
				return reject(ErrInvalid, "shard %d out of range [0, %d)", shard, s.ShardCount)
			}
			if cp.SessionID == "" || cp.Seq < 0 {
				return reject(ErrInvalid, "shard %d: checkpoint needs a session id and a seq >= 0", shard)
			}
			// Fencing: only the current holder at the current holder epoch
			// may move a shard's resume point, so a pod that lost the shard
			// — even one that got it back since, with a session of the old
			// tenure — cannot overwrite its successor's.
			if s.Shards[shard] != c.PodID {
				return reject(ErrStaleEpoch, "pod %q does not hold shard %d (holder %q at epoch %d)", c.PodID, shard, s.Shards[shard], s.ShardEpochs[shard])
			}
			if c.Version >= 2 && cp.Epoch != s.ShardEpochs[shard] {
				return reject(ErrStaleEpoch, "shard %d: holder epoch %d is stale, %s holds it at epoch %d", shard, cp.Epoch, c.PodID, s.ShardEpochs[shard])
			}
		}
	case CmdRemoveConfigNode:
		if _, ok := s.ConfigNodes[c.PodID]; !ok {
			return reject(ErrNotFound, "unknown config node %q", c.PodID)
		}
	default:
		return reject(ErrInvalid, "unknown command type %q", c.Type)
	}
	return nil
}

// Apply validates and applies one command at Raft index. It returns the
// events the change produced (none for a no-op), or the rejection. It never
// panics on bad input: a corrupt entry is rejected, not fatal.
func (s *State) Apply(index uint64, c Command) ([]Event, error) {
	if err := s.Validate(c); err != nil {
		return nil, err
	}
	a := applier{s: s, index: index, cmd: c}
	switch c.Type {
	case CmdInit:
		if s.ShardCount == 0 {
			s.ShardCount = c.ShardCount
			s.Shards = make([]string, c.ShardCount)
			s.ShardEpochs = make([]uint64, c.ShardCount)
			a.emit(Event{Type: EventInit, ShardCount: c.ShardCount})
			a.rebalanceShards()
		}
	case CmdSetConfigNode:
		if s.ConfigNodes[c.ConfigNode.ID] != *c.ConfigNode {
			s.ConfigNodes[c.ConfigNode.ID] = *c.ConfigNode
			n := *c.ConfigNode
			a.emit(Event{Type: EventConfigNode, ConfigNode: &n})
		}
	case CmdSaveCheckpoints:
		shards := make([]int, 0, len(c.Checkpoints))
		for shard := range c.Checkpoints {
			shards = append(shards, shard)
		}
		slices.Sort(shards)
		for _, shard := range shards {
			cp := c.Checkpoints[shard]
			cp.Holder, cp.At, cp.Epoch = c.PodID, c.At, s.ShardEpochs[shard]
			prev, had := s.Checkpoints[shard]
			s.Checkpoints[shard] = cp
			// The first checkpoint of a session in a tenure is news: it says
			// the holder's session is up and committing (a shard's old
			// holder hands over on it). Later seqs of the same session are
			// bookkeeping and emit nothing.
			if c.Version >= 2 && (!had || prev.SessionID != cp.SessionID || prev.Holder != cp.Holder || prev.Epoch != cp.Epoch) {
				saved := cp
				a.emit(Event{Type: EventShard, Shard: &ShardAssignment{Shard: shard, Holder: s.Shards[shard], Epoch: s.ShardEpochs[shard], Checkpoint: &saved}})
			}
		}
	case CmdRemoveConfigNode:
		n := s.ConfigNodes[c.PodID]
		delete(s.ConfigNodes, c.PodID)
		a.emit(Event{Type: EventConfigNodeRemove, ConfigNode: &n})
	case CmdRegisterPod:
		a.registerPod(*c.Pod)
	case CmdMarkPodDown:
		p := s.Pods[c.PodID]
		if p.State != PodDown && c.Version >= 2 {
			// Remember the operator's drain while the pod is away.
			p.Drain = p.State == PodDraining
		}
		a.setPodState(c.PodID, PodDown)
	case CmdPodAlive:
		// A pod that was marked down is back: it returns to what it was,
		// draining when it was draining. A pod that is not down is unchanged.
		if p := s.Pods[c.PodID]; p.State == PodDown {
			st := PodActive
			if p.Drain {
				st = PodDraining
			}
			p.Drain = false
			a.setPodState(c.PodID, st)
		}
	case CmdDrainPod:
		s.Pods[c.PodID].Drain = false // set only while down; draining now
		a.setPodState(c.PodID, PodDraining)
	case CmdRemovePod:
		p := s.Pods[c.PodID]
		delete(s.Pods, c.PodID)
		a.emit(Event{Type: EventPodRemove, Pod: p})
		a.rebalanceShards()
	case CmdPlaceGuilds:
		// Decided one by one in the command's order (a pod's count grows
		// with each guild it gets), stored in one SetMany.
		placed := make([]Guild, 0, len(c.GuildIDs))
		seen := make(map[uint64]struct{}, len(c.GuildIDs)) // a command may repeat an id
		added := map[string]int{}                          // guilds this command gave each pod
		for _, id := range c.GuildIDs {
			if _, ok := s.Guilds.Get(id); ok {
				continue // placing is idempotent
			}
			if _, ok := seen[id]; ok {
				continue
			}
			seen[id] = struct{}{}
			p := s.placementFor(id, added)
			added[p.ID]++
			placed = append(placed, Guild{ID: id, Owner: p.ID, State: GuildActive, Epoch: index, Revision: index})
		}
		s.Guilds.SetMany(placed)
		a.events = slices.Grow(a.events, len(placed))
		for i := range placed {
			a.emit(Event{Type: EventGuild, Guild: &placed[i]})
		}
	case CmdRemoveGuilds:
		for _, id := range c.GuildIDs {
			gone, ok := s.Guilds.Get(id)
			if !ok {
				continue
			}
			s.Guilds.Delete(id)
			gone.Revision = index
			a.emit(Event{Type: EventGuildGone, Guild: &gone})
		}
	case CmdStartMove:
		g, _ := s.Guilds.Get(c.Guild)
		g.Epoch = index
		g.State = GuildMigrating
		g.Migration = &Migration{From: g.Owner, To: c.To, Epoch: g.Epoch, Phase: "started", StartedAt: c.At}
		if c.Failover {
			g.Migration.Failover, g.Migration.LossWindowMs = true, c.LossWindowMs
		}
		a.setGuild(g)
	case CmdSetMovePhase:
		g, _ := s.Guilds.Get(c.Guild)
		if g.Migration.Phase != c.Phase {
			m := *g.Migration // the table keeps the pointer it was given: never change it in place
			m.Phase = c.Phase
			g.Migration = &m
			a.setGuild(g)
		}
	case CmdCompleteMove:
		g, _ := s.Guilds.Get(c.Guild)
		g.Owner = g.Migration.To
		g.State = GuildActive
		g.Migration = nil
		a.setGuild(g)
	case CmdAbortMove:
		g, _ := s.Guilds.Get(c.Guild)
		// The epoch grows again so that a target which already imported the
		// guild at the move's epoch is fenced off as well.
		g.Epoch = index
		g.State = GuildActive
		g.Migration = nil
		a.reason = c.Reason
		a.setGuild(g)
	}
	if len(a.events) > 0 {
		s.Revision = index
	}
	return a.events, nil
}

type applier struct {
	s      *State
	index  uint64
	cmd    Command
	events []Event
	reason string
}

func (a *applier) emit(e Event) {
	e.Revision = a.index
	e.At = a.cmd.At
	e.Cause = a.cmd.Type
	if e.Reason == "" {
		e.Reason = a.reason
	}
	a.events = append(a.events, e)
}

// setGuild stores a guild's new value at this revision and emits it. The
// event gets its own copy of the Migration, so nothing a subscriber does
// with it reaches the table.
func (a *applier) setGuild(g Guild) {
	g.Revision = a.index
	a.s.Guilds.Set(g)
	if g.Migration != nil {
		m := *g.Migration
		g.Migration = &m
	}
	a.emit(Event{Type: EventGuild, Guild: &g})
}

func (a *applier) podChanged(p *Pod) {
	cp := *p
	a.emit(Event{Type: EventPod, Pod: &cp})
}

func (a *applier) registerPod(spec PodSpec) {
	s := a.s
	p, ok := s.Pods[spec.ID]
	if ok && p.Addr == spec.Addr && p.Ordinal == spec.Ordinal && p.State == PodActive {
		return // re-registering an active pod is a no-op
	}
	if !ok {
		p = &Pod{ID: spec.ID}
		s.Pods[spec.ID] = p
	}
	p.Ordinal, p.Addr, p.Drain = spec.Ordinal, spec.Addr, false
	if p.State != PodActive {
		p.State, p.Since = PodActive, a.cmd.At
	}
	a.podChanged(p)
	a.rebalanceShards()
}

func (a *applier) setPodState(id string, st PodState) {
	p := a.s.Pods[id]
	if p.State == st {
		return
	}
	p.State, p.Since = st, a.cmd.At
	a.podChanged(p)
	a.rebalanceShards()
}

// rebalanceShards gives every active pod an even share of the shards while
// moving as few shards as possible: shards of inactive pods are freed, pods
// over their quota give up their highest shards, and free shards go, lowest
// first, to pods under quota in (ordinal, id) order. Pods that already hold
// more shards get the larger quotas, which avoids needless moves.
func (a *applier) rebalanceShards() {
	s := a.s
	if s.ShardCount == 0 {
		return
	}
	active := s.activePods()
	held := map[string][]int{}
	var free []int
	for i, h := range s.Shards {
		if p := s.Pods[h]; h != "" && p != nil && p.State == PodActive {
			held[h] = append(held[h], i)
		} else {
			free = append(free, i)
		}
	}
	if len(active) == 0 {
		for _, i := range free {
			a.setHolder(i, "")
		}
		return
	}
	byLoad := append([]*Pod(nil), active...)
	// Stable: ties keep (ordinal, id) order.
	sort.SliceStable(byLoad, func(i, j int) bool { return len(held[byLoad[i].ID]) > len(held[byLoad[j].ID]) })
	base, extra := s.ShardCount/len(active), s.ShardCount%len(active)
	quota := map[string]int{}
	for i, p := range byLoad {
		quota[p.ID] = base
		if i < extra {
			quota[p.ID]++
		}
	}
	for _, p := range active {
		h := held[p.ID]
		for len(h) > quota[p.ID] {
			free = append(free, h[len(h)-1])
			h = h[:len(h)-1]
		}
		held[p.ID] = h
	}
	slices.Sort(free)
	next := 0
	for _, p := range active {
		for len(held[p.ID]) < quota[p.ID] && next < len(free) {
			held[p.ID] = append(held[p.ID], free[next])
			a.setHolder(free[next], p.ID)
			next++
		}
	}
	for ; next < len(free); next++ {
		a.setHolder(free[next], "")
	}
}

// setHolder gives a shard to pod (or to nobody). Every change of holder is a
// new tenure with a new holder epoch, the entry's Raft index, so that a pod
// that lost the shard — or lost it and got it back — is fenced off from its
// old tenure. (Version-1 entries keep the epoch, as they did when written.)
func (a *applier) setHolder(shard int, pod string) {
	if a.s.Shards[shard] == pod {
		return
	}
	a.s.Shards[shard] = pod
	if a.cmd.Version >= 2 {
		a.s.ShardEpochs[shard] = a.index
	}
	a.emit(Event{Type: EventShard, Shard: &ShardAssignment{Shard: shard, Holder: pod, Epoch: a.s.ShardEpochs[shard]}})
}

// String describes a command for logs.
func (c Command) String() string {
	switch c.Type {
	case CmdPlaceGuilds, CmdRemoveGuilds:
		return fmt.Sprintf("%s(%d guilds)", c.Type, len(c.GuildIDs))
	case CmdStartMove:
		return fmt.Sprintf("%s(guild %d → %s)", c.Type, c.Guild, c.To)
	case CmdRegisterPod:
		if c.Pod != nil {
			return fmt.Sprintf("%s(%s %s)", c.Type, c.Pod.ID, c.Pod.Addr)
		}
	}
	return string(c.Type)
}
