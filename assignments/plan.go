package assignments

import (
	"slices"
	"sort"

	"github.com/modbot/modbot/fsm"
)

// Move is one planned guild move.
type Move struct {
	Guild uint64 `json:"guild,string"`
	From  string `json:"from"`
	To    string `json:"to"`
}

// PlanRebalance returns the fewest moves that bring every active pod within
// one guild of the mean. Guilds on pods that are not active (down, draining)
// are left alone: drain moves a draining pod's guilds, and a down pod's data
// cannot be exported until it returns. Migrating guilds are not moved again.
// Where there is a choice, a guild moves to the pod holding its shard, so
// fewer events need forwarding afterwards. The plan is deterministic.
func PlanRebalance(guilds []fsm.Guild, pods []fsm.Pod, holderOf func(uint64) string) []Move {
	var active []string
	isActive := map[string]bool{}
	for _, p := range sortedPods(pods) {
		if p.State == fsm.PodActive {
			active = append(active, p.ID)
			isActive[p.ID] = true
		}
	}
	if len(active) < 2 {
		return nil
	}
	owned := map[string][]fsm.Guild{}
	total := 0
	for _, g := range guilds {
		if isActive[g.Owner] {
			owned[g.Owner] = append(owned[g.Owner], g)
			total++
		}
	}
	// Pods that own more get the larger quotas: fewer moves.
	byLoad := append([]string(nil), active...)
	sort.SliceStable(byLoad, func(i, j int) bool { return len(owned[byLoad[i]]) > len(owned[byLoad[j]]) })
	quota := map[string]int{}
	base, extra := total/len(active), total%len(active)
	for i, p := range byLoad {
		quota[p] = base
		if i < extra {
			quota[p]++
		}
	}
	deficit := map[string]int{}
	for _, p := range active {
		if d := quota[p] - len(owned[p]); d > 0 {
			deficit[p] = d
		}
	}
	var moves []Move
	for _, from := range active {
		excess := len(owned[from]) - quota[from]
		if excess <= 0 {
			continue
		}
		cands := movable(owned[from])
		// First the guilds whose shard holder needs guilds, then the rest.
		var picked []fsm.Guild
		var rest []fsm.Guild
		for _, g := range cands {
			if h := holderOf(g.ID); deficit[h] > 0 && h != from && len(picked) < excess {
				picked = append(picked, g)
				deficit[h]--
				moves = append(moves, Move{Guild: g.ID, From: from, To: h})
			} else {
				rest = append(rest, g)
			}
		}
		for _, g := range rest {
			if len(picked) >= excess {
				break
			}
			to := mostNeeding(active, deficit)
			if to == "" {
				break
			}
			deficit[to]--
			picked = append(picked, g)
			moves = append(moves, Move{Guild: g.ID, From: from, To: to})
		}
	}
	return moves
}

// PlanDrain moves every guild off pod, each to its shard holder when that is
// an active pod other than pod, otherwise to the least-loaded active pod.
func PlanDrain(pod string, guilds []fsm.Guild, pods []fsm.Pod, holderOf func(uint64) string) []Move {
	load := map[string]int{}
	var active []string
	for _, p := range sortedPods(pods) {
		if p.State == fsm.PodActive && p.ID != pod {
			active = append(active, p.ID)
			load[p.ID] = 0
		}
	}
	if len(active) == 0 {
		return nil
	}
	var mine []fsm.Guild
	for _, g := range guilds {
		if _, ok := load[g.Owner]; ok {
			load[g.Owner]++
		}
		if g.Owner == pod {
			mine = append(mine, g)
		}
	}
	var moves []Move
	for _, g := range movable(mine) {
		to := holderOf(g.ID)
		if _, ok := load[to]; !ok {
			to = active[0]
			for _, p := range active {
				if load[p] < load[to] {
					to = p
				}
			}
		}
		load[to]++
		moves = append(moves, Move{Guild: g.ID, From: pod, To: to})
	}
	return moves
}

func movable(gs []fsm.Guild) []fsm.Guild {
	out := make([]fsm.Guild, 0, len(gs))
	for _, g := range gs {
		if g.Migration == nil {
			out = append(out, g)
		}
	}
	slices.SortFunc(out, func(a, b fsm.Guild) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out
}

func mostNeeding(active []string, deficit map[string]int) string {
	best := ""
	for _, p := range active {
		if deficit[p] > 0 && (best == "" || deficit[p] > deficit[best]) {
			best = p
		}
	}
	return best
}

func sortedPods(pods []fsm.Pod) []fsm.Pod {
	out := append([]fsm.Pod(nil), pods...)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Ordinal != out[j].Ordinal {
			return out[i].Ordinal < out[j].Ordinal
		}
		return out[i].ID < out[j].ID
	})
	return out
}
