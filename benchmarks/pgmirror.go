package benchmarks

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/internal/pgserver"
	"github.com/modbot/modbot/pgmirror"
	"github.com/modbot/modbot/systest"
)

// PgMirrorOptions sizes the Postgres mirror benchmark (issue 14).
type PgMirrorOptions struct {
	LagRates    []int         // changes/s for the lag runs (100, 1000)
	LagDuration time.Duration // length of each lag run (5 s)
	OutageRate  int           // changes/s of the outage comparison (200)
	Outage      time.Duration // Postgres stopped this long (30 s)
	// OutageRun is the length of each of the two comparison runs (Outage + 10 s).
	OutageRun    time.Duration
	ResyncGuilds int // guilds in the resync run (1,000,000)
}

func (o *PgMirrorOptions) defaults() {
	if len(o.LagRates) == 0 {
		o.LagRates = []int{100, 1000}
	}
	if o.LagDuration == 0 {
		o.LagDuration = 5 * time.Second
	}
	if o.OutageRate == 0 {
		o.OutageRate = 200
	}
	if o.Outage == 0 {
		o.Outage = 30 * time.Second
	}
	if o.OutageRun == 0 {
		o.OutageRun = o.Outage + 10*time.Second
	}
	if o.ResyncGuilds == 0 {
		o.ResyncGuilds = 1_000_000
	}
}

// PgMirrorLag is one lag run: write acknowledged → the mirror's commit.
type PgMirrorLag struct {
	Rate, Writes int
	Lag          Percentiles
}

