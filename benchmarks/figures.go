package benchmarks

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"text/tabwriter"
)

// Figures are named results that outlive the command that measured them:
// `make bench` runs modbotbench and the etcd comparison (a module of its
// own) one after the other, each merging its figures into one file, then
// prints issue 18's table from that file (PrintIssue18).
type Figures map[string]float64

// MergeFigures adds f to the figures in path (created if missing).
func MergeFigures(path string, f Figures) error {
	all := Figures{}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read figures: %w", err)
	default:
		if err := json.Unmarshal(b, &all); err != nil {
			return fmt.Errorf("read figures %s: %w", path, err)
		}
	}
	for k, v := range f {
		all[k] = v
	}
	b, err = json.MarshalIndent(all, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write figures: %w", err)
	}
	return nil
}

// ReadFigures reads a figures file.
func ReadFigures(path string) (Figures, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read figures: %w", err)
	}
	f := Figures{}
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("read figures %s: %w", path, err)
	}
	return f, nil
}

// Figure names.
const (
	FigLeaderBPerGuild   = "scale.leader_bytes_per_guild"
	FigProxyBPerGuild    = "scale.proxy_bytes_per_guild"
	FigPlaceSeconds      = "scale.place_seconds"
	FigRoutingP50Ms      = "scale.routing_p50_ms"
	FigRoutingMaxMs      = "scale.routing_max_ms"
	FigScaleGuilds       = "scale.guilds"
	FigWatchModbotP99Ms  = "watch.p99_1000_modbot_ms"
	FigWatchEtcdP99Ms    = "watch.p99_1000_etcd_ms"          // a client per watcher, as modbot's
	FigWatchEtcdSharedMs = "watch.p99_1000_etcd_shared_ms"   // one client per member
	FigDashboardPages    = "dashboard.pages_per_second_"     // + messages in the guild; through the proxy
	FigDashboardPodPages = "dashboard.pod_pages_per_second_" // + messages in the guild; at the pod
	FigMoveSourceP99Ms   = "move.source_p99_ms"
	FigMoveTargetP99Ms   = "move.target_p99_ms"
)

// ScaleFigures are a scale run's figures.
func ScaleFigures(r ScaleResult) Figures {
	return Figures{
		FigLeaderBPerGuild: PerGuild(r.LeaderRSS, r.Guilds), FigProxyBPerGuild: PerGuild(r.ProxyRSS, r.Guilds),
		FigPlaceSeconds: r.Place.Seconds(), FigScaleGuilds: float64(r.Guilds),
		FigRoutingP50Ms: float64(r.Routing.P50.Microseconds()) / 1000, FigRoutingMaxMs: float64(r.Routing.Max.Microseconds()) / 1000,
	}
}

// PrintIssue18 prints issue 18's table: each figure as the issue measured it
// ("today"), its goal, and this run's, for the figures the file holds.
func PrintIssue18(w io.Writer, f Figures) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure (issue 18)\ttoday\tgoal\tthis run")
	row := func(name, today, goal, format string, keys ...string) {
		vals := make([]any, len(keys))
		for i, k := range keys {
			v, ok := f[k]
			if !ok {
				fmt.Fprintf(tw, "%s\t%s\t%s\tnot measured in this run\n", name, today, goal)
				return
			}
			vals[i] = v
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t"+format+"\n", append([]any{name, today, goal}, vals...)...)
	}
	row("1M guilds: RSS added at the leader", "322 B/guild", "≤ 160 B/guild", "%.0f B/guild", FigLeaderBPerGuild)
	row("1M guilds: RSS added at a subscriber (proxy)", "235 B/guild", "≤ 64 B/guild", "%.0f B/guild", FigProxyBPerGuild)
	row("1M guilds placed in batches of 10,000", "9.9 s", "≤ 5 s", "%.1f s", FigPlaceSeconds)
	row("proxy routing the last guild after its write", "284 ms", "< 100 ms", "p50 %.1f ms, max %.1f ms", FigRoutingP50Ms, FigRoutingMaxMs)
	if _, ok := f[FigWatchEtcdSharedMs]; ok {
		row("watch p99, 1,000 watchers over 3 nodes", "34 ms", "≤ etcd's, same run", "%.1f ms; etcd %.1f ms (client per watcher), %.1f ms (shared clients)", FigWatchModbotP99Ms, FigWatchEtcdP99Ms, FigWatchEtcdSharedMs)
	} else {
		row("watch p99, 1,000 watchers over 3 nodes", "34 ms", "≤ etcd's, same run", "%.1f ms; etcd %.1f ms (client per watcher)", FigWatchModbotP99Ms, FigWatchEtcdP99Ms)
	}
	row("dashboard page loads/s per pod, 16 clients, 1,000 messages", "~4,000 req/s", "≥ 10,000", "%.0f at the pod, %.0f through the proxy", FigDashboardPodPages+"1000", FigDashboardPages+"1000")
	row("dashboard page loads/s per pod, 16 clients, 100,000 messages", "~4,000 req/s", "≥ 10,000", "%.0f at the pod, %.0f through the proxy", FigDashboardPodPages+"100000", FigDashboardPages+"100000")
	row("a 1M-row guild moving: other guilds' write p99", "seconds", "< 20 ms", "source %.1f ms, target %.1f ms", FigMoveSourceP99Ms, FigMoveTargetP99Ms)
	_ = tw.Flush()
	if n, ok := f[FigScaleGuilds]; ok && n != 1e6 {
		fmt.Fprintf(w, "(this run's scale figures are at %.0f guilds, not 1,000,000)\n", n)
	}
}
