package chaos

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/systest"
)

// The model must be able to say no: each history below is checked, and the
// ones a correct control plane could not produce must be Illegal.

func op(client int, in Input, call int64, out Output, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

const g1 = uint64(42 << 22)

var (
	placeG   = op(0, Input{Kind: OpPlace, Guild: g1}, 0, Output{Found: true, Owner: "gateway-0", Epoch: 10}, 1)
	moveG    = op(0, Input{Kind: OpMove, Guild: g1, Pod: "gateway-1"}, 2, Output{From: "gateway-0", To: "gateway-1", Epoch: 20}, 3)
	readAt   = func(t int64, o Output) porcupine.Operation { return op(1, Input{Kind: OpRead, Guild: g1}, t, o, t+1) }
	active   = func(owner string, e uint64) Output { return Output{Found: true, Owner: owner, Epoch: e} }
	migrates = Output{Found: true, Owner: "gateway-0", Mig: true, From: "gateway-0", To: "gateway-1", Epoch: 20}
)

func TestModelRefusesWhatTheMapCannotDo(t *testing.T) {
	cases := []struct {
		name string
		h    []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"a read sees the move that finished before it", []porcupine.Operation{placeG, moveG, readAt(4, migrates)}, porcupine.Ok},
		{"a completed move keeps its epoch", []porcupine.Operation{placeG, moveG, readAt(4, migrates), readAt(6, active("gateway-1", 20))}, porcupine.Ok},
		{"an aborted move raises the epoch", []porcupine.Operation{placeG, moveG, readAt(4, active("gateway-0", 25))}, porcupine.Ok},
		{"stale read: the owner before a finished move", []porcupine.Operation{placeG, moveG, readAt(4, active("gateway-0", 10))}, porcupine.Illegal},
		{"an abort that does not raise the epoch", []porcupine.Operation{placeG, moveG, readAt(4, active("gateway-0", 20))}, porcupine.Illegal},
		{"an owner that is not the move's target", []porcupine.Operation{placeG, moveG, readAt(4, active("gateway-2", 20))}, porcupine.Illegal},
		{"epochs never go down", []porcupine.Operation{placeG, moveG, readAt(4, active("gateway-1", 20)), readAt(6, migrates)}, porcupine.Illegal},
		{"a second move accepted while one is in flight", []porcupine.Operation{placeG, moveG,
			readAt(4, migrates),
			op(0, Input{Kind: OpMove, Guild: g1, Pod: "gateway-2"}, 6, Output{From: "gateway-0", To: "gateway-2", Epoch: 30}, 7),
			readAt(8, Output{Found: true, Owner: "gateway-0", Mig: true, From: "gateway-0", To: "gateway-1", Epoch: 20})}, porcupine.Illegal},
		{"a rejection that contradicts the state", []porcupine.Operation{placeG,
			op(0, Input{Kind: OpMove, Guild: g1, Pod: "gateway-1"}, 2, Output{Outcome: Rejected, Reason: "guild 1 is already migrating from a to b"}, 3)}, porcupine.Illegal},
		{"a move of unknown outcome may have happened", []porcupine.Operation{placeG,
			op(0, Input{Kind: OpMove, Guild: g1, Pod: "gateway-1"}, 2, Output{Outcome: Unknown}, pending), readAt(4, migrates)}, porcupine.Ok},
		{"a move of unknown outcome may not have happened", []porcupine.Operation{placeG,
			op(0, Input{Kind: OpMove, Guild: g1, Pod: "gateway-1"}, 2, Output{Outcome: Unknown}, pending), readAt(4, active("gateway-0", 10))}, porcupine.Ok},
		{"a guild read before it was placed is not found", []porcupine.Operation{readAt(-2, Output{}), placeG}, porcupine.Ok},
		{"a placed guild is never not found", []porcupine.Operation{placeG, readAt(4, Output{})}, porcupine.Illegal},
		{"a drained pod never reads active again", []porcupine.Operation{
			op(0, Input{Kind: OpDrain, Pod: "gateway-2"}, 0, Output{}, 1),
			op(1, Input{Kind: OpReadPod, Pod: "gateway-2"}, 2, Output{PodSt: "down"}, 3),
			op(1, Input{Kind: OpReadPod, Pod: "gateway-2"}, 4, Output{PodSt: "active"}, 5)}, porcupine.Illegal},
		{"a drained pod may be down and draining again", []porcupine.Operation{
			op(0, Input{Kind: OpDrain, Pod: "gateway-2"}, 0, Output{}, 1),
			op(1, Input{Kind: OpReadPod, Pod: "gateway-2"}, 2, Output{PodSt: "down"}, 3),
			op(1, Input{Kind: OpReadPod, Pod: "gateway-2"}, 4, Output{PodSt: "draining"}, 5)}, porcupine.Ok},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Without drains the leader starts no move of its own, so
			// these histories are judged strictly.
			if got := porcupine.CheckOperations(Model(false), c.h); (got && c.want != porcupine.Ok) || (!got && c.want != porcupine.Illegal) {
				t.Fatalf("linearizable = %v, want %s", got, c.want)
			}
		})
	}
}

