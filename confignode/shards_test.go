package confignode

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

func saveCheckpoint(c *assignments.Client, pod string, shard string, cp fsm.Checkpoint) error {
	return c.SaveCheckpoints(context.Background(), assignments.CheckpointRequest{Pod: pod, Checkpoints: map[string]fsm.Checkpoint{shard: cp}})
}

// TestCheckpointSavesAreFencedByHolderEpoch: /v1/shards and /v1/snapshot
// carry each shard's holder epoch; a checkpoint is saved only from the
// holder at that epoch (409 otherwise) and is listed with the epoch and
// holder it was saved at.
func TestCheckpointSavesAreFencedByHolderEpoch(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	tc.registerPods(2)
	c := tc.client()
	ctx := context.Background()
	var raw struct {
		Shards []map[string]any `json:"shards"`
	}
	if err := c.Do(ctx, http.MethodGet, "/v1/shards", nil, &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw.Shards) != 8 || raw.Shards[0]["epoch"] == nil {
		t.Fatalf("GET /v1/shards does not carry \"epoch\": %v", raw.Shards)
	}
	sl, err := c.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sh := sl.Shards[0]
	if sh.Holder == "" || sh.Epoch == 0 {
		t.Fatalf("shard 0: %+v", sh)
	}
	other := map[string]string{"gateway-0": "gateway-1", "gateway-1": "gateway-0"}[sh.Holder]
	cp := fsm.Checkpoint{SessionID: "sess-1", Seq: 10, ResumeURL: "wss://resume", Epoch: sh.Epoch}
	if err := saveCheckpoint(c, other, "0", cp); !isStatus(err, http.StatusConflict) {
		t.Fatalf("checkpoint from a pod that does not hold the shard: %v", err)
	}
	stale := cp
	stale.Epoch = sh.Epoch - 1
	if err := saveCheckpoint(c, sh.Holder, "0", stale); !isStatus(err, http.StatusConflict) || !strings.Contains(err.Error(), "stale") {
		t.Fatalf("checkpoint at a stale epoch: %v", err)
	}
	if err := saveCheckpoint(c, sh.Holder, "0", cp); err != nil {
		t.Fatalf("checkpoint from the holder at its epoch: %v", err)
	}
	if err := c.Do(ctx, http.MethodGet, "/v1/shards?consistent=true", nil, &sl); err != nil {
		t.Fatal(err)
	}
	got := sl.Shards[0].Checkpoint
	if got == nil || got.Epoch != sh.Epoch || got.Holder != sh.Holder || got.Seq != 10 {
		t.Fatalf("saved checkpoint: %+v", got)
	}
	snap, err := c.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Shards[0].Epoch != sh.Epoch || snap.Shards[0].Checkpoint == nil || snap.Shards[0].Checkpoint.Epoch != sh.Epoch {
		t.Fatalf("snapshot shard 0: %+v", snap.Shards[0])
	}
	// The holder goes down: its successor holds the shard at a new epoch, and
	// the old holder's session can no longer move the resume point.
	if _, err := tc.nodes[tc.leader()].propose(ctx, fsm.Command{Type: fsm.CmdMarkPodDown, PodID: sh.Holder}); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, http.MethodGet, "/v1/shards?consistent=true", nil, &sl); err != nil {
		t.Fatal(err)
	}
	if n := sl.Shards[0]; n.Holder != other || n.Epoch <= sh.Epoch {
		t.Fatalf("after the holder went down: %+v", n)
	}
	cp.Seq = 20
	if err := saveCheckpoint(c, sh.Holder, "0", cp); !isStatus(err, http.StatusConflict) {
		t.Fatalf("checkpoint from the old holder: %v", err)
	}
}

