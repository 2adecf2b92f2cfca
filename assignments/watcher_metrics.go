package assignments

import (
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// watcherMetrics are one Watcher's Prometheus metrics, labelled
// watcher=<WatcherOptions.Name>.
type watcherMetrics struct {
	revision   prometheus.Gauge
	connected  prometheus.Gauge
	reconnects prometheus.Counter
	relists    prometheus.Counter
	events     prometheus.Counter
	ignored    prometheus.Counter
	overflows  prometheus.Counter
	staleness  prometheus.GaugeFunc
}

func newWatcherMetrics(w *Watcher, name string, reg prometheus.Registerer, log *slog.Logger) *watcherMetrics {
	labels := prometheus.Labels{"watcher": name}
	m := &watcherMetrics{
		revision: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "modbot_watcher_revision", ConstLabels: labels,
			Help: "Revision of the watcher's local assignment map.",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "modbot_watcher_connected", ConstLabels: labels,
			Help: "1 while a watch stream to a config node is open, else 0.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "modbot_watcher_reconnects_total", ConstLabels: labels,
			Help: "Watch streams that ended (or failed to open) and were retried.",
		}),
		relists: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "modbot_watcher_relists_total", ConstLabels: labels,
			Help: "Snapshots loaded (the first list, and every relist after 410 Gone or event: gone).",
		}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "modbot_watcher_events_total", ConstLabels: labels,
			Help: "Change events applied to the local map.",
		}),
		ignored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "modbot_watcher_ignored_total", ConstLabels: labels,
			Help: "Changes ignored because their revision was not newer than the local map's (duplicate or out of order).",
		}),
		overflows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "modbot_watcher_subscriber_overflows_total", ConstLabels: labels,
			Help: "Times a subscriber's buffer was full and its pending changes were coalesced into a Relisted change.",
		}),
	}
	m.staleness = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "modbot_watcher_staleness_seconds", ConstLabels: labels,
		Help: "Seconds since the watcher last had proof that its map was the cluster's current one (progress from a node that knows a leader and is not behind), computed at scrape.",
	}, func() float64 { return w.Staleness().Seconds() })
	if reg != nil {
		for _, c := range []prometheus.Collector{m.revision, m.connected, m.reconnects, m.relists, m.events, m.ignored, m.overflows, m.staleness} {
			if err := reg.Register(c); err != nil {
				var are prometheus.AlreadyRegisteredError
				if errors.As(err, &are) {
					log.Warn("watcher metric already registered; use a distinct WatcherOptions.Name", "err", err)
					continue
				}
				log.Warn("register watcher metric", "err", err)
			}
		}
	}
	return m
}
