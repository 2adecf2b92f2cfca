package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// metricsDashboard is the Prometheus dashboard (deploy/monitoring/dashboards),
// decoded with unknown fields refused.
type metricsDashboard struct {
	UID           string   `json:"uid"`
	Title         string   `json:"title"`
	SchemaVersion int      `json:"schemaVersion"`
	Version       int      `json:"version"`
	Editable      bool     `json:"editable"`
	Tags          []string `json:"tags"`
	Time          struct {
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"time"`
	Refresh    string `json:"refresh"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query string `json:"query"`
			Label string `json:"label"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID         int        `json:"id"`
		Type       string     `json:"type"`
		Title      string     `json:"title"`
		Datasource datasource `json:"datasource"`
		GridPos    struct {
			H int `json:"h"`
			W int `json:"w"`
			X int `json:"x"`
			Y int `json:"y"`
		} `json:"gridPos"`
		FieldConfig struct {
			Defaults struct {
				Unit string `json:"unit"`
			} `json:"defaults"`
			Overrides []any `json:"overrides"`
		} `json:"fieldConfig"`
		Targets []struct {
			RefID        string     `json:"refId"`
			Expr         string     `json:"expr"`
			LegendFormat string     `json:"legendFormat"`
			Datasource   datasource `json:"datasource"`
		} `json:"targets"`
	} `json:"panels"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

const metricsDashboards = "monitoring/dashboards/*.json"

func loadMetricsDashboards(t *testing.T) map[string]metricsDashboard {
	t.Helper()
	files, err := filepath.Glob(metricsDashboards)
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in %s: %v", metricsDashboards, err)
	}
	out := map[string]metricsDashboard{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		var d metricsDashboard
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[f] = d
	}
	return out
}

// dashboardProblems: every panel reads the dashboard's Prometheus
// datasource variable and has a query; ids are unique.
func dashboardProblems(d metricsDashboard) []string {
	var p []string
	hasVar := false
	for _, v := range d.Templating.List {
		hasVar = hasVar || v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus"
	}
	if !hasVar {
		p = append(p, d.UID+": no Prometheus datasource variable ($datasource)")
	}
	ids := map[int]bool{}
	for _, pn := range d.Panels {
		if ids[pn.ID] {
			p = append(p, fmt.Sprintf("%s: panel id %d twice", d.UID, pn.ID))
		}
		ids[pn.ID] = true
		if pn.Datasource != (datasource{"prometheus", "${datasource}"}) || len(pn.Targets) == 0 {
			p = append(p, fmt.Sprintf("%s: panel %q: want the ${datasource} Prometheus datasource and a query", d.UID, pn.Title))
		}
		for _, tg := range pn.Targets {
			if strings.TrimSpace(tg.Expr) == "" || tg.Datasource != pn.Datasource {
				p = append(p, fmt.Sprintf("%s: panel %q target %s: empty query or another datasource", d.UID, pn.Title, tg.RefID))
			}
		}
	}
	return p
}

// checkQueries has promtool parse every panel's PromQL, as the expressions
// of recording rules; it returns promtool's complaint.
func checkQueries(t *testing.T, d metricsDashboard) error {
	t.Helper()
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for _, pn := range d.Panels {
		for _, tg := range pn.Targets {
			rules = append(rules, rule{Record: fmt.Sprintf("dashboard:panel_%d_%s", pn.ID, strings.ToLower(tg.RefID)), Expr: tg.Expr})
		}
	}
	doc, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": d.UID, "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "queries.rules.yml")
	if err := os.WriteFile(f, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool(t), "check", "rules", f).CombinedOutput(); err != nil {
		return fmt.Errorf("%v\n%s", err, out)
	}
	return nil
}

// TestMetricsDashboardsDecodeAndTheirQueriesParse: the Prometheus
// dashboards decode strictly, each panel queries the datasource variable,
// and promtool parses every query. (That each metric a query names is
// exported by the running system is devcluster's
// TestDevRunsTheWholeSystemAndLeavesNothingBehind.)
func TestMetricsDashboardsDecodeAndTheirQueriesParse(t *testing.T) {
	for f, d := range loadMetricsDashboards(t) {
		if len(d.Panels) < 10 {
			t.Errorf("%s: %d panels", f, len(d.Panels))
		}
		for _, p := range dashboardProblems(d) {
			t.Error(p)
		}
		if err := checkQueries(t, d); err != nil {
			t.Errorf("%s: promtool refuses a panel's query: %v", f, err)
		}
	}
}

func TestABrokenDashboardQueryIsCaught(t *testing.T) {
	for _, d := range loadMetricsDashboards(t) {
		d.Panels = d.Panels[:1]
		d.Panels[0].Targets[0].Expr = "sum by (pod (modbot_config_guilds_per_pod)"
		if err := checkQueries(t, d); err == nil {
			t.Fatal("promtool accepted a query with unbalanced parentheses")
		}
		d.Panels[0].Datasource.UID = "some-other"
		if len(dashboardProblems(d)) == 0 {
			t.Fatal("a panel on another datasource went unnoticed")
		}
		return
	}
}
