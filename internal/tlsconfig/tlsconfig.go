// Package tlsconfig is the TLS of modbot's internal traffic: the Raft
// transport between config nodes and every internal HTTP API (config nodes,
// gateway pods, proxies, and the clients between them), with optional client
// certificates (mTLS). Certificates come from PEM files (a cert-manager
// Certificate's Secret in Kubernetes) and are reloaded when the files change.
//
// The invariants a Reloader holds:
//
//   - Once enabled, a peer is verified against the CA bundle on every
//     handshake, both ways: a server certificate must chain to the CA and
//     name the host dialled; with client auth on, a client without a
//     certificate, or with one that does not chain to the CA, is refused,
//     and each refusal is counted (Refusals, and the collector's
//     modbot_<component>_tls_refusals_total{reason}).
//   - A change to the files (rewritten in place or swapped by a symlink, as
//     Kubernetes updates a mounted Secret) is served from the next handshake
//     after the check interval, without a restart; connections already open
//     keep their certificate.
//   - A rewrite that does not parse (a half-written file, a key that does not
//     match) never replaces what is loaded: the old certificate and CA stay
//     in use, the failure is counted and logged, and the next valid rewrite
//     is picked up.
//
// A nil *Reloader is TLS off: its methods answer plain HTTP.
package tlsconfig

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// Files names the PEM files of one component (--tls-cert, --tls-key,
// --tls-ca, --tls-client-auth).
type Files struct {
	Cert, Key string // this component's certificate (chain) and key
	// CA is the bundle peers are verified against: servers' certificates by
	// clients, clients' certificates by servers when ClientAuth is on.
	CA string
	// ClientAuth requires a client certificate on every connection this
	// component accepts (mTLS); clients present Cert/Key either way.
	ClientAuth bool
}

// Enabled says whether any TLS is configured.
func (f Files) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// Validate checks that the flags make a whole: a certificate needs its key
// and a CA to verify peers with; client auth needs TLS.
func (f Files) Validate() error {
	if !f.Enabled() {
		if f.ClientAuth {
			return errors.New("--tls-client-auth needs --tls-cert, --tls-key and --tls-ca")
		}
		return nil
	}
	switch {
	case (f.Cert == "") != (f.Key == ""):
		return errors.New("TLS needs both --tls-cert and --tls-key")
	case f.Cert == "" && f.ClientAuth:
		return errors.New("--tls-client-auth needs --tls-cert and --tls-key: a server needs a certificate")
	case f.CA == "":
		return errors.New("TLS needs --tls-ca: the CA bundle that peers' certificates are verified against")
	}
	return nil
}

// Options tune a Reloader.
type Options struct {
	Logger *slog.Logger
	// CheckInterval is how often a handshake may re-read the files (default
	// 5 s): a rotation is in use at most this long after it lands.
	CheckInterval time.Duration
}

// Refusal reasons: the "reason" label of the refusal counter.
const (
	RefusedNoClientCert  = "no_client_cert"
	RefusedBadClientCert = "bad_client_cert"
	RefusedBadServerCert = "bad_server_cert"
)

// Reloader holds the current certificate and CA pool and hands out
// tls.Configs that always use them.
type Reloader struct {
	files Files
	opt   Options

	mu        sync.RWMutex
	cert      *tls.Certificate
	pool      *x509.CertPool
	notAfter  time.Time
	digest    [sha256.Size]byte // of the three files as last loaded
	checked   time.Time
	reloads   uint64
	failures  uint64
	lastError error
	refusals  map[string]uint64
}

