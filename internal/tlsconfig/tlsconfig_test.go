package tlsconfig_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/modbot/modbot/internal/tlsconfig"
	"github.com/modbot/modbot/internal/tlsconfig/tlstest"
)

func newReloader(t *testing.T, f tlsconfig.Files) *tlsconfig.Reloader {
	t.Helper()
	r, err := tlsconfig.New(f, tlsconfig.Options{CheckInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// serve starts an HTTPS server with r's server config; it answers with the
// serial of the certificate it served, so a test sees which one was used.
func serve(t *testing.T, r *tlsconfig.Reloader) *server {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", r.ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &server{URL: "https://" + ln.Addr().String()}
}

type server struct{ URL string }

// get makes one request on a fresh connection and returns the serial of the
// server's certificate.
func get(c *tlsconfig.Reloader, url string) (string, error) {
	tr := c.Transport(nil)
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.TLS.PeerCertificates[0].SerialNumber.String(), nil
}

func TestFilesValidateNamesWhatIsMissing(t *testing.T) {
	for _, tc := range []struct {
		f    tlsconfig.Files
		want string
	}{
		{tlsconfig.Files{Cert: "c"}, "both --tls-cert and --tls-key"},
		{tlsconfig.Files{Cert: "c", Key: "k"}, "--tls-ca"},
		{tlsconfig.Files{CA: "ca", ClientAuth: true}, "a server needs a certificate"},
		{tlsconfig.Files{ClientAuth: true}, "--tls-client-auth needs"},
	} {
		err := tc.f.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want %q", tc.f, err, tc.want)
		}
	}
	if r, err := tlsconfig.New(tlsconfig.Files{}, tlsconfig.Options{}); r != nil || err != nil {
		t.Errorf("no files: %v, %v; want TLS off (nil, nil)", r, err)
	}
	var off *tlsconfig.Reloader
	if off.Scheme() != "http" || off.ServerConfig() != nil || off.ClientConfigFor("a:1") != nil || off.Transport(nil).DialTLSContext != nil {
		t.Error("a nil Reloader must be plain HTTP")
	}
}

func TestNewRefusesFilesThatDoNotParse(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	dir := t.TempDir()
	f := ca.WriteFiles(t, dir, false, "127.0.0.1")
	other := tlstest.NewCA(t, "other")
	_, otherKey := other.Issue(t, time.Hour, "127.0.0.1")
	for name, mutate := range map[string]func(){
		"key of another certificate": func() { os.WriteFile(f.Key, otherKey, 0o600) },
		"CA bundle without a PEM":    func() { os.WriteFile(f.CA, []byte("not a certificate"), 0o600) },
		"missing certificate file":   func() { os.Remove(f.Cert) },
	} {
		t.Run(name, func(t *testing.T) {
			f := ca.WriteFiles(t, dir, false, "127.0.0.1")
			mutate()
			if _, err := tlsconfig.New(f, tlsconfig.Options{}); err == nil {
				t.Fatal("New accepted broken TLS files")
			}
		})
	}
}

func TestAClientWithoutACertificateIsRefusedAndCounted(t *testing.T) {
	ca := tlstest.NewCA(t, "modbot")
	server := newReloader(t, ca.WriteFiles(t, t.TempDir(), true, "127.0.0.1"))
	srv := serve(t, server)

	// A client that trusts the CA but presents no certificate.
	anon := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: poolOf(ca.Cert)}}}
	if resp, err := anon.Get(srv.URL); err == nil {
		resp.Body.Close()
		t.Fatal("a client without a certificate was served")
	} else {
		t.Logf("anonymous client: %v", err)
	}
	waitFor(t, func() bool { return server.Refusals(tlsconfig.RefusedNoClientCert) == 1 }, "the refusal counted once")

	// A client with a certificate from another CA.
	other := newReloader(t, tlstest.NewCA(t, "other").WriteFiles(t, t.TempDir(), false, "127.0.0.1"))
	withOther := other.ClientConfigFor("127.0.0.1:0")
	withOther.InsecureSkipVerify, withOther.VerifyConnection = true, nil // it trusts anything; the server must not
	if resp, err := (&http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: withOther}}).Get(srv.URL); err == nil {
		resp.Body.Close()
		t.Fatal("a client certificate from another CA was accepted")
	}
	waitFor(t, func() bool { return server.Refusals(tlsconfig.RefusedBadClientCert) == 1 }, "the bad certificate counted once")

	// One from the right CA is served.
	good := newReloader(t, ca.WriteFiles(t, t.TempDir(), false, "client"))
	if _, err := get(good, srv.URL); err != nil {
		t.Fatalf("a client with a certificate from the CA: %v", err)
	}
}

