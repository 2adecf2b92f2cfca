package deploy

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

var overlays = []string{"dev", "production"}

// The Kubernetes API types the manifests may use, decoded strictly: an
// unknown or duplicated field is an error even when an object comes back.
var (
	scheme = func() *runtime.Scheme {
		s := runtime.NewScheme()
		for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme,
			policyv1.AddToScheme, autoscalingv2.AddToScheme, networkingv1.AddToScheme} {
			if err := add(s); err != nil {
				panic(err)
			}
		}
		return s
	}()
	strictCodecs = serializer.NewCodecFactory(scheme, serializer.EnableStrict)
)

func decodeStrict(doc []byte) (runtime.Object, error) {
	obj, gvk, err := strictCodecs.UniversalDeserializer().Decode(doc, nil, nil)
	if err != nil {
		if obj != nil && runtime.IsStrictDecodingError(err) {
			return nil, fmt.Errorf("%s decodes only loosely: %w", gvk, err)
		}
		return nil, err
	}
	return obj, nil
}

// cluster is one overlay's output, by kind.
type cluster struct {
	overlay      string
	services     []*corev1.Service
	statefulSets []*appsv1.StatefulSet
	deployments  []*appsv1.Deployment
	pdbs         []*policyv1.PodDisruptionBudget
	hpas         []*autoscalingv2.HorizontalPodAutoscaler
	ingresses    []*networkingv1.Ingress
	netpols      []*networkingv1.NetworkPolicy
	configMaps   []*corev1.ConfigMap
	accounts     []*corev1.ServiceAccount
	secrets      []*corev1.Secret
	certificates []certificate // cert-manager (tls_test.go)
	issuers      []issuer
}

// workload is a StatefulSet or Deployment seen through its pod template.
type workload struct {
	kind, name string
	selector   *metav1.LabelSelector
	labels     map[string]string
	spec       *corev1.PodSpec
	replicas   int32
	sts        *appsv1.StatefulSet
}

func (c *cluster) workloads() []workload {
	var out []workload
	for _, s := range c.statefulSets {
		r := int32(1)
		if s.Spec.Replicas != nil {
			r = *s.Spec.Replicas
		}
		out = append(out, workload{"StatefulSet", s.Name, s.Spec.Selector, s.Spec.Template.Labels, &s.Spec.Template.Spec, r, s})
	}
	for _, d := range c.deployments {
		r := int32(1)
		if d.Spec.Replicas != nil {
			r = *d.Spec.Replicas
		}
		out = append(out, workload{"Deployment", d.Name, d.Spec.Selector, d.Spec.Template.Labels, &d.Spec.Template.Spec, r, nil})
	}
	return out
}

func (c *cluster) workload(kind, name string) (workload, bool) {
	for _, w := range c.workloads() {
		if w.kind == kind && w.name == name {
			return w, true
		}
	}
	return workload{}, false
}

// selecting returns the workloads whose pods the label selector selects.
func (c *cluster) selecting(sel labels.Selector) []workload {
	var out []workload
	for _, w := range c.workloads() {
		if sel.Matches(labels.Set(w.labels)) {
			out = append(out, w)
		}
	}
	return out
}

func (c *cluster) service(name string) *corev1.Service {
	for _, s := range c.services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// container is one process of a pod: a regular container, a native sidecar
// (an init container with restartPolicy Always) or a run-to-completion init.
type container struct {
	*corev1.Container
	init, sidecar bool
}

func containers(spec *corev1.PodSpec) []container {
	var out []container
	for i := range spec.InitContainers {
		c := &spec.InitContainers[i]
		sidecar := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		out = append(out, container{c, !sidecar, sidecar})
	}
	for i := range spec.Containers {
		out = append(out, container{Container: &spec.Containers[i]})
	}
	return out
}

// buildOverlay runs kustomize in-process on dir and strict-decodes every
// document it emits.
func buildOverlay(dir string) (*cluster, error) {
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	c := &cluster{overlay: filepath.Base(dir)}
	for _, r := range m.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			return nil, err
		}
		if ok, err := c.addCertManager(r.GetApiVersion(), r.GetKind(), doc); ok || err != nil {
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", r.GetKind(), r.GetName(), err)
			}
			continue
		}
		obj, err := decodeStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", r.GetKind(), r.GetName(), err)
		}
		switch o := obj.(type) {
		case *corev1.Service:
			c.services = append(c.services, o)
		case *appsv1.StatefulSet:
			c.statefulSets = append(c.statefulSets, o)
		case *appsv1.Deployment:
			c.deployments = append(c.deployments, o)
		case *policyv1.PodDisruptionBudget:
			c.pdbs = append(c.pdbs, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			c.hpas = append(c.hpas, o)
		case *networkingv1.Ingress:
			c.ingresses = append(c.ingresses, o)
		case *networkingv1.NetworkPolicy:
			c.netpols = append(c.netpols, o)
		case *corev1.ConfigMap:
			c.configMaps = append(c.configMaps, o)
		case *corev1.ServiceAccount:
			c.accounts = append(c.accounts, o)
		case *corev1.Secret:
			c.secrets = append(c.secrets, o)
		default:
			return nil, fmt.Errorf("%s %s: a kind the checks do not know (%T): add it to the checks", r.GetKind(), r.GetName(), obj)
		}
	}
	return c, nil
}

// facts is what the manifests are checked against.
type facts struct {
	bin     *binary
	image   dockerImage
	secrets map[string]bool // "secret/key" documented in docs/deploy.md
	// endpoint reports whether a component's source serves an HTTP path.
	endpoint func(command, path string) bool
	// libraryEnv are variables read by libraries, not by our code by name.
	libraryEnv map[string]bool
}

// componentSource is where each command's HTTP server lives.
var componentSource = map[string]string{
	"config-node": "confignode", "gateway": "gatewaynode", "proxy": "proxy", "replicate": "litestream",
}