// PgMirrorResult is what `modbotbench -only pgmirror` prints.
type PgMirrorResult struct {
	Lag []PgMirrorLag
	// Write latency at OutageRate without any mirror, and with mirrors on
	// every node and Postgres stopped for Outage in the middle of the run.
	WithoutPostgres, PostgresDown outage
	Outage                        time.Duration
	OutageRate                    int
	CatchUp                       time.Duration // Postgres back → mirror at the FSM's revision
	ResyncGuilds                  int
	Resync                        time.Duration // mirror start on an empty database → caught up, via 410 + snapshot
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// PgMirror runs the three measurements, each on its own 3-node loopback
// cluster (fsync on) and a PostgreSQL with fsync on.
func PgMirror(ctx context.Context, o PgMirrorOptions) (PgMirrorResult, error) {
	o.defaults()
	res := PgMirrorResult{Outage: o.Outage, OutageRate: o.OutageRate, ResyncGuilds: o.ResyncGuilds}
	if err := pgserver.Available(); err != nil {
		return res, err
	}
	dir, cleanup, err := systest.TempDir("pgmirror")
	if err != nil {
		return res, err
	}
	defer cleanup()
	srv, err := pgserver.Start(ctx, pgserver.Options{Dir: dir + "/pg", Durable: true})
	if err != nil {
		return res, err
	}
	defer srv.Kill()
	db := 0
	newDB := func() (string, error) { db++; return srv.CreateDatabase(ctx, "bench"+strconv.Itoa(db)) }

	// Lag at each rate.
	for _, rate := range o.LagRates {
		url, err := newDB()
		if err != nil {
			return res, err
		}
		r, err := mirrorLagRun(ctx, fmt.Sprintf("%s/lag%d", dir, rate), url, rate, o.LagDuration)
		if err != nil {
			return res, fmt.Errorf("lag at %d/s: %w", rate, err)
		}
		res.Lag = append(res.Lag, r)
	}
	// Write latency without Postgres, then with Postgres down.
	if res.WithoutPostgres, _, err = outageRun(ctx, dir+"/nopg", nil, "", o); err != nil {
		return res, err
	}
	url, err := newDB()
	if err != nil {
		return res, err
	}
	if res.PostgresDown, res.CatchUp, err = outageRun(ctx, dir+"/pgdown", srv, url, o); err != nil {
		return res, err
	}
	// Resync of ResyncGuilds.
	if url, err = newDB(); err != nil {
		return res, err
	}
	if res.Resync, err = resyncRun(ctx, dir+"/resync", url, o.ResyncGuilds); err != nil {
		return res, err
	}
	return res, nil
}

func startBenchMirror(ctx context.Context, c *systest.Cluster, i int, url string, onCommit func(uint64)) (func(), error) {
	urls := c.URLs()
	urls = append([]string{urls[i]}, append(urls[:i:i], urls[i+1:]...)...)
	m, err := pgmirror.New(pgmirror.Options{ConfigURLs: urls, Token: systest.ReadToken, PGURL: url, Name: c.Cfgs[i].ID, Logger: quietLog,
		LockRetry: 100 * time.Millisecond, RetryMax: time.Second, OnCommit: onCommit})
	if err != nil {
		return nil, err
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(mctx) }()
	return func() { cancel(); <-done }, nil
}

func registerBenchPods(ctx context.Context, cl *assignments.Client) error {
	for i := 0; i < 3; i++ {
		if _, err := cl.RegisterPod(ctx, assignments.RegisterPodRequest{ID: fmt.Sprintf("gateway-%d", i), Addr: fmt.Sprintf("127.0.0.1:%d", 9000+i)}); err != nil {
			return fmt.Errorf("register pod: %w", err)
		}
	}
	return nil
}

// pacedWrites places one new guild per write at rate for d, from a pool of
// writers, and returns each write's latency and (revision, ack time).
type ack struct {
	rev uint64
	at  time.Time
}

// A write that fails (no quorum during an election) is counted, not fatal;
// more than 1 % failed is an error.
func pacedWrites(ctx context.Context, leader *assignments.Client, first, rate int, d time.Duration) ([]timedWrite, []ack, error) {
	n := int(float64(rate) * d.Seconds())
	var mu sync.Mutex
	var lat []timedWrite
	t0 := time.Now()
	var acks []ack
	var firstErr error
	failed := 0
	jobs := make(chan int, 64)
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				start := time.Now()
				r, err := leader.PlaceGuilds(ctx, []string{guildID(first + j)})
				took := time.Since(start)
				mu.Lock()
				lat = append(lat, timedWrite{start.Sub(t0), took})
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					acks = append(acks, ack{r.Revision, time.Now()})
				}
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	for j := 0; j < n && ctx.Err() == nil; j++ {
		if wait := time.Until(start.Add(time.Duration(j) * time.Second / time.Duration(rate))); wait > 0 {
			time.Sleep(wait)
		}
		jobs <- j
	}
	close(jobs)
	wg.Wait()
	if failed*100 > n {
		return lat, acks, fmt.Errorf("%d of %d writes failed: %w", failed, n, firstErr)
	}
	return lat, acks, nil
}

// timedWrite is one write: when it started (from the run's start) and how
// long it took.
type timedWrite struct{ at, took time.Duration }

// latencies are the durations of the writes started in [from, to).
func latencies(ws []timedWrite, from, to time.Duration) []time.Duration {
	var out []time.Duration
	for _, w := range ws {
		if w.at >= from && w.at < to {
			out = append(out, w.took)
		}
	}
	return out
}

// leaderClient sends writes to the leader first and fails over (an
// election on a busy 2-core machine) to the others.
func leaderClient(c *systest.Cluster) (*assignments.Client, error) {
	l := max(c.Leader(), 0)
	urls := c.URLs()
	return assignments.NewClient(append([]string{urls[l]}, append(urls[:l:l], urls[l+1:]...)...), systest.Token)
}

