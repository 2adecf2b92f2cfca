package confignode

import (
	"context"
	"strings"
	"time"

	"github.com/modbot/modbot/fsm"
)

// Guild failover (DESIGN §9). A gateway pod that stays down for longer
// than FailoverGrace may have lost its disk: the leader moves its guilds to
// live pods as failover moves — each target restores the dead pod's replica
// (FailoverReplica with {pod} replaced by the pod id) and imports the guild
// from it, checksum-verified, through the move's commit and abort path. The
// FSM records each as a failover migration with its loss window, so the
// change stream shows it. The dead pod's epochs are stale from then on: if it
// returns it serves and writes none of those guilds, and its janitor drops
// its copies at start. A failover runs as a job like a drain (GET
// /v1/rebalance shows its progress; kind "failover").
//
// Without FailoverReplica there is no failover: a dead pod's guilds wait
// for it to come back (with its disk, or restored by its sidecar).

// failoverLoop checks once a second for pods down past the grace period
// that still own guilds, and fails them over one pod at a time. It is a
// task of the term.
func (n *Node) failoverLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pod := n.podToFailOver(time.Now())
		if pod == "" {
			continue
		}
		moves := n.plan("drain", pod)
		if len(moves) == 0 {
			continue // no live pod to take them, or all are moving already
		}
		if _, err := n.mover.runJob(jobFailover, pod, moves); err != nil {
			continue // another job runs; look again next tick
		}
		n.metrics.failovers.Inc()
		n.log.Warn("pod stayed down past the failover grace period; moving its guilds to live pods from its replica",
			"pod", pod, "guilds", len(moves), "grace", n.cfg.FailoverGrace, "replica", n.replicaOf(pod))
	}
}

// podToFailOver returns a pod down for longer than the grace period that
// owns a guild not migrating, or "".
func (n *Node) podToFailOver(now time.Time) string {
	pod := ""
	n.store.View(func(s *fsm.State) {
		down := map[string]bool{}
		for _, p := range s.SortedPods() {
			if p.State == fsm.PodDown && now.UnixMilli()-p.Since >= n.cfg.FailoverGrace.Milliseconds() && s.GuildCount(p.ID) > 0 {
				down[p.ID] = true
			}
		}
		if len(down) == 0 {
			return
		}
		moving := map[string]int{} // guilds of each down pod already being moved off it
		for g := range s.Guilds.Migrations() {
			moving[g.Owner]++
		}
		for _, p := range s.SortedPods() {
			if down[p.ID] && s.GuildCount(p.ID) > moving[p.ID] {
				pod = p.ID
				return
			}
		}
	})
	return pod
}

func (n *Node) replicaOf(pod string) string {
	return strings.ReplaceAll(n.cfg.FailoverReplica, "{pod}", pod)
}

// failoverSpec describes a failover move off pod. Its loss window is the
// replication lag the pod last reported with a heartbeat (-1: unknown — it
// reported none, or this leader was elected after it died).
func (n *Node) failoverSpec(pod string) *failoverSpec {
	return &failoverSpec{replica: n.replicaOf(pod), lossWindowMs: n.live.lastLagMs(pod)}
}