func loadFacts(t testing.TB) facts {
	t.Helper()
	root := repoRoot(t)
	img := parseDockerfileAt(t, filepath.Join(root, "Dockerfile"))
	f := facts{bin: modbotBinary(t), image: img, secrets: documentedSecrets(t, filepath.Join(root, "docs", "deploy.md"))}
	f.endpoint = func(cmd, path string) bool {
		dir, ok := componentSource[cmd]
		return ok && sourceMentions(t, dir, `"`+path+`"`)
	}
	// The S3 client reads its credentials itself; the litestream package
	// documents them as the way to pass credentials.
	f.libraryEnv = map[string]bool{}
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
		if !sourceMentions(t, "litestream", v) {
			t.Fatalf("litestream/ no longer mentions %s: is it still how S3 credentials are passed?", v)
		}
		f.libraryEnv[v] = true
	}
	return f
}

var secretRow = regexp.MustCompile("^\\|\\s*`([a-z0-9.-]+)`\\s*\\|\\s*`([A-Za-z0-9._-]+)`\\s*\\|")

// documentedSecrets reads the Secrets table of docs/deploy.md: rows
// "| `secret-name` | `key` | …".
func documentedSecrets(t testing.TB, path string) map[string]bool {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the Secrets must be documented in %s: %v", path, err)
	}
	out := map[string]bool{}
	for line := range strings.Lines(string(src)) {
		if m := secretRow.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			out[m[1]+"/"+m[2]] = true
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s has no Secrets table (rows | `secret` | `key` | …)", path)
	}
	return out
}

// check runs every cross-check and returns the problems found.
func (c *cluster) check(f facts) []string {
	var p []string
	for _, fn := range []func(facts) []string{c.checkSelectors, c.checkServicePorts, c.checkContainers, c.checkEnv,
		c.checkSecrets, c.checkImages, c.checkSecurity, c.checkNetworkPolicies, c.checkConfigURLs, c.checkShape, c.checkTLS} {
		p = append(p, fn(f)...)
	}
	return p
}

func selectorOf(ls *metav1.LabelSelector) (labels.Selector, error) {
	if ls == nil {
		return labels.Nothing(), nil
	}
	return metav1.LabelSelectorAsSelector(ls)
}

func (c *cluster) checkSelectors(facts) []string {
	var p []string
	for _, w := range c.workloads() {
		sel, err := selectorOf(w.selector)
		if err != nil || sel.Empty() || !sel.Matches(labels.Set(w.labels)) {
			p = append(p, fmt.Sprintf("%s %s: selector %v does not match its pod labels %v", w.kind, w.name, w.selector, w.labels))
		}
	}
	for _, s := range c.services {
		if len(s.Spec.Selector) == 0 || len(c.selecting(labels.SelectorFromSet(s.Spec.Selector))) == 0 {
			p = append(p, fmt.Sprintf("Service %s: selector %v selects no pods", s.Name, s.Spec.Selector))
		}
	}
	for _, b := range c.pdbs {
		sel, err := selectorOf(b.Spec.Selector)
		if err != nil || sel.Empty() || len(c.selecting(sel)) == 0 {
			p = append(p, fmt.Sprintf("PodDisruptionBudget %s: selector selects no pods", b.Name))
		}
	}
	for _, n := range c.netpols {
		sel, err := selectorOf(&n.Spec.PodSelector)
		if err != nil || (!sel.Empty() && len(c.selecting(sel)) == 0) {
			p = append(p, fmt.Sprintf("NetworkPolicy %s: podSelector selects no pods", n.Name))
		}
	}
	for _, h := range c.hpas {
		if _, ok := c.workload(h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name); !ok {
			p = append(p, fmt.Sprintf("HorizontalPodAutoscaler %s: scales %s %s, which does not exist", h.Name, h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name))
		}
	}
	for _, s := range c.statefulSets {
		svc := c.service(s.Spec.ServiceName)
		switch {
		case svc == nil:
			p = append(p, fmt.Sprintf("StatefulSet %s: serviceName %q is no Service", s.Name, s.Spec.ServiceName))
		case svc.Spec.ClusterIP != corev1.ClusterIPNone:
			p = append(p, fmt.Sprintf("StatefulSet %s: Service %s must be headless for stable pod names", s.Name, svc.Name))
		case !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(s.Spec.Template.Labels)):
			p = append(p, fmt.Sprintf("StatefulSet %s: its Service %s does not select its pods", s.Name, svc.Name))
		}
	}
	for _, ing := range c.ingresses {
		for _, r := range ing.Spec.Rules {
			if r.HTTP == nil {
				continue
			}
			for _, path := range r.HTTP.Paths {
				b := path.Backend.Service
				if b == nil {
					p = append(p, fmt.Sprintf("Ingress %s %s: no service backend", ing.Name, path.Path))
					continue
				}
				svc := c.service(b.Name)
				if svc == nil || !slices.ContainsFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool {
					return (b.Port.Name != "" && sp.Name == b.Port.Name) || (b.Port.Number != 0 && sp.Port == b.Port.Number)
				}) {
					p = append(p, fmt.Sprintf("Ingress %s %s: backend %s port %v does not exist", ing.Name, path.Path, b.Name, b.Port))
				}
			}
		}
	}
	return p
}

// hasPort reports whether a container declares the port (a name or number).
func hasPort(c *corev1.Container, port intstr.IntOrString) bool {
	for _, cp := range c.Ports {
		if (port.Type == intstr.String && cp.Name == port.StrVal) || (port.Type == intstr.Int && cp.ContainerPort == port.IntVal) {
			return true
		}
	}
	return false
}

func podHasPort(spec *corev1.PodSpec, port intstr.IntOrString) bool {
	return slices.ContainsFunc(containers(spec), func(c container) bool { return !c.init && hasPort(c.Container, port) })
}