// New loads the files once; an error names what is wrong with them. With no
// TLS configured it returns nil, nil: a nil Reloader is plain HTTP.
func New(f Files, opt Options) (*Reloader, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	if !f.Enabled() {
		return nil, nil
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.CheckInterval <= 0 {
		opt.CheckInterval = 5 * time.Second
	}
	r := &Reloader{files: f, opt: opt, refusals: map[string]uint64{}}
	raw, digest, err := r.read()
	if err == nil {
		err = r.install(raw, digest)
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

type rawFiles struct{ cert, key, ca []byte }

func (r *Reloader) read() (rawFiles, [sha256.Size]byte, error) {
	var raw rawFiles
	var err error
	if r.files.Cert != "" {
		if raw.cert, err = os.ReadFile(r.files.Cert); err != nil {
			return raw, [sha256.Size]byte{}, fmt.Errorf("reading the TLS certificate: %w", err)
		}
		if raw.key, err = os.ReadFile(r.files.Key); err != nil {
			return raw, [sha256.Size]byte{}, fmt.Errorf("reading the TLS key: %w", err)
		}
	}
	if raw.ca, err = os.ReadFile(r.files.CA); err != nil {
		return raw, [sha256.Size]byte{}, fmt.Errorf("reading the TLS CA bundle: %w", err)
	}
	h := sha256.New()
	for _, b := range [][]byte{raw.cert, raw.key, raw.ca} {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var d [sha256.Size]byte
	copy(d[:], h.Sum(nil))
	return raw, d, nil
}

// install parses the files and, only when all of them are valid, makes
// them current.
func (r *Reloader) install(raw rawFiles, digest [sha256.Size]byte) error {
	var cert *tls.Certificate
	var notAfter time.Time
	if r.files.Cert != "" {
		c, err := tls.X509KeyPair(raw.cert, raw.key)
		if err != nil {
			return fmt.Errorf("loading the TLS certificate %s and key %s: %w", r.files.Cert, r.files.Key, err)
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return fmt.Errorf("parsing the TLS certificate %s: %w", r.files.Cert, err)
		}
		c.Leaf = leaf
		cert, notAfter = &c, leaf.NotAfter
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw.ca) || !bytes.Contains(raw.ca, []byte("-----BEGIN CERTIFICATE-----")) {
		return fmt.Errorf("the TLS CA bundle %s holds no PEM certificate", r.files.CA)
	}
	r.mu.Lock()
	r.cert, r.pool, r.notAfter, r.digest = cert, pool, notAfter, digest
	r.mu.Unlock()
	return nil
}

// Reload re-reads the files now and installs them if they changed and are
// valid; on an error the loaded certificate and CA stay in use.
func (r *Reloader) Reload() error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	r.checked = time.Now()
	r.mu.Unlock()
	raw, digest, err := r.read()
	if err == nil {
		r.mu.RLock()
		same := digest == r.digest
		r.mu.RUnlock()
		if same {
			return nil
		}
		err = r.install(raw, digest)
	}
	r.mu.Lock()
	if err != nil {
		r.failures++
		r.lastError = err
	} else {
		r.reloads++
		r.lastError = nil
	}
	r.mu.Unlock()
	if err != nil {
		r.opt.Logger.Error("TLS files not reloaded; the loaded certificate stays in use", "err", err)
		return err
	}
	r.opt.Logger.Info("TLS files reloaded", "cert", r.files.Cert, "not_after", r.CertNotAfter().UTC().Format(time.RFC3339))
	return nil
}

// refuse counts a refused peer.
func (r *Reloader) refuse(reason string) {
	r.mu.Lock()
	r.refusals[reason]++
	r.mu.Unlock()
}

// Refusals is how many handshakes were refused for reason.
func (r *Reloader) Refusals(reason string) uint64 {
	if r == nil {
		return 0
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.refusals[reason]
}

// current returns the certificate and pool, re-reading the files first when
// the check interval has passed.
func (r *Reloader) current() (*tls.Certificate, *x509.CertPool) {
	r.mu.RLock()
	due := time.Since(r.checked) >= r.opt.CheckInterval
	r.mu.RUnlock()
	if due {
		_ = r.Reload() // logged and counted; the old files stay in use
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cert, r.pool
}

// Reloads is how many times changed files were installed; Failures how many
// changed files were refused.
func (r *Reloader) Reloads() (ok, failed uint64) {
	if r == nil {
		return 0, 0
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.reloads, r.failures
}

// CertNotAfter is when the loaded certificate expires (zero when TLS is off).
func (r *Reloader) CertNotAfter() time.Time {
	if r == nil {
		return time.Time{}
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.notAfter
}

// Scheme is "https" with TLS on and "http" without.
func (r *Reloader) Scheme() string {
	if r == nil {
		return "http"
	}
	return "https"
}

// ClientAuth says whether this component requires client certificates.
func (r *Reloader) ClientAuth() bool { return r != nil && r.files.ClientAuth }

// ServerConfig is the tls.Config of a listener that is not HTTP (the Raft
// transport): it serves the current certificate and, with client auth on,
// refuses in the handshake a client without a certificate that verifies
// against the current CA. Nil when TLS is off.
func (r *Reloader) ServerConfig() *tls.Config { return r.serverConfig(true) }

// HTTPServerConfig is ServerConfig for an HTTP listener, whose handler is
// wrapped in RequireClientCert: a client certificate that does not verify
// is refused in the handshake, but one that presents none gets to the
// handler, which answers it 401 except on the probe paths (the kubelet's
// HTTPS probes present no certificate). Nil when TLS is off.
func (r *Reloader) HTTPServerConfig() *tls.Config { return r.serverConfig(false) }

func (r *Reloader) serverConfig(strict bool) *tls.Config {
	if r == nil {
		return nil
	}
	c := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			cert, _ := r.current()
			if cert == nil {
				return nil, errors.New("no TLS certificate to serve (--tls-cert)")
			}
			return cert, nil
		},
	}
	if r.files.ClientAuth {
		// Requested, then verified here rather than by crypto/tls, so the
		// pool is the current one and every refusal is counted.
		c.ClientAuth = tls.RequestClientCert
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				if !strict {
					return nil // RequireClientCert answers it
				}
				r.refuse(RefusedNoClientCert)
				return errors.New("a client certificate is required")
			}
			_, pool := r.current()
			if err := verify(cs.PeerCertificates, pool, "", x509.ExtKeyUsageClientAuth); err != nil {
				r.refuse(RefusedBadClientCert)
				return fmt.Errorf("client certificate refused: %w", err)
			}
			return nil
		}
	}
	return c
}

// RequireClientCert wraps the handler of a listener on HTTPServerConfig:
// with client auth on, a request over a connection that presented no
// certificate is refused 401 and counted (no_client_cert), except on the
// open paths (probes: /healthz, /readyz). A certificate that was presented
// was verified in the handshake. With TLS or client auth off it is h.
func (r *Reloader) RequireClientCert(h http.Handler, open ...string) http.Handler {
	if !r.ClientAuth() {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.TLS != nil && len(req.TLS.PeerCertificates) > 0 {
			h.ServeHTTP(w, req)
			return
		}
		for _, p := range open {
			if req.URL.Path == p {
				h.ServeHTTP(w, req)
				return
			}
		}
		r.refuse(RefusedNoClientCert)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"error":"a client certificate signed by the cluster's CA is required (mTLS: --tls-cert, --tls-key)"}`+"\n")
	})
}

// ClientConfigFor is the tls.Config of a connection this component dials
// to addr (host:port): it presents the current certificate and verifies the
// server's against the current CA and addr's host (a name or an IP
// address). Nil when TLS is off.
func (r *Reloader) ClientConfigFor(addr string) *tls.Config {
	if r == nil {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: host,
		NextProtos: []string{"h2", "http/1.1"},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, _ := r.current()
			if cert == nil {
				return &tls.Certificate{}, nil // none: a server requiring one refuses us
			}
			return cert, nil
		},
		// crypto/tls would verify against a pool fixed when the config was
		// made; the check below is the same verification with the current
		// pool. The host is the one dialled (ConnectionState.ServerName is
		// empty for an IP address).
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, pool := r.current()
			if err := verify(cs.PeerCertificates, pool, host, x509.ExtKeyUsageServerAuth); err != nil {
				r.refuse(RefusedBadServerCert)
				return fmt.Errorf("server certificate of %s refused: %w", addr, err)
			}
			return nil
		},
	}
}

// verify checks a peer's chain against pool; name, when set, must be one
// the leaf certificate is for.
func verify(chain []*x509.Certificate, pool *x509.CertPool, name string, usage x509.ExtKeyUsage) error {
	if len(chain) == 0 {
		return errors.New("no certificate presented")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// Transport returns an http.Transport for internal calls: base's settings
// (nil: http.DefaultTransport's) with this component's client TLS on every
// connection it dials. With TLS off it is base unchanged.
func (r *Reloader) Transport(base *http.Transport) *http.Transport {
	return r.TransportNamed(base, "")
}

// TransportNamed is Transport verifying every server's certificate for name
// instead of the host dialled (when name is set): config nodes reach each
// other by the pod IPs the map records, and share one certificate name.
func (r *Reloader) TransportNamed(base *http.Transport, name string) *http.Transport {
	if base == nil {
		base = http.DefaultTransport.(*http.Transport).Clone()
	}
	if r == nil {
		return base
	}
	dial := base.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	base.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		raw, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		target := addr
		if name != "" {
			target = name
		}
		c := tls.Client(raw, r.ClientConfigFor(target))
		if err := c.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		return c, nil
	}
	base.ForceAttemptHTTP2 = true
	return base
}