func mirrorLagRun(ctx context.Context, dir, url string, rate int, d time.Duration) (PgMirrorLag, error) {
	r := PgMirrorLag{Rate: rate}
	c, err := systest.StartCluster(ctx, dir, 3, nil)
	if err != nil {
		return r, err
	}
	defer c.Close()
	if err := registerBenchPods(ctx, c.Client()); err != nil {
		return r, err
	}
	var mu sync.Mutex
	type commit struct {
		rev uint64
		at  time.Time
	}
	var commits []commit
	var stops []func()
	for i := range c.Nodes {
		stop, err := startBenchMirror(ctx, c, i, url, func(rev uint64) {
			mu.Lock()
			commits = append(commits, commit{rev, time.Now()})
			mu.Unlock()
		})
		if err != nil {
			return r, err
		}
		stops = append(stops, stop)
	}
	defer func() {
		for _, s := range stops {
			s()
		}
	}()
	leader, err := leaderClient(c)
	if err != nil {
		return r, err
	}
	_, acks, err := pacedWrites(ctx, leader, 0, rate, d)
	if err != nil {
		return r, err
	}
	last := c.Nodes[c.Leader()].Store().Revision()
	if err := systest.Poll(ctx, 60*time.Second, "the mirror to catch up", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(commits) > 0 && commits[len(commits)-1].rev >= last
	}); err != nil {
		return r, err
	}
	mu.Lock()
	defer mu.Unlock()
	sort.Slice(commits, func(i, j int) bool { return commits[i].rev < commits[j].rev })
	var lags []time.Duration
	for _, a := range acks {
		i := sort.Search(len(commits), func(i int) bool { return commits[i].rev >= a.rev })
		if i < len(commits) {
			lags = append(lags, max(commits[i].at.Sub(a.at), 0))
		}
	}
	r.Writes, r.Lag = len(acks), percentiles(lags)
	return r, nil
}

// outageRun measures write latency at OutageRate for OutageRun; with srv
// set, every node runs a mirror and Postgres is stopped for Outage from
// the fifth second on. It returns the latency and how long the mirror took
// to catch up after Postgres came back.
func outageRun(ctx context.Context, dir string, srv *pgserver.Server, url string, o PgMirrorOptions) (outage, time.Duration, error) {
	c, err := systest.StartCluster(ctx, dir, 3, nil)
	if err != nil {
		return outage{}, 0, err
	}
	defer c.Close()
	if err := registerBenchPods(ctx, c.Client()); err != nil {
		return outage{}, 0, err
	}
	if srv != nil {
		for i := range c.Nodes {
			stop, err := startBenchMirror(ctx, c, i, url, nil)
			if err != nil {
				return outage{}, 0, err
			}
			defer stop()
		}
	}
	leader, err := leaderClient(c)
	if err != nil {
		return outage{}, 0, err
	}
	var back time.Time
	outageErr := make(chan error, 1)
	if srv != nil {
		go func() {
			time.Sleep(5 * time.Second)
			if err := srv.Stop(); err != nil {
				outageErr <- err
				return
			}
			time.Sleep(o.Outage)
			err := srv.Start(ctx)
			back = time.Now()
			outageErr <- err
		}()
	}
	lat, _, err := pacedWrites(ctx, leader, 0, o.OutageRate, o.OutageRun)
	if err != nil {
		return outage{}, 0, err
	}
	// The same windows in both runs: before Postgres stops, while it is
	// stopped, after it is back (the mirrors catching up).
	down := 5 * time.Second
	res := outage{All: percentiles(latencies(lat, 0, o.OutageRun)), Before: percentiles(latencies(lat, 0, down)),
		During: percentiles(latencies(lat, down, down+o.Outage)), After: percentiles(latencies(lat, down+o.Outage, o.OutageRun+time.Minute))}
	if srv == nil {
		return res, 0, nil
	}
	if err := <-outageErr; err != nil {
		return outage{}, 0, err
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return outage{}, 0, err
	}
	defer conn.Close(ctx)
	want := c.Nodes[c.Leader()].Store().Revision()
	err = systest.Poll(ctx, 120*time.Second, "the mirror to catch up after the outage", func() bool {
		var rev int64
		_ = conn.QueryRow(ctx, `SELECT revision FROM mirror_state`).Scan(&rev)
		return uint64(rev) >= want
	})
	return res, time.Since(back), err
}

// outage is one comparison run's write latency, overall and by phase.
type outage struct{ All, Before, During, After Percentiles }

