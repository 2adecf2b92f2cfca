package fsm

import "sort"

// EventType names one kind of change in the change stream.
type EventType string

const (
	EventInit             EventType = "init"       // shard count set
	EventPod              EventType = "pod"        // a pod registered or changed state; Pod is its new value
	EventPodRemove        EventType = "pod_remove" // a pod was removed; Pod is its last value
	EventShard            EventType = "shard"      // a shard changed holder
	EventGuild            EventType = "guild"      // a guild was placed, started/finished/aborted a move or changed phase
	EventGuildGone        EventType = "guild_remove"
	EventConfigNode       EventType = "config_node"
	EventConfigNodeRemove EventType = "config_node_remove"
)

// Event is one change, as the watch stream carries it. Every event carries the
// entity's whole new value, so a subscriber applies it by upsert.
type Event struct {
	Revision   uint64           `json:"revision"`
	Type       EventType        `json:"type"`
	At         int64            `json:"at"`
	Cause      CommandType      `json:"cause"`
	ShardCount int              `json:"shard_count,omitempty"`
	Pod        *Pod             `json:"pod,omitempty"`
	Shard      *ShardAssignment `json:"shard,omitempty"`
	Guild      *Guild           `json:"guild,omitempty"`
	Reason     string           `json:"reason,omitempty"`
	ConfigNode *ConfigNode      `json:"config_node,omitempty"`
}

// State is the whole replicated map. It is not safe for concurrent use: the
// Raft adapter serialises Apply and guards reads.
type State struct {
	Revision   uint64
	ShardCount int
	Pods       map[string]*Pod
	Shards     []string // index = shard id, value = holder pod id or ""
	// ShardEpochs parallels Shards: the holder epoch of each shard, the Raft
	// index of the entry that last changed its holder (0: never changed by a
	// version-2 command).
	ShardEpochs []uint64
	// Guilds holds every guild's placement. Only Apply and Restore change
	// it; readers share it under the adapter's read lock.
	Guilds      *GuildTable
	ConfigNodes map[string]ConfigNode
	// Checkpoints are the shards' resume points. They are bookkeeping, not
	// part of the map: a later seq of a session emits no event and leaves the
	// revision; the first checkpoint of a session in a tenure emits EventShard.
	Checkpoints map[int]Checkpoint
}

// New returns an empty state.
func New() *State {
	return &State{Pods: map[string]*Pod{}, Guilds: NewGuildTable(), ConfigNodes: map[string]ConfigNode{}, Checkpoints: map[int]Checkpoint{}}
}

// GuildCount returns how many guilds a pod owns.
func (s *State) GuildCount(pod string) int { return s.Guilds.Count(pod) }

// Migrating returns how many guilds are being moved.
func (s *State) Migrating() int { return s.Guilds.Migrating() }

// SortedPods returns the pods ordered by ordinal, then id.
func (s *State) SortedPods() []*Pod {
	pods := make([]*Pod, 0, len(s.Pods))
	for _, p := range s.Pods {
		pods = append(pods, p)
	}
	sort.Slice(pods, func(i, j int) bool { return podLess(pods[i], pods[j]) })
	return pods
}

func podLess(a, b *Pod) bool {
	if a.Ordinal != b.Ordinal {
		return a.Ordinal < b.Ordinal
	}
	return a.ID < b.ID
}

// ResolvePod accepts a pod id ("gateway-1") or an ordinal ("1").
func (s *State) ResolvePod(ref string) (*Pod, bool) {
	if p, ok := s.Pods[ref]; ok {
		return p, true
	}
	for _, p := range s.Pods {
		if itoa(p.Ordinal) == ref {
			return p, true
		}
	}
	return nil, false
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	neg := n < 0
	if neg {
		n = -n
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}

// HolderOf returns the pod that holds a guild's shard ("" if none).
func (s *State) HolderOf(guildID uint64) string {
	if s.ShardCount == 0 {
		return ""
	}
	return s.Shards[ShardOf(guildID, s.ShardCount)]
}

// Shard returns one shard's assignment: holder, holder epoch and a copy of
// its checkpoint. It panics if shard is out of range.
func (s *State) Shard(shard int) ShardAssignment {
	a := ShardAssignment{Shard: shard, Holder: s.Shards[shard], Epoch: s.ShardEpochs[shard]}
	if cp, ok := s.Checkpoints[shard]; ok {
		a.Checkpoint = &cp
	}
	return a
}

// HoldsShard reports whether pod is the shard's holder at the given holder
// epoch: the test every fenced shard operation (checkpoints, identify slots)
// passes.
func (s *State) HoldsShard(pod string, shard int, epoch uint64) bool {
	return pod != "" && shard >= 0 && shard < len(s.Shards) && s.Shards[shard] == pod && s.ShardEpochs[shard] == epoch
}

// ShardsHeldBy lists the shards a pod holds, ascending.
func (s *State) ShardsHeldBy(pod string) []int {
	var out []int
	for i, h := range s.Shards {
		if h == pod {
			out = append(out, i)
		}
	}
	return out
}

// activePods returns the active pods in (ordinal, id) order.
func (s *State) activePods() []*Pod {
	var out []*Pod
	for _, p := range s.Pods {
		if p.State == PodActive {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return podLess(out[i], out[j]) })
	return out
}

// leastLoaded returns the active pod owning the fewest guilds, counting
// added[pod] more for each pod (ties: lowest ordinal), or nil when no pod
// is active.
func (s *State) leastLoaded(added map[string]int) *Pod {
	var best *Pod
	bestN := 0
	for _, p := range s.activePods() {
		if n := s.Guilds.Count(p.ID) + added[p.ID]; best == nil || n < bestN {
			best, bestN = p, n
		}
	}
	return best
}

// placementFor decides where a new guild goes: its shard's holder when that
// pod is active, otherwise the least-loaded active pod, counting added[pod]
// guilds more for each pod (those the command being applied gave it).
func (s *State) placementFor(guildID uint64, added map[string]int) *Pod {
	if h := s.HolderOf(guildID); h != "" {
		if p := s.Pods[h]; p != nil && p.State == PodActive {
			return p
		}
	}
	return s.leastLoaded(added)
}
