package deploy

import (
	"fmt"
	"net/url"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// cert-manager's kinds are not Kubernetes API types: they are decoded
// strictly into the fields the manifests may use (cert-manager.io/v1).
type certificate struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		SecretName string `json:"secretName"`
		IssuerRef  struct {
			Name  string `json:"name"`
			Kind  string `json:"kind"`
			Group string `json:"group,omitempty"`
		} `json:"issuerRef"`
		Duration    string `json:"duration,omitempty"`
		RenewBefore string `json:"renewBefore,omitempty"`
		PrivateKey  *struct {
			Algorithm      string `json:"algorithm,omitempty"`
			Size           int    `json:"size,omitempty"`
			RotationPolicy string `json:"rotationPolicy,omitempty"`
		} `json:"privateKey,omitempty"`
		Usages   []string `json:"usages"`
		DNSNames []string `json:"dnsNames"`
	} `json:"spec"`
}

type issuer struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		CA *struct {
			SecretName string `json:"secretName"`
		} `json:"ca,omitempty"`
	} `json:"spec"`
}

// addCertManager decodes a cert-manager object into c; ok says it was one.
func (c *cluster) addCertManager(apiVersion, kind string, doc []byte) (bool, error) {
	if apiVersion != "cert-manager.io/v1" {
		return false, nil
	}
	switch kind {
	case "Certificate":
		var x certificate
		if err := yaml.UnmarshalStrict(doc, &x); err != nil {
			return true, fmt.Errorf("decodes only loosely: %w", err)
		}
		c.certificates = append(c.certificates, x)
	case "Issuer":
		var x issuer
		if err := yaml.UnmarshalStrict(doc, &x); err != nil {
			return true, fmt.Errorf("decodes only loosely: %w", err)
		}
		c.issuers = append(c.issuers, x)
	default:
		return true, fmt.Errorf("a cert-manager kind the checks do not know: add it to the checks")
	}
	return true, nil
}

// tlsServers are the commands that serve their API over TLS and require
// client certificates; tlsClients only dial with TLS.
var (
	tlsServers = map[string]bool{"config-node": true, "gateway": true}
	tlsClients = map[string]bool{"proxy": true}
)