func (c *cluster) checkServicePorts(facts) []string {
	var p []string
	for _, s := range c.services {
		for _, sp := range s.Spec.Ports {
			target := sp.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(sp.Port)
			}
			for _, w := range c.selecting(labels.SelectorFromSet(s.Spec.Selector)) {
				if !podHasPort(w.spec, target) {
					p = append(p, fmt.Sprintf("Service %s port %s: targets %s, which no container of %s %s declares", s.Name, sp.Name, target.String(), w.kind, w.name))
				}
			}
		}
	}
	return p
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// settings resolves a container's flags as the binary would see them: the
// command line first, then the flag's environment variable, then the default.
// $(VAR) references are expanded from literal env values; values Kubernetes
// fills in at run time (fieldRef, configMapKeyRef) become "RUNTIME".
type settings struct {
	command string
	set     map[string]string // flag → value given (args or env)
	flags   []string          // flags given on the command line, in order
}

func resolve(c *corev1.Container, b *binary) (settings, error) {
	s := settings{set: map[string]string{}}
	if len(c.Command) > 0 {
		return s, fmt.Errorf("sets command %v: the image's ENTRYPOINT is modbot, give the subcommand in args", c.Command)
	}
	if len(c.Args) == 0 {
		return s, fmt.Errorf("no args: the first arg must be a modbot command")
	}
	s.command = c.Args[0]
	if !b.commands[s.command] {
		return s, fmt.Errorf("modbot has no command %q", s.command)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			env[e.Name] = "RUNTIME"
		} else {
			env[e.Name] = e.Value
		}
	}
	expand := func(v string) string {
		return envRef.ReplaceAllStringFunc(v, func(m string) string {
			if val, ok := env[m[2:len(m)-1]]; ok {
				return val
			}
			return m
		})
	}
	known := b.flags[s.command]
	args := c.Args[1:]
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return s, fmt.Errorf("unexpected argument %q", a)
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if _, ok := known[name]; !ok {
			return s, fmt.Errorf("modbot %s has no flag --%s", s.command, name)
		}
		if !hasVal {
			val = "true"
		}
		s.set[name] = expand(val)
		s.flags = append(s.flags, name)
	}
	for name, f := range known {
		if _, ok := s.set[name]; ok {
			continue
		}
		if v, ok := env[f.env]; ok {
			s.set[name] = expand(v)
		}
	}
	return s, nil
}

func (s settings) value(b *binary, flag string) string {
	if v, ok := s.set[flag]; ok {
		return v
	}
	return b.flags[s.command][flag].def
}

// listenFlags are the flags a command binds a port with.
var listenFlags = []string{"http-addr", "raft-addr", "metrics-addr", "addr"}

func (c *cluster) checkContainers(f facts) []string {
	var p []string
	for _, w := range c.workloads() {
		for _, ct := range containers(w.spec) {
			where := fmt.Sprintf("%s %s container %s", w.kind, w.name, ct.Name)
			s, err := resolve(ct.Container, f.bin)
			if err != nil {
				p = append(p, where+": "+err.Error())
				continue
			}
			// Every declared port is bound by one of the listen flags on a
			// reachable address, and every listen flag's port is declared.
			bound := map[int32]bool{}
			for _, lf := range listenFlags {
				if _, ok := f.bin.flags[s.command][lf]; !ok {
					continue
				}
				addr := s.value(f.bin, lf)
				if addr == "" {
					continue
				}
				host, port, err := net.SplitHostPort(addr)
				n, perr := strconv.Atoi(port)
				if err != nil || perr != nil {
					p = append(p, fmt.Sprintf("%s: --%s %q is not host:port", where, lf, addr))
					continue
				}
				if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
					p = append(p, fmt.Sprintf("%s: --%s %s binds loopback: probes, Services and peers cannot reach it", where, lf, addr))
				}
				bound[int32(n)] = true
				if !hasPort(ct.Container, intstr.FromInt(n)) {
					p = append(p, fmt.Sprintf("%s: --%s %s listens on port %d, which the container does not declare", where, lf, addr, n))
				}
			}
			for _, cp := range ct.Ports {
				if !bound[cp.ContainerPort] {
					p = append(p, fmt.Sprintf("%s: declares port %d (%s), but modbot %s listens on none such", where, cp.ContainerPort, cp.Name, s.command))
				}
			}
			probes := map[string]*corev1.Probe{"liveness": ct.LivenessProbe, "readiness": ct.ReadinessProbe, "startup": ct.StartupProbe}
			for kind, pr := range probes {
				if pr == nil {
					if !ct.init && kind != "startup" {
						p = append(p, fmt.Sprintf("%s: no %s probe", where, kind))
					}
					continue
				}
				if pr.HTTPGet == nil {
					p = append(p, fmt.Sprintf("%s: %s probe is not an HTTP GET", where, kind))
					continue
				}
				if !hasPort(ct.Container, pr.HTTPGet.Port) {
					p = append(p, fmt.Sprintf("%s: %s probe port %s is not a port of the container", where, kind, pr.HTTPGet.Port.String()))
				}
				if !f.endpoint(s.command, pr.HTTPGet.Path) {
					p = append(p, fmt.Sprintf("%s: %s probe path %s is not served by modbot %s", where, kind, pr.HTTPGet.Path, s.command))
				}
			}
			if ct.LivenessProbe != nil && ct.LivenessProbe.HTTPGet != nil && ct.LivenessProbe.HTTPGet.Path == "/readyz" {
				p = append(p, fmt.Sprintf("%s: liveness on /readyz restarts a pod that is only waiting (for a leader, a map)", where))
			}
			if lc := ct.Lifecycle; lc != nil {
				for _, h := range []*corev1.LifecycleHandler{lc.PreStop, lc.PostStart} {
					if h != nil && h.Exec != nil && (len(h.Exec.Command) == 0 || !f.image.binaries[h.Exec.Command[0]]) {
						p = append(p, fmt.Sprintf("%s: lifecycle exec %v runs no binary the image has (%v; it has no shell)", where, h.Exec.Command, f.image.binaries))
					}
				}
			}
		}
	}
	return p
}