// TestCheckerCatchesStaleReadsFromAPartitionedFollower: the harness and the
// checker together can see a real violation. A follower cut off from the
// other config nodes still answers plain (not ?consistent=true) reads from
// its own, frozen map; a history that records those reads as linearizable
// ones must be judged Illegal. The same read with ?consistent=true must not
// return the stale answer.
func TestCheckerCatchesStaleReadsFromAPartitionedFollower(t *testing.T) {
	needHarness(t)
	dir := runDir(t, "stale")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := Start(ctx, Options{Bin: modbotBin, Dir: dir, Gateways: 2, Guilds: 2})
	if err != nil {
		t.Fatalf("start (logs in %s): %v", logsHint(dir), err)
	}
	defer s.Close()
	rec := NewRecorder()
	c, err := NewClient(0, s, rec, 1)
	if err != nil {
		t.Fatal(err)
	}
	g := uint64(7 << 22)
	c.place(g)
	leader := s.Leader(ctx)
	if leader < 0 {
		t.Fatal("no leader")
	}
	f := (leader + 1) % 3
	var others []*Host
	for i, p := range s.Config {
		if i != f {
			others = append(others, p.Host)
		}
	}
	// Wait until the follower has the placement, then cut it off.
	follower, err := assignments.NewClient([]string{s.ConfigURLs[f]}, s.Token)
	if err != nil {
		t.Fatal(err)
	}
	if err := systest.Poll(ctx, 10*time.Second, "the follower sees the guild", func() bool {
		_, err := follower.Guild(ctx, fmt.Sprint(g))
		return err == nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Net.Partition([]*Host{s.Config[f].Host}, others); err != nil {
		t.Fatal(err)
	}
	defer s.Net.Heal()
	// Read the majority only: s.Client may ask the partitioned follower
	// first, and its plain reads are stale by design (the test failed so
	// whenever the follower was config-0).
	var majorityURLs []string
	for i, u := range s.ConfigURLs {
		if i != f {
			majorityURLs = append(majorityURLs, u)
		}
	}
	majority, err := assignments.NewClient(majorityURLs, s.Token)
	if err != nil {
		t.Fatal(err)
	}
	v, err := majority.Guild(ctx, fmt.Sprint(g))
	if err != nil {
		t.Fatal(err)
	}
	to := "gateway-0"
	if v.Owner == to {
		to = "gateway-1"
	}
	c.move(g, to)
	if err := systest.Poll(ctx, 30*time.Second, "the move to finish on the majority", func() bool {
		v, err := majority.Guild(ctx, fmt.Sprint(g))
		return err == nil && v.Owner == to && v.Migration == nil
	}); err != nil {
		t.Fatal(err)
	}
	c.read(g) // through the majority: fresh
	// The partitioned follower's plain read, recorded as if linearizable.
	call := rec.now()
	stale, err := follower.Guild(ctx, fmt.Sprint(g))
	if err != nil {
		t.Fatalf("a partitioned follower answers plain reads from its own map: %v", err)
	}
	rec.add(1, Input{Kind: OpRead, Guild: g}, call, guildOutput(stale.Guild), rec.now())
	if stale.Owner == to {
		t.Fatalf("the partitioned follower already knows the new owner %s: the partition did not hold", to)
	}
	if porcupine.CheckOperations(Model(false), rec.Ops()) {
		t.Fatalf("the checker accepted a stale read (owner %s epoch %d after a move to %s)", stale.Owner, stale.Epoch, to)
	}
	// A consistent read on the follower must fail or be fresh, never stale.
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	defer ccancel()
	var cv assignments.GuildView
	err = follower.Do(cctx, "GET", "/v1/guilds/"+fmt.Sprint(g)+"?consistent=true", nil, &cv)
	if err == nil && cv.Owner != to {
		t.Fatalf("a consistent read on a partitioned follower returned the stale owner %s", cv.Owner)
	}
	t.Logf("stale plain read caught (owner %s epoch %d, moved to %s); consistent read on the follower: %v", stale.Owner, stale.Epoch, to, err)
}
