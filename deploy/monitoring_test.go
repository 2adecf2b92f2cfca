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
	"sort"
	"strings"
	"testing"

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
		JobLabel        string   `json:"jobLabel"`
		PodTargetLabels []string `json:"podTargetLabels,omitempty"`
		Selector        struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		PodMetricsEndpoints []podMetricsEndpoint `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type podMetricsEndpoint struct {
	Port        string `json:"port"`
	Path        string `json:"path"`
	Interval    string `json:"interval,omitempty"`
	HonorLabels bool   `json:"honorLabels,omitempty"`
	// Authorization: the read token for the API ports.
	Authorization *struct {
		Type        string `json:"type"`
		Credentials struct {
			Name string `json:"name"`
			Key  string `json:"key"`
		} `json:"credentials"`
	} `json:"authorization,omitempty"`
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
			for _, p := range podMonitorProblems(pm, prod) {
				t.Error(p)
			}
		default:
			t.Errorf("unexpected %s in deploy/monitoring", r.GetKind())
		}
	}
	if !kinds["PrometheusRule"] || !kinds["PodMonitor"] {
		t.Errorf("deploy/monitoring builds %v, want a PrometheusRule and a PodMonitor", kinds)
	}
}

// podMonitorProblems: the monitor selects every workload, its job label is
// on every pod, and every component's metrics port is scraped.
func podMonitorProblems(pm podMonitor, c *cluster) []string {
	var p []string
	ports := map[string]bool{}
	for _, e := range pm.Spec.PodMetricsEndpoints {
		ports[e.Port] = true
		if e.Path != "/metrics" || !e.HonorLabels {
			p = append(p, fmt.Sprintf("PodMonitor port %s: want path /metrics with honorLabels (per-pod metrics carry a pod label)", e.Port))
		}
		// The API port's /metrics requires the read token once one is set
		// (internal/httpapi): the monitor must present it, from the Secret.
		if e.Port == "http" {
			if a := e.Authorization; a == nil || a.Type != "Bearer" || a.Credentials.Name != "modbot-tokens" || a.Credentials.Key != "read-token" {
				p = append(p, "PodMonitor port http: want authorization Bearer from Secret modbot-tokens key read-token (/metrics requires the read token)")
			}
		}
	}
	for _, w := range c.workloads() {
		match := true
		for k, v := range pm.Spec.Selector.MatchLabels {
			match = match && w.labels[k] == v
		}
		if !match || w.labels[pm.Spec.JobLabel] != "modbot" {
			p = append(p, fmt.Sprintf("PodMonitor does not scrape %s as job=\"modbot\" (the alerts' job)", w.name))
		}
		for _, ct := range containers(w.spec) {
			if ct.init || len(ct.Args) == 0 {
				continue
			}
			scraped := false
			for _, cp := range ct.Ports {
				scraped = scraped || ports[cp.Name]
			}
			if !scraped {
				p = append(p, fmt.Sprintf("PodMonitor scrapes no port of %s container %s", w.name, ct.Name))
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
	pm.Spec.JobLabel = "app.kubernetes.io/part-of"
	pm.Spec.Selector.MatchLabels = map[string]string{"app.kubernetes.io/name": "modbot"}
	pm.Spec.PodMetricsEndpoints = append(pm.Spec.PodMetricsEndpoints, podMetricsEndpoint{Port: "http", Path: "/metrics", HonorLabels: true})
	got := strings.Join(podMonitorProblems(pm, prod), "\n")
	if !strings.Contains(got, "scrapes no port of gateway container replicate") {
		t.Errorf("a PodMonitor without the sidecar's port went unnoticed: %s", got)
	}
	if !strings.Contains(got, "want authorization Bearer from Secret modbot-tokens key read-token") {
		t.Errorf("a PodMonitor scraping /metrics without the read token went unnoticed: %s", got)
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