func (c *cluster) checkEnv(f facts) []string {
	var p []string
	for _, w := range c.workloads() {
		for _, ct := range containers(w.spec) {
			if len(ct.EnvFrom) > 0 {
				p = append(p, fmt.Sprintf("%s %s container %s: envFrom sets variables nobody can check; list them in env", w.kind, w.name, ct.Name))
			}
			if len(ct.Args) == 0 {
				continue
			}
			allowed := map[string]bool{}
			for _, fl := range f.bin.flags[ct.Args[0]] {
				allowed[fl.env] = true
			}
			// A variable only expanded into another one or into args is
			// the manifest's own plumbing (POD_IP in the Raft address).
			var texts []string
			texts = append(texts, ct.Args...)
			for _, e := range ct.Env {
				texts = append(texts, e.Value)
			}
			for _, t := range texts {
				for _, m := range envRef.FindAllStringSubmatch(t, -1) {
					allowed[m[1]] = true
				}
			}
			for _, e := range ct.Env {
				if !allowed[e.Name] && !f.bin.getenv[e.Name] && !f.libraryEnv[e.Name] {
					p = append(p, fmt.Sprintf("%s %s container %s: env %s is read by neither modbot %s nor the code", w.kind, w.name, ct.Name, e.Name, ct.Args[0]))
				}
			}
		}
	}
	return p
}

var sensitiveEnv = regexp.MustCompile(`TOKEN|SECRET|PASSWORD|PUBLIC_KEY|ACCESS_KEY`)

func (c *cluster) checkSecrets(f facts) []string {
	var p []string
	for _, s := range c.secrets {
		p = append(p, fmt.Sprintf("Secret %s is in the manifests: Secrets are created by the operator and only referenced", s.Name))
	}
	ref := func(where, name, key string) {
		if !f.secrets[name+"/"+key] {
			p = append(p, fmt.Sprintf("%s: Secret %s key %s is not in docs/deploy.md's Secrets table", where, name, key))
		}
	}
	for _, w := range c.workloads() {
		for _, ct := range containers(w.spec) {
			where := fmt.Sprintf("%s %s container %s", w.kind, w.name, ct.Name)
			for _, e := range ct.Env {
				switch {
				case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
					ref(where, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
				case sensitiveEnv.MatchString(e.Name):
					p = append(p, fmt.Sprintf("%s: %s must come from a Secret (secretKeyRef), not be inlined", where, e.Name))
				}
			}
		}
		for _, v := range w.spec.Volumes {
			if v.Secret != nil {
				for _, it := range v.Secret.Items {
					ref(fmt.Sprintf("%s %s volume %s", w.kind, w.name, v.Name), v.Secret.SecretName, it.Key)
				}
				if len(v.Secret.Items) == 0 {
					p = append(p, fmt.Sprintf("%s %s volume %s: list the Secret's items, so each key is documented", w.kind, w.name, v.Name))
				}
			}
		}
	}
	for _, ing := range c.ingresses {
		for _, tls := range ing.Spec.TLS {
			ref("Ingress "+ing.Name, tls.SecretName, "tls.crt")
			ref("Ingress "+ing.Name, tls.SecretName, "tls.key")
		}
	}
	return p
}

func (c *cluster) checkImages(f facts) []string {
	var p []string
	for _, w := range c.workloads() {
		for _, ct := range containers(w.spec) {
			repo, tag, _ := strings.Cut(ct.Image, ":")
			switch {
			case repo != f.image.name:
				p = append(p, fmt.Sprintf("%s %s container %s: image %s is not the one the Dockerfile builds (%s)", w.kind, w.name, ct.Name, ct.Image, f.image.name))
			case tag == "":
				p = append(p, fmt.Sprintf("%s %s container %s: image %s has no tag", w.kind, w.name, ct.Name, ct.Image))
			case c.overlay == "production" && tag == "latest":
				p = append(p, fmt.Sprintf("%s %s container %s: production runs a pinned tag, not latest", w.kind, w.name, ct.Name))
			}
		}
	}
	return p
}

func (c *cluster) checkSecurity(f facts) []string {
	var p []string
	accounts := map[string]*corev1.ServiceAccount{}
	for _, a := range c.accounts {
		accounts[a.Name] = a
	}
	isFalse := func(b *bool) bool { return b != nil && !*b }
	isTrue := func(b *bool) bool { return b != nil && *b }
	for _, w := range c.workloads() {
		where := w.kind + " " + w.name
		if !isFalse(w.spec.AutomountServiceAccountToken) {
			p = append(p, where+": automountServiceAccountToken must be false")
		}
		if a := accounts[w.spec.ServiceAccountName]; a == nil || !isFalse(a.AutomountServiceAccountToken) {
			p = append(p, fmt.Sprintf("%s: ServiceAccount %q missing or mounting its token", where, w.spec.ServiceAccountName))
		}
		psc := w.spec.SecurityContext
		if psc == nil || !isTrue(psc.RunAsNonRoot) || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			p = append(p, where+": pod securityContext needs runAsNonRoot and seccompProfile RuntimeDefault")
		} else if psc.RunAsUser == nil || *psc.RunAsUser != f.image.uid {
			p = append(p, fmt.Sprintf("%s: runAsUser %v is not the image's USER %d", where, psc.RunAsUser, f.image.uid))
		}
		if w.spec.HostNetwork || w.spec.HostPID || w.spec.HostIPC {
			p = append(p, where+": shares a host namespace")
		}
		for _, ct := range containers(w.spec) {
			cw := where + " container " + ct.Name
			sc := ct.SecurityContext
			if sc == nil || !isFalse(sc.AllowPrivilegeEscalation) || !isTrue(sc.ReadOnlyRootFilesystem) || isTrue(sc.Privileged) ||
				sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
				p = append(p, cw+": securityContext needs allowPrivilegeEscalation false, readOnlyRootFilesystem true, capabilities drop ALL (none added), not privileged")
			}
			if sc != nil && sc.RunAsUser != nil && *sc.RunAsUser == 0 {
				p = append(p, cw+": runs as root")
			}
			for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				if _, ok := ct.Resources.Requests[res]; !ok {
					p = append(p, fmt.Sprintf("%s: no %s request", cw, res))
				}
				if _, ok := ct.Resources.Limits[res]; !ok {
					p = append(p, fmt.Sprintf("%s: no %s limit", cw, res))
				}
			}
		}
	}
	return p
}

