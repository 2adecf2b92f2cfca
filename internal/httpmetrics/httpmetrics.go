// Package httpmetrics is the request-latency histogram every modbot HTTP
// server exports, labelled by component, gorilla/mux route template, method
// and status, so dashboards and alerts read one metric for all of them.
package httpmetrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
)

// Buckets suit request latencies from 0.2 ms to 5 s.
var Buckets = []float64{.0002, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// NewHistogram returns modbot_http_request_duration_seconds.
func NewHistogram() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "modbot_http_request_duration_seconds",
		Help:    "HTTP request latency by component, route, method and status.",
		Buckets: Buckets,
	}, []string{"component", "route", "method", "code"})
}

// Middleware observes every request's latency; routes listed in streaming
// (long-lived streams such as /v1/watch) are not timed.
func Middleware(h *prometheus.HistogramVec, component string, streaming ...string) mux.MiddlewareFunc {
	skip := map[string]bool{}
	for _, s := range streaming {
		skip[s] = true
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			route := "other"
			if cr := mux.CurrentRoute(r); cr != nil {
				if t, err := cr.GetPathTemplate(); err == nil {
					route = t
				}
			}
			if skip[route] {
				next.ServeHTTP(w, r)
				return
			}
			sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
			start := time.Now()
			next.ServeHTTP(sw, r)
			h.WithLabelValues(component, route, r.Method, strconv.Itoa(sw.code)).Observe(time.Since(start).Seconds())
		})
	}
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(c int) { s.code = c; s.ResponseWriter.WriteHeader(c) }

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
