package gatewaynode

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/httpmetrics"
)

type metrics struct {
	httpLatency      *prometheus.HistogramVec
	authRefusals     *prometheus.CounterVec
	events           *prometheus.CounterVec
	restErrors       *prometheus.CounterVec
	dashboardAuth    *prometheus.CounterVec
	processDuration  prometheus.Histogram
	batchDuration    prometheus.Histogram
	forwardDuration  prometheus.Histogram
	dispatches       prometheus.Counter
	forwarded        prometheus.Counter
	forwardErrors    prometheus.Counter
	forwardRefused   prometheus.Counter
	deadLetters      prometheus.Counter
	eventRetries     prometheus.Counter
	resumeFailed     prometheus.Counter
	identifyRefused  prometheus.Counter
	handoffs         *prometheus.CounterVec
	held             prometheus.Counter
	outboxDelivered  prometheus.Counter
	outboxGuilds     prometheus.Gauge
	placed           prometheus.Counter
	checkpoints      prometheus.Counter
	identifies       prometheus.Counter
	sessionErrors    prometheus.Counter
	heartbeatErrors  prometheus.Counter
	shardsHeld       prometheus.Gauge
	migrationSteps   *prometheus.HistogramVec
	failoverRestores *prometheus.CounterVec
	posts            prometheus.Counter
	postsRetried     prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, n *Node) *metrics {
	m := &metrics{
		httpLatency:  httpmetrics.NewHistogram(),
		authRefusals: httpapi.NewRefusalCounter("gateway"),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "modbot_gateway_events_total",
			Help: "Events handled by this pod as owner, by type and outcome."}, []string{"type", "outcome"}),
		dashboardAuth: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "modbot_gateway_dashboard_user_checks_total",
			Help: "Signed-in users' dashboard requests by result: allowed, forbidden, bad_assertion."}, []string{"result"}),
		restErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "modbot_gateway_rest_errors_total",
			Help: "Failed Discord REST calls by kind."}, []string{"kind"}),
		processDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "modbot_gateway_event_processing_seconds",
			Help: "Time to commit a batch of owned events (dispatch to committed).", Buckets: httpmetrics.Buckets}),
		batchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "modbot_gateway_batch_routing_seconds",
			Help: "Time to route one shard batch until acknowledged.", Buckets: httpmetrics.Buckets}),
		forwardDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "modbot_gateway_forward_seconds",
			Help: "Time to forward a batch to its owner pod.", Buckets: httpmetrics.Buckets}),
		dispatches:    prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_dispatches_total", Help: "Gateway dispatches received on this pod's shards."}),
		forwarded:     prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_forwarded_events_total", Help: "Events forwarded to their owner pod."}),
		forwardErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_forward_errors_total", Help: "Forwarded batches that failed (their events went to the outbox)."}),
		forwardRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_forward_refused_events_total",
			Help: "Forwarded events the owner refused (not the owner at its epoch, migrating, or older events held there); they stay in this pod's outbox."}),
		deadLetters: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_dead_letters_total",
			Help: "Events whose handler kept failing, stored in the dead-letter table for an operator to replay."}),
		eventRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_event_retries_total",
			Help: "Re-runs of an event whose handler failed (before it succeeded or was dead-lettered)."}),
		resumeFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_resume_failed_total",
			Help: "Shard sessions whose RESUME Discord refused (a fresh IDENTIFY followed: dispatches in between were not replayed)."}),
		identifyRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_identify_refused_total",
			Help: "Identify slots the config leader refused because Discord's daily identify budget is at its reserve."}),
		handoffs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "modbot_gateway_shard_handoffs_total",
			Help: "Shard handoffs by how: closed (the new holder had its own session), detached (the new holder resumed ours), released (nobody holds it), ended (our session ended during the handoff); recovered: this pod, the new holder, resumed the session of a previous holder that went down without releasing the shard, to commit its backlog."}, []string{"how"}),
		held:            prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_held_events_total", Help: "Events written to the durable buffer."}),
		outboxDelivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_outbox_delivered_total", Help: "Held events delivered later."}),
		outboxGuilds:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "modbot_gateway_outbox_guilds", Help: "Guilds with held events waiting."}),
		placed:          prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_guilds_placed_total", Help: "New guilds this pod asked the control plane to place."}),
		checkpoints:     prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_checkpoints_saved_total", Help: "Shard resume points saved to the control plane."}),
		identifies:      prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_identifies_total", Help: "Identify slots taken."}),
		sessionErrors:   prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_session_errors_total", Help: "Failed attempts to open a shard session."}),
		heartbeatErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_heartbeat_errors_total", Help: "Failed heartbeats to the control plane."}),
		shardsHeld:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "modbot_gateway_shards", Help: "Shards this pod holds."}),
		migrationSteps: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "modbot_gateway_migration_step_seconds",
			Help: "Duration of this pod's part of guild moves (export, import, failover_import).", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"step"}),
		failoverRestores: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "modbot_gateway_failover_restores_total",
			Help: "Restores of a dead pod's replica for guild failover, by result (restored, failed)."}, []string{"result"}),
		posts: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_modlog_posts_total",
			Help: "Mod-log messages posted (Discord answered 200)."}),
		postsRetried: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_gateway_modlog_posts_retried_total",
			Help: "Mod-log posts sent again because they were still owed (a failed post, or one its pod never acknowledged)."}),
	}
	reg.MustRegister(m.httpLatency, m.authRefusals, m.events, m.restErrors, m.dashboardAuth, m.processDuration, m.batchDuration, m.forwardDuration,
		m.dispatches, m.forwarded, m.forwardErrors, m.forwardRefused, m.deadLetters, m.eventRetries, m.resumeFailed, m.identifyRefused, m.handoffs, m.held, m.outboxDelivered, m.outboxGuilds, m.placed, m.checkpoints,
		m.identifies, m.sessionErrors, m.heartbeatErrors, m.shardsHeld, m.migrationSteps, m.failoverRestores, m.posts, m.postsRetried,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "modbot_gateway_guilds_owned", Help: "Guilds this pod owns per its map."},
			func() float64 { return float64(n.watch.GuildCount(n.cfg.ID)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "modbot_gateway_modlog_posts_queued", Help: "Mod-log posts waiting for their channel's rate limit or being sent."},
			func() float64 { return float64(n.postQueue.queued()) }),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if c := n.cfg.TLS.Collector("gateway"); c != nil {
		reg.MustRegister(c)
	}
	return m
}
