package confignode

import (
	"context"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/httpmetrics"
)

type metrics struct {
	reg           *prometheus.Registry
	httpLatency   *prometheus.HistogramVec
	proposals     *prometheus.CounterVec
	applyLatency  prometheus.Histogram
	forwarded     prometheus.Counter
	podsLeft      prometheus.Counter
	authRefusals  *prometheus.CounterVec
	identifySlots prometheus.Counter
	// identifyRefused counts identify slots refused, by reason: "budget"
	// (the daily budget is down to its reserve) or "not_holder" (the pod
	// does not hold the shard at the epoch it named).
	identifyRefused     *prometheus.CounterVec
	orphanAbortFailures prometheus.Counter
	ambiguousCommits    prometheus.Counter
	moves               *prometheus.CounterVec
	moveDuration        prometheus.Histogram
	movesInFlight       prometheus.Gauge
	podsMarkedDown      prometheus.Counter
	failovers           prometheus.Counter
	watchers            prometheus.Gauge
	watchSent           prometheus.Counter
	raftState           *prometheus.GaugeVec
	raftTerm            prometheus.Gauge
	raftApplied         prometheus.Gauge
	raftCommit          prometheus.Gauge
	lastContact         prometheus.Gauge
}

func newMetrics(n *Node) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg:         reg,
		httpLatency: httpmetrics.NewHistogram(),
		proposals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modbot_config_proposals_total", Help: "Writes proposed to Raft by command type and result (ok, rejected, failed).",
		}, []string{"type", "result"}),
		applyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "modbot_config_commit_duration_seconds", Help: "Time from proposing a write to its application on the leader.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		authRefusals: httpapi.NewRefusalCounter("config"),
		podsLeft: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_config_pods_left_total",
			Help: "Gateway pods marked down at their own request before a planned stop (SIGTERM)."}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_config_forwarded_requests_total", Help: "Requests forwarded to the leader."}),
		moves: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "modbot_config_migrations_total",
			Help: "Guild moves by result (completed, aborted)."}, []string{"result"}),
		moveDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "modbot_config_migration_duration_seconds",
			Help: "Guild move time from start to commit.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 16)}),
		movesInFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "modbot_config_migrations_in_flight", Help: "Guild moves this leader is running."}),
		identifySlots: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_config_identify_slots_total", Help: "Discord identify slots handed out."}),
		identifyRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "modbot_config_identify_refused_total",
			Help: "Identify slots refused by the leader, by reason (budget: the daily session start budget is down to its reserve; not_holder: the pod does not hold the shard at that epoch)."}, []string{"reason"}),
		orphanAbortFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_config_migration_orphan_abort_failures_total",
			Help: "Failed attempts to abort a move no task of the leader runs (retried with backoff)."}),
		ambiguousCommits: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_config_migration_ambiguous_commits_total",
			Help: "CompleteMove proposals whose outcome was ambiguous (timeout, leadership lost) and had to be read back."}),
		podsMarkedDown: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_config_pods_marked_down_total", Help: "Pods marked down for missed heartbeats."}),
		failovers:      prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_config_failovers_total", Help: "Failover jobs started: a pod down past the grace period had its guilds moved from its replica."}),
		watchers:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "modbot_config_watch_subscribers", Help: "Open /v1/watch streams on this node."}),
		watchSent:      prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_config_watch_events_sent_total", Help: "Change events written to watch streams."}),
		raftState:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "modbot_config_raft_state", Help: "1 for the node's current Raft state."}, []string{"state"}),
		raftTerm:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "modbot_config_raft_term", Help: "Current Raft term."}),
		raftApplied:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "modbot_config_raft_applied_index", Help: "Last Raft index applied to the FSM."}),
		raftCommit:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "modbot_config_raft_commit_index", Help: "Last committed Raft index."}),
		lastContact:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "modbot_config_raft_last_contact_seconds", Help: "Seconds since this follower heard from the leader (0 on the leader)."}),
	}
	for _, r := range []string{"budget", "not_holder"} {
		m.identifyRefused.WithLabelValues(r)
	}
	for _, r := range []string{"completed", "aborted"} {
		m.moves.WithLabelValues(r)
	}
	reg.MustRegister(m.httpLatency, m.authRefusals, m.podsLeft, m.proposals, m.applyLatency, m.forwarded, m.identifySlots, m.identifyRefused, m.orphanAbortFailures, m.ambiguousCommits, m.moves, m.moveDuration, m.movesInFlight, m.podsMarkedDown, m.failovers, m.watchers, m.watchSent,
		m.raftState, m.raftTerm, m.raftApplied, m.raftCommit, m.lastContact,
		&fsmCollector{n: n}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if c := n.cfg.TLS.Collector("config"); c != nil {
		reg.MustRegister(c)
	}
	return m
}

func (m *metrics) observeApplied([]fsm.Event) {}

