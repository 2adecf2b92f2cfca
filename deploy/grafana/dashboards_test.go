// Package grafana holds the Grafana provisioning and dashboards that read
// the Postgres mirror. It is its own Go module so that the Grafana
// foundation SDK, which only its test uses, stays out of modbot's.
package grafana

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/pgtest"
	"github.com/modbot/modbot/pgmirror"
	"github.com/modbot/modbot/systest"
)

// panelJSON is what the test needs of a panel: its title and SQL.
type panelJSON struct {
	ID      int    `json:"id"`
	Title   string `json:"title"`
	Type    string `json:"type"`
	Targets []struct {
		RawSQL string `json:"rawSql"`
		Format string `json:"format"`
	} `json:"targets"`
	Datasource struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
}

func loadDashboards(t *testing.T) map[string][]panelJSON {
	t.Helper()
	files, err := filepath.Glob("dashboards/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards: %v", err)
	}
	out := map[string][]panelJSON{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard.Dashboard
		err = d.UnmarshalJSONStrict(raw)
		// Success is a non-nil, empty list of build errors.
		var be cog.BuildErrors
		if err != nil && !(errors.As(err, &be) && len(be) == 0) {
			t.Fatalf("%s does not strict-decode as a Grafana dashboard: %v", f, err)
		}
		if d.Uid == nil || *d.Uid == "" || d.Title == nil {
			t.Fatalf("%s: no uid or title", f)
		}
		var plain struct {
			Panels []panelJSON `json:"panels"`
		}
		if err := json.Unmarshal(raw, &plain); err != nil {
			t.Fatal(err)
		}
		if len(plain.Panels) != len(d.Panels) {
			t.Fatalf("%s: %d panels, the SDK decoded %d", f, len(plain.Panels), len(d.Panels))
		}
		out[filepath.Base(f)] = plain.Panels
	}
	return out
}

// expandMacros does what Grafana's PostgreSQL datasource does to a query's
// macros, for a time range and an interval.
func expandMacros(t *testing.T, sql string, from, to time.Time, interval time.Duration) string {
	t.Helper()
	// Grafana sends millisecond times and writes them as RFC 3339.
	ts := func(x time.Time) string {
		return "'" + x.UTC().Truncate(time.Millisecond).Format(time.RFC3339Nano) + "'"
	}
	secs := func(s string) string {
		s = strings.Trim(strings.TrimSpace(s), "'")
		if s == "$__interval" {
			return strconv.Itoa(int(interval.Seconds()))
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("interval %q: %v", s, err)
		}
		return strconv.Itoa(int(d.Seconds()))
	}
	macro := regexp.MustCompile(`\$__(\w+)\(([^)]*)\)`)
	sql = macro.ReplaceAllStringFunc(sql, func(m string) string {
		p := macro.FindStringSubmatch(m)
		args := strings.Split(p[2], ",")
		col := strings.TrimSpace(args[0])
		switch p[1] {
		case "timeFilter":
			return fmt.Sprintf("%s BETWEEN %s AND %s", col, ts(from), ts(to))
		case "timeFrom":
			return ts(from)
		case "timeTo":
			return ts(to)
		case "timeGroup":
			return fmt.Sprintf("floor(extract(epoch from %s)/%s)*%s", col, secs(args[1]), secs(args[1]))
		case "timeGroupAlias":
			return fmt.Sprintf("floor(extract(epoch from %s)/%s)*%s AS \"time\"", col, secs(args[1]), secs(args[1]))
		}
		t.Fatalf("macro %s is not expanded by this test", m)
		return ""
	})
	sql = strings.ReplaceAll(sql, "$__interval", "'"+interval.String()+"'")
	if strings.Contains(sql, "$__") {
		t.Fatalf("unexpanded macro left in %q", sql)
	}
	return sql
}

