package benchmarks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/systest"
)

// WatchResult is one row of the watch benchmark: commit → delivery latency
// for N concurrent watchers, and their memory.
type WatchResult struct {
	Watchers int
	Writes   int
	// Latency is from just before the write call to the moment each
	// watcher's Subscribe channel delivered that revision, one sample per
	// (write, watcher).
	Latency Percentiles
	// OnLeader and OnFollowers split Latency by where the watcher streams
	// from: followers learn a commit up to 1–2 Raft CommitTimeouts later.
	OnLeader, OnFollowers Percentiles
	// Write is the write call's round trip (HTTP + Raft commit with fsync),
	// which is included in Latency.
	Write Percentiles
	// HeapPerWatcher and StackPerWatcher are the heap and goroutine-stack
	// growth per watcher after runtime.GC, with every watcher synced and
	// streaming. Nodes run in the same process, so this includes the config
	// nodes' per-stream cost (connection, buffers, handler goroutine).
	HeapPerWatcher  uint64
	StackPerWatcher uint64
	Setup           time.Duration // time to start and sync all watchers
	Guilds          int           // guilds in the map each watcher holds
	// CPU is the process's CPU time (user + system) over the measured
	// writes: config nodes and watchers together, since all run in this
	// process.
	CPU time.Duration
	// IdleCPU is the process's CPU seconds per second while every watcher
	// is connected and no write is made (WatchOptions.IdleFor; 0 if not
	// measured).
	IdleCPU float64
}

// WatchOptions tunes WatchLatencyWith; zero values take the defaults.
type WatchOptions struct {
	Guilds int           // guilds placed before watchers start (default 100)
	Gap    time.Duration // pause between writes once all watchers have the previous one (default 10 ms)
	// Warmup writes go first in each round, delivered like the others but
	// not measured (default 0).
	Warmup int
	// IdleFor, when positive, measures IdleCPU over this long before the
	// writes.
	IdleFor time.Duration
	Logger  *slog.Logger // default: discard
}

// WatchLatency measures commit → delivery latency for each watcher count on
// one 3-node loopback cluster (fsync on), with watchers spread evenly over
// the three nodes, writes sequential one-guild placements through the
// leader. Every loop is bounded by writes and the watcher counts.
func WatchLatency(ctx context.Context, watchers []int, writes int) ([]WatchResult, error) {
	return WatchLatencyWith(ctx, watchers, writes, WatchOptions{})
}

// WatchLatencyWith is WatchLatency with options.
func WatchLatencyWith(ctx context.Context, watchers []int, writes int, o WatchOptions) ([]WatchResult, error) {
	if o.Guilds == 0 {
		o.Guilds = 100
	}
	if o.Gap == 0 {
		o.Gap = 10 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	dir, cleanup, err := systest.TempDir("watch")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	c, err := systest.StartCluster(ctx, dir, 3, nil)
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	defer c.Close()
	cl := c.Client()
	for i := 0; i < 3; i++ {
		if _, err := cl.RegisterPod(ctx, assignments.RegisterPodRequest{ID: fmt.Sprintf("gateway-%d", i), Addr: fmt.Sprintf("127.0.0.1:%d", 9000+i)}); err != nil {
			return nil, fmt.Errorf("register pod: %w", err)
		}
	}
	ids := make([]string, 0, o.Guilds)
	for i := 0; i < o.Guilds; i++ {
		ids = append(ids, guildID(2_000_000+i))
	}
	for len(ids) > 0 {
		k := min(len(ids), 1000)
		if _, err := cl.PlaceGuilds(ctx, ids[:k]); err != nil {
			return nil, fmt.Errorf("place guilds: %w", err)
		}
		ids = ids[k:]
	}
	// One transport for every watcher: one streaming connection each.
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxConnsPerHost:     0,
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: 4096,
		IdleConnTimeout:     90 * time.Second,
	}
	defer tr.CloseIdleConnections()
	var out []WatchResult
	next := 3_000_000
	for _, n := range watchers {
		r, err := watchRound(ctx, c, tr, n, writes, next, o)
		if err != nil {
			return out, fmt.Errorf("%d watchers: %w", n, err)
		}
		r.Guilds = o.Guilds
		next += writes + o.Warmup
		out = append(out, r)
	}
	return out, nil
}

type stamp struct {
	rev uint64
	at  time.Time
}

