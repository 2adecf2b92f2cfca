package tlsconfig

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports r's counters as modbot_<component>_tls_…: refusals by
// reason, reloads by result, and the loaded certificate's expiry (alert on
// it well before it passes). Nil when TLS is off.
func (r *Reloader) Collector(component string) prometheus.Collector {
	if r == nil {
		return nil
	}
	p := "modbot_" + component + "_tls_"
	return &collector{r: r,
		refusals: prometheus.NewDesc(p+"refusals_total", "TLS handshakes refused, by reason (no_client_cert, bad_client_cert, bad_server_cert).", []string{"reason"}, nil),
		reloads:  prometheus.NewDesc(p+"reloads_total", "Changed certificate files seen, by result (ok: in use; error: refused, the old ones stay).", []string{"result"}, nil),
		expiry:   prometheus.NewDesc(p+"cert_expiry_timestamp_seconds", "When the certificate in use expires (Unix time).", nil, nil),
	}
}

type collector struct {
	r                         *Reloader
	refusals, reloads, expiry *prometheus.Desc
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.refusals
	ch <- c.reloads
	ch <- c.expiry
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, reason := range []string{RefusedNoClientCert, RefusedBadClientCert, RefusedBadServerCert} {
		ch <- prometheus.MustNewConstMetric(c.refusals, prometheus.CounterValue, float64(c.r.Refusals(reason)), reason)
	}
	ok, failed := c.r.Reloads()
	ch <- prometheus.MustNewConstMetric(c.reloads, prometheus.CounterValue, float64(ok), "ok")
	ch <- prometheus.MustNewConstMetric(c.reloads, prometheus.CounterValue, float64(failed), "error")
	ch <- prometheus.MustNewConstMetric(c.expiry, prometheus.GaugeValue, float64(c.r.CertNotAfter().Unix()))
}
