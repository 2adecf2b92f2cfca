package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/systest"
)

// TestChaosSchedules plays seeded fault schedules against the whole system
// — three config nodes, the fake Discord, three gateways and a proxy, each
// its own process in its own namespace — under traffic, then checks the
// invariants of checks.go. A failing seed prints how to replay it.
func TestChaosSchedules(t *testing.T) {
	needHarness(t)
	var list []uint64
	switch {
	case *seedFlag != 0:
		list = []uint64{*seedFlag}
	default:
		n := *seeds
		if n == 0 {
			n = 3
			if testing.Short() {
				n = 1
			}
		}
		for i := 0; i < n; i++ {
			list = append(list, *firstSeed+uint64(i))
		}
	}
	var total Tally
	faults := &Counter{}
	failed := 0
	for _, seed := range list {
		ok := t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			tally, f := chaosRun(t, seed)
			total.Add(tally)
			faults.Merge(f)
			report(t, "chaos", map[string]any{"seed": seed, "tally": tally, "faults": f.String(), "failed": t.Failed()})
		})
		if !ok {
			failed++
			t.Logf("seed %d failed; replay it with: go test ./chaos/ -run 'TestChaosSchedules' -v -args -seed %d", seed, seed)
		}
	}
	t.Logf("chaos: %d schedules (%d failed), %d faults (%s); %d messages dispatched, lost %d, doubled %d, out of order %d; %d bans, %d interactions, %d uncertain sends",
		len(list), failed, faults.Total(), faults.String(), total.Messages, total.Lost, total.Doubled, total.OutOfOrder, total.Bans, total.Interactions, total.Uncertain)
}

func chaosRun(t *testing.T, seed uint64) (Tally, *Counter) {
	dir := runDir(t, fmt.Sprintf("seed%d", seed))
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	s, err := Start(ctx, Options{Bin: modbotBin, Dir: dir, Gateways: 3, Guilds: 9, Proxy: true})
	if err != nil {
		t.Fatalf("start the system (logs in %s): %v", logsHint(dir), err)
	}
	defer s.Close()
	defer noRaces(t, s)
	// Spread the guilds (gateways start one after another, so the first
	// ones own most): every gateway then owns guilds whose shard another
	// holds, and events are forwarded.
	if _, err := s.Client.Rebalance(ctx, false); err != nil {
		t.Fatalf("rebalance: %v", err)
	}
	if err := systest.Poll(ctx, time.Minute, "the rebalance", func() bool {
		j, err := s.Client.RebalanceStatus(ctx)
		return err == nil && !j.FinishedAt.IsZero()
	}); err != nil {
		t.Fatal(err)
	}
	var fake []struct {
		ID string `json:"id"`
	}
	if err := get(s.DiscordURL+"/_fake/guilds", &fake); err != nil {
		t.Fatal(err)
	}
	var guilds []uint64
	for _, g := range fake {
		var id uint64
		fmt.Sscan(g.ID, &id)
		guilds = append(guilds, id)
	}
	sched := NewSchedule(seed, 5, len(s.Gateways))
	t.Logf("seed %d: %s", seed, sched)
	tr := &Traffic{DiscordURL: s.DiscordURL, Guilds: guilds, Rng: rand.New(rand.NewPCG(seed, 0x7aff1c)), MaxEvents: 20000}
	tctx, stopTraffic := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); tr.Run(tctx) }()
	faults := sched.Play(ctx, s, t.Logf)
	if err := s.HealAll(); err != nil {
		t.Error(err)
	}
	sleep(ctx, time.Second) // traffic over the healed system too
	stopTraffic()
	wg.Wait()
	if err := s.WaitSettled(ctx, 2*time.Minute); err != nil {
		t.Fatalf("the system did not settle after the schedule (logs in %s): %v", logsHint(dir), err)
	}
	var tally Tally
	var problems []string
	// Moves end, copies are dropped and outboxes drain asynchronously:
	// wait (bounded) until the checks pass, then report what still fails.
	err = systest.Poll(ctx, 90*time.Second, "the invariants", func() bool {
		owners, err := Owners(ctx, s)
		if err != nil {
			problems = []string{err.Error()}
			return false
		}
		tally, problems, err = CheckStores(ctx, s, tr, owners)
		if err != nil {
			problems = []string{err.Error()}
			return false
		}
		problems = append(problems, CheckSessions(s)...)
		return len(problems) == 0
	})
	if err != nil {
		if len(problems) > 10 {
			problems = append(problems[:10], fmt.Sprintf("… and %d more", len(problems)-10))
		}
		t.Fatalf("seed %d (%s): invariants broken after the schedule (logs in %s):\n  %s", seed, sched, logsHint(dir), strings.Join(problems, "\n  "))
	}
	checksCanFail(ctx, t, s, tr)
	verifyMove(ctx, t, s, guilds, seed)
	t.Logf("seed %d: %d messages, %d bans, %d interactions checked; faults: %s", seed, tally.Messages, tally.Bans, tally.Interactions, faults)
	return tally, faults
}

