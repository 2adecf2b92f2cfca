package devcluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/modbot/modbot/internal/pgserver"
	"github.com/modbot/modbot/systest"
)

// buildBinaries compiles modbot and modbotctl once for the test.
func buildBinaries(t *testing.T) (modbot, modbotctl string) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "../cmd/modbot", "../cmd/modbotctl")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return filepath.Join(dir, "modbot"), filepath.Join(dir, "modbotctl")
}

// descendants returns the pids of processes whose command line mentions
// marker (the test's unique state directory).
func processesMentioning(marker string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if strings.Contains(string(st), ") Z ") {
			continue // a zombie already exited
		}
		if bytes.Contains(b, []byte(marker)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDevRunsTheWholeSystemAndLeavesNothingBehind is the README's first
// command, followed literally: modbot dev starts everything, modbotctl
// status answers with no flags but the address, messages sent through the
// fake Discord show up on the dashboard through the proxy, a killed gateway
// child is restarted and serves again, and SIGINT leaves no process behind.
func TestDevRunsTheWholeSystemAndLeavesNothingBehind(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the whole system")
	}
	modbot, modbotctl := buildBinaries(t)
	work := t.TempDir()
	state := filepath.Join(work, "devstate")
	const off = 21000 // ports 28000.., clear of a developer's own make run
	cmd := exec.Command(modbot, "dev", "--dir", state, "--traffic", "0", "--guilds", "12", "--port-offset", strconv.Itoa(off))
	cmd.Dir = work
	stdout, _ := cmd.StdoutPipe()
	var stderr systest.LockedBuffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for _, pid := range processesMentioning(state) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var out []string
	var dashboard string
	deadline := time.After(120 * time.Second)
	for dashboard == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("modbot dev exited early:\n%s\n%s", strings.Join(out, "\n"), stderr.String())
			}
			out = append(out, l)
			if strings.Contains(l, "/dashboard") {
				dashboard = regexp.MustCompile(`http://\S+/dashboard`).FindString(l)
			}
		case <-deadline:
			t.Fatalf("no dashboard URL printed after 120s:\n%s\n%s", strings.Join(out, "\n"), stderr.String())
		}
	}
	t.Logf("modbot dev ready in %s", time.Since(start).Round(time.Millisecond))
	// With PostgreSQL installed, the next try-command is the mirror's psql.
	psqlURL := ""
	if pgserver.Available() == nil {
		select {
		case l := <-lines:
			psqlURL = regexp.MustCompile(`psql '([^']+)'`).FindStringSubmatch(l + "psql ''")[1]
			if psqlURL == "" {
				t.Fatalf("no psql URL among the try-commands: %q", l)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no psql line after the dashboard one")
		}
	}
	go func() {
		for range lines {
		}
	}()
	if psqlURL != "" {
		waitUntil(t, 30*time.Second, "the 12 guilds in the Postgres mirror", func() bool { return mirroredGuilds(psqlURL) == 12 })
	}

	// modbotctl status, with the dev token found in the state directory.
	ctl := exec.Command(modbotctl, "status", "--config", fmt.Sprintf("http://127.0.0.1:%d", 8000+off))
	ctl.Env = append(os.Environ(), "MODBOT_DEV_DIR="+state)
	st, err := ctl.CombinedOutput()
	if err != nil || !strings.Contains(string(st), "leader:") || !strings.Contains(string(st), "gateway-2") {
		t.Fatalf("modbotctl status: %v\n%s", err, st)
	}

	// Messages through the fake's control API, read back through the proxy.
	guild := regexp.MustCompile(`/guild/(\d+)/`).FindStringSubmatch(dashboard)[1]
	fake := fmt.Sprintf("http://127.0.0.1:%d", 7900+off)
	devToken, err := os.ReadFile(filepath.Join(state, "token"))
	if err != nil {
		t.Fatal(err)
	}
	dashboardMessages := func(t *testing.T, url string) int { return readDashboard(t, url, strings.TrimSpace(string(devToken))) }
	before := dashboardMessages(t, dashboard)
	for i := 0; i < 5; i++ {
		resp, err := http.Post(fake+"/_fake/guilds/"+guild+"/messages", "application/json", strings.NewReader(`{"content":"hello"}`))
		if err != nil || resp.StatusCode/100 != 2 {
			t.Fatalf("dispatch: %v %v", err, resp)
		}
		resp.Body.Close()
	}
	waitUntil(t, 20*time.Second, "the messages on the dashboard", func() bool { return dashboardMessages(t, dashboard) == before+5 })

	// Every metric the alert rules and the Grafana dashboards use is
	// exported by some component of the running system.
	var targets []string
	for i := 0; i < 3; i++ {
		targets = append(targets, fmt.Sprintf("http://127.0.0.1:%d/metrics", 8000+off+i), fmt.Sprintf("http://127.0.0.1:%d/metrics", 9000+off+i),
			fmt.Sprintf("http://127.0.0.1:%d/metrics", 9100+off+i))
	}
	targets = append(targets, fmt.Sprintf("http://127.0.0.1:%d/metrics", 8080+off))
	missing := missingMetrics(t, targets, psqlURL != "")
	if len(missing) > 0 {
		t.Errorf("used by deploy/monitoring or deploy/grafana but exported by none of the %d components: %v", len(targets), missing)
	}

	// Kill a gateway child: it is restarted and serves again.
	gw := fmt.Sprintf("http://127.0.0.1:%d", 9001+off)
	var victim int
	for _, pid := range processesMentioning(state) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(b), "--id\x00gateway-1\x00") { // the gateway, not its sidecar
			victim = pid
		}
	}
	if victim == 0 {
		t.Fatal("no gateway-1 child found")
	}
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "gateway-1 restarted and ready", func() bool {
		resp, err := http.Get(gw + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	for _, pid := range processesMentioning(state) {
		if pid == victim {
			t.Fatal("the killed child is still there")
		}
	}
	if !strings.Contains(stderr.String(), "child restarted") {
		t.Fatalf("the restart was not logged:\n%s", stderr.String())
	}

	// The dashboard guild's pod loses its disk: its gateway and its
	// replication sidecar die, its data directory is deleted; the restarted
	// gateway restores its database from the file replica and serves the
	// same messages.
	owner := dashboardOwner(t, dashboard, strings.TrimSpace(string(devToken)))
	ord, _ := strconv.Atoi(strings.TrimPrefix(owner, "gateway-"))
	sideMetrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", 9100+off+ord)
	waitUntil(t, 20*time.Second, owner+"'s sidecar in sync", func() bool { return replicationLag(sideMetrics) == 0 })
	if err := os.RemoveAll(filepath.Join(state, owner)); err != nil {
		t.Fatal(err)
	}
	var killed []int
	for _, pid := range processesMentioning(state) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(b), owner+"\x00") || strings.Contains(string(b), owner+"/") {
			killed = append(killed, pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if len(killed) != 2 {
		t.Fatalf("killed %d children of %s (want its gateway and its sidecar)", len(killed), owner)
	}
	waitUntil(t, 60*time.Second, owner+" restored from its replica and serving the same messages", func() bool {
		return dashboardMessages(t, dashboard) == before+5
	})
	if _, err := os.Stat(filepath.Join(state, owner, "modbot.db")); err != nil {
		t.Fatalf("%s's database after the restore: %v", owner, err)
	}

	// SIGINT stops everything.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("modbot dev did not stop within 60s of SIGINT")
	}
	waitUntil(t, 5*time.Second, "no process left", func() bool { return len(processesMentioning(state)) == 0 })

	// No process logged a secret: the dev token, the bot token and the
	// OAuth client secret the fake Discord accepts.
	logs, err := filepath.Glob(filepath.Join(state, "logs", "*.log"))
	if err != nil || len(logs) < 5 {
		t.Fatalf("the children's logs: %v %v", logs, err)
	}
	all := stderr.String()
	for _, f := range logs {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all += string(b)
	}
	for what, secret := range map[string]string{"the dev token": strings.TrimSpace(string(devToken)), "the bot token": "fake-token", "the OAuth client secret": "fake-client-secret"} {
		if strings.Contains(all, secret) {
			t.Errorf("%s is in the logs (%d files)", what, len(logs))
		}
	}
}

// metricScheme is the one naming scheme of modbot's metrics, and its one
// exception (a histogram shared by every component, with a component label).
var metricScheme = regexp.MustCompile(`^modbot_(config|gateway|proxy|pgmirror|replication|watcher)_[a-z0-9_]+$|^modbot_http_request_duration_seconds$`)

// missingMetrics scrapes every target and returns the metric names the
// rules (deploy/monitoring/rules) and dashboards (deploy/grafana/dashboards,
// deploy/monitoring/dashboards)
// use that none exports (a histogram's _bucket, _sum and _count are its
// family); a modbot_ family outside the naming scheme is an error. Without Postgres the mirror's metrics are not looked for.
func missingMetrics(t *testing.T, targets []string, withMirror bool) []string {
	t.Helper()
	exported := map[string]bool{}
	for _, u := range targets {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatalf("scrape %s: %v", u, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("scrape %s: %d %s", u, resp.StatusCode, b)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f, ok := strings.CutPrefix(l, "# TYPE "); ok {
				name, kind, _ := strings.Cut(f, " ")
				if strings.HasPrefix(name, "modbot_") && !metricScheme.MatchString(name) {
					t.Errorf("%s (from %s) is not named modbot_<component>_<what>_<unit> (docs/operations.md, Metrics)", name, u)
				}
				exported[name] = true
				if kind == "histogram" || kind == "summary" {
					for _, suf := range []string{"_bucket", "_sum", "_count"} {
						exported[name+suf] = true
					}
				}
			}
		}
	}
	files, _ := filepath.Glob(filepath.Join("..", "deploy", "monitoring", "rules", "*.rules.yml"))
	dash, _ := filepath.Glob(filepath.Join("..", "deploy", "grafana", "dashboards", "*.json"))
	prom, _ := filepath.Glob(filepath.Join("..", "deploy", "monitoring", "dashboards", "*.json"))
	files = append(append(files, dash...), prom...)
	if len(files) < 3 {
		t.Fatalf("no rule files or dashboards found: %v", files)
	}
	used := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`\bmodbot_[a-z0-9_]+`).FindAllString(string(b), -1) {
			used[m] = true
		}
	}
	var missing []string
	for m := range used {
		if !exported[m] && (withMirror || !strings.HasPrefix(m, "modbot_pgmirror_")) {
			missing = append(missing, m)
		}
	}
	slices.Sort(missing)
	t.Logf("%d metric names used by %d rule and dashboard files; %d families exported by %d components", len(used), len(files), len(exported), len(targets))
	return missing
}

