package benchmarks

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modbot/modbot/fakediscord"
	"github.com/modbot/modbot/gatewaynode/restlimit"
	"github.com/modbot/modbot/systest"
)

// RESTOptions size the Discord REST benchmark.
type RESTOptions struct {
	Pods          int           // gateway pods flooding the global limit (default 10)
	FloodPosts    int           // mod-log posts of the flood (default 400)
	SteadyPods    int           // pods of the 80 % run (default 3)
	SteadyFor     time.Duration // length of the 80 % run (default 30 s)
	LimiterTrials int           // round trips per side of the limiter overhead (default 2000)
}

// RESTResult is the benchmark's table.
type RESTResult struct {
	Pods, FloodPosts                 int
	FloodPerSecond                   float64 // posts/s while every pod floods
	FloodMaxInSecond, GlobalLimit    int     // most requests the fake saw in one second
	Flood429s                        int
	SteadyPods                       int
	SteadyRate                       float64 // posts/s asked (80 % of the limit)
	SteadyAchieved                   float64
	SteadyFor                        time.Duration
	Steady429s                       int
	Per429Hour                       float64
	PlainRoundTrip, LimitedRoundTrip Percentiles
	LimiterAddedP50, LimiterAddedP99 time.Duration
}

// REST measures the cluster's Discord REST against the fake with Discord's
// limits: mod-log posts/s when every pod posts as fast as it can, the 429s
// an hour at 80 % of the global limit, and what the limiter adds to a
// request.
func REST(ctx context.Context, o RESTOptions) (RESTResult, error) {
	if o.Pods <= 0 {
		o.Pods = 10
	}
	if o.FloodPosts <= 0 {
		o.FloodPosts = 400
	}
	if o.SteadyPods <= 0 {
		o.SteadyPods = 3
	}
	if o.SteadyFor <= 0 {
		o.SteadyFor = 30 * time.Second
	}
	if o.LimiterTrials <= 0 {
		o.LimiterTrials = 2000
	}
	r := RESTResult{Pods: o.Pods, FloodPosts: o.FloodPosts, SteadyPods: o.SteadyPods, SteadyFor: o.SteadyFor}
	if err := restFlood(ctx, o, &r); err != nil {
		return r, fmt.Errorf("flood: %w", err)
	}
	if err := restSteady(ctx, o, &r); err != nil {
		return r, fmt.Errorf("80 %% run: %w", err)
	}
	restOverhead(o, &r)
	return r, nil
}

// restSystem starts pods gateways over guilds guilds, rebalanced, with
// mod-logs set up; route buckets are raised out of the way so the global
// limit is what binds.
func restSystem(ctx context.Context, dir string, pods, guilds int) (*systest.System, []fakediscord.Guild, map[uint64]uint64, fakediscord.RateLimits, error) {
	sys, err := systest.StartSystem(ctx, dir, systest.SystemOptions{Shards: pods})
	if err != nil {
		return nil, nil, nil, fakediscord.RateLimits{}, err
	}
	lim := fakediscord.RateLimits{Routes: map[string]fakediscord.Limit{fakediscord.BucketCreateMessage: {Requests: 1000, Per: time.Second}}}
	sys.Discord.ResetRateLimits(lim)
	gs := sys.Discord.Seed(guilds)
	for i := 0; i < pods; i++ {
		if _, err := sys.AddGateway(); err != nil {
			sys.Close()
			return nil, nil, nil, lim, err
		}
	}
	fail := func(err error) (*systest.System, []fakediscord.Guild, map[uint64]uint64, fakediscord.RateLimits, error) {
		sys.Close()
		return nil, nil, nil, lim, err
	}
	if err := sys.WaitSettled(ctx, 60*time.Second); err != nil {
		return fail(err)
	}
	if _, err := sys.Client.Rebalance(ctx, false); err != nil {
		return fail(err)
	}
	if err := systest.Poll(ctx, 60*time.Second, "the rebalance", func() bool {
		j, err := sys.Client.RebalanceStatus(ctx)
		return err == nil && !j.FinishedAt.IsZero()
	}); err != nil {
		return fail(err)
	}
	modlogs, err := sys.SetupModlogs(ctx, gs)
	if err != nil {
		return fail(err)
	}
	return sys, gs, modlogs, lim, nil
}