// TestConsistentShardReadsSeeTheLatestCheckpoint: a follower whose state
// machine lags still answers GET /v1/shards?consistent=true with the latest
// checkpoint (a pod taking a shard over must not resume from an older one),
// while its plain local read shows what it has applied.
func TestConsistentShardReadsSeeTheLatestCheckpoint(t *testing.T) {
	var mu sync.Mutex
	gates := map[int]chan struct{}{} // node → closed when its applies may go on
	tc := newTestCluster(t, 3, func(i int, c *Config) {
		c.hooks = &testHooks{beforeApply: func(cmd fsm.Command) {
			if cmd.Type != fsm.CmdSaveCheckpoints {
				return
			}
			mu.Lock()
			g := gates[i]
			mu.Unlock()
			if g != nil {
				<-g
			}
		}}
	})
	tc.registerPods(1)
	l := tc.leader()
	f := (l + 1) % 3
	gate := make(chan struct{})
	mu.Lock()
	gates[f] = gate
	mu.Unlock()
	released := false
	release := func() {
		if !released {
			released = true
			close(gate)
		}
	}
	t.Cleanup(release) // before the cluster is killed
	c := tc.client()
	ctx := context.Background()
	sl, err := c.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := saveCheckpoint(c, "gateway-0", "3", fsm.Checkpoint{SessionID: "s", Seq: 99, Epoch: sl.Shards[3].Epoch}); err != nil {
		t.Fatal(err)
	}
	fc := tc.nodeClient(f)
	var local, consistent assignments.ShardList
	if err := fc.Do(ctx, http.MethodGet, "/v1/shards", nil, &local); err != nil {
		t.Fatal(err)
	}
	if local.Shards[3].Checkpoint != nil {
		t.Fatalf("the lagging follower already has the checkpoint: the test proves nothing")
	}
	if err := fc.Do(ctx, http.MethodGet, "/v1/shards?consistent=true", nil, &consistent); err != nil {
		t.Fatal(err)
	}
	if cp := consistent.Shards[3].Checkpoint; cp == nil || cp.Seq != 99 {
		t.Fatalf("a consistent read through a lagging follower: %+v", cp)
	}
	release()
	waitFor(t, 10*time.Second, "the follower to catch up", func() bool {
		var s assignments.ShardList
		return fc.Do(ctx, http.MethodGet, "/v1/shards", nil, &s) == nil && s.Shards[3].Checkpoint != nil
	})
}

// TestHeartbeatFromADownDrainingPodKeepsItDraining: a draining pod that
// goes silent is marked down; when it heartbeats again it is draining, not
// active (it gets no shards and no guilds), so the operator's drain is not
// silently cancelled.
func TestHeartbeatFromADownDrainingPodKeepsItDraining(t *testing.T) {
	tc := newTestCluster(t, 1, func(i int, c *Config) { c.PodTimeout = 300 * time.Millisecond })
	tc.registerPods(1)
	c := tc.client()
	ctx := context.Background()
	if _, err := c.Drain(ctx, "gateway-0"); err != nil {
		t.Fatal(err)
	}
	pod := func() fsm.Pod {
		var p fsm.Pod
		tc.nodes[0].store.View(func(s *fsm.State) { p = *s.Pods["gateway-0"] })
		return p
	}
	waitFor(t, 10*time.Second, "the silent draining pod marked down", func() bool { return pod().State == fsm.PodDown })
	if p := pod(); !p.Drain {
		t.Fatalf("down pod forgot its drain: %+v", p)
	}
	var hb map[string]any
	if err := c.Do(ctx, http.MethodPost, "/v1/pods/gateway-0/heartbeat", nil, &hb); err != nil {
		t.Fatal(err)
	}
	if hb["state"] != string(fsm.PodDraining) {
		t.Fatalf("heartbeat answer %v, want state draining", hb)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() { // keep it alive while we look
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				_ = c.Heartbeat(ctx, "gateway-0")
			}
		}
	}()
	pl, err := c.Pods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p := pl.Pods[0]; p.State != fsm.PodDraining || p.Drain || len(p.Shards) != 0 {
		t.Fatalf("after the heartbeat: %+v", p)
	}
	raw := rawRequest(t, http.MethodGet, tc.urls()[0]+"/v1/pods", testToken, "")
	var body struct {
		Pods []map[string]any `json:"pods"`
	}
	if err := json.Unmarshal([]byte(raw.body), &body); err != nil || body.Pods[0]["state"] != "draining" {
		t.Fatalf("GET /v1/pods: %s (%v)", raw.body, err)
	}
}
