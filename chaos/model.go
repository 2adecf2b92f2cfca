package chaos

import (
	"fmt"
	"sort"
	"strings"

	"github.com/anishathalye/porcupine"
)

// The guild map as a sequential object, for porcupine. Each guild is its own
// partition (linearizability is compositional); so is each pod.
//
// Client operations: place a guild, move it, read it (?consistent=true);
// drain a pod, read the pods (?consistent=true). The leader also changes
// the map by itself — it completes and aborts moves, and starts moves to
// empty a draining pod — so between any two operations the model lets a
// guild take any of those internal steps, and only those:
//
//	migrating(from F to T, epoch e) → active(owner T, epoch e)          complete
//	migrating(from F to T, epoch e) → active(owner F, epoch > e)        abort
//	active(owner O, epoch e)        → migrating(from O to ?, epoch > e) leader's move (only when drains run)
//
// What a history must therefore never show: a read older than a write that
// finished before it began (a stale epoch or owner, the signature of a
// lagging follower answering a "consistent" read), an epoch that goes down,
// an owner that changes other than to a move's target, a move accepted while
// another is in flight, a rejected command that changed something.
// Values the model cannot know yet ("?", an epoch known only to be larger)
// are resolved by the next read.

// OpKind names a client operation.
type OpKind int

const (
	OpPlace OpKind = iota
	OpMove
	OpRead
	OpDrain
	OpReadPod
)

func (k OpKind) String() string {
	return [...]string{"place", "move", "read", "drain", "read-pod"}[k]
}

// Input is one client call.
type Input struct {
	Kind  OpKind
	Guild uint64
	Pod   string // the move's target, or the pod drained / read
}

// Outcome classifies an answer.
type Outcome int

const (
	OK       Outcome = iota
	Rejected         // a 4xx from the state machine: nothing changed
	Unknown          // a timeout, a 5xx, maybe_applied: it may or may not have happened
)

// Output is what the call returned.
type Output struct {
	Outcome Outcome
	Reason  string // the rejection's message
	Found   bool   // read: the guild exists
	Owner   string
	Mig     bool
	From    string
	To      string
	Epoch   uint64
	PodSt   string // read-pod: active, draining, down
}

// guildState is one guild. Owner/From/To "?" are unknown; Exact false means
// the epoch is only known to be larger than Epoch.
type guildState struct {
	Placed bool
	Owner  string
	Mig    bool
	From   string
	To     string
	Epoch  uint64
	Exact  bool
}

type podState struct{ Drained bool }

const unknown = "?"

// Model returns the porcupine model. leaderMoves says whether the leader
// may start moves by itself in this run (drains or rebalances ran).
func Model(leaderMoves bool) porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: partition,
		Init:      func() []interface{} { return []interface{}{guildState{}, podState{}} },
		Step: func(st, in, out interface{}) []interface{} {
			i, o := in.(Input), out.(Output)
			if i.Kind == OpDrain || i.Kind == OpReadPod {
				p, ok := st.(podState)
				if !ok {
					return nil
				}
				return stepPod(p, i, o)
			}
			g, ok := st.(guildState)
			if !ok {
				return nil
			}
			var next []interface{}
			for _, c := range closure(g, leaderMoves) {
				for _, n := range stepGuild(c, i, o) {
					next = append(next, n)
				}
			}
			return next
		},
		DescribeOperation: describeOp,
		DescribeState:     func(s interface{}) string { return fmt.Sprintf("%+v", s) },
	}
	return nm.ToModel()
}

