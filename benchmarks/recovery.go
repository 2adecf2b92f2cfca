package benchmarks

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/gatewaynode"
	"github.com/modbot/modbot/systest"
)

// RecoveryOptions size the pod-crash benchmark.
type RecoveryOptions struct {
	ModbotBinary string        // for the sidecars and modbot restore (default bin/modbot)
	Messages     int           // message rows put in the victim pod (default 1,500,000: about 100 MB)
	Grace        time.Duration // the leader's failover grace (default 10 s)
	Verbose      bool          // the cluster logs to stderr
}

// RecoveryResult is one pod crash with its disk and one without.
type RecoveryResult struct {
	DBMB          float64
	Guilds        int
	PodTimeout    time.Duration
	Grace         time.Duration
	WithDisk      time.Duration // kill -9 → restarted pod ready again
	DiskGone      time.Duration // kill -9 and disk deleted → every guild owned by a live pod
	FailoverMoves time.Duration // DiskGone minus pod timeout and grace: the failover job itself
}

// Recovery measures a gateway pod crash: restarted on its disk, the time
// until it is ready again; with its disk deleted (and its sidecar killed),
// the time until its guilds are served by the other pods from its replica.
// Three config nodes and three gateways in this process, one `modbot
// replicate` process per gateway with a file replica.
func Recovery(ctx context.Context, o RecoveryOptions) (RecoveryResult, error) {
	if o.Messages <= 0 {
		o.Messages = 1_500_000
	}
	if o.Grace <= 0 {
		o.Grace = 10 * time.Second
	}
	bin := o.ModbotBinary
	if bin == "" {
		bin = filepath.Join("bin", "modbot")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return RecoveryResult{}, err
	}
	dir, err := os.MkdirTemp("", "modbot-recoverybench-")
	if err != nil {
		return RecoveryResult{}, err
	}
	defer os.RemoveAll(dir)
	replica := func(pod string) string { return "file://" + filepath.Join(dir, "replicas", pod) }
	const podTimeout = 1500 * time.Millisecond
	var logger *slog.Logger
	if o.Verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	sys, err := systest.StartSystem(ctx, dir, systest.SystemOptions{Shards: 4, PodTimeout: podTimeout, Logger: logger,
		TweakConfig: func(c *confignode.Config) {
			c.FailoverReplica = replica("{pod}")
			c.FailoverGrace = o.Grace
		},
		TweakGateway: func(c *gatewaynode.Config) {
			c.RestoreCommand = []string{bin, "restore"}
			c.RestoreFrom = replica(c.ID)
		},
	})
	if err != nil {
		return RecoveryResult{}, err
	}
	defer sys.Close()
	e := &replEnv{bin: bin, dir: dir, vars: append(os.Environ(), "MODBOT_LOG_FORMAT=json")}
	sys.Discord.Seed(12)
	var metrics []string
	var stops []func() error
	for i := 0; i < 3; i++ {
		if _, err := sys.AddGateway(); err != nil {
			return RecoveryResult{}, err
		}
		m, stop, err := e.sidecar(ctx, filepath.Join(sys.Cfgs[i].DataDir, "modbot.db"), replica(sys.Cfgs[i].ID), time.Second)
		if err != nil {
			return RecoveryResult{}, err
		}
		metrics, stops = append(metrics, m), append(stops, stop)
	}
	defer func() {
		for _, stop := range stops {
			_ = stop()
		}
	}()
	if err := sys.WaitSettled(ctx, 60*time.Second); err != nil {
		return RecoveryResult{}, err
	}
	if _, err := sys.Client.Rebalance(ctx, false); err != nil {
		return RecoveryResult{}, err
	}
	if err := systest.Poll(ctx, 60*time.Second, "the rebalance", func() bool {
		j, err := sys.Client.RebalanceStatus(ctx)
		return err == nil && !j.FinishedAt.IsZero()
	}); err != nil {
		return RecoveryResult{}, err
	}
	const victim = 2
	var theirs []uint64
	for _, g := range sys.Discord.Guilds() {
		if v, err := sys.Owner(ctx, g.ID); err == nil && v.Owner == sys.Cfgs[victim].ID {
			theirs = append(theirs, g.ID)
		}
	}
	if len(theirs) == 0 {
		return RecoveryResult{}, fmt.Errorf("gateway-%d owns no guild after the rebalance", victim)
	}
	for k, g := range theirs {
		n := o.Messages / len(theirs)
		if err := sys.InsertMessages(ctx, victim, g, uint64(1+k)<<40, n, 5000); err != nil {
			return RecoveryResult{}, err
		}
	}
	db := filepath.Join(sys.Cfgs[victim].DataDir, "modbot.db")
	// Its size: the file plus what is still in its WAL (Litestream
	// checkpoints it in steps).
	var size int64
	for _, f := range []string{db, db + "-wal"} {
		if st, err := os.Stat(f); err == nil {
			size += st.Size()
		}
	}
	res := RecoveryResult{DBMB: float64(size) / 1e6, Guilds: len(theirs), PodTimeout: podTimeout, Grace: o.Grace}
	if err := systest.Poll(ctx, 2*time.Minute, "the victim's replica in sync", func() bool {
		return scrapeMetric(metrics[victim], "modbot_replication_lag_seconds") == 0
	}); err != nil {
		return res, err
	}
	ready := func(i int) bool {
		resp, err := http.Get("http://" + sys.Gateways[i].Addr() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}

	// With its disk: kill -9, restart at once, until ready.
	sys.KillGateway(victim)
	start := time.Now()
	if err := sys.StartGateway(victim); err != nil {
		return res, err
	}
	if err := systest.Poll(ctx, 2*time.Minute, "the restarted pod ready", func() bool { return ready(victim) }); err != nil {
		return res, err
	}
	res.WithDisk = time.Since(start)

	// Disk gone: the pod and its sidecar die, its data directory is deleted.
	sys.CloseDB(victim)
	sys.KillGateway(victim)
	_ = stops[victim]() // the sidecar is gone with the pod (a final sync changes nothing: it is in sync)
	stops[victim] = func() error { return nil }
	if err := os.RemoveAll(sys.Cfgs[victim].DataDir); err != nil {
		return res, err
	}
	start = time.Now()
	if err := systest.Poll(ctx, o.Grace+5*time.Minute, "the dead pod's guilds owned by live pods", func() bool {
		for _, g := range theirs {
			v, err := sys.Owner(ctx, g)
			if err != nil || v.Owner == sys.Cfgs[victim].ID || v.Migration != nil {
				return false
			}
		}
		return true
	}); err != nil {
		return res, err
	}
	res.DiskGone = time.Since(start)
	res.FailoverMoves = res.DiskGone - podTimeout - o.Grace
	return res, nil
}

// PrintRecovery writes the pod-crash table.
func PrintRecovery(w io.Writer, r RecoveryResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "POD CRASH (a %.0f MB database, %d guilds; pod timeout %s, failover grace %s)\ttime\ttarget\t\n", r.DBMB, r.Guilds, r.PodTimeout, r.Grace)
	fmt.Fprintf(tw, "kill -9, restarted on its disk → ready\t%s\t< 5 s\t\n", r.WithDisk.Round(time.Millisecond))
	fmt.Fprintf(tw, "kill -9, disk deleted → guilds owned by live pods\t%s\t< grace + 10 s\t\n", r.DiskGone.Round(time.Millisecond))
	fmt.Fprintf(tw, "  of which the failover itself (restore + imports + commits)\t%s\t\t\n", r.FailoverMoves.Round(time.Millisecond))
	_ = tw.Flush()
}
