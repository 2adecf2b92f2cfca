package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// A Schedule is a seeded random list of whole-system faults. The same seed
// gives the same faults, targets and durations (the moment each lands
// relative to the traffic depends on the machine).
type Schedule struct {
	Seed  uint64
	Steps []Step
}

// Step is one fault: injected after Gap, healed after Hold.
type Step struct {
	Fault  Fault
	Target int // gateway or config node index, by fault
	Gap    time.Duration
	Hold   time.Duration
}

var systemFaults = []Fault{
	KillGateway, KillGatewayMidMove, KillMidHandoff, PauseGateway, GatewayFromConfig, GatewayFromPeers,
	SlowDisk, RestartProxy, KillLeader, IsolateLeader, PauseFollower, MoveDuringFaults,
}

// NewSchedule draws steps faults for a system of gateways gateways.
func NewSchedule(seed uint64, steps, gateways int) Schedule {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	s := Schedule{Seed: seed}
	for i := 0; i < steps; i++ {
		f := systemFaults[r.IntN(len(systemFaults))]
		s.Steps = append(s.Steps, Step{Fault: f, Target: r.IntN(gateways),
			Gap: jitter(r, 300*time.Millisecond, 1500*time.Millisecond), Hold: jitter(r, time.Second, 5*time.Second)})
	}
	return s
}

func (s Schedule) String() string {
	var b strings.Builder
	for i, st := range s.Steps {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s #%d for %s", st.Fault, st.Target, st.Hold.Round(100*time.Millisecond))
	}
	return b.String()
}

// Play runs the schedule against s. It heals each fault before the next and
// returns the faults injected; log reports what it could not do.
func (sc Schedule) Play(ctx context.Context, s *System, log func(string, ...any)) *Counter {
	var done Counter
	r := rand.New(rand.NewPCG(sc.Seed, 0xfa17))
	for _, st := range sc.Steps {
		if !sleep(ctx, st.Gap) {
			break
		}
		heal, err := sc.inject(ctx, s, st, r)
		if err != nil {
			log("step %s: %v", st.Fault, err)
			continue
		}
		done.Add(st.Fault)
		sleep(ctx, st.Hold)
		if err := heal(); err != nil {
			log("heal %s: %v", st.Fault, err)
		}
	}
	return &done
}

func (sc Schedule) inject(ctx context.Context, s *System, st Step, r *rand.Rand) (func() error, error) {
	gw := st.Target % len(s.Gateways)
	switch st.Fault {
	case KillGateway, PauseGateway:
		return InjectNode(s, s.Gateways, gw, st.Fault)
	case KillGatewayMidMove:
		// Move a guild of gateway gw's, then kill the source or the
		// target while it copies.
		g, from, to, err := s.pickMove(ctx, r, gw)
		if err != nil {
			return nil, err
		}
		if _, err := s.Client.Move(ctx, fmt.Sprint(g), s.Gateways[to].Name); err != nil {
			return nil, fmt.Errorf("start the move: %w", err)
		}
		victim := from
		if r.IntN(2) == 0 {
			victim = to
		}
		sleep(ctx, time.Duration(r.IntN(50))*time.Millisecond)
		return InjectNode(s, s.Gateways, victim, KillGateway)
	case KillMidHandoff:
		// Kill a gateway, let its shards be taken over, start it again:
		// it takes its shards back in planned handoffs, and one of the two
		// holders is killed while they hand over.
		p := s.Gateways[gw]
		if err := p.Kill(); err != nil {
			return nil, err
		}
		sleep(ctx, s.Opts.PodTimeout+time.Second)
		if err := p.Start(); err != nil {
			return nil, err
		}
		sleep(ctx, jitter(r, 500*time.Millisecond, 3*time.Second))
		victim := gw
		if r.IntN(2) == 0 {
			victim = (gw + 1 + r.IntN(len(s.Gateways)-1)) % len(s.Gateways)
		}
		return InjectNode(s, s.Gateways, victim, KillGateway)
	case GatewayFromConfig:
		var cfg []*Host
		for _, p := range s.Config {
			cfg = append(cfg, p.Host)
		}
		if err := s.Net.Partition([]*Host{s.Gateways[gw].Host}, cfg); err != nil {
			return nil, err
		}
		return s.Net.Heal, nil
	case GatewayFromPeers:
		var peers []*Host
		for i, p := range s.Gateways {
			if i != gw {
				peers = append(peers, p.Host)
			}
		}
		if err := s.Net.Partition([]*Host{s.Gateways[gw].Host}, peers); err != nil {
			return nil, err
		}
		return s.Net.Heal, nil
	case SlowDisk:
		return HoldWriteLock(ctx, s.GatewayDB(gw))
	case RestartProxy:
		if s.Proxy == nil {
			return nil, fmt.Errorf("no proxy")
		}
		return InjectNode(s, []*Proc{s.Proxy}, 0, RestartProxy)
	case KillLeader, IsolateLeader, PauseFollower:
		l := s.Leader(ctx)
		if l < 0 {
			return nil, fmt.Errorf("no leader")
		}
		i := l
		if st.Fault == PauseFollower {
			i = (l + 1 + st.Target%2) % len(s.Config)
		}
		return InjectNode(s, s.Config, i, st.Fault)
	case MoveDuringFaults:
		g, _, to, err := s.pickMove(ctx, r, gw)
		if err != nil {
			return nil, err
		}
		if _, err := s.Client.Move(ctx, fmt.Sprint(g), s.Gateways[to].Name); err != nil {
			return nil, fmt.Errorf("start the move: %w", err)
		}
		return func() error { return nil }, nil
	}
	return nil, fmt.Errorf("no such system fault %q", st.Fault)
}

// pickMove picks a guild owned by gateway from (or, if it owns none, by
// the gateway that owns most) and another gateway to move it to. It
// returns the source's index in from's place.
func (s *System) pickMove(ctx context.Context, r *rand.Rand, from int) (uint64, int, int, error) {
	gl, err := s.Client.Guilds(ctx, "")
	if err != nil {
		return 0, 0, 0, err
	}
	by := map[int][]uint64{}
	for _, g := range gl.Guilds {
		if i := s.GatewayIndex(g.Owner); i >= 0 && g.Migration == nil {
			by[i] = append(by[i], g.ID)
		}
	}
	if len(by[from]) == 0 {
		for i, ids := range by {
			if len(ids) > len(by[from]) {
				from = i
			}
		}
	}
	ids := by[from]
	if len(ids) == 0 {
		return 0, 0, 0, fmt.Errorf("no gateway owns a guild that is not migrating")
	}
	to := (from + 1 + r.IntN(len(s.Gateways)-1)) % len(s.Gateways)
	return ids[r.IntN(len(ids))], from, to, nil
}

// HealAll undoes every fault that may be left: cuts, pauses, stopped
// processes.
func (s *System) HealAll() error {
	var errs []string
	if err := s.Net.Heal(); err != nil {
		errs = append(errs, err.Error())
	}
	for _, p := range s.All() {
		if p.Paused() {
			if err := p.Resume(); err != nil {
				errs = append(errs, err.Error())
			}
		}
		if !p.Running() {
			if err := p.Start(); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("heal: %s", strings.Join(errs, "; "))
	}
	return nil
}