// component of a workload, from its pod labels.
func component(w workload) string { return w.labels["app.kubernetes.io/component"] }

func (c *cluster) checkNetworkPolicies(facts) []string {
	var p []string
	defaultDeny := false
	for _, n := range c.netpols {
		if len(n.Spec.PodSelector.MatchLabels) == 0 && len(n.Spec.PodSelector.MatchExpressions) == 0 &&
			slices.Contains(n.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) && len(n.Spec.Ingress) == 0 {
			defaultDeny = true
		}
	}
	if !defaultDeny {
		p = append(p, "no default-deny NetworkPolicy (podSelector {}, Ingress, no rules)")
	}
	for _, n := range c.netpols {
		sel, _ := selectorOf(&n.Spec.PodSelector)
		targets := c.selecting(sel)
		for _, rule := range n.Spec.Ingress {
			if len(rule.From) == 0 {
				p = append(p, fmt.Sprintf("NetworkPolicy %s: a rule without from admits everyone", n.Name))
			}
			for _, peer := range rule.From {
				external := peer.NamespaceSelector != nil || peer.IPBlock != nil
				prometheus := peer.NamespaceSelector != nil && peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] == "monitoring" &&
					peer.PodSelector != nil && peer.PodSelector.MatchLabels["app.kubernetes.io/name"] == "prometheus"
				ingress := peer.NamespaceSelector != nil && peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] == "ingress-nginx" && peer.IPBlock == nil
				var from []workload
				if !external && peer.PodSelector != nil {
					ps, _ := selectorOf(peer.PodSelector)
					if ps.Empty() {
						p = append(p, fmt.Sprintf("NetworkPolicy %s: podSelector {} admits every pod of the namespace; name modbot's", n.Name))
					}
					from = c.selecting(ps)
				}
				for _, t := range targets {
					switch {
					case prometheus:
						// metrics share the API ports; the APIs want the token.
					case external && !(ingress && component(t) == "proxy"):
						p = append(p, fmt.Sprintf("NetworkPolicy %s: admits traffic from outside the namespace to %s (only the proxy may be reached from the ingress)", n.Name, t.name))
					case component(t) == "gateway":
						// Each peer must name its component, so that no other
						// pod (a debug pod, another app) can ever match it.
						if peer.PodSelector == nil || !slices.Contains([]string{"proxy", "config", "gateway"}, peer.PodSelector.MatchLabels["app.kubernetes.io/component"]) {
							p = append(p, fmt.Sprintf("NetworkPolicy %s: admits pods other than proxies, config nodes and gateways to the gateways' internal API (%v)", n.Name, peer.PodSelector))
						}
						for _, fw := range from {
							if !slices.Contains([]string{"proxy", "config", "gateway"}, component(fw)) {
								p = append(p, fmt.Sprintf("NetworkPolicy %s: admits %s to the gateways' internal API", n.Name, fw.name))
							}
						}
					}
				}
			}
		}
	}
	return p
}

// checkConfigURLs: every --config and --join URL names a config pod by its
// stable DNS name (config-N.<headless service>) that exists, on a port of
// that Service.
func (c *cluster) checkConfigURLs(f facts) []string {
	var p []string
	for _, w := range c.workloads() {
		for _, ct := range containers(w.spec) {
			s, err := resolve(ct.Container, f.bin)
			if err != nil {
				continue // reported by checkContainers
			}
			for _, flag := range []string{"config", "join"} {
				v, ok := s.set[flag]
				if !ok {
					continue
				}
				for _, raw := range strings.Split(v, ",") {
					if msg := c.configURLProblem(raw); msg != "" {
						p = append(p, fmt.Sprintf("%s %s container %s: --%s %s: %s", w.kind, w.name, ct.Name, flag, raw, msg))
					}
				}
			}
		}
	}
	return p
}

func (c *cluster) configURLProblem(raw string) string {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Scheme != "https" {
		return "not an https URL (the components speak TLS: tls.yaml)"
	}
	host, port := u.Hostname(), u.Port()
	pod, svcName, _ := strings.Cut(host, ".")
	svcName, _, _ = strings.Cut(svcName, ".")
	i := strings.LastIndex(pod, "-")
	if i < 0 {
		return "not a StatefulSet pod name"
	}
	ord, err := strconv.Atoi(pod[i+1:])
	w, ok := c.workload("StatefulSet", pod[:i])
	if err != nil || !ok || int32(ord) >= w.replicas || component(w) != "config" {
		return "no such config pod"
	}
	if svcName != w.sts.Spec.ServiceName {
		return "not under the StatefulSet's headless Service " + w.sts.Spec.ServiceName
	}
	svc := c.service(svcName)
	n, _ := strconv.Atoi(port)
	if svc == nil || !slices.ContainsFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return int(sp.Port) == n && sp.Name == "http" }) {
		return "port " + port + " is not the Service's http port"
	}
	return ""
}

