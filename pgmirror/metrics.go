package pgmirror

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Error kinds of modbot_pgmirror_errors_total.
const (
	ErrKindConfig   = "config"   // --pg-url cannot be parsed
	ErrKindConnect  = "connect"  // Postgres unreachable or refusing
	ErrKindAuth     = "auth"     // wrong user or password, no such database
	ErrKindSchema   = "schema"   // migration failed, or a newer schema
	ErrKindLock     = "lock"     // the lock connection broke
	ErrKindWrite    = "write"    // a batch could not be written
	ErrKindFenced   = "fenced"   // mirror_state moved under us
	ErrKindStream   = "stream"   // the change stream broke
	ErrKindSnapshot = "snapshot" // a resync could not list or write
)

type metrics struct {
	lag      prometheus.GaugeFunc
	revision prometheus.Gauge
	errors   *prometheus.CounterVec
	lockHeld prometheus.Gauge
	batches  prometheus.Histogram
	resyncs  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, lag func() float64, log *slog.Logger) *metrics {
	m := &metrics{
		lag: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "modbot_pgmirror_lag_seconds",
			Help: "Age of the oldest change this mirror has seen but not yet written to Postgres (0 when caught up)."}, lag),
		revision: prometheus.NewGauge(prometheus.GaugeOpts{Name: "modbot_pgmirror_revision", Help: "Revision of the map in Postgres, as this mirror last wrote or read it."}),
		errors:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "modbot_pgmirror_errors_total", Help: "Mirror errors by kind."}, []string{"kind"}),
		lockHeld: prometheus.NewGauge(prometheus.GaugeOpts{Name: "modbot_pgmirror_lock_held", Help: "1 while this mirror holds the writer lock (exactly one mirror per database should)."}),
		batches: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "modbot_pgmirror_batch_seconds", Help: "Time to write one batch transaction.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{Name: "modbot_pgmirror_resyncs_total", Help: "Resyncs from /v1/snapshot after 410 Gone."}),
	}
	for _, k := range []string{ErrKindConfig, ErrKindConnect, ErrKindAuth, ErrKindSchema, ErrKindLock, ErrKindWrite, ErrKindFenced, ErrKindStream, ErrKindSnapshot} {
		m.errors.WithLabelValues(k)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.lag, m.revision, m.errors, m.lockHeld, m.batches, m.resyncs} {
			if err := reg.Register(c); err != nil {
				log.Warn("pgmirror metric not registered", "err", err)
			}
		}
	}
	return m
}

// lagTracker knows which changes the mirror has seen and not yet written.
type lagTracker struct {
	pending []pendingChange // ascending revision
}

type pendingChange struct {
	rev uint64
	at  time.Time
}
