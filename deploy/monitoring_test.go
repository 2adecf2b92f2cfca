package deploy

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite monitoring/prometheusrule.yaml from monitoring/rules/modbot.rules.yml")

const (
	rulesFile = "monitoring/rules/modbot.rules.yml"
	rulesTest = "monitoring/rules/modbot.test.yml"
	crFile    = "monitoring/prometheusrule.yaml"
)

// The Prometheus Operator's CRDs, as much as these manifests use, decoded
// strictly (an unknown field is an error): the operator is not a dependency.
type ruleGroups struct {
	Groups []ruleGroup `json:"groups"`
}

type ruleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []rule `json:"rules"`
}

type rule struct {
	Record      string            `json:"record,omitempty"`
	Alert       string            `json:"alert,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type objectMeta struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

type prometheusRule struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       ruleGroups `json:"spec"`
}

type podMonitor struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		JobLabel            string               `json:"jobLabel"`
		PodTargetLabels     []string             `json:"podTargetLabels,omitempty"`
		Selector            metav1.LabelSelector `json:"selector"`
		PodMetricsEndpoints []podMetricsEndpoint `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type podMetricsEndpoint struct {
	Port        string `json:"port"`
	Path        string `json:"path"`
	Interval    string `json:"interval,omitempty"`
	HonorLabels bool   `json:"honorLabels,omitempty"`
	Scheme      string `json:"scheme,omitempty"`
	TLSConfig   *struct {
		ServerName string    `json:"serverName,omitempty"`
		CA         secretRef `json:"ca"`
		Cert       secretRef `json:"cert"`
		KeySecret  keyRef    `json:"keySecret"`
	} `json:"tlsConfig,omitempty"`
	// Authorization: the read token for the API ports.
	Authorization *struct {
		Type        string `json:"type"`
		Credentials struct {
			Name string `json:"name"`
			Key  string `json:"key"`
		} `json:"credentials"`
	} `json:"authorization,omitempty"`
}

type keyRef struct {
	Name string `json:"name"`
	Key  string `json:"key"`
}

type secretRef struct {
	Secret keyRef `json:"secret"`
}

func readRules(t testing.TB, path string) ruleGroups {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var g ruleGroups
	if err := yaml.UnmarshalStrict(src, &g); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return g
}

func renderPrometheusRule(g ruleGroups) ([]byte, error) {
	body, err := yaml.Marshal(prometheusRule{
		APIVersion: "monitoring.coreos.com/v1", Kind: "PrometheusRule",
		Metadata: objectMeta{Name: "modbot", Labels: map[string]string{"app.kubernetes.io/name": "modbot"}},
		Spec:     g,
	})
	if err != nil {
		return nil, err
	}
	return append([]byte("# Generated from rules/modbot.rules.yml by `cd deploy && go test -run TestPrometheusRule -update`: edit that file.\n"), body...), nil
}

// TestPrometheusRuleIsThePlainRules: the PrometheusRule carries exactly the
// groups promtool checks.
func TestPrometheusRuleIsThePlainRules(t *testing.T) {
	want, err := renderPrometheusRule(readRules(t, rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(crFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(crFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is not generated from %s: run cd deploy && go test -run TestPrometheusRule -update", crFile, rulesFile)
	}
}

// TestMonitoringBuildsAndDecodesStrictly: deploy/monitoring builds with
// kustomize; the PrometheusRule's groups equal the plain file's; the
// PodMonitor scrapes ports every component declares.
func TestMonitoringBuildsAndDecodesStrictly(t *testing.T) {
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), "monitoring")
	if err != nil {
		t.Fatal(err)
	}
	plain := readRules(t, rulesFile)
	prod, err := buildOverlay(filepath.Join("statefulsets", "overlays", "production"))
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	var monitors []podMonitor
	for _, r := range m.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		kinds[r.GetKind()] = true
		switch r.GetKind() {
		case "PrometheusRule":
			var pr prometheusRule
			if err := yaml.UnmarshalStrict(doc, &pr); err != nil {
				t.Fatalf("PrometheusRule: %v", err)
			}
			if pr.APIVersion != "monitoring.coreos.com/v1" || !reflect.DeepEqual(pr.Spec, plain) {
				t.Errorf("PrometheusRule %s differs from %s", pr.Metadata.Name, rulesFile)
			}
		case "PodMonitor":
			var pm podMonitor
			if err := yaml.UnmarshalStrict(doc, &pm); err != nil {
				t.Fatalf("PodMonitor: %v", err)
			}
			monitors = append(monitors, pm)
		default:
			t.Errorf("unexpected %s in deploy/monitoring", r.GetKind())
		}
	}
	for _, p := range podMonitorProblems(monitors, prod) {
		t.Error(p)
	}
	if !kinds["PrometheusRule"] || !kinds["PodMonitor"] {
		t.Errorf("deploy/monitoring builds %v, want a PrometheusRule and a PodMonitor", kinds)
	}
}

// podMonitorProblems: the monitors together scrape every workload as
// job="modbot", every component's metrics port once, with the read token on
// the API ports, and over mTLS with the components' certificate where the
// port serves TLS (config nodes, gateways: checkTLS's tlsServers).
func podMonitorProblems(pms []podMonitor, c *cluster) []string {
	var p []string
	var tlsSecret string
	if len(c.certificates) == 1 {
		tlsSecret = c.certificates[0].Spec.SecretName
	}
	for _, w := range c.workloads() {
		var mine []podMonitor
		for _, pm := range pms {
			sel, err := selectorOf(&pm.Spec.Selector)
			if err != nil {
				p = append(p, fmt.Sprintf("PodMonitor %s: selector: %v", pm.Metadata.Name, err))
				continue
			}
			if sel.Matches(labels.Set(w.labels)) {
				mine = append(mine, pm)
			}
		}
		if len(mine) == 0 {
			p = append(p, fmt.Sprintf("no PodMonitor scrapes %s", w.name))
		}
		serves := false
		for _, ct := range containers(w.spec) {
			if !ct.init && len(ct.Args) > 0 && tlsServers[ct.Args[0]] {
				serves = true
			}
		}
		ports := map[string]int{}
		for _, pm := range mine {
			if w.labels[pm.Spec.JobLabel] != "modbot" {
				p = append(p, fmt.Sprintf("PodMonitor %s does not scrape %s as job=\"modbot\" (the alerts' job)", pm.Metadata.Name, w.name))
			}
			for _, e := range pm.Spec.PodMetricsEndpoints {
				ports[e.Port]++
				where := fmt.Sprintf("PodMonitor %s port %s (%s)", pm.Metadata.Name, e.Port, w.name)
				if e.Path != "/metrics" || !e.HonorLabels {
					p = append(p, where+": want path /metrics with honorLabels (per-pod metrics carry a pod label)")
				}
				if e.Port != "http" {
					continue
				}
				// The API port's /metrics requires the read token once one
				// is set (internal/httpapi): the monitor must present it.
				if a := e.Authorization; a == nil || a.Type != "Bearer" || a.Credentials.Name != "modbot-tokens" || a.Credentials.Key != "read-token" {
					p = append(p, where+": want authorization Bearer from Secret modbot-tokens key read-token (/metrics requires the read token)")
				}
				tc := e.TLSConfig
				switch {
				case serves && (e.Scheme != "https" || tc == nil || tc.CA.Secret.Name != tlsSecret || tc.Cert.Secret.Name != tlsSecret || tc.KeySecret.Name != tlsSecret):
					p = append(p, fmt.Sprintf("%s: the port serves mTLS: want scheme https and a tlsConfig with ca, cert and keySecret from Secret %s", where, tlsSecret))
				case serves && (c.certificates == nil || !slices.ContainsFunc(c.certificates[0].Spec.DNSNames, func(n string) bool { return dnsMatch(n, tc.ServerName) })):
					p = append(p, fmt.Sprintf("%s: tlsConfig serverName %q is not a name of the certificate (Prometheus scrapes pod IPs)", where, tc.ServerName))
				case !serves && e.Scheme == "https":
					p = append(p, where+": scheme https on a plain port")
				}
			}
		}
		for _, ct := range containers(w.spec) {
			if ct.init || len(ct.Args) == 0 {
				continue
			}
			scraped := 0
			for _, cp := range ct.Ports {
				scraped += ports[cp.Name]
			}
			if scraped == 0 {
				p = append(p, fmt.Sprintf("no PodMonitor scrapes a port of %s container %s", w.name, ct.Name))
			}
			if scraped > 1 {
				p = append(p, fmt.Sprintf("%s container %s is scraped %d times (its series would be duplicated)", w.name, ct.Name, scraped))
			}
		}
	}
	return p
}

func TestPodMonitorProblemsAreCaught(t *testing.T) {
	prod, err := buildOverlay(filepath.Join("statefulsets", "overlays", "production"))
	if err != nil {
		t.Fatal(err)
	}
	var pm podMonitor
	pm.Metadata.Name = "naive"
	pm.Spec.JobLabel = "app.kubernetes.io/part-of"
	pm.Spec.Selector.MatchLabels = map[string]string{"app.kubernetes.io/name": "modbot"}
	pm.Spec.PodMetricsEndpoints = append(pm.Spec.PodMetricsEndpoints, podMetricsEndpoint{Port: "http", Path: "/metrics", HonorLabels: true})
	got := strings.Join(podMonitorProblems([]podMonitor{pm}, prod), "\n")
	for _, want := range []string{
		"no PodMonitor scrapes a port of gateway container replicate",
		"want authorization Bearer from Secret modbot-tokens key read-token",
		"PodMonitor naive port http (config): the port serves mTLS: want scheme https",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("want a problem containing %q, got:\n%s", want, got)
		}
	}
	// Two monitors both scraping the proxy.
	got = strings.Join(podMonitorProblems([]podMonitor{pm, pm}, prod), "\n")
	if !strings.Contains(got, "container proxy is scraped 2 times") {
		t.Errorf("a proxy scraped twice went unnoticed:\n%s", got)
	}
}