// checkShape holds the numbers issue 17 and DESIGN §11 fix.
func (c *cluster) checkShape(f facts) []string {
	var p []string
	byComponent := map[string]workload{}
	for _, w := range c.workloads() {
		byComponent[component(w)] = w
	}
	cfg, okC := byComponent["config"]
	gw, okG := byComponent["gateway"]
	px, okP := byComponent["proxy"]
	if !okC || !okG || !okP {
		return []string{fmt.Sprintf("want config, gateway and proxy workloads, have %v", c.workloads())}
	}
	if cfg.kind != "StatefulSet" || cfg.replicas != 3 || len(cfg.sts.Spec.VolumeClaimTemplates) == 0 {
		p = append(p, "config: want a StatefulSet of 3 with a volume claim")
	}
	if gw.kind != "StatefulSet" || len(gw.sts.Spec.VolumeClaimTemplates) == 0 {
		p = append(p, "gateway: want a StatefulSet with a volume claim")
	}
	if px.kind != "Deployment" {
		p = append(p, "proxy: want a Deployment")
	}
	// config: the id is the pod name, config-0 bootstraps, everyone joins.
	for _, ct := range containers(cfg.spec) {
		s, err := resolve(ct.Container, f.bin)
		if err != nil || s.command != "config-node" {
			continue
		}
		if !envFromPodName(ct.Container, f.bin.flags["config-node"]["id"].env) {
			p = append(p, "config: --id must come from the pod name (fieldRef metadata.name)")
		}
		if s.set["bootstrap-id"] != cfg.name+"-0" || s.set["bootstrap"] != "" {
			p = append(p, fmt.Sprintf("config: want --bootstrap-id %s-0 (and no --bootstrap: every pod would form its own cluster), have %q", cfg.name, s.set["bootstrap-id"]))
		}
		if got := len(strings.Split(s.set["join"], ",")); s.set["join"] == "" || got != int(cfg.replicas) {
			p = append(p, fmt.Sprintf("config: --join must list all %d config pods, lists %d", cfg.replicas, got))
		}
	}
	for _, b := range c.pdbs {
		sel, _ := selectorOf(b.Spec.Selector)
		for _, w := range c.selecting(sel) {
			if (component(w) == "config" || component(w) == "gateway") && (b.Spec.MaxUnavailable == nil || b.Spec.MaxUnavailable.IntValue() != 1) {
				p = append(p, fmt.Sprintf("PodDisruptionBudget %s: want maxUnavailable 1 for %s", b.Name, w.name))
			}
		}
	}
	for _, want := range []string{"config", "gateway", "proxy"} {
		covered := false
		for _, b := range c.pdbs {
			sel, _ := selectorOf(b.Spec.Selector)
			covered = covered || slices.ContainsFunc(c.selecting(sel), func(w workload) bool { return component(w) == want })
		}
		if !covered {
			p = append(p, "no PodDisruptionBudget for "+want)
		}
	}
	// gateway: restore init, replicate sidecar with S3 credentials, gateway;
	// the grace period covers the gateway's stop and the sidecar's final sync.
	var restore, replicate, gateway *settings
	for _, ct := range containers(gw.spec) {
		s, err := resolve(ct.Container, f.bin)
		if err != nil {
			continue
		}
		switch {
		case s.command == "restore" && ct.init:
			restore = &s
		case s.command == "replicate" && ct.sidecar:
			replicate = &s
			for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
				if !slices.ContainsFunc(ct.Env, func(e corev1.EnvVar) bool {
					return e.Name == v && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil
				}) {
					p = append(p, "gateway: the replicate sidecar needs "+v+" from a Secret")
				}
			}
		case s.command == "gateway" && !ct.init && !ct.sidecar:
			gateway = &s
		}
	}
	switch {
	case restore == nil:
		p = append(p, "gateway: no init container running modbot restore")
	case restore.set["if-db-not-exists"] != "true" || restore.set["if-replica-exists"] != "true":
		p = append(p, "gateway: the restore init container needs --if-db-not-exists --if-replica-exists")
	}
	if replicate == nil || gateway == nil {
		p = append(p, "gateway: want a replicate native sidecar (init container with restartPolicy Always) and a gateway container")
	} else if restore != nil {
		if replicate.value(f.bin, "db") != restore.value(f.bin, "db") || filepath.Dir(replicate.value(f.bin, "db")) != gateway.value(f.bin, "data-dir") ||
			filepath.Base(replicate.value(f.bin, "db")) != "modbot.db" {
			p = append(p, fmt.Sprintf("gateway: restore --db, replicate --db and the gateway's --data-dir/modbot.db disagree (%s, %s, %s)",
				restore.value(f.bin, "db"), replicate.value(f.bin, "db"), gateway.value(f.bin, "data-dir")))
		}
		shutdown, err := parseDuration(replicate.value(f.bin, "shutdown-timeout"))
		// The gateway's stop: --leave-timeout (shards handed over), then
		// sessions detached, API drained (5 s), SQLite closed.
		leave, lerr := parseDuration(gateway.value(f.bin, "leave-timeout"))
		gatewayStop := 15 + leave
		if grace := gw.spec.TerminationGracePeriodSeconds; err != nil || lerr != nil || grace == nil || *grace < int64(gatewayStop+shutdown+5) {
			p = append(p, fmt.Sprintf("gateway: terminationGracePeriodSeconds %v does not cover the gateway's stop (%d s with --leave-timeout) and the sidecar's --shutdown-timeout (%d s)", grace, gatewayStop, shutdown))
		}
		if got := gateway.value(f.bin, "replication-status"); !strings.HasSuffix(got, ":"+portOf(replicate.value(f.bin, "metrics-addr"))+"/healthz") {
			p = append(p, fmt.Sprintf("gateway: --replication-status %q is not the sidecar's /healthz", got))
		}
	}
	// proxy: HPA with the seed's numbers (production), the public paths.
	for _, h := range c.hpas {
		if h.Spec.ScaleTargetRef.Name != px.name || c.overlay != "production" {
			continue
		}
		ok := h.Spec.MinReplicas != nil && *h.Spec.MinReplicas == 2 && h.Spec.MaxReplicas == 10 && len(h.Spec.Metrics) == 1 &&
			h.Spec.Metrics[0].Resource != nil && h.Spec.Metrics[0].Resource.Name == corev1.ResourceCPU &&
			h.Spec.Metrics[0].Resource.Target.AverageUtilization != nil && *h.Spec.Metrics[0].Resource.Target.AverageUtilization == 70 &&
			h.Spec.Behavior != nil && h.Spec.Behavior.ScaleDown != nil && h.Spec.Behavior.ScaleDown.StabilizationWindowSeconds != nil &&
			*h.Spec.Behavior.ScaleDown.StabilizationWindowSeconds == 300
		if !ok {
			p = append(p, "HorizontalPodAutoscaler "+h.Name+": want 2–10 replicas on CPU 70 % with a 300 s scale-down stabilization")
		}
	}
	if len(c.hpas) == 0 {
		p = append(p, "no HorizontalPodAutoscaler for the proxy")
	}
	paths := map[string]bool{}
	for _, ing := range c.ingresses {
		if ing.Spec.IngressClassName == nil || *ing.Spec.IngressClassName != "nginx" {
			p = append(p, "Ingress "+ing.Name+": want ingressClassName nginx")
		}
		for _, r := range ing.Spec.Rules {
			if r.HTTP != nil {
				for _, path := range r.HTTP.Paths {
					if path.Backend.Service != nil && path.Backend.Service.Name != "" {
						if svc := c.service(path.Backend.Service.Name); svc == nil || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(px.labels)) {
							p = append(p, fmt.Sprintf("Ingress %s %s: the backend is not the proxy", ing.Name, path.Path))
						}
					}
					paths[path.Path] = true
				}
			}
		}
	}
	for _, want := range []string{"/webhooks/discord", "/guild/", "/login", "/status"} {
		if !paths[want] {
			p = append(p, "Ingress: no path "+want)
		}
	}
	return p
}

