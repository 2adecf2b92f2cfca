package benchmarks

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/modbot/modbot/fakediscord"
	"github.com/modbot/modbot/systest"
)

// DashboardResult is the dashboard page's latency through the proxy for a
// signed-in moderator, at one guild size.
type DashboardResult struct {
	Messages int
	Page     Percentiles // HTML, with charts and names
	JSON     Percentiles // Accept: application/json
	// PagesPerSec: page loads per second from DashboardClients keep-alive
	// clients at once (issue 18's "dashboard reads per pod").
	PagesPerSec float64
}

// DashboardClients is the concurrency of the dashboard throughput run.
const DashboardClients = 16

// Dashboard measures GET /guild/{id}/dashboard through the proxy with a
// logged-in session (alice, through the fake's consent page) for a guild
// with each of sizes messages: requests sequential page loads, then as
// many JSON reads. One pod, in process, loopback.
func Dashboard(ctx context.Context, sizes []int, requests int) ([]DashboardResult, error) {
	dir, err := os.MkdirTemp("", "modbot-dashboard-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	sys, err := systest.StartSystem(ctx, dir, systest.SystemOptions{Shards: 1, Gateways: 1, Proxy: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return nil, err
	}
	defer sys.Close()
	var out []DashboardResult
	for _, n := range sizes {
		g := sys.Discord.CreateGuild(0, fmt.Sprintf("bench-%d", n))
		sys.Discord.AddUser(sysUser(g.ID, g.Roles))
		if err := systest.Poll(ctx, 30*time.Second, "guild placed", func() bool {
			_, err := sys.Owner(ctx, g.ID)
			return err == nil
		}); err != nil {
			return nil, err
		}
		if err := sys.InsertMessages(ctx, 0, g.ID, 1<<40, n, 5000); err != nil {
			return nil, err
		}
		client, err := sys.Login(ctx, sys.Proxy.URL, "bench-moderator")
		if err != nil {
			return nil, err
		}
		r := DashboardResult{Messages: n}
		for _, accept := range []string{"text/html", "application/json"} {
			lat := make([]time.Duration, 0, requests)
			for i := 0; i < requests+3; i++ { // 3 warm-up loads fill the name caches
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/guild/%d/dashboard", sys.Proxy.URL, g.ID), nil)
				req.Header.Set("Accept", accept)
				start := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					return nil, err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return nil, fmt.Errorf("dashboard of a %d-message guild answered %d", n, resp.StatusCode)
				}
				if i >= 3 {
					lat = append(lat, time.Since(start))
				}
			}
			if strings.Contains(accept, "json") {
				r.JSON = percentiles(lat)
			} else {
				r.Page = percentiles(lat)
			}
		}
		if r.PagesPerSec, err = dashboardThroughput(ctx, client, fmt.Sprintf("%s/guild/%d/dashboard", sys.Proxy.URL, g.ID), 20*requests); err != nil {
			return nil, fmt.Errorf("dashboard of a %d-message guild: %w", n, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// dashboardThroughput loads the page n times from DashboardClients
// keep-alive clients sharing the signed-in session.
func dashboardThroughput(ctx context.Context, signedIn *http.Client, url string, n int) (float64, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: DashboardClients, MaxConnsPerHost: DashboardClients}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Jar: signedIn.Jar, Timeout: 30 * time.Second}
	var next atomic.Int64
	errs := make(chan error, DashboardClients)
	start := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < DashboardClients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				req.Header.Set("Accept", "text/html")
				resp, err := hc.Do(req)
				if err != nil {
					errs <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("a page load answered %d", resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return float64(n) / d.Seconds(), nil
}

// PrintDashboard prints the dashboard latency table.
func PrintDashboard(w io.Writer, rs []DashboardResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "messages\trequests\tpage p50\tp99\tJSON p50\tp99\tpages/s, %d clients\t\n", DashboardClients)
	for _, r := range rs {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%.0f\t\n", r.Messages, r.Page.N, ms(r.Page.P50), ms(r.Page.P99), ms(r.JSON.P50), ms(r.JSON.P99), r.PagesPerSec)
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "(GET /guild/{id}/dashboard through the proxy with a signed-in moderator's session: Discord membership cached, assertion signed, the pod's queries and SVG; one pod in process, loopback, sequential)")
}

// sysUser is the benchmark's signed-in moderator: the Moderator role
// (Administrator) in the guild.
func sysUser(guild uint64, roles []fakediscord.Role) fakediscord.User {
	u := fakediscord.User{ID: 1300000000000000000 + guild%1000, Name: "bench-moderator"}
	ug := fakediscord.UserGuild{GuildID: guild}
	for _, r := range roles {
		if r.Name == "Moderator" {
			ug.Roles = []uint64{r.ID}
		}
	}
	u.Guilds = []fakediscord.UserGuild{ug}
	return u
}