func restFlood(ctx context.Context, o RESTOptions, r *RESTResult) error {
	dir, err := os.MkdirTemp("", "modbot-restbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	guilds := 2 * o.Pods
	sys, gs, modlogs, lim, err := restSystem(ctx, dir, o.Pods, guilds)
	if err != nil {
		return err
	}
	defer sys.Close()
	sys.Discord.ResetRateLimits(lim)
	want := map[uint64][]string{}
	var wg sync.WaitGroup
	errs := make(chan error, len(gs))
	for k, g := range gs {
		var reasons []string
		for i := k; i < o.FloodPosts; i += len(gs) {
			reasons = append(reasons, fmt.Sprintf("flood %d", i))
		}
		want[g.ID] = reasons
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, reason := range reasons {
				if err := sys.Report(ctx, g.ID, k*1000+i, reason); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	if err := waitPosted(ctx, sys, modlogs, want, 5*time.Minute, "the flood's posts"); err != nil {
		return err
	}
	var first, last time.Time
	for _, q := range sys.Discord.Sent() {
		if q.Method == http.MethodPost && q.Status == http.StatusOK && strings.HasSuffix(q.Path, "/messages") {
			if first.IsZero() || q.At.Before(first) {
				first = q.At
			}
			if q.At.After(last) {
				last = q.At
			}
		}
	}
	st := sys.Discord.RateLimitStats()
	if span := last.Sub(first); span > 0 {
		r.FloodPerSecond = float64(o.FloodPosts-1) / span.Seconds()
	}
	r.FloodMaxInSecond = st.Global[fakediscord.BotIdentity].MaxInWindow
	r.GlobalLimit = st.Limits.Global.Requests
	r.Flood429s = st.Limited()
	return nil
}

func restSteady(ctx context.Context, o RESTOptions, r *RESTResult) error {
	dir, err := os.MkdirTemp("", "modbot-restbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sys, gs, modlogs, lim, err := restSystem(ctx, dir, o.SteadyPods, 12)
	if err != nil {
		return err
	}
	defer sys.Close()
	sys.Discord.ResetRateLimits(lim)
	r.SteadyRate = 0.8 * restlimit.DiscordGlobalLimit
	every := time.Duration(float64(time.Second) / r.SteadyRate)
	want := map[uint64][]string{}
	start := time.Now()
	next := start
	n := 0
	for time.Since(start) < o.SteadyFor && ctx.Err() == nil {
		g := gs[n%len(gs)].ID
		reason := fmt.Sprintf("steady %d", n)
		want[g] = append(want[g], reason)
		if err := sys.Report(ctx, g, n, reason); err != nil {
			return err
		}
		n++
		next = next.Add(every)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
	}
	if err := waitPosted(ctx, sys, modlogs, want, 2*time.Minute, "the steady run's posts"); err != nil {
		return err
	}
	took := time.Since(start)
	st := sys.Discord.RateLimitStats()
	r.SteadyAchieved = float64(n) / took.Seconds()
	r.Steady429s = st.Limited()
	r.Per429Hour = float64(st.Limited()) * float64(time.Hour) / float64(took)
	return nil
}

// waitPosted waits until every wanted report is posted once (a double post
// is an error).
func waitPosted(ctx context.Context, sys *systest.System, modlogs map[uint64]uint64, want map[uint64][]string, d time.Duration, what string) error {
	var perr error
	if err := systest.Poll(ctx, d, what, func() bool {
		n, err := sys.MissingPosts(modlogs, want)
		perr = err
		return err != nil || n == 0
	}); err != nil {
		return err
	}
	return perr
}

// restOverhead times round trips to a local server with and without the
// limiter (a share far above the request rate: the cost of the bookkeeping,
// not of waiting), alternating.
func restOverhead(o RESTOptions, r *RESTResult) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	defer srv.Close()
	plain := &http.Client{Transport: &http.Transport{}}
	limited := &http.Client{Transport: &restlimit.Transport{Base: &http.Transport{}, Global: restlimit.NewLimiter(1e9),
		Metrics: restlimit.NewMetrics(prometheus.NewRegistry())}}
	url := srv.URL + "/api/v9/channels/1058897343295918080/messages"
	one := func(c *http.Client) time.Duration {
		start := time.Now()
		resp, err := c.Post(url, "application/json", nil)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return time.Since(start)
	}
	var a, b []time.Duration
	for i := 0; i < o.LimiterTrials; i++ {
		a = append(a, one(plain))
		b = append(b, one(limited))
	}
	r.PlainRoundTrip, r.LimitedRoundTrip = percentiles(a), percentiles(b)
	r.LimiterAddedP50 = r.LimitedRoundTrip.P50 - r.PlainRoundTrip.P50
	r.LimiterAddedP99 = r.LimitedRoundTrip.P99 - r.PlainRoundTrip.P99
}

// PrintREST writes the REST table.
func PrintREST(w io.Writer, r RESTResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "DISCORD REST (fake Discord, its limits; mod-log posts)\tresult\ttarget\t\n")
	fmt.Fprintf(tw, "%d pods posting as fast as they can: posts/s (first post to last)\t%.1f\t≤ %d (global limit)\t\n", r.Pods, r.FloodPerSecond, r.GlobalLimit)
	fmt.Fprintf(tw, "  most requests the fake saw in one second\t%d\t≤ %d\t\n", r.FloodMaxInSecond, r.GlobalLimit)
	fmt.Fprintf(tw, "  429s from Discord\t%d\t0\t\n", r.Flood429s)
	fmt.Fprintf(tw, "%d pods at 80 %% of the limit (%.0f posts/s asked, %.1f achieved) for %s: 429s\t%d\t\t\n",
		r.SteadyPods, r.SteadyRate, r.SteadyAchieved, r.SteadyFor, r.Steady429s)
	fmt.Fprintf(tw, "  429s per hour\t%.0f\t0 (Nirn at Dyno's scale: ~100)\t\n", r.Per429Hour)
	fmt.Fprintf(tw, "limiter's added latency per request, p50 / p99\t%s / %s\t\t\n", us(r.LimiterAddedP50), us(r.LimiterAddedP99))
	fmt.Fprintf(tw, "  (round trip without it: p50 %s, p99 %s)\t\t\t\n", us(r.PlainRoundTrip.P50), us(r.PlainRoundTrip.P99))
	_ = tw.Flush()
}