func envFromPodName(c *corev1.Container, name string) bool {
	return slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name"
	})
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// parseDuration reads a Go duration flag value in whole seconds.
func parseDuration(v string) (int, error) {
	d, err := time.ParseDuration(v)
	return int(d.Seconds()), err
}

func TestOverlaysBuildDecodeAndCrossCheck(t *testing.T) {
	f := loadFacts(t)
	for _, o := range overlays {
		t.Run(o, func(t *testing.T) {
			c, err := buildOverlay(filepath.Join("statefulsets", "overlays", o))
			if err != nil {
				t.Fatal(err)
			}
			if len(c.workloads()) < 3 || len(c.services) < 3 || len(c.netpols) < 3 {
				t.Fatalf("overlay %s built too little: %d workloads, %d services, %d network policies", o, len(c.workloads()), len(c.services), len(c.netpols))
			}
			for _, problem := range c.check(f) {
				t.Error(problem)
			}
		})
	}
}

// TestStrictDecodingRefusesUnknownFields: a misspelt field decodes into an
// object that silently lacks it; the strict error must still fail.
func TestStrictDecodingRefusesUnknownFields(t *testing.T) {
	doc := []byte("apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  selectr:\n    a: b\n")
	if _, err := decodeStrict(doc); err == nil || !strings.Contains(err.Error(), "selectr") {
		t.Fatalf("decodeStrict accepted an unknown field: %v", err)
	}
	dup := []byte("apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n  name: y\n")
	if _, err := decodeStrict(dup); err == nil {
		t.Fatal("decodeStrict accepted a duplicated field")
	}
}

