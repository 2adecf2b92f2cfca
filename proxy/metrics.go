package proxy

import (
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/httpmetrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	reg          *prometheus.Registry
	httpLatency  *prometheus.HistogramVec
	authRefusals *prometheus.CounterVec
	forwardErrs  *prometheus.CounterVec
	holds        *prometheus.CounterVec
	holdTime     prometheus.Histogram
	deferred     prometheus.Counter
	sigFailures  *prometheus.CounterVec
	misdirected  prometheus.Counter
	interactions *prometheus.CounterVec
	// dashboardRefusals counts /guild/{id}/… requests refused with 401.
	dashboardRefusals *prometheus.CounterVec
	unsafePaths       prometheus.Counter
	logins            *prometheus.CounterVec
	sessionRefusals   prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, m Map, replay *replayCache) *metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	x := &metrics{
		reg:          reg,
		httpLatency:  httpmetrics.NewHistogram(),
		authRefusals: httpapi.NewRefusalCounter("proxy"),
		forwardErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modbot_proxy_forward_errors_total",
			Help: "Requests the owner pod did not answer: refused (connection failed), timeout, pod_down (marked down in the map), no_pod, misdirected (421 after the retry).",
		}, []string{"reason"}),
		holds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modbot_proxy_holds_total",
			Help: "Requests held because their guild was migrating, by outcome: active (served after the move), timeout (503 or sent on), canceled (client left).",
		}, []string{"result"}),
		holdTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "modbot_proxy_hold_duration_seconds", Help: "How long requests for migrating guilds were held.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		deferred: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "modbot_proxy_interactions_deferred_total",
			Help: "Interactions the proxy answered itself with a deferred response (type 5) because the owner did not answer within the budget.",
		}),
		sigFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modbot_proxy_signature_failures_total",
			Help: "Webhook requests refused with 401, by reason: missing_signature, missing_timestamp, malformed_signature, malformed_timestamp, bad_signature, stale_timestamp (outside the freshness window), replayed (already accepted by this replica).",
		}, []string{"reason"}),
		misdirected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "modbot_proxy_misdirected_total", Help: "421 answers from pods (the proxy's map was behind); each is retried once.",
		}),
		interactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modbot_proxy_interactions_total", Help: "Verified interactions by outcome: pong, answered, deferred, failed.",
		}, []string{"result"}),
	}
	x.dashboardRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "modbot_proxy_dashboard_refusals_total",
		Help: "Requests under /guild/{id}/ refused with 401 (never forwarded), by reason: anonymous, wrong_token, no_admin_token (the proxy has none configured).",
	}, []string{"reason"})
	x.unsafePaths = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "modbot_proxy_unsafe_paths_total",
		Help: "Requests refused with 400 because their path had a dot-segment or an encoded slash (never routed).",
	})
	x.logins = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "modbot_proxy_logins_total", Help: "Discord sign-ins finished at /callback, by result: ok, state_mismatch, denied, exchange_failed.",
	}, []string{"result"})
	x.sessionRefusals = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "modbot_proxy_session_refusals_total", Help: "Session cookies refused (tampered, sealed with another key, or expired).",
	})
	replayEntries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "modbot_proxy_replay_cache_entries", Help: "Accepted webhook signatures this replica remembers to refuse replays.",
	}, func() float64 { n, _ := replay.stats(); return float64(n) })
	replayEvictions := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "modbot_proxy_replay_cache_evictions_total",
		Help: "Replay-cache entries dropped before their timestamp left the window because the cache was full (each could be replayed once more to this replica; raise --webhook-replay-cache-size if this grows).",
	}, func() float64 { _, n := replay.stats(); return float64(n) })
	rev := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "modbot_proxy_map_revision", Help: "Revision of the assignment map the proxy routes by.",
	}, func() float64 { return float64(m.Revision()) })
	reg.MustRegister(x.httpLatency, x.authRefusals, x.forwardErrs, x.holds, x.holdTime, x.deferred, x.sigFailures, x.misdirected, x.interactions,
		x.dashboardRefusals, x.unsafePaths, x.logins, x.sessionRefusals, replayEntries, replayEvictions, rev)
	return x
}

// recorder captures the status and the routing facts for the request log.
type recorder struct {
	http.ResponseWriter
	status int
	wrote  bool
	guild  uint64
	pod    string
}

func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if !r.wrote {
		r.status, r.wrote = http.StatusOK, true
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

var recorderPool = sync.Pool{New: func() any { return new(recorder) }}

// note records the guild and pod of a request for the log.
func note(w http.ResponseWriter, guild uint64, pod string) {
	if rec, ok := w.(*recorder); ok {
		if guild != 0 {
			rec.guild = guild
		}
		if pod != "" {
			rec.pod = pod
		}
	}
}

// instrument observes latency and writes the request log.
func (p *Proxy) instrument(route string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := recorderPool.Get().(*recorder)
		*rec = recorder{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			d := time.Since(start)
			code := rec.status
			if r.Context().Err() != nil && !rec.wrote {
				code = 499 // the client went away first
			}
			p.m.httpLatency.WithLabelValues("proxy", route, r.Method, strconv.Itoa(code)).Observe(d.Seconds())
			if p.log.Enabled(r.Context(), slog.LevelInfo) {
				attrs := []slog.Attr{
					slog.String("method", r.Method), slog.String("route", route), slog.String("path", r.URL.Path),
					slog.Int("status", code), slog.Duration("duration", d),
				}
				if rec.guild != 0 {
					attrs = append(attrs, slog.Uint64("guild", rec.guild))
				}
				if rec.pod != "" {
					attrs = append(attrs, slog.String("pod", rec.pod))
				}
				p.log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
			}
			*rec = recorder{}
			recorderPool.Put(rec)
		}()
		h.ServeHTTP(rec, r)
	})
}

// errorBody is every error the proxy answers itself.
type errorBody struct {
	Error string `json:"error"`
	Guild string `json:"guild,omitempty"`
	Owner string `json:"owner,omitempty"`
}