// checkTLS: one Certificate of an Issuer in the manifests, for server and
// client auth; every component runs with its files from a volume of the
// Certificate's Secret; the servers require client certificates and are
// probed over HTTPS; every name a component is dialled by — the config URLs,
// a gateway's advertised address, the config nodes' peer name — is a name
// of the certificate.
func (c *cluster) checkTLS(f facts) []string {
	var p []string
	if len(c.certificates) != 1 {
		return []string{fmt.Sprintf("want one cert-manager Certificate for the components, found %d", len(c.certificates))}
	}
	cert := c.certificates[0]
	where := "Certificate " + cert.Metadata.Name
	for _, u := range []string{"server auth", "client auth"} {
		if !slices.Contains(cert.Spec.Usages, u) {
			p = append(p, fmt.Sprintf("%s: usages lack %s (every component is both server and client)", where, u))
		}
	}
	if !slices.ContainsFunc(c.issuers, func(i issuer) bool {
		return cert.Spec.IssuerRef.Kind == "Issuer" && i.Metadata.Name == cert.Spec.IssuerRef.Name
	}) {
		p = append(p, fmt.Sprintf("%s: issuerRef %s %s is not in the manifests", where, cert.Spec.IssuerRef.Kind, cert.Spec.IssuerRef.Name))
	}
	for _, i := range c.issuers {
		if i.Spec.CA == nil || !f.secrets[i.Spec.CA.SecretName+"/tls.crt"] || !f.secrets[i.Spec.CA.SecretName+"/tls.key"] {
			p = append(p, fmt.Sprintf("Issuer %s: want a CA issuer whose Secret's tls.crt and tls.key are in docs/deploy.md", i.Metadata.Name))
		}
	}
	named := func(host string) bool {
		return slices.ContainsFunc(cert.Spec.DNSNames, func(n string) bool { return dnsMatch(n, host) })
	}
	for _, w := range c.workloads() {
		for _, ct := range containers(w.spec) {
			if ct.init {
				continue
			}
			s, err := resolve(ct.Container, f.bin)
			if err != nil || !(tlsServers[s.command] || tlsClients[s.command]) {
				continue
			}
			where := fmt.Sprintf("%s %s container %s", w.kind, w.name, ct.Name)
			for _, flag := range []string{"tls-cert", "tls-key", "tls-ca"} {
				file := s.set[flag]
				if file == "" {
					p = append(p, fmt.Sprintf("%s: %s: want --%s (TLS between the components)", where, s.command, flag))
					continue
				}
				if msg := mountedFrom(w.spec, ct.Container, file, cert.Spec.SecretName); msg != "" {
					p = append(p, fmt.Sprintf("%s: %s: --%s %s %s", where, s.command, flag, file, msg))
				}
			}
			if tlsServers[s.command] {
				if s.set["tls-client-auth"] != "true" {
					p = append(p, fmt.Sprintf("%s: %s: want --tls-client-auth (only the cluster's components may call it)", where, s.command))
				}
				for kind, pr := range map[string]*corev1.Probe{"liveness": ct.LivenessProbe, "readiness": ct.ReadinessProbe, "startup": ct.StartupProbe} {
					if pr != nil && pr.HTTPGet != nil && pr.HTTPGet.Port.String() == "http" && pr.HTTPGet.Scheme != corev1.URISchemeHTTPS {
						p = append(p, fmt.Sprintf("%s: %s probe on a TLS port without scheme HTTPS", where, kind))
					}
				}
			}
			if s.command == "config-node" {
				if n := s.set["peer-tls-name"]; n == "" || !named(n) {
					p = append(p, fmt.Sprintf("%s: --peer-tls-name %q is not a name of %s (config nodes dial each other by pod IP)", where, n, cert.Metadata.Name))
				}
			}
			if a := s.set["advertise-addr"]; s.command == "gateway" {
				host := a
				if i := strings.LastIndex(a, ":"); i >= 0 {
					host = a[:i]
				}
				if !named(host) {
					p = append(p, fmt.Sprintf("%s: advertised address %s is not a name of Certificate %s", where, a, cert.Metadata.Name))
				}
			}
			for _, flag := range []string{"config", "join"} {
				for _, raw := range strings.Split(s.set[flag], ",") {
					if u, err := url.Parse(strings.TrimSpace(raw)); err == nil && u.Host != "" && !named(u.Hostname()) {
						p = append(p, fmt.Sprintf("%s: --%s host %s is not a name of Certificate %s", where, flag, u.Hostname(), cert.Metadata.Name))
					}
				}
			}
		}
	}
	return p
}

// dnsMatch is x509's rule: a leading "*" label matches exactly one label.
// "RUNTIME" (a value only known in the pod, such as its name) matches "*".
func dnsMatch(pattern, host string) bool {
	pl, hl := strings.Split(pattern, "."), strings.Split(host, ".")
	if len(pl) != len(hl) {
		return false
	}
	for i := range pl {
		if i == 0 && pl[0] == "*" {
			continue
		}
		if pl[i] != hl[i] {
			return false
		}
	}
	return true
}

// mountedFrom says what is wrong with file as a key of Secret secret
// mounted into ct ("" when it is one).
func mountedFrom(spec *corev1.PodSpec, ct *corev1.Container, file, secret string) string {
	dir, base := path.Split(file)
	for _, m := range ct.VolumeMounts {
		if strings.TrimRight(m.MountPath, "/")+"/" != dir {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name != m.Name {
				continue
			}
			if v.Secret == nil || v.Secret.SecretName != secret {
				return fmt.Sprintf("is on volume %s, not the Certificate's Secret %s", v.Name, secret)
			}
			if !slices.ContainsFunc(v.Secret.Items, func(it corev1.KeyToPath) bool { return it.Path == base }) {
				return fmt.Sprintf("is not an item of volume %s", v.Name)
			}
			return ""
		}
	}
	return "is not a file of a mounted volume"
}