func watchRound(ctx context.Context, c *systest.Cluster, tr *http.Transport, n, writes, firstGuild int, o WatchOptions) (WatchResult, error) {
	res := WatchResult{Watchers: n, Writes: writes}
	urls := c.URLs()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait(); tr.CloseIdleConnections() }()
	ws := make([]*assignments.Watcher, n)
	stamps := make([][]stamp, n)
	seen := make([]atomic.Uint64, n) // last revision each collector received
	start := time.Now()
	for i := 0; i < n; i++ {
		// Watcher i prefers node i%3.
		rot := append(append([]string(nil), urls[i%3:]...), urls[:i%3]...)
		cl, err := assignments.NewClient(rot, systest.Token)
		if err != nil {
			return res, err
		}
		cl.HTTP().Transport = tr
		w := assignments.NewWatcher(cl, assignments.WatcherOptions{Logger: o.Logger, Name: fmt.Sprintf("bench-%d", i)})
		ch, unsubscribe := w.Subscribe(o.Warmup + writes + 16)
		ws[i] = w
		stamps[i] = make([]stamp, 0, o.Warmup+writes+4)
		wg.Add(2)
		go func() { defer wg.Done(); _ = w.Run(rctx) }()
		go func() {
			defer wg.Done()
			for {
				select {
				case c, ok := <-ch:
					if !ok {
						return
					}
					stamps[i] = append(stamps[i], stamp{c.Revision, time.Now()})
					seen[i].Store(c.Revision)
				case <-rctx.Done():
					unsubscribe()
					return
				}
			}
		}()
	}
	syncCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for _, w := range ws {
		if err := w.WaitSynced(syncCtx); err != nil {
			return res, fmt.Errorf("sync watchers: %w", err)
		}
	}
	// Every watcher is streaming once it reached the cluster's revision and
	// has seen a message since its list.
	rev := c.Nodes[max(c.Leader(), 0)].Store().Revision()
	for _, w := range ws {
		if err := w.WaitRevision(syncCtx, rev); err != nil {
			return res, fmt.Errorf("watchers catch up: %w", err)
		}
	}
	res.Setup = time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	if after.HeapAlloc > before.HeapAlloc {
		res.HeapPerWatcher = (after.HeapAlloc - before.HeapAlloc) / uint64(n)
	}
	if after.StackInuse > before.StackInuse {
		res.StackPerWatcher = (after.StackInuse - before.StackInuse) / uint64(n)
	}

	idle, err := MeasureIdleCPU(ctx, o.IdleFor)
	if err != nil {
		return res, err
	}
	res.IdleCPU = idle

	cl := c.Client()
	sent := make(map[uint64]time.Time, writes)
	var writeDur []time.Duration
	var cpu0 time.Duration
	for k := 0; k < o.Warmup+writes; k++ {
		if k == o.Warmup {
			cpu0 = ProcessCPU()
		}
		t0 := time.Now()
		pr, err := cl.PlaceGuilds(ctx, []string{guildID(firstGuild + k)})
		// Setting up a thousand watchers on two cores can starve a leader
		// into an election: wait it out (bounded), timing only the write
		// that was accepted. Placing a guild is idempotent.
		for retry := 0; assignments.IsUnavailable(err) && retry < 100; retry++ {
			time.Sleep(100 * time.Millisecond)
			t0 = time.Now()
			pr, err = cl.PlaceGuilds(ctx, []string{guildID(firstGuild + k)})
		}
		if err != nil {
			return res, fmt.Errorf("write %d: %w", k, err)
		}
		if k >= o.Warmup {
			writeDur = append(writeDur, time.Since(t0))
			sent[pr.Revision] = t0
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		for _, w := range ws {
			if err := w.WaitRevision(wctx, pr.Revision); err != nil {
				cancel()
				return res, fmt.Errorf("delivery of write %d: %w", k, err)
			}
		}
		cancel()
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(o.Gap):
		}
	}
	res.CPU = ProcessCPU() - cpu0
	// The collectors may still be a few microseconds behind WaitRevision.
	var last uint64
	for r := range sent {
		last = max(last, r)
	}
	if err := systest.Poll(ctx, 30*time.Second, "subscribers to receive the last write", func() bool {
		for i := range seen {
			if seen[i].Load() < last {
				return false
			}
		}
		return true
	}); err != nil {
		return res, err
	}
	stop()
	wg.Wait()
	var lat, onLeader, onFollowers []time.Duration
	leader := c.Leader()
	missing := 0
	for i := range stamps {
		got := 0
		for _, s := range stamps[i] {
			if t0, ok := sent[s.rev]; ok {
				d := s.at.Sub(t0)
				lat = append(lat, d)
				if i%3 == leader {
					onLeader = append(onLeader, d)
				} else {
					onFollowers = append(onFollowers, d)
				}
				got++
			}
		}
		missing += writes - got
	}
	if missing > 0 {
		return res, errors.New(fmt.Sprint(missing, " (write, watcher) deliveries were not observed on a Subscribe channel"))
	}
	res.Latency = percentiles(lat)
	res.OnLeader, res.OnFollowers = percentiles(onLeader), percentiles(onFollowers)
	res.Write = percentiles(writeDur)
	return res, nil
}

// PrintWatchTable prints the results as a table.
func PrintWatchTable(w io.Writer, rs []WatchResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "watchers\twrites\tsamples\tdelivery p50\tp99\tmax\ton leader p50/p99\ton followers p50/p99\twrite p50\tCPU/write\theap/watcher\tstack/watcher\tsetup\t")
	for _, r := range rs {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%s\t%s / %s\t%s / %s\t%s\t%s\t%.1f KiB\t%.1f KiB\t%s\t\n",
			r.Watchers, r.Writes, r.Latency.N, ms(r.Latency.P50), ms(r.Latency.P99), ms(r.Latency.Max),
			ms(r.OnLeader.P50), ms(r.OnLeader.P99), ms(r.OnFollowers.P50), ms(r.OnFollowers.P99), ms(r.Write.P50), ms(r.CPU/time.Duration(max(r.Writes, 1))),
			float64(r.HeapPerWatcher)/1024, float64(r.StackPerWatcher)/1024, r.Setup.Round(time.Millisecond))
	}
	_ = tw.Flush()
	if len(rs) > 0 {
		fmt.Fprintf(w, "(3 config nodes in process, loopback, fsync on; %d guilds in the map; latency = write call start → Subscribe channel receive; CPU/write = this process's CPU, nodes and watchers together)\n", rs[0].Guilds)
	}
}