func TestAServerCertificateForAnotherNameIsRefused(t *testing.T) {
	ca := tlstest.NewCA(t, "modbot")
	srv := serve(t, newReloader(t, ca.WriteFiles(t, t.TempDir(), false, "config-9.example")))
	client := newReloader(t, ca.WriteFiles(t, t.TempDir(), false, "client"))
	_, err := get(client, srv.URL) // dials 127.0.0.1: not a name of the certificate
	if err == nil || !strings.Contains(err.Error(), "refused: x509") {
		t.Fatalf("err %v, want the server's certificate refused", err)
	}
	if n := client.Refusals(tlsconfig.RefusedBadServerCert); n != 1 {
		t.Errorf("bad_server_cert refusals %d, want 1", n)
	}
	// Verified for a name other than the host dialled (config nodes).
	named := &http.Client{Timeout: 5 * time.Second, Transport: client.TransportNamed(nil, "config-9.example")}
	if resp, err := named.Get(srv.URL); err != nil {
		t.Fatalf("TransportNamed with the certificate's name: %v", err)
	} else {
		resp.Body.Close()
	}
	// A server the client's CA did not sign is refused the same way.
	stranger := serve(t, newReloader(t, tlstest.NewCA(t, "stranger").WriteFiles(t, t.TempDir(), false, "127.0.0.1")))
	if _, err := get(client, stranger.URL); err == nil {
		t.Fatal("a server certificate from another CA was accepted")
	}
	// Dialled by name directly (the Raft transport's way), the name is checked.
	addr := strings.TrimPrefix(srv.URL, "https://")
	if conn, err := tls.Dial("tcp", addr, client.ClientConfigFor(addr)); err == nil {
		conn.Close()
		t.Fatal("a direct dial accepted a certificate for another name")
	}
}