// mirroredGuilds counts the rows of guild_assignments (-1 on error).
func mirroredGuilds(url string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return -1
	}
	defer conn.Close(ctx)
	n := -1
	_ = conn.QueryRow(ctx, `SELECT count(*) FROM guild_assignments`).Scan(&n)
	return n
}

// dashboardOwner reads which pod serves a dashboard.
func dashboardOwner(t *testing.T, url, token string) string {
	t.Helper()
	d, ok := fetchDashboard(url, token)
	if !ok {
		t.Fatalf("dashboard %s: no owner", url)
	}
	return d.Owner
}

// replicationLag scrapes a sidecar's modbot_replication_lag_seconds (-1 if
// it cannot be read).
func replicationLag(url string) float64 {
	resp, err := http.Get(url)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "modbot_replication_lag_seconds "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

func readDashboard(t *testing.T, url, token string) int {
	t.Helper()
	d, ok := fetchDashboard(url, token)
	if !ok {
		return -1
	}
	return d.Messages
}

type dashboardView struct {
	GuildID  string `json:"guild_id"`
	Owner    string `json:"owner"`
	Messages int    `json:"messages"`
}

// fetchDashboard reads a dashboard as JSON with the admin token; ok is false
// unless it answered 200 with an owner.
func fetchDashboard(url, token string) (dashboardView, bool) {
	var d dashboardView
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return d, false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || json.Unmarshal(b, &d) != nil || d.Owner == "" {
		return d, false
	}
	return d, true
}