// TestCrossChecksCatchBrokenManifests breaks one thing at a time in a copy of
// statefulsets/ and wants the check that guards it to say so.
func TestCrossChecksCatchBrokenManifests(t *testing.T) {
	f := loadFacts(t)
	cases := []struct {
		name, file, old, new, want string
	}{
		{"service selector", "base/proxy.yaml", "  selector:\n    app.kubernetes.io/name: modbot\n    app.kubernetes.io/component: proxy\n  ports:",
			"  selector:\n    app.kubernetes.io/name: modbot\n    app.kubernetes.io/component: proxies\n  ports:", "Service proxy: selector"},
		{"workload selector", "base/gateway.yaml", "  selector:\n    matchLabels:\n      app.kubernetes.io/name: modbot\n      app.kubernetes.io/component: gateway\n  template:",
			"  selector:\n    matchLabels:\n      app.kubernetes.io/name: modbot\n      app.kubernetes.io/component: gateways\n  template:", "StatefulSet gateway: selector"},
		{"service target port", "base/gateway.yaml", "      port: 9095\n      targetPort: replicate", "      port: 9095\n      targetPort: metrics", "Service gateway port replicate"},
		{"probe path", "base/proxy.yaml", "path: /readyz", "path: /ready", "probe path /ready is not served"},
		{"probe port", "base/config.yaml", "path: /healthz\n              port: http", "path: /healthz\n              port: 8001", "probe port 8001"},
		{"container port without listener", "base/config.yaml", "containerPort: 8000", "containerPort: 8001", "declares port 8001"},
		{"loopback bind", "base/gateway.yaml", `value: "0.0.0.0:9000"`, `value: "127.0.0.1:9000"`, "binds loopback"},
		{"unknown flag", "base/gateway.yaml", `"--if-replica-exists"`, `"--if-replica-exist"`, "has no flag --if-replica-exist"},
		{"unknown command", "base/proxy.yaml", `args: ["proxy"]`, `args: ["proxies"]`, `no command "proxies"`},
		{"unread env", "base/proxy.yaml", "- name: MODBOT_NAME", "- name: MODBOT_PROXY_NAME", "env MODBOT_PROXY_NAME is read by neither"},
		{"inlined secret", "base/proxy.yaml", "            - name: MODBOT_TOKEN\n              valueFrom:\n                secretKeyRef:\n                  name: modbot-tokens\n                  key: admin-token",
			"            - name: MODBOT_TOKEN\n              value: hunter2", "MODBOT_TOKEN must come from a Secret"},
		{"undocumented secret key", "base/gateway.yaml", "key: bot-token", "key: discord-bot-token", "key discord-bot-token is not in docs/deploy.md"},
		{"foreign image", "base/proxy.yaml", "image: ghcr.io/modbot/modbot", "image: docker.io/library/busybox", "is not the one the Dockerfile builds"},
		{"writable root", "base/config.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "container config-node: securityContext"},
		{"token mounted", "base/proxy.yaml", "      automountServiceAccountToken: false\n", "", "Deployment proxy: automountServiceAccountToken"},
		{"no limits", "base/proxy.yaml", "            limits:\n              cpu: \"1\"\n              memory: 512Mi\n", "", "container proxy: no cpu limit"},
		{"gateway open to all pods", "base/networkpolicy.yaml", "              app.kubernetes.io/component: proxy\n        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: modbot\n              app.kubernetes.io/component: config\n        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: modbot\n              app.kubernetes.io/component: gateway\n      ports:\n        - port: http",
			"              app.kubernetes.io/component: proxy\n        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: modbot\n      ports:\n        - port: http", "admits pods other than proxies"},
		{"config open to other namespaces", "base/networkpolicy.yaml", "    - from:\n        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: modbot\n      ports:\n        - port: raft",
			"    - from:\n        - namespaceSelector: {}\n      ports:\n        - port: raft", "admits traffic from outside the namespace to config"},
		{"no default deny", "base/networkpolicy.yaml", "  podSelector: {}\n  policyTypes: [\"Ingress\"]\n---", "  podSelector:\n    matchLabels:\n      app.kubernetes.io/component: proxy\n  policyTypes: [\"Ingress\"]\n---", "no default-deny"},
		{"join a pod that does not exist", "base/config.yaml", "https://config-2.config-peers:8000\"", "https://config-3.config-peers:8000\"", "config-3.config-peers:8000: no such config pod"},
		{"config URL on the ready-only service", "base/proxy.yaml", "https://config-0.config-peers:8000,", "https://config-0.config:8000,", "not under the StatefulSet's headless Service"},
		{"every node bootstraps", "base/config.yaml", "- name: MODBOT_BOOTSTRAP_ID\n              value: config-0", "- name: MODBOT_BOOTSTRAP\n              value: \"true\"", "want --bootstrap-id config-0"},
		{"restore without its guards", "base/gateway.yaml", `, "--if-db-not-exists", "--if-replica-exists"]`, `]`, "needs --if-db-not-exists --if-replica-exists"},
		{"short grace", "base/gateway.yaml", "terminationGracePeriodSeconds: 75", "terminationGracePeriodSeconds: 60", "does not cover"},
		{"sidecar stops with the gateway", "base/gateway.yaml", "          restartPolicy: Always\n", "", "want a replicate native sidecar"},
		{"hpa numbers", "base/proxy.yaml", "stabilizationWindowSeconds: 300", "stabilizationWindowSeconds: 60", "300 s scale-down"},
		{"config pdb", "base/config.yaml", "  maxUnavailable: 1", "  maxUnavailable: 2", "want maxUnavailable 1 for config"},
		{"ingress path", "base/proxy.yaml", "path: /status", "path: /statistics", "no path /status"},
		{"misspelt field", "base/proxy.yaml", "  minReplicas: 2", "  minReplica: 2", "decodes only loosely"},
		{"plain config URL", "base/gateway.yaml", "https://config-0.config-peers:8000,", "http://config-0.config-peers:8000,", "not an https URL"},
		{"no client auth on a pod", "base/gateway.yaml", "            - name: MODBOT_TLS_CLIENT_AUTH\n              value: \"true\"\n", "", "gateway: want --tls-client-auth"},
		{"TLS files not mounted", "base/proxy.yaml", "              mountPath: /tls\n", "              mountPath: /certs\n", "proxy: --tls-cert /tls/tls.crt is not a file of a mounted volume"},
		{"TLS volume of another Secret", "base/config.yaml", "            secretName: modbot-internal-tls\n", "            secretName: modbot-other-tls\n", "not the Certificate's Secret modbot-internal-tls"},
		{"advertised name not in the certificate", "base/tls.yaml", "    - \"*.gateway\"\n", "", "is not a name of Certificate modbot-internal"},
		{"certificate without client auth", "base/tls.yaml", "\"server auth\", \"client auth\"]", "\"server auth\"]", "usages lack client auth"},
		{"plain probe on a TLS port", "base/config.yaml", "path: /readyz\n              port: http\n              scheme: HTTPS\n", "path: /readyz\n              port: http\n", "readiness probe on a TLS port without scheme HTTPS"},
		{"issuer missing", "base/tls.yaml", "    name: modbot-ca\n    kind: Issuer", "    name: modbot-root\n    kind: Issuer", "issuerRef Issuer modbot-root is not in the manifests"},
		{"misspelt certificate field", "base/tls.yaml", "  renewBefore: 720h", "  renewBefor: 720h", "renewBefor"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyTree(t, "statefulsets")
			path := filepath.Join(dir, tc.file)
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Count(string(src), tc.old) != 1 {
				t.Fatalf("%s: %q occurs %d times, want once (the test's edit is stale)", tc.file, tc.old, strings.Count(string(src), tc.old))
			}
			if err := os.WriteFile(path, []byte(strings.Replace(string(src), tc.old, tc.new, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			var problems []string
			c, err := buildOverlay(filepath.Join(dir, "overlays", "production"))
			if err != nil {
				problems = []string{err.Error()}
			} else {
				problems = c.check(f)
			}
			for _, p := range problems {
				if strings.Contains(p, tc.want) {
					return
				}
			}
			t.Errorf("want a problem containing %q, got %d:\n%s", tc.want, len(problems), strings.Join(problems, "\n"))
		})
	}
}

func TestUndocumentedSecretIsCaught(t *testing.T) {
	f := loadFacts(t)
	delete(f.secrets, "modbot-s3/secret-access-key")
	c, err := buildOverlay(filepath.Join("statefulsets", "overlays", "production"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range c.check(f) {
		if strings.Contains(p, "modbot-s3 key secret-access-key is not in docs/deploy.md") {
			return
		}
	}
	t.Error("a Secret key missing from docs/deploy.md went unnoticed")
}

// copyTree copies a directory into a temporary one (for breaking a copy).
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	return dst
}