func TestARotatedCertificateIsServedWithoutARestart(t *testing.T) {
	ca := tlstest.NewCA(t, "modbot")
	dir := t.TempDir()
	server := newReloader(t, ca.WriteFiles(t, dir, false, "127.0.0.1"))
	srv := serve(t, server)
	client := newReloader(t, ca.WriteFiles(t, t.TempDir(), false, "client"))
	first, err := get(client, srv.URL)
	if err != nil {
		t.Fatal(err)
	}

	// Rewritten in place.
	ca.WriteFiles(t, dir, false, "127.0.0.1")
	time.Sleep(5 * time.Millisecond)
	second, err := get(client, srv.URL)
	if err != nil || second == first {
		t.Fatalf("after an in-place rewrite: serial %s (was %s), err %v; want the new certificate", second, first, err)
	}

	// Swapped by a symlink, as the kubelet updates a mounted Secret:
	// dir/tls.crt -> ..data/tls.crt, ..data -> a timestamped directory.
	sdir := t.TempDir()
	link := func(gen string) {
		tmp := filepath.Join(sdir, "..data_tmp")
		if err := os.Symlink(gen, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(sdir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	ca.WriteFiles(t, filepath.Join(sdir, "gen1"), false, "127.0.0.1")
	link("gen1")
	for _, n := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", n), filepath.Join(sdir, n)); err != nil {
			t.Fatal(err)
		}
	}
	files := tlsconfig.Files{Cert: filepath.Join(sdir, "tls.crt"), Key: filepath.Join(sdir, "tls.key"), CA: filepath.Join(sdir, "ca.crt")}
	swapped := newReloader(t, files)
	ssrv := serve(t, swapped)
	g1, err := get(client, ssrv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ca.WriteFiles(t, filepath.Join(sdir, "gen2"), false, "127.0.0.1")
	link("gen2")
	time.Sleep(5 * time.Millisecond)
	g2, err := get(client, ssrv.URL)
	if err != nil || g2 == g1 {
		t.Fatalf("after a symlink swap: serial %s (was %s), err %v; want the new certificate", g2, g1, err)
	}
	if ok, _ := server.Reloads(); ok != 1 {
		t.Errorf("reloads %d, want 1", ok)
	}
}

func TestAnInvalidRewriteKeepsTheLoadedCertificate(t *testing.T) {
	ca := tlstest.NewCA(t, "modbot")
	dir := t.TempDir()
	server := newReloader(t, ca.WriteFiles(t, dir, false, "127.0.0.1"))
	srv := serve(t, server)
	client := newReloader(t, ca.WriteFiles(t, t.TempDir(), false, "client"))
	before, err := get(client, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	notAfter := server.CertNotAfter()

	// A half-written certificate: the first bytes of a new one.
	cert, _ := ca.Issue(t, time.Hour, "127.0.0.1")
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), cert[:len(cert)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	after, err := get(client, srv.URL)
	if err != nil || after != before {
		t.Fatalf("after a broken rewrite: serial %s (was %s), err %v; want the loaded certificate still served", after, before, err)
	}
	if _, failed := server.Reloads(); failed == 0 {
		t.Errorf("a broken rewrite was not counted (failures %d)", failed)
	}
	if !server.CertNotAfter().Equal(notAfter) {
		t.Error("a broken rewrite changed the certificate's expiry")
	}

	// The next valid rewrite is picked up.
	ca.WriteFiles(t, dir, false, "127.0.0.1")
	time.Sleep(5 * time.Millisecond)
	if fixed, err := get(client, srv.URL); err != nil || fixed == before {
		t.Fatalf("after a valid rewrite: serial %s, err %v; want a new certificate", fixed, err)
	}
}

func TestARotatedCAIsTrustedWithoutARestart(t *testing.T) {
	oldCA, newCA := tlstest.NewCA(t, "old"), tlstest.NewCA(t, "new")
	sdir, cdir := t.TempDir(), t.TempDir()
	server := newReloader(t, oldCA.WriteFiles(t, sdir, true, "127.0.0.1"))
	srv := serve(t, server)
	client := newReloader(t, oldCA.WriteFiles(t, cdir, false, "client"))
	if _, err := get(client, srv.URL); err != nil {
		t.Fatal(err)
	}
	// Step 1 of a CA rotation: both sides trust both CAs; certificates are
	// still the old CA's.
	both := append(append([]byte{}, oldCA.PEM...), newCA.PEM...)
	for _, d := range []string{sdir, cdir} {
		if err := os.WriteFile(filepath.Join(d, "ca.crt"), both, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Step 2: the server moves to a certificate of the new CA.
	cert, key := newCA.Issue(t, time.Hour, "127.0.0.1")
	os.WriteFile(filepath.Join(sdir, "tls.crt"), cert, 0o600)
	os.WriteFile(filepath.Join(sdir, "tls.key"), key, 0o600)
	time.Sleep(5 * time.Millisecond)
	if _, err := get(client, srv.URL); err != nil {
		t.Fatalf("during a CA rotation: %v", err)
	}
	// Step 3: the old CA is dropped; a client still on an old certificate
	// is refused, one on the new CA is served.
	for _, d := range []string{sdir, cdir} {
		os.WriteFile(filepath.Join(d, "ca.crt"), newCA.PEM, 0o600)
	}
	time.Sleep(5 * time.Millisecond)
	if _, err := get(client, srv.URL); err == nil {
		t.Fatal("a client certificate of a dropped CA was accepted")
	}
	newCA.WriteFiles(t, cdir, false, "client")
	time.Sleep(5 * time.Millisecond)
	if _, err := get(client, srv.URL); err != nil {
		t.Fatalf("after the CA rotation: %v", err)
	}
}

func poolOf(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

// waitFor polls cond for up to 5 s: the server side of a refused handshake
// finishes after the client has seen its error.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestTheCollectorExportsRefusalsReloadsAndExpiry(t *testing.T) {
	ca := tlstest.NewCA(t, "modbot")
	dir := t.TempDir()
	server := newReloader(t, ca.WriteFiles(t, dir, true, "127.0.0.1"))
	srv := serve(t, server)
	anon := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: poolOf(ca.Cert)}}}
	if resp, err := anon.Get(srv.URL); err == nil {
		resp.Body.Close()
		t.Fatal("a client without a certificate was served")
	}
	waitFor(t, func() bool { return server.Refusals(tlsconfig.RefusedNoClientCert) == 1 }, "the refusal")
	os.WriteFile(filepath.Join(dir, "tls.key"), []byte("garbage"), 0o600)
	if err := server.Reload(); err == nil {
		t.Fatal("a garbage key was reloaded")
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(server.Collector("gateway"))
	want := fmt.Sprintf(`
# HELP modbot_gateway_tls_cert_expiry_timestamp_seconds When the certificate in use expires (Unix time).
# TYPE modbot_gateway_tls_cert_expiry_timestamp_seconds gauge
modbot_gateway_tls_cert_expiry_timestamp_seconds %g
# HELP modbot_gateway_tls_refusals_total TLS handshakes refused, by reason (no_client_cert, bad_client_cert, bad_server_cert).
# TYPE modbot_gateway_tls_refusals_total counter
modbot_gateway_tls_refusals_total{reason="bad_client_cert"} 0
modbot_gateway_tls_refusals_total{reason="bad_server_cert"} 0
modbot_gateway_tls_refusals_total{reason="no_client_cert"} 1
# HELP modbot_gateway_tls_reloads_total Changed certificate files seen, by result (ok: in use; error: refused, the old ones stay).
# TYPE modbot_gateway_tls_reloads_total counter
modbot_gateway_tls_reloads_total{result="error"} 1
modbot_gateway_tls_reloads_total{result="ok"} 0
`, float64(server.CertNotAfter().Unix()))
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// modbotctl may hold only the CA: it verifies servers, and a server that
// requires client certificates refuses it.
func TestACAOnlyClientVerifiesServersAndIsRefusedByMTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "modbot")
	dir := t.TempDir()
	files := ca.WriteFiles(t, dir, false, "127.0.0.1")
	client := newReloader(t, tlsconfig.Files{CA: files.CA})
	if _, err := get(client, serve(t, newReloader(t, files)).URL); err != nil {
		t.Fatalf("a CA-only client and a server without client auth: %v", err)
	}
	strict := newReloader(t, ca.WriteFiles(t, t.TempDir(), true, "127.0.0.1"))
	if _, err := get(client, serve(t, strict).URL); err == nil {
		t.Fatal("a server requiring client certificates served a client without one")
	}
	waitFor(t, func() bool { return strict.Refusals(tlsconfig.RefusedNoClientCert) == 1 }, "the refusal")
	if _, err := get(client, serve(t, newReloader(t, tlstest.NewCA(t, "other").WriteFiles(t, t.TempDir(), false, "127.0.0.1"))).URL); err == nil {
		t.Fatal("a CA-only client accepted a server of another CA")
	}
}

func TestAnHTTPServerAnswersProbesWithoutACertificateAndRefusesEverythingElse(t *testing.T) {
	ca := tlstest.NewCA(t, "modbot")
	server := newReloader(t, ca.WriteFiles(t, t.TempDir(), true, "127.0.0.1"))
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server.HTTPServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: server.RequireClientCert(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), "/healthz", "/readyz"), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	base := "https://" + ln.Addr().String()
	anon := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: poolOf(ca.Cert)}}}
	status := func(c *http.Client, path string) int {
		resp, err := c.Get(base + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status(anon, "/healthz"); got != 200 {
		t.Errorf("a probe without a certificate: %d, want 200", got)
	}
	if got := status(anon, "/v1/status"); got != http.StatusUnauthorized {
		t.Errorf("an API request without a certificate: %d, want 401", got)
	}
	if n := server.Refusals(tlsconfig.RefusedNoClientCert); n != 1 {
		t.Errorf("no_client_cert refusals %d, want 1", n)
	}
	good := newReloader(t, ca.WriteFiles(t, t.TempDir(), false, "client"))
	gc := &http.Client{Timeout: 5 * time.Second, Transport: good.Transport(nil)}
	if got := status(gc, "/v1/status"); got != 200 {
		t.Errorf("with the CA's certificate: %d, want 200", got)
	}
	// A certificate of another CA is still refused in the handshake.
	files := tlstest.NewCA(t, "other").WriteFiles(t, t.TempDir(), false, "client")
	os.WriteFile(files.CA, ca.PEM, 0o600)
	other := newReloader(t, files)
	if got := status(&http.Client{Timeout: 5 * time.Second, Transport: other.Transport(nil)}, "/healthz"); got != 0 {
		t.Errorf("a certificate of another CA got an answer %d", got)
	}
	waitFor(t, func() bool { return server.Refusals(tlsconfig.RefusedBadClientCert) == 1 }, "the bad certificate counted")
}
