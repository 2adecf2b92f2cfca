package confignode

import (
	"context"
	"sync"
	"time"

	"github.com/modbot/modbot/fsm"
)

// liveness tracks pod heartbeats in the leader's memory: a heartbeat costs no
// Raft entry. A pod silent for longer than PodTimeout is marked down with one
// entry. A new leader starts every pod's clock afresh, so a leader change never
// marks live pods down.
type liveness struct {
	n    *Node
	mu   sync.Mutex
	seen map[string]time.Time
	// lagMs is each pod's last reported replication lag (ms): the data-loss
	// window if it fails over now. The leader's memory only: a new leader
	// knows it once pods report again.
	lagMs map[string]int64
}

func newLiveness(n *Node) *liveness {
	return &liveness{n: n, seen: map[string]time.Time{}, lagMs: map[string]int64{}}
}

// reportedLag records a pod's replication lag (ms; negative: unknown).
func (l *liveness) reportedLag(pod string, ms int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ms < 0 {
		delete(l.lagMs, pod)
		return
	}
	l.lagMs[pod] = ms
}

// lastLagMs is the pod's last reported replication lag, -1 if unknown.
func (l *liveness) lastLagMs(pod string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ms, ok := l.lagMs[pod]; ok {
		return ms
	}
	return -1
}

func (l *liveness) heard(pod string) {
	l.mu.Lock()
	l.seen[pod] = time.Now()
	l.mu.Unlock()
}

// lastHeardMs returns milliseconds since the last heartbeat, -1 if unknown.
func (l *liveness) lastHeardMs(pod string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.seen[pod]
	if !ok {
		return -1
	}
	return time.Since(t).Milliseconds()
}

// run checks heartbeats until ctx ends (leadership lost).
func (l *liveness) run(ctx context.Context) {
	now := time.Now()
	l.mu.Lock()
	l.seen = map[string]time.Time{}
	l.n.store.View(func(s *fsm.State) {
		for id := range s.Pods {
			l.seen[id] = now
		}
	})
	l.mu.Unlock()
	tick := time.NewTicker(max(l.n.cfg.PodTimeout/5, 50*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var stale []string
		l.mu.Lock()
		l.n.store.View(func(s *fsm.State) {
			for id, p := range s.Pods {
				t, ok := l.seen[id]
				if !ok {
					l.seen[id] = time.Now()
					continue
				}
				// A silent draining pod is down too (it can export nothing);
				// it comes back draining (CmdPodAlive).
				if p.State != fsm.PodDown && time.Since(t) > l.n.cfg.PodTimeout {
					stale = append(stale, id)
				}
			}
		})
		l.mu.Unlock()
		for _, id := range stale {
			_, err := l.n.propose(ctx, fsm.Command{Type: fsm.CmdMarkPodDown, PodID: id})
			if err != nil {
				l.n.log.Warn("mark pod down", "pod", id, "err", err)
				continue
			}
			l.n.log.Warn("pod missed heartbeats; marked down", "pod", id, "timeout", l.n.cfg.PodTimeout)
			l.n.metrics.podsMarkedDown.Inc()
		}
	}
}
