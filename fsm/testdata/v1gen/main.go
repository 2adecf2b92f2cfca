// Command v1gen wrote fsm/testdata/v1.jsonl (a log of version-1 commands,
// one {"index", "cmd"} per line) and fsm/testdata/v1.snapshot (the state they
// produce, in snapshot format version 1) with the version-1 build of package
// fsm, the one before shard holder epochs. TestVersion1SnapshotStillRestores
// replays the log with the current build and checks it reaches exactly the
// state the old snapshot restores to.
//
// To regenerate: copy the version-1 fsm package (git show <rev>:fsm/*.go)
// into a scratch module named "gen" as gen/fsm, put this file next to it and
// run `go run . v1.jsonl v1.snapshot`.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"

	"gen/fsm"
)

type entry struct {
	Index uint64          `json:"index"`
	Cmd   json.RawMessage `json:"cmd"`
}

func main() {
	s := fsm.New()
	out, _ := os.Create(os.Args[1])
	w := bufio.NewWriter(out)
	idx := uint64(0)
	apply := func(c fsm.Command) {
		idx++
		c.Version = 1
		b, _ := c.Encode()
		e, _ := json.Marshal(entry{idx, b})
		w.Write(append(e, '\n'))
		_, _ = s.Apply(idx, c)
	}
	apply(fsm.Command{Type: fsm.CmdInit, ShardCount: 6, At: 1})
	for i := 0; i < 4; i++ {
		apply(fsm.Command{Type: fsm.CmdRegisterPod, At: int64(10 + i), Pod: &fsm.PodSpec{ID: fmt.Sprintf("gateway-%d", i), Ordinal: i, Addr: fmt.Sprintf("10.0.0.%d:9000", i)}})
	}
	apply(fsm.Command{Type: fsm.CmdSetConfigNode, ConfigNode: &fsm.ConfigNode{ID: "config-0", RaftAddr: "10.1.0.0:7000", HTTPAddr: "10.1.0.0:8000"}})
	r := rand.New(rand.NewPCG(11, 13))
	pool := make([]uint64, 40)
	for i := range pool {
		pool[i] = r.Uint64()>>1 | 1
	}
	apply(fsm.Command{Type: fsm.CmdPlaceGuilds, GuildIDs: pool[:30]})
	for n := 0; n < 400; n++ {
		pods := s.SortedPods()
		pod := func() string {
			if len(pods) == 0 || r.IntN(8) == 0 {
				return fmt.Sprintf("gateway-%d", r.IntN(6))
			}
			return pods[r.IntN(len(pods))].ID
		}
		g := pool[r.IntN(len(pool))]
		c := fsm.Command{At: int64(1000 + n)}
		switch r.IntN(12) {
		case 0:
			k := r.IntN(6)
			c.Type, c.Pod = fsm.CmdRegisterPod, &fsm.PodSpec{ID: fmt.Sprintf("gateway-%d", k), Ordinal: k, Addr: fmt.Sprintf("10.0.0.%d:9000", k)}
		case 1:
			c.Type, c.PodID = fsm.CmdMarkPodDown, pod()
		case 2:
			c.Type, c.PodID = fsm.CmdDrainPod, pod()
		case 3:
			c.Type, c.PodID = fsm.CmdRemovePod, pod()
		case 4:
			c.Type, c.GuildIDs = fsm.CmdPlaceGuilds, []uint64{g, pool[r.IntN(len(pool))]}
		case 5:
			c.Type, c.GuildIDs = fsm.CmdRemoveGuilds, []uint64{g}
		case 6:
			c.Type, c.Guild, c.To = fsm.CmdStartMove, g, pod()
		case 7, 8:
			c.Guild = g
			c.Type = []fsm.CommandType{fsm.CmdCompleteMove, fsm.CmdAbortMove, fsm.CmdSetMovePhase}[r.IntN(3)]
			c.Phase, c.Reason = "copying", "test"
			if gg, ok := s.Guilds.Get(g); ok {
				c.Epoch = gg.Epoch
			}
		default:
			sh := r.IntN(6)
			holder := s.Shards[sh]
			if r.IntN(4) == 0 {
				holder = pod()
			}
			c.Type, c.PodID = fsm.CmdSaveCheckpoints, holder
			c.Checkpoints = map[int]fsm.Checkpoint{sh: {SessionID: fmt.Sprintf("sess-%d", r.IntN(9)), Seq: int64(r.IntN(5000)), ResumeURL: "wss://gateway.example/"}}
		}
		apply(c)
	}
	w.Flush()
	out.Close()
	snap, _ := os.Create(os.Args[2])
	if err := s.WriteSnapshot(snap); err != nil {
		panic(err)
	}
	snap.Close()
	drain := 0
	for _, p := range s.Pods {
		if p.State == fsm.PodDraining {
			drain++
		}
	}
	fmt.Println("revision", s.Revision, "guilds", s.Guilds.Len(), "pods", len(s.Pods), "checkpoints", len(s.Checkpoints), "migrating", s.Migrating(), "draining", drain, "shards", s.Shards)
}