// raftLoop samples Raft's state once a second.
func (m *metrics) raftLoop(ctx context.Context, r func() *raft.Raft) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		rf := r()
		st := rf.State()
		for _, s := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
			v := 0.0
			if s == st {
				v = 1
			}
			m.raftState.WithLabelValues(s.String()).Set(v)
		}
		m.raftTerm.Set(float64(rf.CurrentTerm()))
		m.raftApplied.Set(float64(rf.AppliedIndex()))
		m.raftCommit.Set(float64(rf.CommitIndex()))
		if st == raft.Leader {
			m.lastContact.Set(0)
		} else if lc := rf.LastContact(); !lc.IsZero() {
			m.lastContact.Set(time.Since(lc).Seconds())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// fsmCollector reads the map's gauges at scrape time.
type fsmCollector struct{ n *Node }

var (
	descRevision  = prometheus.NewDesc("modbot_config_fsm_revision", "Revision of the last change applied on this node.", nil, nil)
	descGuilds    = prometheus.NewDesc("modbot_config_fsm_guilds", "Guilds in the map.", nil, nil)
	descMigrating = prometheus.NewDesc("modbot_config_fsm_guilds_migrating", "Guilds being moved.", nil, nil)
	descPerPod    = prometheus.NewDesc("modbot_config_guilds_per_pod", "Guilds owned by each pod.", []string{"pod"}, nil)
	descShardsPod = prometheus.NewDesc("modbot_config_shards_per_pod", "Shards held by each pod.", []string{"pod"}, nil)
	descPods      = prometheus.NewDesc("modbot_config_pods", "Pods by state.", []string{"state"}, nil)
	descHistory   = prometheus.NewDesc("modbot_config_watch_oldest_revision", "Oldest revision a watch can start from on this node.", nil, nil)
	descJob       = prometheus.NewDesc("modbot_config_rebalance_moves", "Moves of the current or last rebalance/drain on this leader, by state (planned, done, failed, running).", []string{"kind", "state"}, nil)
	descBudget    = prometheus.NewDesc("modbot_config_identify_budget_remaining", "Identifies left in Discord's daily session start budget, as the leader tracks it (only the leader reports it).", nil, nil)
	descBudgetRes = prometheus.NewDesc("modbot_config_identify_budget_reserve", "Identifies of the daily budget kept back: slots are refused at or below it (leader only).", nil, nil)
	descTasks     = prometheus.NewDesc("modbot_config_leader_tasks", "Leader tasks running on this node (moves, rebalances, orphan sweep, liveness).", nil, nil)
)

func (c *fsmCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRevision, descGuilds, descMigrating, descPerPod, descShardsPod, descPods, descHistory, descJob, descBudget, descBudgetRes, descTasks} {
		ch <- d
	}
}

func (c *fsmCollector) Collect(ch chan<- prometheus.Metric) {
	c.n.store.View(func(s *fsm.State) {
		ch <- prometheus.MustNewConstMetric(descRevision, prometheus.GaugeValue, float64(s.Revision))
		ch <- prometheus.MustNewConstMetric(descGuilds, prometheus.GaugeValue, float64(s.Guilds.Len()))
		ch <- prometheus.MustNewConstMetric(descMigrating, prometheus.GaugeValue, float64(s.Migrating()))
		states := map[fsm.PodState]int{fsm.PodActive: 0, fsm.PodDown: 0, fsm.PodDraining: 0}
		shards := map[string]int{}
		for _, h := range s.Shards {
			if h != "" {
				shards[h]++
			}
		}
		for id, p := range s.Pods {
			states[p.State]++
			ch <- prometheus.MustNewConstMetric(descPerPod, prometheus.GaugeValue, float64(s.GuildCount(id)), id)
			ch <- prometheus.MustNewConstMetric(descShardsPod, prometheus.GaugeValue, float64(shards[id]), id)
		}
		for st, v := range states {
			ch <- prometheus.MustNewConstMetric(descPods, prometheus.GaugeValue, float64(v), string(st))
		}
	})
	ch <- prometheus.MustNewConstMetric(descHistory, prometheus.GaugeValue, float64(c.n.store.hist.oldest()))
	ch <- prometheus.MustNewConstMetric(descTasks, prometheus.GaugeValue, float64(c.n.leader.Running()))
	if c.n.IsLeader() {
		b := c.n.budget.status(time.Now())
		ch <- prometheus.MustNewConstMetric(descBudget, prometheus.GaugeValue, float64(b.Remaining))
		ch <- prometheus.MustNewConstMetric(descBudgetRes, prometheus.GaugeValue, float64(b.Reserve))
	}
	if job := c.n.mover.jobStatus(); job != nil {
		for state, v := range map[string]int{"planned": job.Total, "done": job.Done, "failed": job.Failed, "running": job.Running} {
			ch <- prometheus.MustNewConstMetric(descJob, prometheus.GaugeValue, float64(v), job.Kind, state)
		}
	}
}