func partition(h []porcupine.Operation) [][]porcupine.Operation {
	by := map[string][]porcupine.Operation{}
	for _, op := range h {
		in := op.Input.(Input)
		k := fmt.Sprintf("guild %d", in.Guild)
		if in.Kind == OpDrain || in.Kind == OpReadPod {
			k = "pod " + in.Pod
		}
		by[k] = append(by[k], op)
	}
	keys := make([]string, 0, len(by))
	for k := range by {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([][]porcupine.Operation, 0, len(keys))
	for _, k := range keys {
		out = append(out, by[k])
	}
	return out
}

// closure is every state the leader's own steps can reach from g.
func closure(g guildState, leaderMoves bool) []guildState {
	seen := map[guildState]bool{g: true}
	queue := []guildState{g}
	for len(queue) > 0 {
		s := queue[0]
		queue = queue[1:]
		if !s.Placed {
			continue
		}
		var steps []guildState
		if s.Mig {
			complete := guildState{Placed: true, Owner: s.To, Epoch: s.Epoch, Exact: s.Exact}
			abort := guildState{Placed: true, Owner: s.From, Epoch: s.Epoch, Exact: false}
			steps = append(steps, complete, abort)
		} else if leaderMoves {
			steps = append(steps, guildState{Placed: true, Owner: s.Owner, Mig: true, From: s.Owner, To: unknown, Epoch: s.Epoch, Exact: false})
		}
		for _, n := range steps {
			if !seen[n] {
				seen[n] = true
				queue = append(queue, n)
			}
		}
	}
	out := make([]guildState, 0, len(seen))
	for s := range seen {
		out = append(out, s)
	}
	return out
}

func same(model, seen string) bool { return model == unknown || model == seen }

// observe returns the state a successful read (or place) saw, if g could be
// it.
func observe(g guildState, o Output) (guildState, bool) {
	if !o.Found {
		return g, !g.Placed
	}
	if !g.Placed || g.Mig != o.Mig || !same(g.Owner, o.Owner) {
		return g, false
	}
	if g.Mig && (!same(g.From, o.From) || !same(g.To, o.To)) {
		return g, false
	}
	if g.Exact && o.Epoch != g.Epoch || !g.Exact && o.Epoch <= g.Epoch {
		return g, false
	}
	return seenState(o), true
}

func seenState(o Output) guildState {
	s := guildState{Placed: true, Owner: o.Owner, Mig: o.Mig, Epoch: o.Epoch, Exact: true}
	if o.Mig {
		s.From, s.To = o.From, o.To
	}
	return s
}

func stepGuild(g guildState, i Input, o Output) []interface{} {
	switch i.Kind {
	case OpRead:
		if n, ok := observe(g, o); ok {
			return []interface{}{n}
		}
	case OpPlace:
		switch o.Outcome {
		case Rejected:
			return []interface{}{g}
		case Unknown:
			if g.Placed {
				return []interface{}{g}
			}
			return []interface{}{g, guildState{Placed: true, Owner: unknown, Epoch: 0}}
		}
		if g.Placed {
			// Placing is idempotent: the answer is a read.
			if n, ok := observe(g, o); ok {
				return []interface{}{n}
			}
			return nil
		}
		if o.Found {
			return []interface{}{seenState(o)}
		}
	case OpMove:
		start := func() (guildState, bool) {
			if !g.Placed || g.Mig || g.Owner == i.Pod {
				return g, false
			}
			return guildState{Placed: true, Owner: g.Owner, Mig: true, From: g.Owner, To: i.Pod, Epoch: g.Epoch, Exact: false}, true
		}
		switch o.Outcome {
		case Unknown:
			if n, ok := start(); ok {
				return []interface{}{g, n}
			}
			return []interface{}{g}
		case Rejected:
			if rejectionFits(g, i, o.Reason) {
				return []interface{}{g}
			}
			return nil
		}
		n, ok := start()
		if !ok || o.To != i.Pod || !same(g.Owner, o.From) || o.Epoch <= g.Epoch {
			return nil
		}
		n.From, n.Owner, n.Epoch, n.Exact = o.From, o.From, o.Epoch, true
		return []interface{}{n}
	}
	return nil
}

// rejectionFits says whether the state machine could have refused the move
// for the reason it gave, in state g.
func rejectionFits(g guildState, i Input, reason string) bool {
	switch {
	case strings.Contains(reason, "unknown guild"):
		return !g.Placed
	case strings.Contains(reason, "is already migrating"):
		return g.Placed && g.Mig
	case strings.Contains(reason, "is already owned by"):
		return g.Placed && !g.Mig && same(g.Owner, i.Pod)
	default:
		// The target's or the owner's pod state, a move still running on
		// the leader: the pods' partitions hold that, not the guild's.
		return g.Placed
	}
}

func stepPod(p podState, i Input, o Output) []interface{} {
	switch i.Kind {
	case OpDrain:
		switch o.Outcome {
		case OK:
			return []interface{}{podState{Drained: true}}
		case Rejected:
			return []interface{}{p}
		default:
			return []interface{}{p, podState{Drained: true}}
		}
	case OpReadPod:
		switch o.PodSt {
		case "active":
			// An operator's drain is never undone, not even by a missed
			// heartbeat and a return (fsm.Pod.Drain).
			if !p.Drained {
				return []interface{}{p}
			}
		case "draining":
			if p.Drained {
				return []interface{}{p}
			}
		default: // down: either
			return []interface{}{p}
		}
	}
	return nil
}

func describeOp(in, out interface{}) string {
	i, o := in.(Input), out.(Output)
	var res string
	switch o.Outcome {
	case Rejected:
		res = "rejected: " + o.Reason
	case Unknown:
		res = "unknown"
	default:
		switch {
		case i.Kind == OpReadPod:
			res = o.PodSt
		case i.Kind == OpDrain:
			res = "ok"
		case !o.Found && i.Kind == OpRead:
			res = "not found"
		case o.Mig:
			res = fmt.Sprintf("migrating %s→%s e%d", o.From, o.To, o.Epoch)
		default:
			res = fmt.Sprintf("%s e%d", o.Owner, o.Epoch)
		}
	}
	if i.Kind == OpDrain || i.Kind == OpReadPod {
		return fmt.Sprintf("%s(%s) → %s", i.Kind, i.Pod, res)
	}
	return fmt.Sprintf("%s(%d %s) → %s", i.Kind, i.Guild, i.Pod, res)
}
