package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/internal/tlsconfig"
	"github.com/modbot/modbot/systest"
)

// The e2e suite runs with TLS and client certificates on (SystemOptions.TLS):
// Raft between the config nodes, the config API, the pods' internal API and
// every call between them. This test checks it is really on, and that what
// the invariant of internal/tlsconfig and internal/httpapi promises holds on
// a running system: a client without a certificate, or one that does not
// verify the server, gets nothing; a certificate with the wrong token scope
// is refused; each refusal is a metric.
func TestWithTLSOnAClientWithoutACertificateOrWithTheWrongScopeIsRefusedAndCounted(t *testing.T) {
	s := newSystem(t, 1)
	s.addGateway()
	s.waitSettled(30 * time.Second)
	if s.TLS == nil {
		t.Fatal("the e2e system runs without TLS")
	}
	cfgAddr := s.Cluster.Cfgs[0].HTTPAddr
	podAddr := s.Gateways[0].Addr()
	for _, u := range s.Cluster.URLs() {
		if !strings.HasPrefix(u, "https://") {
			t.Fatalf("config URL %s is not https", u)
		}
	}

	caPEM, err := os.ReadFile(s.Dir + "/tls/ca.crt")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	// Trusts the CA, presents no certificate.
	anon := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	// Presents nothing and trusts nothing: the system's CA is not public.
	public := &http.Client{Timeout: 5 * time.Second}

	for _, c := range []struct{ name, addr, path, component string }{
		{"config node", cfgAddr, "/v1/status", "config"},
		{"gateway pod", podAddr, "/status", "gateway"},
	} {
		before := s.metric(c.addr, fmt.Sprintf(`modbot_%s_tls_refusals_total{reason="no_client_cert"}`, c.component))
		// Probes pass without a certificate (the kubelet has none); the
		// API does not.
		if resp, err := anon.Get("https://" + c.addr + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("%s: a probe without a client certificate: %v %v, want 200", c.name, resp, err)
		} else {
			resp.Body.Close()
		}
		if resp, err := anon.Get("https://" + c.addr + c.path); err != nil {
			t.Errorf("%s: %v", c.name, err)
		} else {
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s: a client without a certificate was answered %d, want 401", c.name, resp.StatusCode)
			}
		}
		if resp, err := public.Get("https://" + c.addr + c.path); err == nil {
			resp.Body.Close()
			t.Errorf("%s: a client that cannot verify the server was answered", c.name)
		}
		if resp, err := public.Get("http://" + c.addr + c.path); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Errorf("%s: plain HTTP on the TLS port was answered 200: %s", c.name, body)
			}
		}
		if got := s.waitMetric(c.addr, fmt.Sprintf(`modbot_%s_tls_refusals_total{reason="no_client_cert"}`, c.component), before+1); got < before+1 {
			t.Errorf("%s: no_client_cert refusals %v, want ≥ %v", c.name, got, before+1)
		}

		// With the CA's certificate, a read token on an internal route is
		// refused 403, counted by scope.
		path := map[string]string{"config": "/v1/pods", "gateway": "/internal/events"}[c.component]
		method := http.MethodPost
		before = s.metric(c.addr, fmt.Sprintf(`modbot_%s_auth_refusals_total{reason="scope",scope="internal"}`, c.component))
		req, _ := http.NewRequest(method, "https://"+c.addr+path, strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+systest.ReadToken)
		resp, err := s.HTTP.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: the read token on %s %s answered %d, want 403", c.name, method, path, resp.StatusCode)
		}
		if got := s.metric(c.addr, fmt.Sprintf(`modbot_%s_auth_refusals_total{reason="scope",scope="internal"}`, c.component)); got != before+1 {
			t.Errorf("%s: scope refusals %v, want %v", c.name, got, before+1)
		}
	}
	// The certificate in use is exported with its expiry.
	if exp := s.metric(cfgAddr, "modbot_config_tls_cert_expiry_timestamp_seconds"); exp < float64(time.Now().Unix()) {
		t.Errorf("modbot_config_tls_cert_expiry_timestamp_seconds = %v, want a time after now", exp)
	}
	if n := s.TLS.Refusals(tlsconfig.RefusedBadServerCert); n != 0 {
		t.Errorf("the system's own clients refused %d server certificates", n)
	}
}

// metric reads one sample of the component at addr (0 when absent: a
// labelled counter appears at its first increment).
func (s *system) metric(addr, sample string) float64 {
	req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+systest.ReadToken)
	resp, err := s.HTTP.Do(req)
	if err != nil {
		s.t.Fatalf("metrics of %s: %v", addr, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	if !strings.Contains(string(body), "# TYPE ") {
		s.t.Fatalf("metrics of %s: not an exposition: %.200s", addr, body)
	}
	return 0
}

// waitMetric polls a counter until it reaches want (the server side of a
// refused handshake ends after the client saw its error).
func (s *system) waitMetric(addr, sample string, want float64) float64 {
	var got float64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got = s.metric(addr, sample); got >= want {
			break
		}
	}
	return got
}