// verifyMove moves the busiest guild and compares its checksum before and
// after.
func verifyMove(ctx context.Context, t *testing.T, s *System, guilds []uint64, seed uint64) {
	g := guilds[seed%uint64(len(guilds))]
	// A move of g the schedule started may still run (a move to a killed
	// target lasts until its copy times out): start from a settled guild.
	if err := systest.Poll(ctx, 3*time.Minute, "the guild to settle before the verification move", func() bool {
		v, err := s.Client.Guild(ctx, fmt.Sprint(g))
		return err == nil && v.Migration == nil
	}); err != nil {
		t.Fatal(err)
	}
	owners, err := Owners(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	from := s.GatewayIndex(owners[g])
	before, rows, err := Checksum(ctx, s.GatewayDB(from), g)
	if err != nil {
		t.Fatal(err)
	}
	to := (from + 1) % len(s.Gateways)
	// An election may still be settling (seed 149): retry what no node
	// could take; and a move the schedule started may still be running
	// (seed 6: a move to a killed target runs until its copy times out):
	// retry a 409 while the guild migrates. Never retry another refusal.
	var mv assignments.MoveResponse
	if err := systest.Poll(ctx, 3*time.Minute, "the verification move to start", func() bool {
		mv, err = s.Client.Move(ctx, fmt.Sprint(g), s.Gateways[to].Name)
		if err != nil && assignments.IsStatus(err, http.StatusConflict) {
			if v, gerr := s.Client.Guild(ctx, fmt.Sprint(g)); gerr == nil && v.Migration != nil {
				return false
			}
		}
		if err != nil && !assignments.IsUnavailable(err) {
			t.Fatalf("verification move: %v", err)
		}
		return err == nil
	}); err != nil {
		t.Fatalf("verification move: %v", err)
	}
	if err := systest.Poll(ctx, 60*time.Second, "the verification move", func() bool {
		v, err := s.Client.Guild(ctx, fmt.Sprint(g))
		return err == nil && v.Migration == nil && v.Epoch >= mv.Epoch
	}); err != nil {
		t.Fatal(err)
	}
	v, _ := s.Client.Guild(ctx, fmt.Sprint(g))
	if v.Owner != s.Gateways[to].Name {
		b, _ := json.Marshal(v)
		t.Fatalf("verification move of guild %d ended on %s: %s", g, v.Owner, b)
	}
	after, rowsAfter, err := Checksum(ctx, s.GatewayDB(to), g)
	if err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Fatalf("guild %d: %d rows (checksum %s) on %s before the move, %d rows (%s) on %s after", g, rows, before[:12], owners[g], rowsAfter, after[:12], v.Owner)
	}
}

// checksCanFail: the same checks, told of a message that was never stored
// and of an edit that never happened, must report one lost and one out of
// order.
func checksCanFail(ctx context.Context, t *testing.T, s *System, tr *Traffic) {
	owners, err := Owners(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	tr.mu.Lock()
	phantom := &SentMessage{Guild: tr.Guilds[0], ID: 1<<62 + 1, Len: 5}
	tr.msgs[phantom.ID] = phantom
	var edited *SentMessage
	for _, m := range tr.msgs {
		if !m.Deleted && !m.Uncertain && m != phantom {
			edited = m
			break
		}
	}
	if edited != nil {
		edited.Len += 1000
	}
	tr.mu.Unlock()
	defer func() {
		tr.mu.Lock()
		delete(tr.msgs, phantom.ID)
		if edited != nil {
			edited.Len -= 1000
		}
		tr.mu.Unlock()
	}()
	tally, _, err := CheckStores(ctx, s, tr, owners)
	if err != nil {
		t.Fatal(err)
	}
	if tally.Lost != 1 || edited != nil && tally.OutOfOrder != 1 {
		t.Fatalf("the checks missed a phantom message or edit: lost %d, out of order %d", tally.Lost, tally.OutOfOrder)
	}
}
