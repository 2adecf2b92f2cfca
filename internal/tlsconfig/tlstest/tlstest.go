// Package tlstest makes throwaway certificate authorities and certificates
// for tests of modbot's TLS (internal/tlsconfig): real X.509, ECDSA P-256,
// written as PEM files the components load with --tls-cert/--tls-key/--tls-ca.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/modbot/modbot/internal/tlsconfig"
)

// CA is a certificate authority that issues leaf certificates.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	PEM  []byte // the CA certificate, PEM
}

func nextSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err)
	}
	return n
}

// NewCA makes a self-signed CA named name, valid for a day.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	ca, err := newCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// Generate makes a fresh CA and, in dir, a certificate for names with its
// key and the CA (WriteFiles' layout): for harnesses outside a test.
func Generate(dir string, clientAuth bool, names ...string) (tlsconfig.Files, error) {
	ca, err := newCA("modbot-test-ca")
	if err != nil {
		return tlsconfig.Files{}, err
	}
	return ca.writeFiles(dir, clientAuth, names...)
}

func newCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Issue makes a certificate for names (host names or IP addresses), good
// for both server and client authentication, valid for validFor; it
// returns the certificate and key as PEM.
func (ca *CA) Issue(t testing.TB, validFor time.Duration, names ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	c, k, err := ca.issue(validFor, names...)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

func (ca *CA) issue(validFor time.Duration, names ...string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(validFor),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), nil
}

// WriteFiles issues a certificate for names and writes it, its key and the
// CA into dir as tls.crt, tls.key and ca.crt (a cert-manager Secret's
// layout); clientAuth sets Files.ClientAuth.
func (ca *CA) WriteFiles(t testing.TB, dir string, clientAuth bool, names ...string) tlsconfig.Files {
	t.Helper()
	f, err := ca.writeFiles(dir, clientAuth, names...)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (ca *CA) writeFiles(dir string, clientAuth bool, names ...string) (tlsconfig.Files, error) {
	cert, key, err := ca.issue(24*time.Hour, names...)
	if err != nil {
		return tlsconfig.Files{}, err
	}
	f := tlsconfig.Files{Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key"), CA: filepath.Join(dir, "ca.crt"), ClientAuth: clientAuth}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, err
	}
	for path, b := range map[string][]byte{f.Cert: cert, f.Key: key, f.CA: ca.PEM} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return f, err
		}
	}
	return f, nil
}