// runPanel executes a panel's SQL as the read-only role and returns its
// rows as strings (numbers rounded to 0.01).
func runPanel(t *testing.T, conn *pgx.Conn, sql string) [][]string {
	t.Helper()
	rows, err := conn.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	defer rows.Close()
	var out [][]string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		var row []string
		for _, v := range vals {
			row = append(row, format(v))
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	return out
}

func format(v any) string {
	round := func(f float64) string { return strconv.FormatFloat(math.Round(f*100)/100, 'f', -1, 64) }
	switch x := v.(type) {
	case nil:
		return "NULL"
	case float64:
		return round(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case int32:
		return strconv.FormatInt(int64(x), 10)
	case pgtype.Numeric:
		f, err := x.Float64Value()
		if err != nil || !f.Valid {
			return "NULL"
		}
		return round(f.Float64)
	}
	return fmt.Sprint(v)
}

// history writes commands into the leader's Raft log at leader times the
// test chooses, as the leader's handlers would after validation.
type history struct {
	t *testing.T
	c *systest.Cluster
}

func (h history) apply(at time.Time, cmd fsm.Command) {
	h.t.Helper()
	cmd.Version, cmd.At = fsm.CommandVersion, at.UnixMilli()
	b, err := cmd.Encode()
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.c.Nodes[h.c.Leader()].Raft().Apply(b, 5*time.Second).Error(); err != nil {
		h.t.Fatal(err)
	}
}

func (h history) guild(id uint64) (g fsm.Guild) {
	h.c.Nodes[h.c.Leader()].Store().View(func(s *fsm.State) { g, _ = s.Guilds.Get(id) })
	return g
}

// move moves a guild to pod, starting at start and ending (completed, or
// aborted with reason) after d.
func (h history) move(id uint64, to string, start time.Time, d time.Duration, abort string, failover bool) {
	h.t.Helper()
	h.apply(start, fsm.Command{Type: fsm.CmdStartMove, Guild: id, To: to, Failover: failover, LossWindowMs: -1})
	g := h.guild(id)
	if g.Migration == nil {
		h.t.Fatalf("guild %d: the move to %s was refused", id, to)
	}
	if abort != "" {
		h.apply(start.Add(d), fsm.Command{Type: fsm.CmdAbortMove, Guild: id, Epoch: g.Epoch, Reason: abort})
		return
	}
	h.apply(start.Add(d), fsm.Command{Type: fsm.CmdCompleteMove, Guild: id, Epoch: g.Epoch})
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestEveryPanelGivesTheNumbersTheHistoryMust: the dashboards strict-decode;
// then a scripted history runs through a real config node and the real
// mirror into a real PostgreSQL, and every panel's SQL, macros expanded, run
// as the read-only role Grafana uses, gives what that history must.
func TestEveryPanelGivesTheNumbersTheHistoryMust(t *testing.T) {
	dashboards := loadDashboards(t)
	srv := pgtest.Start(t)
	url := pgtest.Database(t, srv)
	c, err := systest.StartCluster(context.Background(), t.TempDir(), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	m, err := pgmirror.New(pgmirror.Options{ConfigURLs: c.URLs(), Token: systest.ReadToken, PGURL: url, Logger: quiet(), LockRetry: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	h := history{t, c}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 3; i++ {
		h.apply(t0, fsm.Command{Type: fsm.CmdRegisterPod, Pod: &fsm.PodSpec{ID: fmt.Sprintf("gateway-%d", i), Ordinal: i, Addr: fmt.Sprintf("127.0.0.1:%d", 19000+i)}})
	}
	var ids []uint64
	for n := uint64(1); n <= 30; n++ {
		ids = append(ids, (1_100_000_000_000+n)<<22|n)
	}
	h.apply(t0.Add(time.Minute), fsm.Command{Type: fsm.CmdPlaceGuilds, GuildIDs: ids})
	owned := func(pod string) (out []uint64) {
		for _, id := range ids {
			if h.guild(id).Owner == pod {
				out = append(out, id)
			}
		}
		return out
	}
	// Hour 1: four moves of 10, 20, 30, 40 s from gateway-0 to gateway-1.
	from0 := owned("gateway-0")
	for i, d := range []int{10, 20, 30, 40} {
		h.move(from0[i], "gateway-1", t0.Add(time.Hour+time.Duration(i)*5*time.Minute), time.Duration(d)*time.Second, "", false)
	}
	// Hour 2: two moves of 50 and 60 s; three aborts.
	h.move(from0[4], "gateway-2", t0.Add(2*time.Hour), 50*time.Second, "", false)
	h.move(from0[5], "gateway-2", t0.Add(2*time.Hour+5*time.Minute), 60*time.Second, "", false)
	h.move(from0[6], "gateway-1", t0.Add(2*time.Hour+10*time.Minute), 7*time.Second, "timeout", false)
	h.move(from0[6], "gateway-1", t0.Add(2*time.Hour+15*time.Minute), 9*time.Second, "timeout", false)
	h.move(from0[7], "gateway-2", t0.Add(2*time.Hour+20*time.Minute), 3*time.Second, "import checksum mismatch", false)
	// Hour 3: gateway-2 goes down; two of its guilds fail over (100, 200 s).
	h.apply(t0.Add(3*time.Hour), fsm.Command{Type: fsm.CmdMarkPodDown, PodID: "gateway-2"})
	from2 := owned("gateway-2")
	h.move(from2[0], "gateway-0", t0.Add(3*time.Hour+time.Minute), 100*time.Second, "", true)
	h.move(from2[1], "gateway-1", t0.Add(3*time.Hour+2*time.Minute), 200*time.Second, "", true)

	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	waitFor := func(rev uint64) {
		t.Helper()
		if err := systest.Poll(context.Background(), 20*time.Second, "the mirror", func() bool {
			var got int64
			_ = conn.QueryRow(context.Background(), `SELECT revision FROM mirror_state`).Scan(&got)
			return uint64(got) == rev
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(c.Nodes[0].Store().Revision())
	scriptedDone := time.Now()
	// A few changes at the real clock, for the lag panel.
	for n := uint64(31); n <= 33; n++ {
		h.apply(time.Now(), fsm.Command{Type: fsm.CmdPlaceGuilds, GuildIDs: []uint64{(1_100_000_000_000+n)<<22 | n}})
	}
	finalRev := c.Nodes[0].Store().Revision()
	waitFor(finalRev)
	lagWindowEnd := time.Now().Add(time.Second)

	final := map[string]int{}
	var active []int
	c.Nodes[0].Store().View(func(s *fsm.State) {
		for _, p := range s.SortedPods() {
			final[p.ID] = s.GuildCount(p.ID)
			if p.State == fsm.PodActive {
				active = append(active, s.GuildCount(p.ID))
			}
		}
	})
	mean := 0.0
	for _, n := range active {
		mean += float64(n)
	}
	mean /= float64(len(active))
	imbalance := 100 * float64(slices.Max(active)-slices.Min(active)) / mean

	// Grafana reads as modbot_grafana, the role the migration made.
	if _, err := conn.Exec(context.Background(), `ALTER ROLE modbot_grafana PASSWORD 'grafana'`); err != nil {
		t.Fatal(err)
	}
	ro, err := pgx.Connect(context.Background(), strings.Replace(url, "postgres:"+srv.Password()+"@", "modbot_grafana:grafana@", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close(context.Background())
	if _, err := ro.Exec(context.Background(), `DELETE FROM pods`); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("the Grafana role could delete: %v", err)
	}

	hour := func(h int) string { return strconv.FormatInt(t0.Add(time.Duration(h)*time.Hour).Unix(), 10) }
	day := [2]time.Time{t0, t0.Add(24 * time.Hour)}
	cases := map[string]struct {
		rng      [2]time.Time
		interval time.Duration
		check    func(t *testing.T, rows [][]string)
	}{
		"Guilds per pod": {[2]time.Time{t0, scriptedDone.Add(time.Hour)}, 24 * time.Hour * 365, func(t *testing.T, rows [][]string) {
			// One bucket spanning everything: each pod's last count.
			got := map[string]string{}
			for _, r := range rows {
				got[r[1]] = r[2]
			}
			for pod, n := range final {
				if got[pod] != strconv.Itoa(n) {
					t.Fatalf("%s: %s guilds, the FSM has %d (rows %v)", pod, got[pod], n, rows)
				}
			}
		}},
		"Imbalance now": {day, time.Minute, func(t *testing.T, rows [][]string) {
			want := strconv.FormatFloat(math.Round(imbalance*100)/100, 'f', -1, 64)
			if len(rows) != 1 || rows[0][0] != want {
				t.Fatalf("imbalance %v, want %s (active pods %v)", rows, want, active)
			}
		}},
		"Moves per hour": {day, time.Minute, func(t *testing.T, rows [][]string) {
			want := [][]string{{hour(1), "4"}, {hour(2), "2"}, {hour(3), "2"}}
			if !equalRows(rows, want) {
				t.Fatalf("moves per hour %v, want %v", rows, want)
			}
		}},
		"Move duration p50 / p95": {day, time.Minute, func(t *testing.T, rows [][]string) {
			// 10 20 30 40 50 60 100 200 s: p50 = 45 s, p95 = 100 + 0.65 × 100 s.
			if want := [][]string{{"45000", "165000"}}; !equalRows(rows, want) {
				t.Fatalf("durations %v, want %v", rows, want)
			}
		}},
		"Aborted moves by reason": {day, time.Minute, func(t *testing.T, rows [][]string) {
			if want := [][]string{{"timeout", "2"}, {"import checksum mismatch", "1"}}; !equalRows(rows, want) {
				t.Fatalf("aborts %v, want %v", rows, want)
			}
		}},
		"Failovers": {day, time.Minute, func(t *testing.T, rows [][]string) {
			want := [][]string{{hour(1), "0", "0"}, {hour(2), "0", "0"}, {hour(3), "2", "1"}}
			if !equalRows(rows, want) {
				t.Fatalf("failovers %v, want %v", rows, want)
			}
		}},
		"Mirror lag": {[2]time.Time{scriptedDone, lagWindowEnd}, time.Hour, func(t *testing.T, rows [][]string) {
			// Only the three changes made at the real clock are in range:
			// committed and mirrored within seconds.
			if len(rows) == 0 || len(rows) > 2 {
				t.Fatalf("lag rows %v", rows)
			}
			for _, r := range rows {
				lag, err := strconv.ParseFloat(r[1], 64)
				if err != nil || lag < 0 || lag > 5 {
					t.Fatalf("lag %v: want between 0 and 5 s", rows)
				}
			}
		}},
		"Mirror revision": {day, time.Minute, func(t *testing.T, rows [][]string) {
			if len(rows) != 1 || rows[0][0] != strconv.FormatUint(finalRev, 10) {
				t.Fatalf("mirror revision %v, want %d", rows, finalRev)
			}
		}},
	}
	seen := 0
	for file, panels := range dashboards {
		for _, p := range panels {
			t.Run(strings.ReplaceAll(p.Title, " ", "_"), func(t *testing.T) {
				tc, ok := cases[p.Title]
				if !ok {
					t.Fatalf("%s: panel %q has no expected result in this test", file, p.Title)
				}
				if p.Datasource.Type != "grafana-postgresql-datasource" || p.Datasource.UID != "modbot-pg" || len(p.Targets) != 1 {
					t.Fatalf("panel %q: datasource %+v, %d targets", p.Title, p.Datasource, len(p.Targets))
				}
				tc.check(t, runPanel(t, ro, expandMacros(t, p.Targets[0].RawSQL, tc.rng[0], tc.rng[1], tc.interval)))
				seen++
			})
		}
	}
	if seen != len(cases) {
		t.Fatalf("%d panels checked, %d expected", seen, len(cases))
	}
}

func equalRows(a, b [][]string) bool {
	return slices.EqualFunc(a, b, func(x, y []string) bool { return slices.Equal(x, y) })
}

// TestProvisioningPointsAtTheDashboardsAndTheReadOnlyRole: the datasource is
// the PostgreSQL plugin with the uid the panels use, logging in as the role
// the migration creates.
func TestProvisioningPointsAtTheDashboardsAndTheReadOnlyRole(t *testing.T) {
	ds, err := os.ReadFile("provisioning/datasources/modbot-postgres.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"type: grafana-postgresql-datasource", "uid: modbot-pg", "user: modbot_grafana"} {
		if !strings.Contains(string(ds), want) {
			t.Fatalf("datasource provisioning lacks %q", want)
		}
	}
	prov, err := os.ReadFile("provisioning/dashboards/modbot.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(prov), "type: file") || !strings.Contains(string(prov), "path: /var/lib/grafana/dashboards/modbot") {
		t.Fatalf("dashboards provider:\n%s", prov)
	}
}