var (
	exportedName = regexp.MustCompile(`"(modbot_[a-z0-9_]+)"`)
	exprMetric   = regexp.MustCompile(`\b(modbot_[a-z0-9_]+|up)\b\s*(\{|\[|\)|$|\s)`)
)

// exportedMetrics are the metric names the main module's code defines.
func exportedMetrics(t testing.TB) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	root := repoRoot(t)
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (d.Name() == "deploy" || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range exportedName.FindAllSubmatch(src, -1) {
			out[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// unknownMetrics lists the metrics rules read that nobody exports. up is
// Prometheus's own; modbot:… are this file's recording rules.
func unknownMetrics(g ruleGroups, exported map[string]bool) []string {
	var out []string
	for _, grp := range g.Groups {
		for _, r := range grp.Rules {
			for _, m := range exprMetric.FindAllStringSubmatch(r.Expr, -1) {
				name := m[1]
				if name == "up" {
					continue
				}
				base := name
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					if b, ok := strings.CutSuffix(name, suffix); ok && exported[b] {
						base = b
					}
				}
				if !exported[base] {
					out = append(out, fmt.Sprintf("%s%s reads %s, which the code does not export", r.Alert, r.Record, name))
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

func TestRulesReadMetricsTheCodeExports(t *testing.T) {
	exported := exportedMetrics(t)
	if !exported["modbot_replication_lag_seconds"] || !exported["modbot_http_request_duration_seconds"] {
		t.Fatalf("metric scan found too little: %d names", len(exported))
	}
	g := readRules(t, rulesFile)
	for _, p := range unknownMetrics(g, exported) {
		t.Error(p)
	}
	// The check itself: a renamed metric is caught.
	g.Groups[1].Rules[0].Expr = `modbot_gateway_replication_lag_seconds > 10`
	if got := unknownMetrics(g, exported); len(got) != 1 {
		t.Errorf("a metric nobody exports went unnoticed: %v", got)
	}
}

// TestEveryAlertHasAFiringAndASilentCase reads the promtool test file.
func TestEveryAlertHasAFiringAndASilentCase(t *testing.T) {
	src, err := os.ReadFile(rulesTest)
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		RuleFiles []string `json:"rule_files"`
		Tests     []struct {
			Name       string `json:"name"`
			AlertTests []struct {
				Alert     string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(src, &tf); err != nil {
		t.Fatal(err)
	}
	firing, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, at := range tc.AlertTests {
			if len(at.ExpAlerts) > 0 {
				firing[at.Alert] = true
			} else {
				silent[at.Alert] = true
			}
		}
	}
	alerts := 0
	for _, grp := range readRules(t, rulesFile).Groups {
		for _, r := range grp.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if !firing[r.Alert] || !silent[r.Alert] {
				t.Errorf("alert %s: firing case %v, silent case %v in %s", r.Alert, firing[r.Alert], silent[r.Alert], rulesTest)
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["runbook_url"] == "" {
				t.Errorf("alert %s needs a severity, a summary and a runbook_url", r.Alert)
			}
		}
	}
	// The seed's five and the four this system adds.
	for _, want := range []string{"ModbotPodUnhealthy", "ModbotGuildImbalance", "ModbotReplicationLagHigh", "ModbotHTTPLatencyHigh",
		"ModbotHTTPErrorRateHigh", "ModbotNoConfigLeader", "ModbotWatchStale", "ModbotIdentifyBudgetLow", "ModbotDeadLetters"} {
		if !firing[want] {
			t.Errorf("no alert %s with a firing test", want)
		}
	}
	if alerts < 9 {
		t.Errorf("only %d alerts", alerts)
	}
}

// promtool finds Debian's promtool; in CI its absence is a failure.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not found: .ci/run installs Debian's prometheus package (apt-get install --no-install-recommends prometheus)")
		}
		t.Skip("promtool not found: apt-get install --no-install-recommends prometheus (Debian) to run the rule tests")
	}
	return p
}

func TestPromtoolCheckAndTestRules(t *testing.T) {
	bin := promtool(t)
	for _, args := range [][]string{{"check", "rules", rulesFile}, {"test", "rules", rulesTest}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestPromtoolTestsFailOnAWrongRule: with a threshold moved, the unit tests
// notice (they are not vacuous).
func TestPromtoolTestsFailOnAWrongRule(t *testing.T) {
	bin := promtool(t)
	dir := t.TempDir()
	src, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ old, new string }{
		{"(modbot_replication_lag_seconds) > 10", "(modbot_replication_lag_seconds) > 30"},
		{"up{job=\"modbot\"} == 0", "up{job=\"modbot\"} == 2"},
		{"> 0.01\n        for: 5m\n        labels:\n          severity: page\n        annotations:\n          summary: \"{{ $labels.component }}: {{ $value | humanizePercentage }} of HTTP",
			"> 0.10\n        for: 5m\n        labels:\n          severity: page\n        annotations:\n          summary: \"{{ $labels.component }}: {{ $value | humanizePercentage }} of HTTP"},
	} {
		if !bytes.Contains(src, []byte(tc.old)) {
			t.Fatalf("%s has no %q (the test's edit is stale)", rulesFile, tc.old)
		}
		broken := bytes.Replace(src, []byte(tc.old), []byte(tc.new), 1)
		if err := os.WriteFile(filepath.Join(dir, "modbot.rules.yml"), broken, 0o644); err != nil {
			t.Fatal(err)
		}
		tests, err := os.ReadFile(rulesTest)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "modbot.test.yml"), tests, 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "test", "rules", "modbot.test.yml")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("promtool test rules passed with %q changed to %q:\n%s", tc.old, tc.new, out)
		}
	}
}