// resyncRun places guilds (more than the nodes' watch history keeps), then
// starts a mirror on an empty database: it gets 410 Gone and resyncs from
// the snapshot. It returns start → caught up.
func resyncRun(ctx context.Context, dir, url string, guilds int) (time.Duration, error) {
	c, err := systest.StartCluster(ctx, dir, 3, func(cfg *confignode.Config) { cfg.WatchHistory = 10_000 })
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := registerBenchPods(ctx, c.Client()); err != nil {
		return 0, err
	}
	leader, err := leaderClient(c)
	if err != nil {
		return 0, err
	}
	const batch = 50_000
	for lo := 0; lo < guilds; lo += batch {
		ids := make([]string, 0, batch)
		for g := lo; g < min(lo+batch, guilds); g++ {
			ids = append(ids, guildID(g))
		}
		if _, err := leader.PlaceGuilds(ctx, ids); err != nil {
			return 0, fmt.Errorf("place guilds: %w", err)
		}
	}
	want := c.Nodes[c.Leader()].Store().Revision()
	done := make(chan struct{})
	var once sync.Once
	start := time.Now()
	stop, err := startBenchMirror(ctx, c, 0, url, func(rev uint64) {
		if rev >= want {
			once.Do(func() { close(done) })
		}
	})
	if err != nil {
		return 0, err
	}
	defer stop()
	select {
	case <-done:
		return time.Since(start), nil
	case <-time.After(5 * time.Minute):
		return 0, fmt.Errorf("resync of %d guilds not done after 5 minutes", guilds)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// PrintPgMirror writes the table.
func PrintPgMirror(w io.Writer, r PgMirrorResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POSTGRES MIRROR (3 config nodes + a mirror each, PostgreSQL 15 fsync on, loopback)\tRESULT\tTARGET")
	for _, l := range r.Lag {
		fmt.Fprintf(tw, "mirror lag, write acked → row committed, p50 at %d changes/s (n=%d)\t%s\t\n", l.Rate, l.Writes, ms(l.Lag.P50))
		fmt.Fprintf(tw, "mirror lag p99 at %d changes/s\t%s\t\n", l.Rate, ms(l.Lag.P99))
	}
	pct := func(with, without Percentiles) string {
		if without.P99 <= 0 {
			return ""
		}
		return fmt.Sprintf(" (%+.0f %%)", 100*(float64(with.P99)/float64(without.P99)-1))
	}
	// The target compares the writes made while Postgres is stopped with the
	// same window of the run without a mirror.
	fmt.Fprintf(tw, "write p99 at %d changes/s while Postgres is stopped %s: without a mirror / with mirrors (n=%d)\t%s / %s%s\twithin 10 %%\n",
		r.OutageRate, r.Outage, r.PostgresDown.During.N, ms(r.WithoutPostgres.During.P99), ms(r.PostgresDown.During.P99), pct(r.PostgresDown.During, r.WithoutPostgres.During))
	fmt.Fprintf(tw, "  before the outage: without / with\t%s / %s%s\t\n", ms(r.WithoutPostgres.Before.P99), ms(r.PostgresDown.Before.P99), pct(r.PostgresDown.Before, r.WithoutPostgres.Before))
	fmt.Fprintf(tw, "  after Postgres is back (mirrors catching up): without / with\t%s / %s%s\t\n", ms(r.WithoutPostgres.After.P99), ms(r.PostgresDown.After.P99), pct(r.PostgresDown.After, r.WithoutPostgres.After))
	fmt.Fprintf(tw, "  the whole run: without / with (p50 %s / %s)\t%s / %s%s\t\n", ms(r.WithoutPostgres.All.P50), ms(r.PostgresDown.All.P50),
		ms(r.WithoutPostgres.All.P99), ms(r.PostgresDown.All.P99), pct(r.PostgresDown.All, r.WithoutPostgres.All))
	fmt.Fprintf(tw, "Postgres back → mirror caught up\t%s\t\n", ms(r.CatchUp))
	fmt.Fprintf(tw, "resync of %d guilds (410 → snapshot → written)\t%.1f s\t\n", r.ResyncGuilds, r.Resync.Seconds())
	_ = tw.Flush()
}
