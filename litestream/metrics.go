package litestream

import (
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the sidecar's own series (Litestream's litestream_* series live
// on the default registry).
type Metrics struct {
	LagSeconds    prometheus.GaugeFunc
	LagTXIDs      prometheus.Gauge
	LastSync      prometheus.Gauge
	SyncErrors    prometheus.Counter
	RestoreErrors prometheus.Counter
	// RoundSeconds times each phase of a sync round: "wal" (WAL to local
	// LTX), "upload" (local LTX to the replica), "checkpoint" (after the
	// upload). A change waits at most SyncInterval/2 plus wal+upload.
	RoundSeconds *prometheus.HistogramVec
	lag          *lagTracker
}

// NewMetrics registers the modbot_replication_* series on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{lag: &lagTracker{now: time.Now}}
	m.LagSeconds = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "modbot_replication_lag_seconds",
		Help: "Age of the oldest local change (WAL write) not yet on the replica; 0 when in sync.",
	}, func() float64 { return m.lag.lag().Seconds() })
	m.LagTXIDs = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "modbot_replication_lag_txids",
		Help: "Local Litestream TXID minus the replica's (Litestream TXIDs count sync rounds, not SQLite transactions).",
	})
	m.LastSync = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "modbot_replication_last_sync_timestamp_seconds",
		Help: "Unix time of the last sync round that put every earlier local change on the replica.",
	})
	m.SyncErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "modbot_replication_sync_errors_total",
		Help: "Sync rounds (WAL to local LTX to replica) that failed.",
	})
	m.RestoreErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "modbot_replication_restore_errors_total",
		Help: "Restores (--restore-if-missing) that failed.",
	})
	m.RoundSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "modbot_replication_round_duration_seconds",
		Help:    "Duration of each phase of a sync round: wal (WAL to local LTX), upload (to the replica), checkpoint (after the upload).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"phase"})
	if reg != nil {
		reg.MustRegister(m.LagSeconds, m.LagTXIDs, m.LastSync, m.SyncErrors, m.RestoreErrors, m.RoundSeconds)
	}
	return m
}

// walMark identifies the WAL's state: any write changes its size or mtime.
type walMark struct {
	exists bool
	size   int64
	mtime  int64
}

func statWAL(path string) walMark {
	fi, err := os.Stat(path)
	if err != nil {
		return walMark{}
	}
	return walMark{exists: true, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
}

// lagTracker derives the age of the oldest unreplicated change. Changes are
// seen by polling the WAL (observe); a sync round that started at T and
// succeeded covers every change observed before T.
type lagTracker struct {
	mu      sync.Mutex
	now     func() time.Time
	walPath string
	last    walMark
	// pending is when the oldest change not known to be replicated was seen.
	pending time.Time
	inRound bool
	// duringRound is when the first change after the round's start was seen.
	duringRound time.Time
}

func (l *lagTracker) observeLocked() {
	if l.walPath == "" {
		return
	}
	m := statWAL(l.walPath)
	if m == l.last {
		return
	}
	l.last = m
	now := l.now()
	if l.inRound {
		if l.duringRound.IsZero() {
			l.duringRound = now
		}
		// pending stays: it is older, or zero (then the change is not
		// covered by this round; endRound takes duringRound).
		if l.pending.IsZero() {
			l.pending = now
		}
		return
	}
	if l.pending.IsZero() {
		l.pending = now
	}
}

func (l *lagTracker) observe() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.observeLocked()
}

func (l *lagTracker) beginRound() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.observeLocked() // the state this round will read (or a later one)
	l.inRound = true
	l.duringRound = time.Time{}
}

func (l *lagTracker) endRound(ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.observeLocked()
	l.inRound = false
	if ok {
		l.pending = l.duringRound
	}
	l.duringRound = time.Time{}
}

func (l *lagTracker) lag() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending.IsZero() {
		return 0
	}
	return max(0, l.now().Sub(l.pending))
}
