package assignments

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/modbot/modbot/fsm"
)

func pods(n int, states ...fsm.PodState) []fsm.Pod {
	var out []fsm.Pod
	for i := 0; i < n; i++ {
		st := fsm.PodActive
		if i < len(states) {
			st = states[i]
		}
		out = append(out, fsm.Pod{ID: fmt.Sprintf("gateway-%d", i), Ordinal: i, State: st})
	}
	return out
}

func applyMoves(t *testing.T, guilds []fsm.Guild, moves []Move) map[string]int {
	t.Helper()
	idx := map[uint64]int{}
	for i, g := range guilds {
		idx[g.ID] = i
	}
	seen := map[uint64]bool{}
	for _, m := range moves {
		if seen[m.Guild] {
			t.Fatalf("guild %d moved twice", m.Guild)
		}
		seen[m.Guild] = true
		g := &guilds[idx[m.Guild]]
		if g.Owner != m.From || m.From == m.To {
			t.Fatalf("bad move %+v for guild owned by %s", m, g.Owner)
		}
		g.Owner = m.To
	}
	count := map[string]int{}
	for _, g := range guilds {
		count[g.Owner]++
	}
	return count
}

// TestRebalancePlanIsMinimalAndEven: after the plan every active pod is within
// one guild of the mean, and the number of moves equals the total excess over
// the quotas (no guild moves that did not have to).
func TestRebalancePlanIsMinimalAndEven(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 200; trial++ {
		np := 2 + r.IntN(5)
		ps := pods(np)
		var guilds []fsm.Guild
		ng := r.IntN(400)
		for i := 0; i < ng; i++ {
			owner := ps[min(r.IntN(np), r.IntN(np))].ID // skewed
			guilds = append(guilds, fsm.Guild{ID: uint64(i+1) << 22, Owner: owner, State: fsm.GuildActive})
		}
		holder := func(g uint64) string { return ps[int(g>>22)%np].ID }
		before := map[string]int{}
		for _, g := range guilds {
			before[g.Owner]++
		}
		moves := PlanRebalance(guilds, ps, holder)
		after := applyMoves(t, guilds, moves)
		lo, hi := ng, 0
		for _, p := range ps {
			lo, hi = min(lo, after[p.ID]), max(hi, after[p.ID])
		}
		if hi-lo > 1 {
			t.Fatalf("trial %d: uneven after rebalance: %v", trial, after)
		}
		// Minimal: moves = sum of excess over ceil(mean) for the over pods
		// given the optimal quota assignment; it is at most the sum of
		// max(0, before - floor(mean)) and at least sum max(0, before - ceil(mean)).
		mean := ng / np
		lower, upper := 0, 0
		for _, p := range ps {
			lower += max(0, before[p.ID]-(mean+1))
			upper += max(0, before[p.ID]-mean)
		}
		if len(moves) < lower || len(moves) > upper {
			t.Fatalf("trial %d: %d moves outside [%d,%d]", trial, len(moves), lower, upper)
		}
	}
}

func TestRebalanceLeavesInactivePodsAndMigratingGuildsAlone(t *testing.T) {
	ps := pods(3, fsm.PodActive, fsm.PodDown, fsm.PodActive)
	var guilds []fsm.Guild
	for i := 0; i < 10; i++ {
		guilds = append(guilds, fsm.Guild{ID: uint64(i + 1), Owner: "gateway-0"})
	}
	guilds = append(guilds, fsm.Guild{ID: 100, Owner: "gateway-1"})
	guilds[0].Migration = &fsm.Migration{From: "gateway-0", To: "gateway-2"}
	moves := PlanRebalance(guilds, ps, func(uint64) string { return "" })
	for _, m := range moves {
		if m.To == "gateway-1" || m.From == "gateway-1" || m.Guild == guilds[0].ID {
			t.Fatalf("bad move %+v", m)
		}
	}
	if len(moves) != 5 {
		t.Fatalf("%d moves, want 5", len(moves))
	}
}

func TestDrainMovesEverythingOffThePod(t *testing.T) {
	ps := pods(3)
	var guilds []fsm.Guild
	for i := 0; i < 30; i++ {
		guilds = append(guilds, fsm.Guild{ID: uint64(i+1) << 22, Owner: ps[i%3].ID})
	}
	holder := func(g uint64) string { return ps[int(g>>22)%3].ID }
	moves := PlanDrain("gateway-1", guilds, ps, holder)
	after := applyMoves(t, guilds, moves)
	if after["gateway-1"] != 0 || len(moves) != 10 {
		t.Fatalf("after drain %v with %d moves", after, len(moves))
	}
}
