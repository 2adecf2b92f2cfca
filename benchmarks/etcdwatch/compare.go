package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/modbot/modbot/benchmarks"
)

// compareOptions is one side-by-side run.
type compareOptions struct {
	Watchers []int // watcher counts, each spread over the 3 nodes of both systems
	Writes   int   // measured writes per watcher count
	Runs     int   // repetitions, fresh clusters each; the table shows the median
	Shared   bool  // also measure etcd with one shared client per member
	Watch    benchmarks.WatchOptions
}

// system is one column group of the table: a system's result per run, per
// watcher count.
type system struct {
	name string
	runs [][]benchmarks.WatchResult // [run][watcher count]
}

// compareWatch runs modbot's watch benchmark and the same measurement on
// etcd, one after the other within each repetition, in this process.
func compareWatch(ctx context.Context, o compareOptions) ([]*system, error) {
	modbot := &system{name: "modbot"}
	perWatcher := &system{name: "etcd (" + clientPerWatcher.String() + ")"}
	shared := &system{name: "etcd (" + sharedClient.String() + ")"}
	out := []*system{modbot, perWatcher}
	if o.Shared {
		out = append(out, shared)
	}
	for run := 0; run < o.Runs; run++ {
		rs, err := benchmarks.WatchLatencyWith(ctx, o.Watchers, o.Writes, o.Watch)
		if err != nil {
			return nil, fmt.Errorf("modbot, run %d: %w", run+1, err)
		}
		modbot.runs = append(modbot.runs, rs)
		for _, s := range []struct {
			sys  *system
			mode etcdMode
		}{{perWatcher, clientPerWatcher}, {shared, sharedClient}} {
			if s.mode == sharedClient && !o.Shared {
				continue
			}
			dir, err := os.MkdirTemp("", "etcdwatch-")
			if err != nil {
				return nil, fmt.Errorf("etcd data dir: %w", err)
			}
			rs, err := etcdWatchLatency(ctx, dir, o.Watchers, o.Writes, o.Watch, s.mode)
			_ = os.RemoveAll(dir)
			if err != nil {
				return nil, fmt.Errorf("run %d: %w", run+1, err)
			}
			s.sys.runs = append(s.sys.runs, rs)
		}
	}
	return out, nil
}

// medianFloat is median for a float figure.
func (s *system) medianFloat(i int, f func(benchmarks.WatchResult) float64) float64 {
	var v []float64
	for _, rs := range s.runs {
		v = append(v, f(rs[i]))
	}
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	return v[len(v)/2]
}

// median is the median over runs of f for watcher count index i.
func (s *system) median(i int, f func(benchmarks.WatchResult) time.Duration) time.Duration {
	var v []time.Duration
	for _, rs := range s.runs {
		v = append(v, f(rs[i]))
	}
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	return v[len(v)/2]
}

func p50(r benchmarks.WatchResult) time.Duration { return r.Latency.P50 }
func p99(r benchmarks.WatchResult) time.Duration { return r.Latency.P99 }

func msf(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }

// printComparison prints the side-by-side table (modbot against each etcd
// mode, with the ratio of p99s) and a detail table per system.
func printComparison(w io.Writer, o compareOptions, systems []*system) {
	modbot := systems[0]
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "watchers\tmodbot p50 / p99 (ms)\t")
	for _, s := range systems[1:] {
		fmt.Fprintf(tw, "%s p50 / p99 (ms)\tp99 ratio modbot/etcd\t", s.name)
	}
	fmt.Fprintln(tw)
	for i, n := range o.Watchers {
		mp99 := modbot.median(i, p99)
		fmt.Fprintf(tw, "%d\t%s / %s\t", n, msf(modbot.median(i, p50)), msf(mp99))
		for _, s := range systems[1:] {
			ep99 := s.median(i, p99)
			fmt.Fprintf(tw, "%s / %s\t%.2f\t", msf(s.median(i, p50)), msf(ep99), float64(mp99)/float64(max(ep99, 1)))
		}
		fmt.Fprintln(tw)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "(median of %d runs, fresh clusters each; 3 nodes of each system in this process, loopback, fsync on; "+
		"%d warm-up + %d measured sequential writes to the leader per watcher count, %s apart once every watcher has the previous one; "+
		"latency = just before the write is sent → the event decoded by the watcher)\n\n", o.Runs, o.Watch.Warmup, o.Writes, o.Watch.Gap)

	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\twatchers\tmax (ms)\ton leader p50 / p99\ton followers p50 / p99\twrite p50\tCPU per write\tidle CPU\tsetup\t")
	for _, s := range systems {
		for i, n := range o.Watchers {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s / %s\t%s / %s\t%s\t%s\t%.3f\t%s\t\n", s.name, n,
				msf(s.median(i, func(r benchmarks.WatchResult) time.Duration { return r.Latency.Max })),
				msf(s.median(i, func(r benchmarks.WatchResult) time.Duration { return r.OnLeader.P50 })),
				msf(s.median(i, func(r benchmarks.WatchResult) time.Duration { return r.OnLeader.P99 })),
				msf(s.median(i, func(r benchmarks.WatchResult) time.Duration { return r.OnFollowers.P50 })),
				msf(s.median(i, func(r benchmarks.WatchResult) time.Duration { return r.OnFollowers.P99 })),
				msf(s.median(i, func(r benchmarks.WatchResult) time.Duration { return r.Write.P50 })),
				msf(s.median(i, func(r benchmarks.WatchResult) time.Duration { return r.CPU / time.Duration(max(r.Writes, 1)) })),
				s.medianFloat(i, func(r benchmarks.WatchResult) float64 { return r.IdleCPU }),
				s.median(i, func(r benchmarks.WatchResult) time.Duration { return r.Setup }).Round(time.Millisecond))
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "(medians over runs, in ms; CPU per write = this process's user+system CPU over the measured writes / writes: nodes and watchers together; "+
		"idle CPU = its CPU-s per second with every watcher connected and no writes, over %s)\n", o.Watch.IdleFor)
}
