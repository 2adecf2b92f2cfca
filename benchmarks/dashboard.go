package benchmarks

import (
	"context"
	"errors"
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
	"github.com/modbot/modbot/gatewaynode/guildstore"
	"github.com/modbot/modbot/internal/podapi"
	"github.com/modbot/modbot/systest"
)

// DashboardResult is the dashboard page's latency through the proxy for a
// signed-in moderator, at one guild size.
type DashboardResult struct {
	Messages int
	Page     Percentiles // HTML, with charts and names
	JSON     Percentiles // Accept: application/json
	// PagesPerSec: page loads per second through the proxy from
	// DashboardClients keep-alive clients at once, nothing being written.
	PagesPerSec float64
	// PodPagesPerSec: the same straight at the pod, each request carrying
	// the user assertion the proxy would sign (issue 18's "dashboard reads
	// per pod": the pod's own capacity, with no proxy on these 2 cores).
	PodPagesPerSec float64
	// WritingPagesPerSec and PodWritingPagesPerSec: through the proxy and
	// at the pod while DashboardWriteRate messages/s are written to the
	// guild, so its cached dashboard keeps being read again.
	WritingPagesPerSec, PodWritingPagesPerSec float64
	// Writes is the messages written during the two writing runs.
	Writes int
}

// DashboardWriteRate is the message rate into the viewed guild during the
// writing runs (one Apply per message, as the gateway's handler commits).
const DashboardWriteRate = 200

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
		proxied := pageRequest(client.Jar, fmt.Sprintf("%s/guild/%d/dashboard", sys.Proxy.URL, g.ID), "")
		assertion, err := podapi.SignAssertion(systest.InternalToken, podapi.UserAssertion{UserID: sysUser(g.ID, g.Roles).ID,
			Username: "bench-moderator", GuildID: g.ID, Permissions: podapi.PermAdministrator, CSRF: "bench",
			Expires: time.Now().Add(time.Hour).Unix()})
		if err != nil {
			return nil, err
		}
		direct := pageRequest(nil, fmt.Sprintf("%s/guild/%d/dashboard", sys.URL(sys.Cfgs[0].HTTPAddr), g.ID), assertion)
		v, err := sys.Owner(ctx, g.ID)
		if err != nil {
			return nil, err
		}
		nextID := uint64(1 << 41)
		for _, run := range []struct {
			dst     *float64
			req     func(context.Context) *http.Request
			writing bool
		}{{&r.PagesPerSec, proxied, false}, {&r.PodPagesPerSec, direct, false},
			{&r.WritingPagesPerSec, proxied, true}, {&r.PodWritingPagesPerSec, direct, true}} {
			var stop func() (int, error)
			if run.writing {
				stop = writeMessages(ctx, sys.Gateways[0].Store(), g.ID, v.Epoch, &nextID)
			}
			*run.dst, err = dashboardThroughput(ctx, run.req, 20*requests)
			if stop != nil {
				w, werr := stop()
				r.Writes += w
				err = errors.Join(err, werr)
			}
			if err != nil {
				return nil, fmt.Errorf("dashboard of a %d-message guild: %w", n, err)
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// pageRequest builds page loads of url: with the signed-in session's
// cookies (jar), or straight at the pod with a user assertion.
func pageRequest(jar http.CookieJar, url, assertion string) func(context.Context) *http.Request {
	return func(ctx context.Context) *http.Request {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Accept", "text/html")
		if jar != nil {
			for _, c := range jar.Cookies(req.URL) {
				req.AddCookie(c)
			}
		}
		if assertion != "" {
			req.Header.Set(podapi.HeaderUserAssertion, assertion)
		}
		return req
	}
}

// writeMessages writes DashboardWriteRate messages/s to guild, one Apply
// each, until the returned stop is called (at most a minute's worth).
func writeMessages(ctx context.Context, store *guildstore.Store, guild, epoch uint64, nextID *uint64) (stop func() (int, error)) {
	ctx, cancel := context.WithCancel(ctx)
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		tick := time.NewTicker(time.Second / DashboardWriteRate)
		defer tick.Stop()
		n := 0
		for ; n < 60*DashboardWriteRate; n++ {
			select {
			case <-ctx.Done():
				done <- result{n, nil}
				return
			case <-tick.C:
			}
			*nextID++
			if _, err := store.Apply(ctx, guildstore.Write{Epoch: epoch, Op: guildstore.MessageCreate{GuildID: guild, MessageID: *nextID,
				ChannelID: guild + 1, AuthorID: 100000000000000000 + *nextID%97, CreatedAt: time.Now(), ContentLength: 10}}); err != nil && ctx.Err() == nil {
				done <- result{n, err}
				return
			}
		}
		done <- result{n, nil}
	}()
	return func() (int, error) {
		cancel()
		r := <-done
		return r.n, r.err
	}
}

// dashboardThroughput loads the page n times from DashboardClients
// keep-alive clients.
func dashboardThroughput(ctx context.Context, newReq func(context.Context) *http.Request, n int) (float64, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: DashboardClients, MaxConnsPerHost: DashboardClients}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var next atomic.Int64
	errs := make(chan error, DashboardClients)
	start := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < DashboardClients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				resp, err := hc.Do(newReq(ctx))
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
	fmt.Fprintf(tw, "messages\trequests\tpage p50\tp99\tJSON p50\tp99\tpages/s via proxy\tat the pod\twriting: via proxy\tat the pod\tmessages written\t\n")
	for _, r := range rs {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%d\t\n", r.Messages, r.Page.N, ms(r.Page.P50), ms(r.Page.P99), ms(r.JSON.P50), ms(r.JSON.P99),
			r.PagesPerSec, r.PodPagesPerSec, r.WritingPagesPerSec, r.PodWritingPagesPerSec, r.Writes)
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "(GET /guild/{id}/dashboard with a signed-in moderator: p50/p99 sequential through the proxy — Discord membership cached, assertion signed, the pod's queries and SVG;")
	fmt.Fprintf(w, " pages/s from %d keep-alive clients through the proxy, and straight at the pod with the assertion the proxy signs; writing: while %d messages/s go into the guild, one commit each.", DashboardClients, DashboardWriteRate)
	fmt.Fprintln(w, " One process: config nodes, pod, proxy and clients share the 2 cores.)")
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
